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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from enum import Enum, auto
from typing import Any, Final, Literal

from . import cbor
from .config import Authorizer, Configuration, TransportParameters
from .errors import (
    AuthorizationError,
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    M2MError,
    RemoteProtocolError,
    TokenError,
)
from .events import (
    ConnectionClosed,
    DataReceived,
    Event,
    HandshakeCompleted,
    KeyUpdated,
    MessageReceived,
    PingAcknowledged,
    StreamEnded,
    StreamOpened,
    StreamReset,
    TokenAccepted,
    TokenRejected,
)
from .frames import (
    MAX_CODE,
    MAX_PING_PAYLOAD,
    CloseFrame,
    ExtensionFrame,
    Frame,
    KeyUpdateFrame,
    MessageFrame,
    OpenFrame,
    PingFrame,
    PongFrame,
    ResetFrame,
    StreamFrame,
    TokenFrame,
    WindowUpdateFrame,
    decode_frames,
    encode_frame,
)
from .handshake import Handshake, HandshakeAborted, HandshakeResult, decode_abort_code
from .identity import AgentId, Identity
from .records import MAX_RECORD_PLAINTEXT, AbortReceived, RecordReader, RecordWriter
from .streams import RecvWindow, SendCredit, Stream, StreamInput, StreamState, StreamTable
from .streams import payload_room as _payload_room

__all__ = ["NEED_DATA", "Connection", "ConnectionState", "NeedData", "Role"]


class Role(Enum):
    """Which side of the handshake this connection plays."""

    #: Dials, sends the preface; uses even stream IDs.
    INITIATOR = auto()
    #: Accepts; uses odd stream IDs.
    RESPONDER = auto()


class ConnectionState(Enum):
    """Connection lifecycle."""

    #: The Noise handshake is running.
    HANDSHAKING = auto()
    #: Records flow; streams may be opened.
    ESTABLISHED = auto()
    #: We sent CLOSE and wait for the peer's CLOSE or end of stream.
    CLOSING = auto()
    #: Terminal.
    CLOSED = auto()


class NeedData(Enum):
    """Sentinel type of :data:`NEED_DATA`."""

    NEED_DATA = "NEED_DATA"


#: Returned by ``next_event`` when more bytes (or a timer) are needed.
NEED_DATA: Final = NeedData.NEED_DATA

_MIN_ROOM = 64  # start a new record rather than a frame with less payload room


