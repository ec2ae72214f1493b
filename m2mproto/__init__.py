"""m2mproto: secure messaging for machine-to-machine traffic.

Mutual Ed25519 agent authentication in a Noise handshake, signed capability
tokens (COSE/CWT), and encrypted CBOR streams over one connection. The
protocol core is sans-IO; thin anyio transports drive it.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AuthenticationError,
    AuthorizationError,
    DecodeError,
    ErrorCode,
    LimitExceeded,
    LocalProtocolError,
    M2MError,
    RemoteProtocolError,
    SendBufferFull,
    StreamLimitReached,
    TokenError,
)
from .identity import AgentId, Identity


def _compiled() -> bool:
    # The sans-IO core is an extension module when built with M2M_COMPILE=1 (mypyc).
    from importlib.util import find_spec

    spec = find_spec(".connection", __name__)
    return spec is not None and spec.origin is not None and not spec.origin.endswith(".py")


#: True when the sans-IO core runs as mypyc-compiled extension modules.
COMPILED: bool = _compiled()

if TYPE_CHECKING:
    from .transport import (
        ANY_PEER,
        ConnectionClosedError,
        Context,
        M2MAttribute,
        RequestTimeout,
        Server,
        Session,
        StreamResetError,
        connect,
        memory_pair,
    )

# The anyio transport is imported on first use, so that the sans-IO core
# (m2mproto.connection, m2mproto.cbor, ...) can be used without loading anyio.
_TRANSPORT_NAMES = frozenset(
    {
        "ANY_PEER",
        "ConnectionClosedError",
        "Context",
        "M2MAttribute",
        "RequestTimeout",
        "Server",
        "Session",
        "StreamResetError",
        "connect",
        "memory_pair",
    }
)


def __getattr__(name: str) -> Any:
    if name in _TRANSPORT_NAMES:
        from . import transport

        return getattr(transport, name)
    raise AttributeError(f"module 'm2mproto' has no attribute {name!r}")


def __dir__() -> list[str]:
    # dir() and help() list the lazily loaded transport names too.
    return sorted(set(globals()) | _TRANSPORT_NAMES)


__all__ = [
    "ANY_PEER",
    "COMPILED",
    "AgentId",
    "AuthenticationError",
    "AuthorizationError",
    "ConnectionClosedError",
    "Context",
    "DecodeError",
    "ErrorCode",
    "Identity",
    "LimitExceeded",
    "LocalProtocolError",
    "M2MAttribute",
    "M2MError",
    "RemoteProtocolError",
    "RequestTimeout",
    "SendBufferFull",
    "Server",
    "Session",
    "StreamLimitReached",
    "StreamResetError",
    "TokenError",
    "__version__",
    "connect",
    "memory_pair",
]
