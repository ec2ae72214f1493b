"""Events a :class:`~m2mproto.connection.Connection` returns from ``next_event``.

Every event is a frozen, slotted, keyword-only dataclass that validates its
fields in the constructor, so an invalid event cannot exist (h11's
``_events``). Authorization refusals are not a separate class: a refused
stream open or message shows as :class:`StreamReset` with code
``UNAUTHORIZED`` and ``remote=False`` (we reset the stream).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode, LocalProtocolError
from .frames import MAX_VARINT
from .identity import AgentId

__all__ = [
    "ConnectionClosed",
    "DataReceived",
    "Event",
    "HandshakeCompleted",
    "KeyUpdated",
    "MessageReceived",
    "PingAcknowledged",
    "StreamEnded",
    "StreamOpened",
    "StreamReset",
    "TokenAccepted",
    "TokenRejected",
]


def _bad(message: str) -> LocalProtocolError:
    return LocalProtocolError(message, ErrorCode.INVALID_ARGUMENT)


def _sid(value: Any) -> None:
    if type(value) is not int or not 0 <= value <= MAX_VARINT:
        raise _bad("stream_id must be an integer 0..2^62-1")


def _code(value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFFFFFF:
        raise _bad("code must be a non-negative integer")


class Event:
    """Base class of connection events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeCompleted(Event):
    """The peer is authenticated; records flow from now on."""

    #: The peer's agent ID (proven by the handshake).
    peer: AgentId
    #: The peer's Ed25519 identity public key (32 bytes).
    identity_key: bytes
    #: Noise handshake hash: the channel binding (32 bytes).
    handshake_hash: bytes
    #: The peer's raw transport parameters (validated).
    peer_params: dict[int, Any]
    #: ``"XX"``, ``"IK"``, or the hybrid post-quantum ``"XXhfs"`` / ``"IKhfs"``.
    pattern: str
    #: Negotiated protocol version.
    version: int
    #: The peer's Noise static public key (32 bytes), authenticated by the identity
    #: binding (spec/handshake.md 2.5): what an initiator remembers to reconnect
    #: with IK (2.11). ``None`` only in events made by hand.
    remote_static: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.peer, AgentId):
            raise _bad("peer must be an AgentId")
        if self.identity_key != self.peer.public_key:
            raise _bad("identity_key must be the peer's public key")
        if not isinstance(self.handshake_hash, bytes) or len(self.handshake_hash) != 32:
            raise _bad("handshake_hash must be 32 bytes")
        if self.remote_static is not None and (
            not isinstance(self.remote_static, bytes) or len(self.remote_static) != 32
        ):
            raise _bad("remote_static must be 32 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOpened(Event):
    """The peer opened a stream on *resource* (already authorized)."""

    stream_id: int
    resource: str
    #: What the authorizer returned for the open (None without an authorizer).
    grant: Any = None

    def __post_init__(self) -> None:
        _sid(self.stream_id)
        if not isinstance(self.resource, str) or not self.resource:
            raise _bad("resource must be non-empty text")


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived(Event):
    """Bytes arrived on a stream. The end of the stream is a separate StreamEnded."""

    stream_id: int
    data: bytes

    def __post_init__(self) -> None:
        _sid(self.stream_id)
        if not isinstance(self.data, bytes) or not self.data:
            raise _bad("data must be non-empty bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived(Event):
    """A complete CBOR message arrived on a stream (authorized)."""

    stream_id: int
    value: Any
    #: What the authorizer returned for the message (None without an authorizer).
    grant: Any = None
    #: Length of the message's CBOR encoding as received (the flow-control
    #: credit it used); ``None`` if unknown (an event made outside the core).
    #: Not part of equality: it describes the encoding, not the message.
    size: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _sid(self.stream_id)
        if self.size is not None and (type(self.size) is not int or self.size < 0):
            raise _bad("size must be a non-negative int")


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnded(Event):
    """The peer ended its half of the stream gracefully (exactly once per stream)."""

    stream_id: int

    def __post_init__(self) -> None:
        _sid(self.stream_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReset(Event):
    """A stream was aborted: by the peer (``remote=True``) or by us on a fault
    or refusal (``remote=False``), including ``TRUNCATED`` when the transport
    ended without CLOSE."""

    stream_id: int
    code: int
    remote: bool
    #: The resource of a stream refused as it opened (never reported open), for logs.
    resource: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _sid(self.stream_id)
        _code(self.code)
        if type(self.remote) is not bool:
            raise _bad("remote must be a bool")


@dataclass(frozen=True, slots=True, kw_only=True)
class PingAcknowledged(Event):
    """The peer answered one of our PINGs."""

    payload: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.payload, bytes) or len(self.payload) > 64:
            raise _bad("payload must be at most 64 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyUpdated(Event):
    """A traffic key was ratcheted: ours (``remote=False``) or the peer's."""

    remote: bool
    #: Number of updates in that direction so far.
    generation: int

    def __post_init__(self) -> None:
        if type(self.remote) is not bool or type(self.generation) is not int:
            raise _bad("remote must be a bool and generation an int")


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenAccepted(Event):
    """Tokens presented by the peer (handshake or TOKEN frame) verified."""

    grant: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRejected(Event):
    """A token presented in a TOKEN frame failed verification (precise code).

    The connection stays up; the peer simply gains no capability from it.
    """

    code: ErrorCode

    def __post_init__(self) -> None:
        if not isinstance(self.code, ErrorCode):
            raise _bad("code must be an ErrorCode")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed(Event):
    """The connection ended (terminal; always the last event).

    ``code`` is the precise local code (for a token failure the wire carried
    TOKEN_INVALID unless configured otherwise); ``remote`` tells whether the
    peer closed (CLOSE frame, ABORT or transport end) or we did.
    """

    code: int
    reason: str = ""
    remote: bool = False

    def __post_init__(self) -> None:
        _code(self.code)
        if not isinstance(self.reason, str) or type(self.remote) is not bool:
            raise _bad("reason must be text and remote a bool")

    @property
    def clean(self) -> bool:
        """True for a graceful close (NO_ERROR)."""
        return self.code == ErrorCode.NO_ERROR
