"""The sans-IO m2mproto connection: handshake, records, frames, streams, timers.

Theory of operation
-------------------
A :class:`Connection` is bytes in, events and bytes out (h11, aioquic):

* ``receive_data(data, now=...)`` only buffers (``b""`` is end of stream);
* ``next_event()`` parses lazily and returns one event or :data:`NEED_DATA`;
  it decrypts one record at a time, decodes all of its frames (a record with
  one bad frame changes nothing), then applies the frames one by one;
* ``data_to_send()`` drains the outbox: control frames first, then stream
  frames round-robin as flow-control credit allows, coalesced into as few
  records as possible;
* ``get_timer()`` / ``handle_timer(now)`` drive the handshake deadline, idle
  timeout, keepalive and close timeout. ``now`` is the caller's monotonic
  clock; nothing here reads a clock or ``os.urandom``.

Connection lifecycle (:class:`ConnectionState`)::

    HANDSHAKING --handshake result--> ESTABLISHED --close() sent--> CLOSING
    ESTABLISHED/CLOSING --peer CLOSE, EOF, error, timeout--> CLOSED

Any error caused by the peer closes the connection with the specific code
(a CLOSE frame, or a cleartext ABORT during the handshake) and yields
``ConnectionClosed``; a fault confined to one stream resets only that stream
and yields ``StreamReset``. After ``ConnectionClosed`` the connection is
terminal: ``next_event`` raises ``LocalProtocolError(CONNECTION_CLOSED)``.

The initiator's first handshake flight is available from ``data_to_send()``
right after construction. ``start(now)`` arms the handshake deadline and
should be called by both sides before anything else.

The parts live in private modules with one job each: ``_conn_base``
(lifecycle enums, shared state, termination), ``_conn_handshake`` (handshake
driver), ``_conn_frames`` (received-frame handlers), ``_conn_outbox``
(frames into records) and ``_conn_budgets`` (non-productive traffic). This
module composes them and holds the public driver API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from . import cbor
from ._conn_base import NEED_DATA, ConnectionState, NeedData, Role
from ._conn_budgets import Budgets, _Fail
from ._conn_frames import FrameHandlers
from ._conn_handshake import HandshakeDriver
from ._conn_outbox import Outbox
from .config import Authorizer, Configuration
from .errors import (
    AuthorizationError,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
)
from .events import ConnectionClosed, Event
from .frames import (
    MAX_CODE,
    MAX_PING_PAYLOAD,
    Frame,
    PingFrame,
    TokenFrame,
    WindowUpdateFrame,
    decode_frames,
)
from .handshake import Handshake, StaticKey, decode_abort_code
from .identity import AgentId, Identity
from .records import AbortReceived
from .streams import ConnectionWindows, RecvWindow, SendCredit, Stream, StreamInput, StreamTable

__all__ = ["NEED_DATA", "Connection", "ConnectionState", "NeedData", "Role"]


class Connection(HandshakeDriver, FrameHandlers, Outbox):
    """One m2mproto connection (sans-IO). See the module docstring.

    Args:
        role: :attr:`Role.INITIATOR` or :attr:`Role.RESPONDER`.
        identity: our long-term identity.
        config: limits, windows, timers (defaults are safe).
        authorizer: verifies tokens and authorizes incoming opens/messages;
            ``None`` allows everything (development only).
        tokens: our capability tokens (sent in the handshake by an initiator,
            in TOKEN frames right after it by a responder).
        remote_static: initiator only: the responder's Noise static key (IK).
        authenticate_peer: called with the peer's agent ID during the
            handshake; raise an ``M2MError`` to refuse it.
        static_key: a :class:`~m2mproto.handshake.StaticKey` of *identity* made
            once and shared by many connections (spec/handshake.md 2.3); it
            takes precedence over ``config.static_key``.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) for bad arguments.
    """

    def __init__(
        self,
        role: Role,
        identity: Identity,
        config: Configuration | None = None,
        *,
        authorizer: Authorizer | None = None,
        tokens: Sequence[bytes] = (),
        remote_static: bytes | None = None,
        authenticate_peer: Callable[[AgentId], None] | None = None,
        static_key: StaticKey | None = None,
    ) -> None:
        if not isinstance(role, Role):
            raise LocalProtocolError("role must be a Role", ErrorCode.INVALID_ARGUMENT)
        self.role = role
        self.config = cfg = config if config is not None else Configuration()
        self._authorizer = authorizer
        initiator = role is Role.INITIATOR
        self._late_tokens = () if initiator else tuple(tokens)
        self._hs: Handshake | None = Handshake(
            initiator,
            identity,
            entropy=cfg.entropy,
            params=cfg.transport_parameters().to_params(),
            tokens=tuple(tokens) if initiator else (),
            static_key=static_key if static_key is not None else cfg.static_key,
            remote_static=remote_static,
            authenticate_peer=authenticate_peer,
            max_message_size=cfg.max_handshake_message,
            post_quantum=cfg.post_quantum,
            require_post_quantum=cfg.require_post_quantum,
            classical_fallback=cfg.post_quantum_fallback and initiator,
        )
        #: The negotiated Noise protocol name (spec/handshake.md 2.11), once established.
        self.suite: str | None = None
        self.state = ConnectionState.HANDSHAKING
        self.peer: AgentId | None = None
        self.handshake_hash: bytes | None = None
        self.peer_parameters = None
        self._reader = None
        self._writer = None
        self._table = StreamTable(initiator)
        # Short queues as lists (an empty deque costs 760 bytes, a list 56: an idle
        # connection keeps four of them). ``_frames`` holds one record's frames
        # in reverse order (popped from the end); the others stay short.
        self._order: list[int] = []  # streams with something to send
        self._control: list[Frame] = []
        self._raw_out = bytearray()
        self._frames: list[Frame] = []
        self._events: list[Event] = []
        self._eof = False
        self._now: float | None = None
        self._started = False
        self._hs_deadline: float | None = None
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._close_deadline: float | None = None
        self._close_pending: tuple[int, str] | None = None
        self._close_code: int = ErrorCode.NO_ERROR
        self._close_reason = ""
        self._conn_send = SendCredit(0)
        self._conn_recv = RecvWindow(cfg.initial_connection_window)
        self._send_buffered = 0
        self._reassembly_total = 0
        self._budgets = Budgets(cfg)
        self._key_update_queued = False
        self._ping_counter = 0
        self._pings_out: set[bytes] = set()
        self._closed_event_sent = False
        self._pending_fail: _Fail | None = None
        self._rx_pending = False

    @property
    def streams(self) -> dict[int, Stream]:
        """Live streams by ID (read-only view for diagnostics; do not mutate)."""
        return dict(self._table.streams)

    def send_credit(self, stream_id: int) -> int:
        """Bytes that could go on the wire for *stream_id* right now.

        Raises:
            LocalProtocolError: ``INVALID_ARGUMENT`` for an unknown stream.
        """
        s = self._get(stream_id)
        return min(s.send_credit.available, self._conn_send.available)

    def connection_windows(self) -> ConnectionWindows:
        """The connection-level flow-control state, as a frozen snapshot.

        Per-stream windows are in :attr:`streams`; this is the credit shared
        by all streams (spec/streams.md §6). Before the handshake completes
        the send limit is 0 (the peer's window is learned from its parameters).
        """
        r, c = self._conn_recv, self._conn_send
        return ConnectionWindows(
            recv_received=r.received,
            recv_consumed=r.consumed,
            recv_limit=r.limit,
            send_sent=c.sent,
            send_limit=c.limit,
        )

    def send_buffered(self, stream_id: int | None = None) -> int:
        """Bytes queued by the application and not yet framed (one stream, or all).

        Unknown or finished streams have nothing buffered.
        """
        if stream_id is None:
            return self._send_buffered
        s = self._table.streams.get(stream_id)
        return 0 if s is None else s.send_buffered

    def start(self, now: float) -> None:
        """Arm the handshake deadline (call once, before anything else).

        Raises:
            LocalProtocolError: ``INVALID_STATE`` if called twice.
        """
        if self._started:
            raise LocalProtocolError("start() called twice", ErrorCode.INVALID_STATE)
        self._started = True
        self._tick(now)
        self._hs_deadline = now + self.config.handshake_timeout
        self._last_rx = self._last_tx = now

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """Buffer bytes from the transport; ``b""`` means end of stream. Parses nothing.

        Args:
            now: the current monotonic time, if known (idle timer, budgets).

        Raises:
            LocalProtocolError: ``INVALID_STATE`` after end of stream.
        """
        if now is not None:
            self._tick(now)
        if self.state is ConnectionState.CLOSED:
            return  # a closed connection discards input
        if self._eof:
            raise LocalProtocolError("receive_data after end of stream", ErrorCode.INVALID_STATE)
        if not data:
            self._eof = True
            if self._hs is not None:
                self._hs.receive_data(b"")
            return
        if now is not None:
            self._last_rx = now
        else:
            self._rx_pending = True  # stamped at the next call that carries `now`
        if self._hs is not None:
            self._hs.receive_data(bytes(data))
        else:
            assert self._reader is not None
            self._reader.feed(data)  # copies only what is not immutable bytes

    def next_event(self) -> Event | Literal[NeedData.NEED_DATA]:
        """Parse buffered input and return the next event.

        Returns:
            One :class:`~m2mproto.events.Event`, or :data:`NEED_DATA` when
            more bytes (or a timer) are needed.

        Raises:
            LocalProtocolError: ``CONNECTION_CLOSED`` once ``ConnectionClosed``
                has been returned. Nothing the peer sends raises: it becomes a
                ``ConnectionClosed`` or ``StreamReset`` event.
        """
        events = self._events
        frames = self._frames
        for _ in range(1_000_000):  # bounded: each round consumes a frame or a record
            if events:
                ev = events.pop(0)
                if isinstance(ev, ConnectionClosed):
                    self._closed_event_sent = True
                return ev
            if self.state is ConnectionState.CLOSED:
                if self._closed_event_sent:
                    raise LocalProtocolError("connection closed", ErrorCode.CONNECTION_CLOSED)
                return NEED_DATA  # pragma: no cover - CLOSED always queues its event
            result: Event | Literal[NeedData.NEED_DATA] | None
            try:
                if frames and self._pending_fail is None and self._hs is None:
                    result = self._handle_frame(frames.pop())  # the hot path of _step
                else:
                    result = self._step()
            except _Fail as fail:
                self._fail(fail)
                continue
            if result is None:
                continue
            return result
        raise LocalProtocolError("event loop bound exceeded", ErrorCode.INTERNAL_ERROR)

    def _step(self) -> Event | Literal[NeedData.NEED_DATA] | None:
        if self._hs is not None:
            return self._step_handshake()
        if self._pending_fail is not None:
            fail, self._pending_fail = self._pending_fail, None
            raise fail
        if self._frames:
            return self._handle_frame(self._frames.pop())
        assert self._reader is not None
        try:
            plaintext = self._reader.next_record()
        except AbortReceived as exc:
            # spec/handshake.md §2.7: the peer failed the handshake after we finished it.
            # It has no transport keys, so nothing is answered; report its code.
            self._control.clear()
            code = decode_abort_code(exc.raw_code.to_bytes(2, "big"))
            self._terminate(code, "peer aborted the handshake", remote=True)
            return None
        except RemoteProtocolError as exc:
            raise _Fail(exc.code, exc.message) from None
        if plaintext is None:
            if self._eof:
                self._on_eof()
                return None
            return NEED_DATA
        try:
            frames = decode_frames(plaintext)
        except RemoteProtocolError as exc:
            raise _Fail(exc.code, exc.message) from None
        if not frames:
            self._budgets.no_progress_frame("empty record")
        self._frames.extend(reversed(frames))  # only ever extended when empty
        return None

    def _require_established(self) -> None:
        if self.state is not ConnectionState.ESTABLISHED or self._close_pending is not None:
            raise LocalProtocolError(
                f"not allowed in state {self.state.name}", ErrorCode.INVALID_STATE
            )

    def _get(self, stream_id: int) -> Stream:
        s = self._table.streams.get(stream_id)
        if s is None:
            raise LocalProtocolError(
                f"no open stream {stream_id}", ErrorCode.INVALID_ARGUMENT
            ) from None
        return s

    def open_stream(self, resource: str) -> int:
        """Open a stream on *resource* and return its ID.

        Raises:
            LocalProtocolError: ``INVALID_STATE`` unless established,
                ``INVALID_ARGUMENT`` for a bad resource, ``STREAM_LIMIT_ERROR``
                if the peer's concurrent-stream limit is reached.
        """
        self._require_established()
        if not isinstance(resource, str) or not 1 <= len(resource.encode()) <= 256:
            raise LocalProtocolError(
                "resource must be 1..256 UTF-8 bytes", ErrorCode.INVALID_ARGUMENT
            )
        params = self.peer_parameters
        assert params is not None
        if self._table.local_open >= params.max_concurrent_streams:
            raise LocalProtocolError(
                "the peer's concurrent stream limit is reached", ErrorCode.STREAM_LIMIT_ERROR
            )
        sid = self._table.allocate_local()
        s = Stream(
            sid,
            resource,
            True,
            SendCredit(params.initial_stream_window),
            RecvWindow(self.config.initial_stream_window),
            open_pending=True,
        )
        self._table.add(s)
        self._order.append(sid)
        return sid

    def _queue(self, stream_id: int, data: bytes, *, is_message: bool, end_stream: bool) -> None:
        self._require_established()
        s = self._get(stream_id)
        if self._send_buffered + len(data) > self.config.max_send_buffer:
            raise LocalProtocolError(
                "send buffer full; wait for data_to_send() to drain it",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        if (data or is_message) and not s.can_send():
            s.apply(StreamInput.SEND_DATA)  # raises INVALID_STATE with details
        if end_stream:
            s.apply(StreamInput.SEND_END)
        elif not s.can_send():  # pragma: no cover - guarded above
            s.apply(StreamInput.SEND_DATA)
        s.queue(data, is_message=is_message, end_stream=end_stream)
        self._send_buffered += len(data)
        if stream_id not in self._order:
            self._order.append(stream_id)

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue bytes on a stream (sent as credit allows).

        Raises:
            LocalProtocolError: ``INVALID_ARGUMENT`` for an unknown stream,
                ``INVALID_STATE`` if our half is ended, ``FLOW_CONTROL_ERROR``
                if ``max_send_buffer`` would be exceeded.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise LocalProtocolError("data must be bytes", ErrorCode.INVALID_ARGUMENT)
        if not data and not end_stream:
            return
        self._queue(stream_id, bytes(data), is_message=False, end_stream=end_stream)

    def send_message(self, stream_id: int, value: Any, end_stream: bool = False) -> None:
        """Queue one CBOR message on a stream (fragmented as needed).

        Raises:
            LocalProtocolError: as :meth:`send`, plus ``INVALID_ARGUMENT`` if
                *value* is not encodable and ``MESSAGE_TOO_LARGE`` above the
                peer's ``max_message_size``.
        """
        self._require_established()
        data = cbor.encode(value)
        assert self.peer_parameters is not None
        limit = self.peer_parameters.max_message_size
        if len(data) > limit:
            raise LocalProtocolError(
                f"message of {len(data)} bytes exceeds the peer's limit {limit}",
                ErrorCode.MESSAGE_TOO_LARGE,
            )
        self._queue(stream_id, data, is_message=True, end_stream=end_stream)

    def reset_stream(self, stream_id: int, code: int = ErrorCode.CANCELLED) -> None:
        """Abort a stream in both directions; queued bytes are discarded.

        Raises:
            LocalProtocolError: ``INVALID_ARGUMENT`` for an unknown stream or a
                code outside ``0..0xFFFF``.
        """
        if not isinstance(code, int) or not 0 <= code <= MAX_CODE:
            raise LocalProtocolError("code must be 0..0xFFFF", ErrorCode.INVALID_ARGUMENT)
        self._require_established()
        self._do_reset(self._get(stream_id), code)

    def acknowledge_data(self, stream_id: int, n: int) -> None:
        """Return *n* bytes of credit (only with ``auto_window_update=False``).

        The application calls it as it takes received bytes. For a stream the
        core has already finished, only the connection-level credit is returned.

        Raises:
            LocalProtocolError: ``INVALID_ARGUMENT`` for a stream ID never used.
        """
        if self.config.auto_window_update:
            return  # credit is returned as events are delivered
        s = self._table.streams.get(stream_id)
        if s is None and self._table.classify_unknown(stream_id) in ("new", "idle"):
            raise LocalProtocolError(f"no stream {stream_id}", ErrorCode.INVALID_ARGUMENT)
        # The connection-level credit goes back even when the stream has
        # already finished in the core (its last bytes arrived after our end).
        self._conn_recv.consume(n)
        inc = self._conn_recv.update_due()
        if inc:
            self._control.append(WindowUpdateFrame(None, inc))
        if s is None:
            return
        s.recv_window.consume(n)
        inc = s.recv_window.update_due()
        if inc and s.can_receive():
            self._control.append(WindowUpdateFrame(stream_id, inc))

    def ping(self, payload: bytes | None = None) -> bytes:
        """Queue a PING; ``PingAcknowledged`` follows. Returns the payload.

        Raises:
            LocalProtocolError: ``INVALID_STATE`` unless established,
                ``INVALID_ARGUMENT`` for a payload over 64 bytes.
        """
        self._require_established()
        if payload is None:
            self._ping_counter += 1
            payload = self._ping_counter.to_bytes(8, "big")
        if len(payload) > MAX_PING_PAYLOAD:
            raise LocalProtocolError("ping payload over 64 bytes", ErrorCode.INVALID_ARGUMENT)
        if len(self._pings_out) >= 64:
            self._pings_out.pop()
        self._pings_out.add(payload)
        self._control.append(PingFrame(payload))
        return payload

    def update_keys(self, request_peer: bool = True) -> None:
        """Rotate our sending key (and ask the peer to rotate its own).

        Raises:
            LocalProtocolError: ``INVALID_STATE`` unless established.
        """
        self._require_established()
        if not self._key_update_queued:
            self._queue_key_update(request_peer)

    def present_token(self, token: bytes) -> None:
        """Present a capability token on the live connection.

        Raises:
            LocalProtocolError: ``INVALID_STATE`` unless established,
                ``INVALID_ARGUMENT`` for a token over 16384 bytes.
        """
        self._require_established()
        if not isinstance(token, bytes) or len(token) > 16384:
            raise LocalProtocolError(
                "token must be bytes, at most 16384", ErrorCode.INVALID_ARGUMENT
            )
        self._control.append(TokenFrame(token))

    def reauthorize(self, now: float) -> list[int]:
        """Re-check open peer streams against the authorizer; reset those no longer covered.

        Returns the IDs reset (each also yields ``StreamReset(UNAUTHORIZED)``).
        """
        self._tick(now)
        if self._authorizer is None or self.peer is None:
            return []
        if self.state is not ConnectionState.ESTABLISHED:
            return []
        reset: list[int] = []
        for s in list(self._table.streams.values()):
            if s.local:
                continue
            try:
                self._authorizer.authorize(
                    self.peer, s.resource, self.config.policy.open_stream, self._unix()
                )
            except AuthorizationError:
                self._events.append(self._reset_local(s, ErrorCode.UNAUTHORIZED))
                reset.append(s.stream_id)
        return reset

    def close(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the connection.

        With ``NO_ERROR`` the CLOSE follows every byte already queued (as credit
        allows, within ``close_timeout``); any other code is abortive (queued
        stream bytes are dropped). ``ConnectionClosed(remote=False)`` follows
        when the peer answers, the transport ends, or the timeout passes.
        Calling it again, or after the connection closed, does nothing.

        Raises:
            LocalProtocolError: ``INVALID_ARGUMENT`` for a code outside
                ``0..0xFFFF`` or a reason over 256 UTF-8 bytes.
        """
        if not isinstance(code, int) or not 0 <= code <= MAX_CODE:
            raise LocalProtocolError("code must be 0..0xFFFF", ErrorCode.INVALID_ARGUMENT)
        if len(reason.encode("utf-8")) > 256:
            raise LocalProtocolError("reason over 256 bytes", ErrorCode.INVALID_ARGUMENT)
        if self.state is ConnectionState.CLOSED or self.state is ConnectionState.CLOSING:
            return
        if self._close_pending is not None:
            return
        self._close_code, self._close_reason = code, reason
        if self._hs is not None:
            self._raw_out += self._hs.abort(
                ErrorCode(code) if code in _CODES else ErrorCode.NO_ERROR
            )
            self._hs = None
            self._terminate(code, reason, remote=False)
            return
        now = self._now if self._now is not None else 0.0
        self._close_deadline = now + self.config.close_timeout
        if code == ErrorCode.NO_ERROR:
            self._close_pending = (code, reason)
        else:
            self._send_close(code, reason)

    def _tick(self, now: float) -> None:
        if self._now is None or now > self._now:
            self._now = now
        if self._rx_pending:
            self._rx_pending = False
            self._last_rx = self._now

    def get_timer(self) -> float | None:
        """The next deadline on the caller's clock, or None."""
        if self.state is ConnectionState.CLOSED:
            return None
        if self.state is ConnectionState.HANDSHAKING:
            return self._hs_deadline
        cands: list[float] = []
        cfg = self.config
        if self._close_deadline is not None:
            cands.append(self._close_deadline)
        if cfg.idle_timeout is not None:
            cands.append(self._last_rx + cfg.idle_timeout)
        if cfg.keepalive_interval is not None and self.state is ConnectionState.ESTABLISHED:
            cands.append(max(self._last_rx, self._last_tx) + cfg.keepalive_interval)
        return min(cands) if cands else None

    def handle_timer(self, now: float) -> None:
        """Act on expired deadlines (events follow from ``next_event``)."""
        self._tick(now)
        if self.state is ConnectionState.CLOSED:
            return
        cfg = self.config
        if self.state is ConnectionState.HANDSHAKING:
            if self._hs_deadline is not None and now >= self._hs_deadline:
                self._fail(_Fail(ErrorCode.HANDSHAKE_TIMEOUT, "handshake deadline passed"))
            return
        if self._close_deadline is not None and now >= self._close_deadline:
            if self.state is ConnectionState.ESTABLISHED:  # graceful drain never finished
                self._close_pending = None
                self._send_close(self._close_code, self._close_reason)
            self._terminate(self._close_code, "close timeout", remote=False)
            return
        if cfg.idle_timeout is not None and now >= self._last_rx + cfg.idle_timeout:
            self._fail(_Fail(ErrorCode.IDLE_TIMEOUT, "idle timeout"))
            return
        if (
            cfg.keepalive_interval is not None
            and self.state is ConnectionState.ESTABLISHED
            and now >= max(self._last_rx, self._last_tx) + cfg.keepalive_interval
        ):
            self.ping()
            self._last_tx = now


_CODES = {c.value for c in ErrorCode}
