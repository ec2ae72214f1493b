"""Error classes and the numeric error-code registry (spec/errors.md).

Theory of operation
-------------------
Every error m2mproto raises or puts on the wire carries one :class:`ErrorCode`
from a single registry. Codes are grouped in ranges:

* ``0x00-0x3F`` connection-level wire codes (carried in CLOSE frames);
* ``0x40-0x5F`` stream-level wire codes (carried in RESET frames);
* ``0x100-0x1FF`` handshake detail codes (local; the wire carries
  ``HANDSHAKE_FAILURE`` or ``DECRYPT_ERROR``);
* ``0x200-0x2FF`` token reason codes (local; the wire carries ``TOKEN_INVALID``
  unless configured otherwise);
* ``0x300-0x3FF`` local-only codes (misuse, files, the Noise engine);
* ``0x1000-0xFFFF`` reserved for applications (close and reset codes chosen
  by the application; never produced by the library itself).

The exception hierarchy is small on purpose (see ``spec/errors.md``)::

    M2MError
     +-- LocalProtocolError        you called something illegal now
     |    +-- SendBufferFull       the send buffer is full: wait for it to drain
     |    +-- StreamLimitReached   the peer's stream limit is reached: wait for a stream to end
     +-- RemoteProtocolError       the peer broke the protocol
     |    +-- DecodeError          malformed bytes (CBOR, frames, payloads)
     +-- AuthenticationError       the peer's identity could not be proven/trusted
     +-- AuthorizationError        the peer lacks a capability
     |    +-- TokenError           a token failed verification (precise reason code)
     +-- LimitExceeded             input exceeded a limit configured on this side
     +-- NetworkError              connecting or listening failed (also an OSError)

One meaning per class: the class says who is at fault and what the caller
can do; the code says exactly what happened. ``SendBufferFull`` and
``StreamLimitReached`` are conditions to wait out (``Connection.can_send`` /
``can_open`` ask without raising); their codes are the ones callers compared
before the classes existed, so such comparisons keep working.

Messages are one line and never contain key material.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "DecodeError",
    "ErrorCode",
    "LimitExceeded",
    "LocalProtocolError",
    "M2MError",
    "NetworkError",
    "RemoteProtocolError",
    "SendBufferFull",
    "StreamLimitReached",
    "TokenBudgetExceeded",
    "TokenError",
    "code_name",
]


class ErrorCode(IntEnum):
    """The m2mproto error-code registry. Numbers are a wire contract."""

    # --- connection level (wire, CLOSE frame) -------------------------------
    #: Graceful close, no error.
    NO_ERROR = 0x00
    #: Generic protocol violation (wrong frame in this state, bad field value).
    PROTOCOL_ERROR = 0x01
    #: The implementation failed internally.
    INTERNAL_ERROR = 0x02
    #: No common protocol version, or the preface is not m2mproto.
    VERSION_MISMATCH = 0x03
    #: The handshake failed (bad identity binding, malformed payload, ...).
    HANDSHAKE_FAILURE = 0x04
    #: The peer (or the stream's resource) is not authorized.
    UNAUTHORIZED = 0x05
    #: A record or handshake message failed authentication.
    DECRYPT_ERROR = 0x06
    #: Bytes that do not decode as the specified CBOR structure.
    DECODE_ERROR = 0x07
    #: A record or frame violates a size rule.
    FRAME_SIZE_ERROR = 0x08
    #: Flow-control credit exceeded or overflowed.
    FLOW_CONTROL_ERROR = 0x09
    #: Too many concurrent streams.
    STREAM_LIMIT_ERROR = 0x0A
    #: A frame for a stream in a state that does not allow it.
    STREAM_STATE_ERROR = 0x0B
    #: A stream's final size changed or was exceeded.
    FINAL_SIZE_ERROR = 0x0C
    #: Key update misuse, or the record limit was reached without an update.
    KEY_UPDATE_ERROR = 0x0D
    #: The peer exceeded a budget for non-productive traffic.
    ENHANCE_YOUR_CALM = 0x0E
    #: No traffic within the idle timeout.
    IDLE_TIMEOUT = 0x0F
    #: A presented token failed verification (precise reason is local).
    TOKEN_INVALID = 0x10
    #: The handshake did not complete within the deadline.
    HANDSHAKE_TIMEOUT = 0x11
    #: The transport ended without a CLOSE frame (local; streams are aborted).
    TRUNCATED = 0x12

    # --- stream level (wire, RESET frame) ----------------------------------
    #: The stream was cancelled by the application.
    CANCELLED = 0x40
    #: The peer refused the stream (no handler, not accepting).
    REFUSED = 0x41
    #: A message on the stream exceeded the maximum message size.
    MESSAGE_TOO_LARGE = 0x42
    #: A request handler failed.
    APPLICATION_ERROR = 0x43

    # --- handshake detail (local) -----------------------------------------
    #: The identity signature over the Noise static key does not verify.
    AUTH_SIGNATURE = 0x100
    #: The identity key in the payload is not a valid Ed25519 public key.
    AUTH_IDENTITY_KEY = 0x101
    #: The peer presented our own identity (reflection).
    AUTH_REFLECTED = 0x102
    #: A low-order or otherwise invalid X25519 public key.
    AUTH_LOW_ORDER_KEY = 0x103
    #: The peer's identity is not in the trust set.
    AUTH_UNTRUSTED = 0x104
    #: The peer's identity is not the one the initiator expected.
    AUTH_UNEXPECTED_PEER = 0x105
    #: A classical handshake refused: ``require_post_quantum`` is set (wire VERSION_MISMATCH).
    POST_QUANTUM_REQUIRED = 0x106
    #: A classical offer that prefers the hybrid suite reached a hybrid responder
    #: (the hybrid offer was suppressed on the way; wire VERSION_MISMATCH).
    DOWNGRADE_DETECTED = 0x107

    # --- token reasons (local; wire TOKEN_INVALID) ---------------------------
    EXPIRED = 0x200
    NOT_YET_VALID = 0x201
    WRONG_AUDIENCE = 0x202
    CNF_MISMATCH = 0x203
    CHAIN_INVALID = 0x204
    ATTENUATION_VIOLATION = 0x205
    REVOKED = 0x206
    UNKNOWN_CRITICAL = 0x207
    BAD_ALG = 0x208
    BAD_SIGNATURE = 0x209
    UNTRUSTED_ROOT = 0x20A
    MALFORMED = 0x20B
    TOO_LARGE = 0x20C
    TOO_DEEP = 0x20D
    UNKNOWN_CAVEAT = 0x20E

    # --- local only -----------------------------------------------------------
    #: API misuse: the call is not valid in the current state.
    INVALID_STATE = 0x300
    #: API misuse: an argument is out of range or of the wrong form.
    INVALID_ARGUMENT = 0x301
    #: A key file is missing, unreadable or malformed.
    KEY_FILE_INVALID = 0x302
    #: A private key file is readable by group or others.
    KEY_FILE_PERMISSIONS = 0x303
    #: A text agent ID is malformed or its checksum does not match.
    AGENT_ID_INVALID = 0x304
    #: A Noise cipher state reached the reserved nonce 2^64-1.
    NONCE_EXHAUSTED = 0x305
    #: A Noise message would exceed 65535 bytes.
    MESSAGE_TOO_LONG = 0x306
    #: A Noise protocol name, pattern or primitive is not supported.
    UNSUPPORTED = 0x307
    #: An operation did not complete in time (local).
    TIMEOUT = 0x308
    #: The connection is closed.
    CONNECTION_CLOSED = 0x309
    #: No connection could be made to the address (refused, unreachable, unresolvable).
    UNREACHABLE = 0x30A
    #: The address could not be listened on (in use, not permitted, unresolvable).
    LISTEN_FAILED = 0x30B

    @property
    def is_wire(self) -> bool:
        """True for codes that may appear in CLOSE or RESET frames."""
        return self < 0x100


def code_name(code: int) -> str:
    """Return the registry name of *code*, ``APPLICATION(0x....)`` or ``UNKNOWN(n)``."""
    try:
        return ErrorCode(code).name
    except ValueError:
        if 0x1000 <= code <= 0xFFFF:
            return f"APPLICATION(0x{code:04x})"
        return f"UNKNOWN({code})"


class M2MError(Exception):
    """Base class of every m2mproto error. ``code`` is an :class:`ErrorCode`."""

    default_code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        self.code: ErrorCode = code if code is not None else self.default_code
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.name})"


class LocalProtocolError(M2MError):
    """The caller did something illegal (wrong state, bad argument)."""

    default_code = ErrorCode.INVALID_STATE


class SendBufferFull(LocalProtocolError):
    """Queueing would pass ``max_send_buffer``: wait until ``data_to_send`` drains it."""

    default_code = ErrorCode.FLOW_CONTROL_ERROR


class StreamLimitReached(LocalProtocolError):
    """The peer's concurrent-stream limit (or the stream ID space) is used up."""

    default_code = ErrorCode.STREAM_LIMIT_ERROR


