"""Connection configuration, transport parameters and the authorization hook.

Every limit is configuration with a safe default (spec/streams.md §7): 1 MiB
messages, 100 concurrent streams per direction, 256 KiB stream and 1 MiB
connection windows, 10 s handshake deadline, at most 256 queued control
responses, 32 consecutive non-productive frames, 32 key updates without data,
and a stream open/reset budget of 200 refilled at 50/s.

``entropy`` is the only source of randomness in the core; ``os.urandom`` is
named here and nowhere else in it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .frames import MAX_TOKEN_BYTES, MAX_VARINT
from .handshake import StaticKey
from .identity import AgentId

__all__ = [
    "AuthorizationPolicy",
    "Authorizer",
    "Configuration",
    "Grant",
    "TransportParameters",
]

KiB = 1024
MiB = 1024 * KiB


class Grant(Protocol):
    """What an authorizer's answer lets the connection enforce (spec/tokens.md §6.4).

    ``m2mproto.tokens.Grant`` implements it. The connection keeps the grant of
    each incoming open and message and applies its limits itself.
    """

    @property
    def max_message_size(self) -> int | None:
        """Largest message (CBOR bytes) the peer may send under this grant (None: no caveat)."""
        ...

    def check_message(self, size: int) -> None:
        """Called once per whole incoming message of *size* bytes under this grant.

        Raises:
            AuthorizationError: the message is outside the grant.
        """
        ...


class Authorizer(Protocol):
    """The authorization hook the connection calls (implemented by ``m2mproto.tokens``).

    ``now`` is Unix time: the caller's monotonic ``now`` plus
    ``Configuration.clock_offset``. Both methods run contained: an exception
    other than :class:`~m2mproto.errors.AuthorizationError` closes the
    connection with ``INTERNAL_ERROR`` and never escapes ``next_event``.
    """

    def accept_tokens(self, peer: AgentId, tokens: Sequence[bytes], now: float) -> object:
        """Verify *tokens* presented by *peer*; return an opaque grant summary.

        Raises:
            TokenError: with the precise reason code if a token is invalid.
            TokenBudgetExceeded: if *peer* made it verify too many signatures
                (the connection closes with ENHANCE_YOUR_CALM).
        """
        ...

    def authorize(self, peer: AgentId, resource: str, ability: str, now: float) -> Grant:
        """Return the grant that allows *ability* on *resource* now.

        Raises:
            AuthorizationError: if no presented capability covers it.
        """
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationPolicy:
    """Which ability each incoming operation needs on the stream's resource."""

    #: Ability required for the peer to open a stream on a resource.
    open_stream: str = "stream/open"
    #: Ability required for each message the peer sends on a stream.
    send_message: str = "msg/send"


def _positive(name: str, value: Any, maximum: int = MAX_VARINT) -> None:
    if type(value) is not int or not 1 <= value <= maximum:
        raise LocalProtocolError(
            f"{name} must be an integer 1..{maximum}", ErrorCode.INVALID_ARGUMENT
        )


