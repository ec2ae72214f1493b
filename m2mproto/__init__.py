"""m2mproto: secure messaging for machine-to-machine traffic.

Mutual Ed25519 agent authentication in a Noise handshake, signed capability
tokens (COSE/CWT), and encrypted CBOR streams over one connection. The
protocol core is sans-IO; thin anyio transports drive it.
"""

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
    TokenError,
)
from .identity import AgentId, Identity

__all__ = [
    "AgentId",
    "AuthenticationError",
    "AuthorizationError",
    "DecodeError",
    "ErrorCode",
    "Identity",
    "LimitExceeded",
    "LocalProtocolError",
    "M2MError",
    "RemoteProtocolError",
    "TokenError",
    "__version__",
]
