"""The m2mproto handshake: Noise XX / IK with Ed25519 identity binding (spec/handshake.md).

Sans-IO: feed bytes with :meth:`Handshake.receive_data`, call
:meth:`Handshake.next_event` until it returns a :class:`HandshakeResult`, and
send whatever :meth:`Handshake.data_to_send` returns.
"""

from ._handshake import Handshake, HandshakeAborted, HandshakeResult
from ._payload import BINDING_PREFIX, binding_message
from ._state import Role, State
from ._static import StaticKey
from ._wire import (
    ABORT_LENGTH,
    MAGIC,
    PATTERNS,
    SUPPORTED_VERSIONS,
    decode_abort_code,
    encode_abort,
    wire_code,
)

__all__ = [
    "ABORT_LENGTH",
    "BINDING_PREFIX",
    "MAGIC",
    "PATTERNS",
    "SUPPORTED_VERSIONS",
    "Handshake",
    "HandshakeAborted",
    "HandshakeResult",
    "Role",
    "State",
    "StaticKey",
    "binding_message",
    "decode_abort_code",
    "encode_abort",
    "wire_code",
]
