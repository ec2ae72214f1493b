"""Typed attributes of an m2mproto session (like anyio's ``TLSAttribute``).

Read them with ``session.extra(M2MAttribute.agent_id)``; a session also
passes through the attributes of the byte stream it runs on (for example
``anyio.abc.SocketAttribute.remote_address``).
"""

from __future__ import annotations

from typing import Any

from anyio import TypedAttributeSet, typed_attribute

from ..identity import AgentId

__all__ = ["M2MAttribute"]


class M2MAttribute(TypedAttributeSet):
    """Attributes published by an established :class:`~m2mproto.transport.Session`."""

    #: the authenticated peer's agent ID
    agent_id: AgentId = typed_attribute()
    #: the peer's raw 32-byte Ed25519 identity key
    identity_key: bytes = typed_attribute()
    #: the Noise handshake hash (channel binding, 32 bytes)
    handshake_hash: bytes = typed_attribute()
    #: the grants the peer's tokens verified to (authorizer-specific summary)
    capabilities: Any = typed_attribute()
    #: our own agent ID
    local_agent_id: AgentId = typed_attribute()
    #: ``True`` on the side that accepted the connection
    server_side: bool = typed_attribute()