def _timeout(name: str, value: Any, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise LocalProtocolError(f"{name} must be a positive number", ErrorCode.INVALID_ARGUMENT)


@dataclass(frozen=True, slots=True, kw_only=True)
class Configuration:
    """Limits, windows, timers and hooks of one connection (all with safe defaults).

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) for an out-of-range value.
    """

    #: ``entropy(n) -> n random bytes``: keys, ping payloads. Inject for reproducible tests.
    entropy: Callable[[int], bytes] = os.urandom
    #: Added to the caller's monotonic ``now`` to get Unix time for token checks.
    clock_offset: float = 0.0
    #: Largest message (CBOR bytes) accepted from the peer; advertised to it.
    max_message_size: int = 1 * MiB
    #: Streams the peer may have open concurrently; advertised to it.
    max_concurrent_streams: int = 100
    #: Credit granted per stream (bytes); advertised to it.
    initial_stream_window: int = 256 * KiB
    #: Credit granted for the whole connection (bytes); advertised to it.
    initial_connection_window: int = 1 * MiB
    #: Return credit automatically as events are delivered (else: ``acknowledge_data``).
    auto_window_update: bool = True
    #: Seconds from ``start(now)`` to handshake completion.
    handshake_timeout: float = 10.0
    #: Seconds without any received record before closing with IDLE_TIMEOUT (None: off).
    idle_timeout: float | None = 300.0
    #: Send a PING after this many quiet seconds (None: off).
    keepalive_interval: float | None = None
    #: Seconds a close may wait: for queued data to drain, then for the peer's CLOSE.
    close_timeout: float = 5.0
    #: Queued control responses (PONGs etc.) before ENHANCE_YOUR_CALM.
    max_queued_control: int = 256
    #: Consecutive non-productive frames before ENHANCE_YOUR_CALM.
    max_no_progress_frames: int = 32
    #: Peer key updates without application data before ENHANCE_YOUR_CALM.
    max_key_updates_without_data: int = 32
    #: A peer WINDOW_UPDATE below min(this, half the window it advertised) is *small*.
    min_window_increment: int = 1024
    #: Small peer WINDOW_UPDATEs (dribbled credit) before ENHANCE_YOUR_CALM.
    max_small_window_updates: int = 32
    #: Peer stream resets and refused opens: burst size of the budget.
    stream_churn_burst: int = 200
    #: Peer stream resets and refused opens: refill per second.
    stream_churn_rate: float = 50.0
    #: Send KEY_UPDATE automatically after this many records under one key.
    key_update_after_records: int = 2**24
    #: Hard limit of records under one key, either direction (KEY_UPDATE_ERROR).
    max_records_per_key: int = 2**32
    #: Largest token accepted in a TOKEN frame.
    max_token_size: int = 8 * KiB
    #: Most tokens accepted in the peer's handshake payload, when an authorizer is set
    #: (more: the connection closes, local TOO_LARGE, before any token is verified).
    max_handshake_tokens: int = 8
    #: Total bytes of partial incoming messages held across all streams.
    max_reassembly_bytes: int = 16 * MiB
    #: Total bytes the application may queue for sending before send() refuses.
    max_send_buffer: int = 4 * MiB
    #: Put the precise token reason code on the wire instead of TOKEN_INVALID.
    wire_token_reason: bool = False
    #: Abilities required for incoming stream opens and messages.
    policy: AuthorizationPolicy = field(default_factory=AuthorizationPolicy)
    #: Our Noise static key: a :class:`~m2mproto.handshake.StaticKey` made once for the
    #: identity and shared by many connections (its binding is signed once; it must be
    #: bound to the connection's identity), or a raw 32-byte X25519 private key (bound
    #: and signed per connection). Default: fresh per connection from ``entropy`` (a
    #: transport ``Server`` or a ``StaticKeys`` passed to ``connect`` shares one instead).
    static_key: StaticKey | bytes | None = field(default=None, repr=False)  # a secret
    #: Largest handshake message accepted (hybrid messages may exceed it by the
    #: 1200 bytes of their ML-KEM token, spec/handshake.md 2.13).
    max_handshake_message: int = 65535
    #: Offer the hybrid post-quantum suite (X25519 + ML-KEM-768, ``XXhfs`` / ``IKhfs``)
    #: first and accept it as a responder. A classical-only responder refuses the
    #: hybrid offer and ``connect()`` retries once with the classical suite.
    post_quantum: bool = True
    #: Refuse classical peers (``POST_QUANTUM_REQUIRED``): a responder refuses
    #: classical offers, an initiator offers only the hybrid suite and never falls back.
    require_post_quantum: bool = False
    #: Set by ``connect()`` on its classical retry after a peer refused the hybrid
    #: offer: the offer still says the hybrid suite is preferred, so a hybrid-capable
    #: responder detects that the first offer was suppressed (``DOWNGRADE_DETECTED``).
    post_quantum_fallback: bool = False
    #: Advertise request/reply frames (transport parameter 5, spec/streams.md §2): when
    #: the peer advertises them too, a request or reply that fits one frame travels as
    #: one REQUEST or REPLY frame instead of OPEN + MESSAGE / MESSAGE.
    request_reply: bool = True

    def __post_init__(self) -> None:
        if not callable(self.entropy):
            raise LocalProtocolError("entropy must be callable", ErrorCode.INVALID_ARGUMENT)
        _positive("max_message_size", self.max_message_size)
        _positive("max_concurrent_streams", self.max_concurrent_streams)
        _positive("initial_stream_window", self.initial_stream_window)
        _positive("initial_connection_window", self.initial_connection_window)
        _positive("max_queued_control", self.max_queued_control)
        _positive("max_no_progress_frames", self.max_no_progress_frames)
        _positive("max_key_updates_without_data", self.max_key_updates_without_data)
        _positive("min_window_increment", self.min_window_increment)
        _positive("max_small_window_updates", self.max_small_window_updates)
        _positive("stream_churn_burst", self.stream_churn_burst)
        _positive("key_update_after_records", self.key_update_after_records)
        _positive("max_records_per_key", self.max_records_per_key, 2**64 - 2)
        _positive("max_token_size", self.max_token_size, MAX_TOKEN_BYTES)
        _positive("max_handshake_tokens", self.max_handshake_tokens)
        _positive("max_reassembly_bytes", self.max_reassembly_bytes)
        _positive("max_send_buffer", self.max_send_buffer)
        _timeout("handshake_timeout", self.handshake_timeout, False)
        _timeout("idle_timeout", self.idle_timeout, True)
        _timeout("keepalive_interval", self.keepalive_interval, True)
        _timeout("close_timeout", self.close_timeout, False)
        _timeout("stream_churn_rate", self.stream_churn_rate, False)
        key = self.static_key
        if not (key is None or isinstance(key, StaticKey)) and not (
            type(key) is bytes and len(key) == 32
        ):
            raise LocalProtocolError(
                "static_key must be a StaticKey or 32 bytes", ErrorCode.INVALID_ARGUMENT
            )
        if self.post_quantum_fallback and (not self.post_quantum or self.require_post_quantum):
            raise LocalProtocolError(
                "post_quantum_fallback needs post_quantum and not require_post_quantum",
                ErrorCode.INVALID_ARGUMENT,
            )
        if self.key_update_after_records >= self.max_records_per_key:
            raise LocalProtocolError(
                "key_update_after_records must be below max_records_per_key",
                ErrorCode.INVALID_ARGUMENT,
            )

    def transport_parameters(self) -> TransportParameters:
        """The parameters this side advertises."""
        return TransportParameters(
            max_concurrent_streams=self.max_concurrent_streams,
            initial_stream_window=self.initial_stream_window,
            initial_connection_window=self.initial_connection_window,
            max_message_size=self.max_message_size,
            request_reply=1 if self.request_reply else 0,
        )


#: Transport parameter keys and the TransportParameters fields they set.
_PARAM_KEYS: tuple[tuple[int, str], ...] = (
    (1, "max_concurrent_streams"),
    (2, "initial_stream_window"),
    (3, "initial_connection_window"),
    (4, "max_message_size"),
    (5, "request_reply"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportParameters:
    """Limits each side advertises in its handshake payload (spec/streams.md §2).

    Carried as a CBOR map with uint keys; unknown keys are ignored, absent
    keys take the defaults below.
    """

    #: Key 1: streams the sender lets its peer open concurrently.
    max_concurrent_streams: int = 100
    #: Key 2: credit the sender grants per stream.
    initial_stream_window: int = 256 * KiB
    #: Key 3: credit the sender grants for the connection.
    initial_connection_window: int = 1 * MiB
    #: Key 4: largest message the sender accepts.
    max_message_size: int = 1 * MiB
    #: Key 5: 1 if the sender accepts REQUEST and REPLY frames (absent: 0, it does not).
    request_reply: int = 0

    def to_params(self) -> dict[int, Any]:
        """The ``{uint: value}`` map for the handshake payload (key 5 only when 1)."""
        params = {key: getattr(self, name) for key, name in _PARAM_KEYS[:4]}
        if self.request_reply:
            params[5] = 1
        return params

    @classmethod
    def from_params(cls, params: Mapping[int, Any]) -> TransportParameters:
        """Validate the peer's parameters.

        Raises:
            RemoteProtocolError: ``PROTOCOL_ERROR`` if a known key has a value
                that is not an integer in ``0..2^62-1`` (``1..`` for sizes).
        """
        values: dict[str, int] = {}
        for key, name in _PARAM_KEYS:
            if key not in params:
                continue
            value = params[key]
            low = 0 if key in (1, 5) else 1
            if type(value) is not int or not low <= value <= _param_max(key):
                raise RemoteProtocolError(
                    f"transport parameter {key} ({name}) out of range", ErrorCode.PROTOCOL_ERROR
                )
            values[name] = value
        return cls(**values)


def _param_max(key: int) -> int:
    """Largest valid value of transport parameter *key*."""
    return 1 if key == 5 else MAX_VARINT