class RemoteProtocolError(M2MError):
    """The peer violated the protocol."""

    default_code = ErrorCode.PROTOCOL_ERROR


class DecodeError(RemoteProtocolError):
    """Bytes that are not the specified encoding (CBOR profile, frame layout)."""

    default_code = ErrorCode.DECODE_ERROR


class AuthenticationError(M2MError):
    """The peer's identity could not be proven, or is not trusted."""

    default_code = ErrorCode.HANDSHAKE_FAILURE


class AuthorizationError(M2MError):
    """The peer is not authorized for the operation."""

    default_code = ErrorCode.UNAUTHORIZED


class TokenError(AuthorizationError):
    """A capability token failed verification; ``code`` is the precise reason."""

    default_code = ErrorCode.MALFORMED


class TokenBudgetExceeded(AuthorizationError):
    """The peer exhausted its budget of token signature verifications.

    Not a :class:`TokenError`: the token was not judged. The connection
    closes with ``ENHANCE_YOUR_CALM`` (spec/tokens.md, verification cost).
    """

    default_code = ErrorCode.ENHANCE_YOUR_CALM


class LimitExceeded(M2MError):
    """Input exceeded a size or count limit configured on this side (e.g. a
    handshake frame over ``max_handshake_message``)."""

    default_code = ErrorCode.ENHANCE_YOUR_CALM


class NetworkError(M2MError, OSError):
    """Connecting to (``UNREACHABLE``) or listening on (``LISTEN_FAILED``) an address failed.

    Also an :class:`OSError` (``errno`` and ``strerror`` are the system's, when
    known), so code that caught the transport's ``OSError`` keeps working; the
    message names the address. The original exception is ``__cause__``.
    """

    default_code = ErrorCode.UNREACHABLE

    def __init__(
        self,
        message: str,
        code: ErrorCode | None = None,
        *,
        errno: int | None = None,
        strerror: str | None = None,
    ) -> None:
        M2MError.__init__(self, message, code)
        self.errno = errno
        self.strerror = strerror

    def __str__(self) -> str:
        return M2MError.__str__(self)