class _Fail(Exception):
    """Internal: close the connection with *code* (wire code may differ)."""

    def __init__(self, code: ErrorCode, message: str, wire: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.wire = wire if wire is not None else code
        self.message = message


class Connection:
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
            static_key=cfg.static_key,
            remote_static=remote_static,
            authenticate_peer=authenticate_peer,
            max_message_size=cfg.max_handshake_message,
        )
        self.state = ConnectionState.HANDSHAKING
        self.peer: AgentId | None = None
        self.handshake_hash: bytes | None = None
        self.peer_parameters: TransportParameters | None = None
        self._reader: RecordReader | None = None
        self._writer: RecordWriter | None = None
        self._table = StreamTable(initiator)
        self._order: deque[int] = deque()  # streams with something to send
        self._control: deque[Frame] = deque()
        self._raw_out = bytearray()
        self._frames: deque[Frame] = deque()
        self._events: deque[Event] = deque()
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
        self._no_progress = 0
        self._key_updates_in = 0
        self._key_update_queued = False
        self._churn_tokens = float(cfg.stream_churn_burst)
        self._churn_at: float | None = None
        self._ping_counter = 0
        self._pings_out: set[bytes] = set()
        self._closed_event_sent = False
        self._pending_fail: _Fail | None = None
        self._rx_pending = False

    # ------------------------------------------------------------ properties

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

    def send_buffered(self, stream_id: int | None = None) -> int:
        """Bytes queued by the application and not yet framed (one stream, or all).

        Unknown or finished streams have nothing buffered.
        """
        if stream_id is None:
            return self._send_buffered
        s = self._table.streams.get(stream_id)
        return 0 if s is None else s.send_buffered

    # ------------------------------------------------------------ input

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
            self._reader.feed(bytes(data))

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
        for _ in range(1_000_000):  # bounded: each round consumes a frame or a record
            if self._events:
                ev = self._events.popleft()
                if isinstance(ev, ConnectionClosed):
                    self._closed_event_sent = True
                return ev
            if self.state is ConnectionState.CLOSED:
                if self._closed_event_sent:
                    raise LocalProtocolError("connection closed", ErrorCode.CONNECTION_CLOSED)
                return NEED_DATA  # pragma: no cover - CLOSED always queues its event
            try:
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
            return self._handle_frame(self._frames.popleft())
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
            self._no_progress_frame("empty record")
        self._frames.extend(frames)
        return None

    # ------------------------------------------------------------ handshake

    def _step_handshake(self) -> Event | Literal[NeedData.NEED_DATA] | None:
        hs = self._hs
        assert hs is not None
        try:
            result = hs.next_event()
        except HandshakeAborted as exc:
            self._raw_out += hs.data_to_send()
            self._terminate(exc.code, "peer aborted the handshake", remote=True)
            return None
        except M2MError as exc:
            self._raw_out += hs.abort(exc.code)
            remote = exc.code is ErrorCode.TRUNCATED
            self._terminate(exc.code, exc.message, remote=remote)
            return None
        if result is None:
            return NEED_DATA
        return self._establish(result)

    def _establish(self, res: HandshakeResult) -> Event | None:
        hs = self._hs
        assert hs is not None
        self._raw_out += hs.data_to_send()
        self._hs = None
        cfg = self.config
        self._writer = RecordWriter(
            res.send_cipher,
            key_update_after=cfg.key_update_after_records,
            max_records_per_key=cfg.max_records_per_key,
        )
        self._reader = RecordReader(
            res.recv_cipher, max_records_per_key=cfg.max_records_per_key, accept_abort=True
        )
        self._reader.feed(res.trailing_data)
        if self._eof:
            pass  # the EOF flag is seen after the trailing records are consumed
        self.state = ConnectionState.ESTABLISHED
        self.peer = res.peer
        self.handshake_hash = res.handshake_hash
        try:
            params = TransportParameters.from_params(res.peer_params)
        except RemoteProtocolError as exc:
            raise _Fail(exc.code, exc.message) from None
        self.peer_parameters = params
        self._conn_send = SendCredit(params.initial_connection_window)
        for token in self._late_tokens:
            self._control.append(TokenFrame(token))
        if res.peer_tokens:
            grant = self._accept_tokens(res.peer_tokens, at_handshake=True)
            if self._pending_fail is None:
                self._events.append(TokenAccepted(grant=grant))
        return HandshakeCompleted(
            peer=res.peer,
            identity_key=res.peer.public_key,
            handshake_hash=res.handshake_hash,
            peer_params=dict(res.peer_params),
            pattern=res.pattern,
            version=res.version,
        )

    def _unix(self) -> float:
        return (self._now if self._now is not None else 0.0) + self.config.clock_offset

    def _accept_tokens(self, tokens: Sequence[bytes], *, at_handshake: bool) -> object:
        if self._authorizer is None:
            return None
        assert self.peer is not None
        try:
            return self._authorizer.accept_tokens(self.peer, tokens, self._unix())
        except AuthorizationError as exc:
            if not at_handshake:
                raise
            wire = exc.code if self.config.wire_token_reason else ErrorCode.TOKEN_INVALID
            if not isinstance(exc, TokenError):
                wire = ErrorCode.TOKEN_INVALID
            # The handshake is complete: report it, then the close.
            self._pending_fail = _Fail(exc.code, "token rejected", wire=wire)
            return None

    # ------------------------------------------------------------ frames

    def _handle_frame(self, frame: Frame) -> Event | None:
        if self.state is ConnectionState.CLOSING and not isinstance(
            frame, (CloseFrame, KeyUpdateFrame)
        ):
            return None  # we are closing: only the peer's CLOSE matters now
        if isinstance(frame, StreamFrame):
            return self._on_stream(frame)
        if isinstance(frame, MessageFrame):
            return self._on_message(frame)
        if isinstance(frame, OpenFrame):
            return self._on_open(frame)
        if isinstance(frame, ResetFrame):
            return self._on_reset(frame)
        if isinstance(frame, WindowUpdateFrame):
            self._on_window_update(frame)
            return None
        if isinstance(frame, PingFrame):
            self._queue_control(PongFrame(frame.payload), response=True)
            return None
        if isinstance(frame, PongFrame):
            if frame.payload in self._pings_out:
                self._pings_out.discard(frame.payload)
                return PingAcknowledged(payload=frame.payload)
            self._no_progress_frame("unsolicited PONG")
            return None
        if isinstance(frame, TokenFrame):
            return self._on_token(frame)
        if isinstance(frame, KeyUpdateFrame):
            return self._on_key_update(frame)
        if isinstance(frame, CloseFrame):
            self._on_close(frame)
            return None
        assert isinstance(frame, ExtensionFrame)
        self._no_progress_frame("ignored extension frame")
        return None

    def _no_progress_frame(self, what: str) -> None:
        self._no_progress += 1
        if self._no_progress > self.config.max_no_progress_frames:
            raise _Fail(ErrorCode.ENHANCE_YOUR_CALM, f"too many non-productive frames ({what})")

    def _progress(self) -> None:
        self._no_progress = 0
        self._key_updates_in = 0

    def _lookup(self, stream_id: int, what: str) -> Stream | None:
        s = self._table.streams.get(stream_id)
        if s is not None:
            return s
        kind = self._table.classify_unknown(stream_id)
        if kind == "reset":
            return None
        raise _Fail(ErrorCode.STREAM_STATE_ERROR, f"{what} on {kind} stream {stream_id}")

    def _account(self, s: Stream | None, n: int) -> None:
        """Flow-control check for *n* received bytes (stream and connection)."""
        try:
            self._conn_recv.check(n)
            if s is not None:
                s.recv_window.check(n)
        except RemoteProtocolError as exc:
            raise _Fail(exc.code, exc.message) from None
        self._conn_recv.receive(n)
        if s is not None:
            s.recv_window.receive(n)
        else:  # bytes on a stream we already reset: discard, return the credit
            self._consumed(None, n)

    def _consumed(self, s: Stream | None, n: int) -> None:
        if not self.config.auto_window_update and s is not None:
            return
        self._conn_recv.consume(n)
        inc = self._conn_recv.update_due()
        if inc:
            self._control.append(WindowUpdateFrame(None, inc))
        if s is not None and s.state in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL):
            s.recv_window.consume(n)
            inc = s.recv_window.update_due()
            if inc:
                self._control.append(WindowUpdateFrame(s.stream_id, inc))

    def _on_stream(self, f: StreamFrame) -> Event | None:
        s = self._lookup(f.stream_id, "STREAM")
        if s is not None and not s.can_receive():
            raise _Fail(ErrorCode.STREAM_STATE_ERROR, f"data after end on stream {s.stream_id}")
        if s is not None and s.reassembly:
            raise _Fail(ErrorCode.PROTOCOL_ERROR, "STREAM frame inside a fragmented message")
        self._account(s, len(f.data))
        if s is None:
            return None
        if not f.data and not f.end_stream:
            self._no_progress_frame("empty STREAM frame")
            return None
        self._progress()
        if f.end_stream:
            self._end_remote(s)
        if f.data:
            self._consumed(s, len(f.data))
            return DataReceived(stream_id=s.stream_id, data=f.data)
        return None

    def _end_remote(self, s: Stream) -> None:
        s.recv_final = s.recv_window.received
        s.apply(StreamInput.RECV_END)
        self._events.append(StreamEnded(stream_id=s.stream_id))
        self._maybe_finish(s)

    def _maybe_finish(self, s: Stream) -> None:
        if s.state is StreamState.RESET or (s.state is StreamState.CLOSED and not s.has_pending()):
            self._table.finish(s)

    def _on_message(self, f: MessageFrame) -> Event | None:
        s = self._lookup(f.stream_id, "MESSAGE")
        if s is not None and not s.can_receive():
            raise _Fail(ErrorCode.STREAM_STATE_ERROR, f"message after end on stream {s.stream_id}")
        self._account(s, len(f.fragment))
        if s is None:
            return None
        if not f.fragment and not f.last:
            self._no_progress_frame("empty MESSAGE fragment")
            return None
        self._progress()
        self._consumed(s, len(f.fragment))
        grant: object = None
        if not s.reassembly and self._authorizer is not None:
            # the first fragment of each message is authorized before buffering
            assert self.peer is not None
            try:
                grant = self._authorizer.authorize(
                    self.peer, s.resource, self.config.policy.send_message, self._unix()
                )
            except AuthorizationError:
                return self._reset_local(s, ErrorCode.UNAUTHORIZED)
            s.grant = grant
        size = len(s.reassembly) + len(f.fragment)
        if size > self.config.max_message_size or (
            self._reassembly_total + len(f.fragment) > self.config.max_reassembly_bytes
        ):
            return self._reset_local(s, ErrorCode.MESSAGE_TOO_LARGE)
        if not f.last:
            s.reassembly += f.fragment
            self._reassembly_total += len(f.fragment)
            return None
        if s.reassembly:
            data = bytes(s.reassembly) + f.fragment
            self._reassembly_total -= len(s.reassembly)
            s.reassembly = bytearray()
        else:
            data = f.fragment
        try:
            value = cbor.decode(data)
        except DecodeError:
            return self._reset_local(s, ErrorCode.DECODE_ERROR)
        if f.end_stream:
            self._end_remote(s)
        return MessageReceived(stream_id=s.stream_id, value=value, grant=s.grant)

    def _reset_local(self, s: Stream, code: ErrorCode) -> Event:
        """Reset a stream because of the peer's fault or a refusal (stream-level error)."""
        self._do_reset(s, code)
        return StreamReset(stream_id=s.stream_id, code=code, remote=False)

    def _do_reset(self, s: Stream, code: int) -> None:
        self._send_buffered -= s.drop_pending()
        self._reassembly_total -= len(s.reassembly)
        s.reassembly = bytearray()
        if s.open_pending:
            s.open_pending = False  # never announced: nothing to tell the peer
        else:
            self._control.append(ResetFrame(s.stream_id, code, s.send_credit.sent))
        s.apply(StreamInput.SEND_RESET)
        self._table.finish(s)

    def _charge_churn(self) -> None:
        now = self._now if self._now is not None else 0.0
        if self._churn_at is not None:
            refill = (now - self._churn_at) * self.config.stream_churn_rate
            self._churn_tokens = min(
                float(self.config.stream_churn_burst), self._churn_tokens + refill
            )
        self._churn_at = now
        if self._churn_tokens < 1.0:
            raise _Fail(ErrorCode.ENHANCE_YOUR_CALM, "stream open/reset budget exhausted")
        self._churn_tokens -= 1.0

    def _on_open(self, f: OpenFrame) -> Event | None:
        sid = f.stream_id
        if self._table.is_local_id(sid):
            raise _Fail(ErrorCode.STREAM_STATE_ERROR, f"peer opened stream {sid} with our parity")
        if sid in self._table.streams or self._table.classify_unknown(sid) != "new":
            raise _Fail(ErrorCode.STREAM_STATE_ERROR, f"stream {sid} reused")
        if self._table.remote_open >= self.config.max_concurrent_streams:
            raise _Fail(ErrorCode.STREAM_LIMIT_ERROR, "peer exceeded the concurrent stream limit")
        assert self.peer_parameters is not None
        s = Stream(
            sid,
            f.resource,
            False,
            SendCredit(self.peer_parameters.initial_stream_window),
            RecvWindow(self.config.initial_stream_window),
        )
        self._table.add(s)
        self._progress()
        if self._authorizer is not None:
            assert self.peer is not None
            try:
                s.grant = self._authorizer.authorize(
                    self.peer, f.resource, self.config.policy.open_stream, self._unix()
                )
            except AuthorizationError:
                self._charge_churn()
                return self._reset_local(s, ErrorCode.UNAUTHORIZED)
        return StreamOpened(stream_id=sid, resource=f.resource, grant=s.grant)

    def _on_reset(self, f: ResetFrame) -> Event | None:
        s = self._lookup(f.stream_id, "RESET")
        self._charge_churn()
        if s is None:
            return None
        expected = s.recv_window.received
        if f.final_size != expected or (s.recv_final is not None and f.final_size != s.recv_final):
            raise _Fail(ErrorCode.FINAL_SIZE_ERROR, f"final size {f.final_size} != {expected}")
        self._send_buffered -= s.drop_pending()
        self._reassembly_total -= len(s.reassembly)
        s.reassembly = bytearray()
        s.apply(StreamInput.RECV_RESET)
        self._table.finish(s)
        return StreamReset(stream_id=s.stream_id, code=f.code, remote=True)

    def _on_window_update(self, f: WindowUpdateFrame) -> None:
        self._no_progress_frame("WINDOW_UPDATE")
        try:
            if f.stream_id is None:
                self._conn_send.add(f.increment)
                return
            s = self._lookup(f.stream_id, "WINDOW_UPDATE")
            if s is not None:
                s.send_credit.add(f.increment)
        except RemoteProtocolError as exc:
            raise _Fail(exc.code, exc.message) from None

    def _on_token(self, f: TokenFrame) -> Event:
        self._no_progress_frame("TOKEN")
        if len(f.token) > self.config.max_token_size:
            return TokenRejected(code=ErrorCode.TOO_LARGE)
        try:
            grant = self._accept_tokens((f.token,), at_handshake=False)
        except AuthorizationError as exc:
            return TokenRejected(code=exc.code)
        return TokenAccepted(grant=grant)

    def _on_key_update(self, f: KeyUpdateFrame) -> Event:
        self._key_updates_in += 1
        if self._key_updates_in > self.config.max_key_updates_without_data:
            raise _Fail(ErrorCode.ENHANCE_YOUR_CALM, "too many key updates without data")
        assert self._reader is not None
        self._reader.rekey()  # KEY_UPDATE is the last frame of its record
        if (
            f.update_requested
            and not self._key_update_queued
            and self.state is ConnectionState.ESTABLISHED
        ):
            self._queue_key_update(False)
        return KeyUpdated(remote=True, generation=self._reader.updates)

    def _on_close(self, f: CloseFrame) -> None:
        self._frames.clear()  # nothing after CLOSE reaches the application
        if self.state is ConnectionState.CLOSING:
            self._terminate(self._close_code, self._close_reason, remote=False)
            return
        self._send_close(ErrorCode.NO_ERROR, "")
        self._terminate(f.code, f.reason, remote=True)

    def _on_eof(self) -> None:
        if self.state is ConnectionState.CLOSING:
            self._terminate(self._close_code, self._close_reason, remote=False)
            return
        self._terminate(ErrorCode.TRUNCATED, "transport ended without CLOSE", remote=True)

    # ------------------------------------------------------------ termination

    def _fail(self, fail: _Fail) -> None:
        if self.state is ConnectionState.CLOSED:
            return
        if self._hs is not None:
            self._raw_out += self._hs.abort(fail.wire)
            self._hs = None
        elif self._writer is not None and self.state is not ConnectionState.CLOSING:
            self._send_close(fail.wire, _terse(fail.wire))
        self._terminate(fail.code, fail.message, remote=False)

    def _send_close(self, code: int, reason: str) -> None:
        # An abortive close drops queued stream data; control frames before it still go.
        for s in list(self._table.streams.values()):
            self._send_buffered -= s.drop_pending()
        self._control.append(CloseFrame(code, reason))

    def _terminate(self, code: int, reason: str, *, remote: bool) -> None:
        """Enter CLOSED, queue StreamReset for unfinished streams, then ConnectionClosed."""
        if self.state is ConnectionState.CLOSED:
            return
        self.state = ConnectionState.CLOSED
        self._frames.clear()
        stream_code = code if code != ErrorCode.NO_ERROR else ErrorCode.CANCELLED
        for s in list(self._table.streams.values()):
            if s.state in (StreamState.CLOSED, StreamState.RESET):
                continue
            self._events.append(StreamReset(stream_id=s.stream_id, code=stream_code, remote=remote))
            s.state = StreamState.RESET
        self._events.append(ConnectionClosed(code=code, reason=reason, remote=remote))

    # ------------------------------------------------------------ output

    def _queue_control(self, frame: Frame, *, response: bool = False) -> None:
        if response and len(self._control) >= self.config.max_queued_control:
            raise _Fail(ErrorCode.ENHANCE_YOUR_CALM, "too many queued control responses")
        self._control.append(frame)

    def _queue_key_update(self, request: bool) -> None:
        self._control.append(KeyUpdateFrame(request))
        self._key_update_queued = True

    def data_to_send(self) -> bytes:
        """Return (and clear) the bytes to write to the transport.

        Control frames go first, then stream frames round-robin within
        flow-control credit, coalesced into records of up to 65519 bytes
        of plaintext; a graceful CLOSE follows the last queued stream byte.
        """
        out = self._raw_out
        self._raw_out = bytearray()
        if self._hs is not None:
            out += self._hs.data_to_send()
            return bytes(out)
        w = self._writer
        if w is None:
            return bytes(out)
        if self.state is ConnectionState.CLOSED and not self._control:
            return bytes(out)
        buf = bytearray()

        def ratchet(record: bytes) -> None:
            out.extend(w.seal(record))
            w.rekey()
            self._key_update_queued = False
            self._events.append(KeyUpdated(remote=False, generation=w.updates))

        def flush() -> None:
            nonlocal buf
            if buf:
                out.extend(w.seal(bytes(buf)))
                buf = bytearray()
            if w.update_due and self.state is ConnectionState.ESTABLISHED:
                ratchet(_AUTO_KEY_UPDATE)  # automatic, by volume

        def emit(frame: Frame) -> None:
            nonlocal buf
            raw = encode_frame(frame)
            if len(buf) + len(raw) > MAX_RECORD_PLAINTEXT:
                flush()
            buf.extend(raw)
            if isinstance(frame, KeyUpdateFrame):  # last frame of its record
                record, buf = bytes(buf), bytearray()
                ratchet(record)

        try:
            close: Frame | None = None
            while self._control:
                frame = self._control.popleft()
                if isinstance(frame, CloseFrame):
                    close = frame
                    continue
                emit(frame)
            if close is None and self.state is ConnectionState.ESTABLISHED:
                self._emit_streams(emit, lambda: len(buf))
                if self._close_pending is not None and self._send_buffered == 0:
                    code, reason = self._close_pending
                    self._close_pending = None
                    close = CloseFrame(code, reason)
                    self._control.clear()
            if close is not None:
                emit(close)
                if self.state is ConnectionState.ESTABLISHED:
                    self.state = ConnectionState.CLOSING
            flush()
        except LocalProtocolError as exc:  # the sending key is exhausted: cannot even CLOSE
            self._control.clear()
            self._terminate(exc.code, exc.message, remote=False)
        if out and self._now is not None:
            self._last_tx = self._now
        return bytes(out)

    def _emit_streams(self, emit: Callable[[Frame], None], used: Callable[[], int]) -> None:
        for _ in range(1_000_000):  # bounded: each round sends a frame or stops
            if not self._order:
                return
            progressed = False
            for _ in range(len(self._order)):
                sid = self._order.popleft()
                s = self._table.streams.get(sid)
                if s is None or not s.has_pending():
                    if s is not None:
                        self._maybe_finish(s)
                    continue
                if s.open_pending:
                    emit(OpenFrame(sid, s.resource))
                    s.open_pending = False
                    progressed = True
                space = MAX_RECORD_PLAINTEXT - used()
                if space < _MIN_ROOM:
                    space = MAX_RECORD_PLAINTEXT
                frame = s.next_frame(_payload_room(sid, space), self._conn_send.available)
                if frame is not None:
                    payload = frame.data if isinstance(frame, StreamFrame) else frame.fragment
                    self._conn_send.consume(len(payload))
                    self._send_buffered -= len(payload)
                    if payload:
                        self._no_progress = 0
                    emit(frame)
                    progressed = True
                if s.has_pending():
                    self._order.append(sid)
                else:
                    self._maybe_finish(s)
            if not progressed:
                return

    # ------------------------------------------------------------ API: streams

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

        Raises:
            LocalProtocolError: ``INVALID_ARGUMENT`` for an unknown stream.
        """
        if self.config.auto_window_update:
            return  # credit is returned as events are delivered
        s = self._get(stream_id)
        self._conn_recv.consume(n)
        inc = self._conn_recv.update_due()
        if inc:
            self._control.append(WindowUpdateFrame(None, inc))
        s.recv_window.consume(n)
        inc = s.recv_window.update_due()
        if inc and s.can_receive():
            self._control.append(WindowUpdateFrame(stream_id, inc))

    #: Alias of :meth:`acknowledge_data`.
    consume = acknowledge_data

    # ------------------------------------------------------------ API: control

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

    # ------------------------------------------------------------ timers

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
_AUTO_KEY_UPDATE: Final = encode_frame(KeyUpdateFrame(False))


def _terse(code: ErrorCode) -> str:
    """Wire reasons stay terse: the code name only."""
    return code.name.lower() if isinstance(code, ErrorCode) else ""
