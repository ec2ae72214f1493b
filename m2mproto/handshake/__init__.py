"""The m2mproto handshake: Noise XX / IK with Ed25519 identity binding (spec/handshake.md).

Sans-IO: feed bytes with :meth:`Handshake.receive_data`, call
:meth:`Handshake.next_event` until it returns a :class:`HandshakeResult`, and
send whatever :meth:`Handshake.data_to_send` returns.
"""

from ._handshake import Handshake, HandshakeAborted, HandshakeResult
from ._payload import BINDING_PREFIX, binding_message
from ._state import Role, State
from ._wire import MAGIC, PATTERNS, SUPPORTED_VERSIONS, encode_abort, wire_code

__all__ = [
    "BINDING_PREFIX",
    "MAGIC",
    "PATTERNS",
    "SUPPORTED_VERSIONS",
    "Handshake",
    "HandshakeAborted",
    "HandshakeResult",
    "Role",
    "State",
    "binding_message",
    "encode_abort",
    "wire_code",
]
