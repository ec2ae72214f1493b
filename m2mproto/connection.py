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

Connection lifecycle: one state machine, one transition table
(``_conn_state.TRANSITIONS``); :attr:`Connection.state` shows its public view
(:class:`ConnectionState`)::

    HANDSHAKING --HANDSHAKE_DONE--> ESTABLISHED --CLOSE_GRACEFULLY--> DRAINING
    HANDSHAKING --KEYS_READY (IK responder)--> CONFIRMING --HANDSHAKE_DONE--> ESTABLISHED
    CONFIRMING, ESTABLISHED, DRAINING --SEND_CLOSE--> CLOSING
    any state but CLOSED --END (peer CLOSE, EOF, error, timeout)--> CLOSED

Any error caused by the peer closes the connection with the specific code
(a CLOSE frame, or a cleartext ABORT during the handshake) and yields
``ConnectionClosed``; a fault confined to one stream resets only that stream
and yields ``StreamReset``. After ``ConnectionClosed`` the connection is
terminal: ``next_event`` raises ``LocalProtocolError(CONNECTION_CLOSED)``.

The initiator's first handshake flight is available from ``data_to_send()``
right after construction. ``start(now)`` arms the handshake deadline and
should be called by both sides before anything else.

The connection is composed of parts in private modules, each with its own
interface and testable alone: ``_conn_state`` (the lifecycle machine,
roles, the internal failure), ``_conn_timers`` (clock and deadlines),
``_conn_budgets`` (non-productive traffic), ``_conn_auth`` (the authorizer,
called contained), ``_conn_outbox`` (what we send, framed into records),
``_conn_handshake`` (the handshake and transport phase objects) and
``_conn_receiver`` (records into frames into events). This module wires
them together and holds the public driver API; see ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from . import cbor
from ._conn_auth import Authorization
from ._conn_budgets import Budgets
from ._conn_handshake import Ended, Handshaking, Transport
from ._conn_outbox import FrameOutbox
from ._conn_receiver import Receiver
from ._conn_state import (
    NEED_DATA,
    OPEN_STATES,
    ConnectionState,
    Input,
    Lifecycle,
    NeedData,
    Role,
    State,
    _Fail,
)
from ._conn_timers import Expiry, Timers
from .config import Authorizer, Configuration, TransportParameters
from .errors import (
    AuthorizationError,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    SendBufferFull,
    StreamLimitReached,
    TokenBudgetExceeded,
    TokenError,
)
from .events import ConnectionClosed, Event, HandshakeCompleted, StreamReset, TokenAccepted
from .frames import MAX_CODE, MAX_PING_PAYLOAD, MAX_VARINT, PingFrame, TokenFrame
from .handshake import Handshake, HandshakeResult, StaticKey
from .handshake._wire import BASE as _BASE_PATTERN
from .identity import AgentId, Identity
from .records import RecordReader, RecordWriter
from .streams import (
    ConnectionWindows,
    RecvWindow,
    SendCredit,
    Stream,
    StreamInput,
    StreamState,
    StreamTable,
)

__all__ = ["NEED_DATA", "Connection", "ConnectionState", "NeedData", "Role"]


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
            handshake; raise an ``M2MError`` to refuse it (any other exception
            fails the handshake with ``INTERNAL_ERROR``).
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
        initiator = role is Role.INITIATOR
        hs = Handshake(
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
        #: The negotiated Noise protocol name (spec/handshake.md 2.13), once established.
        self.suite: str | None = None
        #: The peer's agent ID (once the handshake completes).
        self.peer: AgentId | None = None
        #: The handshake hash (channel binding), once the handshake completes.
        self.handshake_hash: bytes | None = None
        #: The peer's transport parameters, once the handshake completes.
        self.peer_parameters: TransportParameters | None = None
        self._life = Lifecycle()
        self._timers = Timers(cfg)
        self._budgets = Budgets(cfg)
        self._table = StreamTable(initiator)
        # Events queued for next_event, in order; a deferred failure (_Fail)
        # waits its turn among them (a token refused at the handshake closes
        # the connection right after HandshakeCompleted is reported).
        self._events: list[Event | _Fail] = []
        self._outbox = FrameOutbox(cfg, self._table, self._budgets, self._events)
        self._auth = Authorization(authorizer, self._timers)
        # Exactly one phase object: _handshake while it runs, then _transport.
        self._handshake: Handshaking | None = Handshaking(hs, () if initiator else tokens)
        self._transport: Transport | None = None
        self._receiver: Receiver | None = None
        # IK responder in CONFIRMING: what is reported once the initiator is live.
        self._unconfirmed: tuple[HandshakeResult, TransportParameters, tuple[bytes, ...]] | None = (
            None
        )
        #: The transport's input ended (``receive_data(b"")``).
        self._eof = False

    # -- views -----------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The lifecycle state (public view; a draining graceful close is ESTABLISHED)."""
        return self._life.public

    @property
    def _hs(self) -> Handshake | None:
        """The running handshake (None once it ended); for tests and diagnostics."""
        return self._handshake.hs if self._handshake is not None else None

    @property
    def _writer(self) -> RecordWriter | None:
        return self._transport.writer if self._transport is not None else None

    @property
    def _reader(self) -> RecordReader | None:
        return self._transport.reader if self._transport is not None else None

    @property
    def _conn_send(self) -> SendCredit:
        return self._transport.conn_send if self._transport is not None else SendCredit(0)

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
        rx = self._receiver
        r = rx.conn_recv if rx is not None else RecvWindow(self.config.initial_connection_window)
        c = self._conn_send
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
            return self._table.totals.send_buffered
        s = self._table.streams.get(stream_id)
        return 0 if s is None else s.send_buffered

    def can_send(self, stream_id: int, n: int) -> bool:
        """Whether ``send(stream_id, <n bytes>)`` would be accepted now (never raises).

        False unless established, the stream exists and our half is open, and
        *n* more bytes fit in ``max_send_buffer``. Credit is not required:
        accepted bytes wait for it.
        """
        if self._life.state is not State.ESTABLISHED:
            return False
        s = self._table.streams.get(stream_id)
        if s is None or not s.can_send():
            return False
        return self._table.totals.send_buffered + n <= self.config.max_send_buffer

    def can_open(self) -> bool:
        """Whether ``open_stream`` would succeed now (never raises)."""
        if self._life.state is not State.ESTABLISHED:
            return False
        params = self.peer_parameters
        assert params is not None
        return (
            self._table.local_open < params.max_concurrent_streams
            and self._table.next_local <= MAX_VARINT
        )

    # -- driving ---------------------------------------------------------------

    def start(self, now: float) -> None:
        """Arm the handshake deadline (call once, before anything else).

        Raises:
            LocalProtocolError: ``INVALID_STATE`` if called twice.
        """
        self._timers.start(now)

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """Buffer bytes from the transport; ``b""`` means end of stream. Parses nothing.

        Args:
            now: the current monotonic time. Pass it whenever known (the
                transports always do): it stamps the receipt for the idle
                timer and advances the clock for the budgets. Without it the
                receipt is stamped at the next call that carries a time
                (``start``, ``handle_timer``, ``reauthorize``, ``receive_data``).

        Raises:
            LocalProtocolError: ``INVALID_STATE`` after end of stream.
        """
        timers = self._timers
        if now is not None:
            timers.tick(now)
        if self._life.state is State.CLOSED:
            return  # a closed connection discards input
        if self._eof:
            raise LocalProtocolError("receive_data after end of stream", ErrorCode.INVALID_STATE)
        handshaking = self._handshake
        if not data:
            self._eof = True
            if handshaking is not None:
                handshaking.hs.receive_data(b"")
            return
        timers.received(now)
        if handshaking is not None:
            handshaking.hs.receive_data(bytes(data))
        else:
            assert self._transport is not None
            self._transport.reader.feed(data)  # copies only what is not immutable bytes

    def next_event(self) -> Event | Literal[NeedData.NEED_DATA]:
        """Parse buffered input and return the next event.

        Returns:
            One :class:`~m2mproto.events.Event`, or :data:`NEED_DATA` when
            more bytes (or a timer) are needed.

        Raises:
            LocalProtocolError: ``CONNECTION_CLOSED`` once ``ConnectionClosed``
                has been returned. Nothing the peer sends (and no fault of a
                callback) raises: it becomes a ``ConnectionClosed`` or
                ``StreamReset`` event.
        """
        events = self._events
        rx = self._receiver
        # Bounded: each round returns, or consumes a queued event, a decoded
        # frame or a record, or ends the connection; input is finite.
        for _ in range(1_000_000):
            if events:
                ev = events.pop(0)
                if type(ev) is _Fail:
                    self._fail(ev)
                    continue
                return ev  # type: ignore[return-value]
            if self._life.state is State.CLOSED:
                raise LocalProtocolError("connection closed", ErrorCode.CONNECTION_CLOSED)
            result: Event | Literal[NeedData.NEED_DATA] | None
            try:
                if rx is not None and rx.frames:
                    result = rx.handle(rx.frames.pop())  # the hot path
                elif rx is not None:
                    result = rx.read_record(self._eof)
                    if result is None and self._life.state is State.CONFIRMING:
                        result = self._confirm()  # a record decrypted: the peer is live
                else:
                    result = self._step_handshake()
                    rx = self._receiver
            except _Fail as fail:
                self._fail(fail)
                continue
            except TypeError as exc:
                # Backstop: every decode site validates peer values before they meet a
                # typed name, but should one slip through (in the compiled build such a
                # name raises TypeError), the peer gets a close, never the caller a crash.
                self._fail(_Fail(ErrorCode.INTERNAL_ERROR, f"unexpected type: {exc}"))
                continue
            if result is None:
                continue
            return result
        raise LocalProtocolError("event loop bound exceeded", ErrorCode.INTERNAL_ERROR)

    def _step_handshake(self) -> Event | Literal[NeedData.NEED_DATA] | None:
        handshaking = self._handshake
        assert handshaking is not None
        result = handshaking.step(self._outbox)
        if result is NEED_DATA:
            return NEED_DATA
        if isinstance(result, Ended):
            self._handshake = None
            self._terminate(result.code, result.message, remote=result.remote)
            return None
        assert isinstance(result, HandshakeResult)
        return self._establish(handshaking, result)

    def _establish(self, handshaking: Handshaking, res: HandshakeResult) -> Event | None:
        """Enter the transport phase; report the handshake unless liveness is unproven.

        An IK responder completes the Noise handshake on message 1, which a
        third party may have recorded and replayed: it waits in CONFIRMING
        until the initiator's first transport record decrypts (spec/handshake.md
        §2.12), and only then reports the session and accepts its tokens.
        """
        ik = _BASE_PATTERN.get(res.pattern, res.pattern) == "IK"  # IK or IKhfs
        confirm = self.role is Role.RESPONDER and ik
        cfg = self.config
        self._transport = tr = handshaking.into_transport(res, cfg, self._outbox)
        self._handshake = None
        self._life.transition(Input.KEYS_READY if confirm else Input.HANDSHAKE_DONE)
        try:
            params = TransportParameters.from_params(res.peer_params)
        except RemoteProtocolError as exc:
            raise _Fail(exc.code, exc.message) from None
        tr.conn_send.limit = params.initial_connection_window
        rr = cfg.request_reply and params.request_reply == 1
        self._outbox.request_reply = rr
        self._receiver = Receiver(
            cfg,
            reader=tr.reader,
            params=params,
            conn_send=tr.conn_send,
            table=self._table,
            outbox=self._outbox,
            budgets=self._budgets,
            events=self._events,
            life=self._life,
            auth=self._auth,
            timers=self._timers,
            send_close=self._send_close,
            terminate=self._terminate,
            request_reply=rr,
        )
        if confirm:
            self._unconfirmed = (res, params, handshaking.late_tokens)
            return None
        if ik:  # the initiator: our first record proves liveness
            self._outbox.liveness_due = True
        return self._report(res, params, handshaking.late_tokens)

    def _confirm(self) -> Event:
        """The IK initiator's first record decrypted: the session is live, report it."""
        assert self._unconfirmed is not None
        res, params, late_tokens = self._unconfirmed
        self._unconfirmed = None
        self._life.transition(Input.HANDSHAKE_DONE)
        return self._report(res, params, late_tokens)

    def _report(
        self, res: HandshakeResult, params: TransportParameters, late_tokens: Sequence[bytes]
    ) -> Event:
        """Publish the handshake's results, accept the peer's tokens, send ours."""
        self.peer = self._auth.peer = res.peer
        self.suite = res.suite
        self.handshake_hash = res.handshake_hash
        self.peer_parameters = params
        for token in late_tokens:
            self._outbox.control.append(TokenFrame(token))
        if res.peer_tokens:
            self._accept_handshake_tokens(res.peer_tokens)
        return HandshakeCompleted(
            peer=res.peer,
            identity_key=res.peer.public_key,
            handshake_hash=res.handshake_hash,
            peer_params=dict(res.peer_params),
            pattern=res.pattern,
            version=res.version,
            remote_static=res.peer_static,
        )

    def _accept_handshake_tokens(self, tokens: Sequence[bytes]) -> None:
        try:
            if len(tokens) > self.config.max_handshake_tokens and self._auth.enabled:
                raise TokenError("too many tokens in the handshake", ErrorCode.TOO_LARGE)
            grant = self._auth.accept_tokens(tokens)
        except AuthorizationError as exc:
            wire = exc.code if self.config.wire_token_reason else ErrorCode.TOKEN_INVALID
            if not isinstance(exc, TokenError):
                wire = ErrorCode.TOKEN_INVALID
            if isinstance(exc, TokenBudgetExceeded):
                wire = ErrorCode.ENHANCE_YOUR_CALM
            # HandshakeCompleted is reported first, then the close.
            self._events.append(_Fail(exc.code, "token rejected", wire=wire))
        except _Fail as fail:
            self._events.append(fail)
        else:
            self._events.append(TokenAccepted(grant=grant))

    # -- ending ----------------------------------------------------------------

    def _fail(self, fail: _Fail) -> None:
        """Close because of *fail*: ABORT while handshaking, else CLOSE (unless sent)."""
        state = self._life.state
        if state is State.CLOSED:
            return
        if self._handshake is not None:
            self._handshake.abort(self._outbox, fail.wire)
            self._handshake = None
        elif state in OPEN_STATES or state is State.CONFIRMING:
            self._send_close(fail.wire, _terse(fail.wire))
        self._terminate(fail.code, fail.message, remote=False)

    def _send_close(self, code: int, reason: str) -> None:
        """Queue an abortive CLOSE (queued stream bytes are dropped) and enter CLOSING."""
        self._outbox.queue_close(code, reason)
        self._life.transition(Input.SEND_CLOSE)

    def _terminate(self, code: int, reason: str, *, remote: bool) -> None:
        """Enter CLOSED, queue StreamReset for unfinished streams, then ConnectionClosed."""
        if self._life.state is State.CLOSED:
            return
        self._life.transition(Input.END)
        if self._receiver is not None:
            self._receiver.frames.clear()
        stream_code = code if code != ErrorCode.NO_ERROR else ErrorCode.CANCELLED
        for s in list(self._table.streams.values()):
            if s.state in (StreamState.CLOSED, StreamState.RESET):
                continue
            self._events.append(StreamReset(stream_id=s.stream_id, code=stream_code, remote=remote))
            s.state = StreamState.RESET
        self._events.append(ConnectionClosed(code=code, reason=reason, remote=remote))

    # -- the application's side ------------------------------------------------

    def _require_established(self) -> None:
        if self._life.state is not State.ESTABLISHED:
            raise LocalProtocolError(
                f"not allowed in state {self._life.state.name}", ErrorCode.INVALID_STATE
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
                ``INVALID_ARGUMENT`` for a bad resource.
            StreamLimitReached: (``STREAM_LIMIT_ERROR``) the peer's
                concurrent-stream limit is reached or stream IDs are used up
                (:meth:`can_open` asks without raising).
        """
        self._require_established()
        if not isinstance(resource, str) or not 1 <= len(resource.encode()) <= 256:
            raise LocalProtocolError(
                "resource must be 1..256 UTF-8 bytes", ErrorCode.INVALID_ARGUMENT
            )
        params = self.peer_parameters
        assert params is not None
        if self._table.local_open >= params.max_concurrent_streams:
            raise StreamLimitReached("the peer's concurrent stream limit is reached")
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
        self._outbox.order.append(sid)
        return sid

    def _queue(self, stream_id: int, data: bytes, *, is_message: bool, end_stream: bool) -> None:
        self._require_established()
        s = self._get(stream_id)
        if self._table.totals.send_buffered + len(data) > self.config.max_send_buffer:
            raise SendBufferFull("send buffer full; wait for data_to_send() to drain it")
        if (data or is_message) and not s.can_send():
            s.apply(StreamInput.SEND_DATA)  # raises INVALID_STATE with details
        if end_stream:
            s.apply(StreamInput.SEND_END)
        elif not s.can_send():  # pragma: no cover - guarded above
            s.apply(StreamInput.SEND_DATA)
        s.queue(data, is_message=is_message, end_stream=end_stream)
        order = self._outbox.order
        if stream_id not in order:
            order.append(stream_id)

    def send(
        self, stream_id: int, data: bytes | bytearray | memoryview, end_stream: bool = False
    ) -> None:
        """Queue bytes on a stream (sent as credit allows).

        Raises:
            LocalProtocolError: ``INVALID_ARGUMENT`` for an unknown stream,
                ``INVALID_STATE`` if our half is ended.
            SendBufferFull: (``FLOW_CONTROL_ERROR``) ``max_send_buffer`` would
                be exceeded (:meth:`can_send` asks without raising).
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
        self._outbox.reset(self._get(stream_id), code)

    def refuse_stream(self, stream_id: int, code: int) -> None:
        """Reset a stream because of the peer: like :meth:`reset_stream`, but charged.

        For a stream the application refuses because of what the peer did (no
        route for its resource, a protocol error in what it sent): the reset
        counts against the peer's stream churn budget (spec/streams.md §6),
        like the resets the core sends itself. Past the budget the connection
        closes with ``ENHANCE_YOUR_CALM`` (``ConnectionClosed`` follows).

        Raises:
            LocalProtocolError: ``INVALID_ARGUMENT`` for an unknown stream or a
                code outside ``0..0xFFFF``, ``INVALID_STATE`` unless established.
        """
        if not isinstance(code, int) or not 0 <= code <= MAX_CODE:
            raise LocalProtocolError("code must be 0..0xFFFF", ErrorCode.INVALID_ARGUMENT)
        self._require_established()
        self._outbox.reset(self._get(stream_id), code)
        try:
            self._budgets.charge_churn(self._timers.now)
        except _Fail as fail:
            self._fail(fail)

    def acknowledge_data(self, stream_id: int, n: int) -> None:
        """Return *n* bytes of credit (only with ``auto_window_update=False``).

        The application calls it as it takes received bytes. For a stream the
        core has already finished, only the connection-level credit is returned.

        Raises:
            LocalProtocolError: ``INVALID_ARGUMENT`` for a stream ID never used.
        """
        if self.config.auto_window_update or self._receiver is None:
            return  # credit is returned as events are delivered
        s = self._table.streams.get(stream_id)
        if s is None and self._table.classify_unknown(stream_id) in ("new", "idle"):
            raise LocalProtocolError(f"no stream {stream_id}", ErrorCode.INVALID_ARGUMENT)
        # The connection-level credit goes back even when the stream has
        # already finished in the core (its last bytes arrived after our end).
        self._receiver.acknowledge(stream_id, s, n)

    def ping(self, payload: bytes | None = None) -> bytes:
        """Queue a PING; ``PingAcknowledged`` follows. Returns the payload.

        At most 64 PINGs are remembered; the oldest is forgotten first.

        Raises:
            LocalProtocolError: ``INVALID_STATE`` unless established,
                ``INVALID_ARGUMENT`` for a payload over 64 bytes.
        """
        self._require_established()
        pings = self._outbox.pings
        if payload is None:
            payload = pings.next_payload()
        if len(payload) > MAX_PING_PAYLOAD:
            raise LocalProtocolError("ping payload over 64 bytes", ErrorCode.INVALID_ARGUMENT)
        pings.sent(payload)
        self._outbox.control.append(PingFrame(payload))
        return payload

    def update_keys(self, request_peer: bool = True) -> None:
        """Rotate our sending key (and ask the peer to rotate its own).

        Raises:
            LocalProtocolError: ``INVALID_STATE`` unless established.
        """
        self._require_established()
        if not self._outbox.key_update_queued:
            self._outbox.queue_key_update(request_peer)

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
        self._outbox.control.append(TokenFrame(token))

    def reauthorize(self, now: float) -> list[int]:
        """Re-check open peer streams against the authorizer; reset those no longer covered.

        Returns the IDs reset (each also yields ``StreamReset(UNAUTHORIZED)``).
        An authorizer that fails (an exception other than ``AuthorizationError``)
        closes the connection with ``INTERNAL_ERROR``.
        """
        self._timers.tick(now)
        if not self._auth.enabled or self.peer is None:
            return []
        if self._life.state not in OPEN_STATES:
            return []
        reset: list[int] = []
        for s in list(self._table.streams.values()):
            if s.local:
                continue
            try:
                self._auth.authorize(s.resource, self.config.policy.open_stream)
            except AuthorizationError:
                self._outbox.reset(s, ErrorCode.UNAUTHORIZED)
                self._events.append(
                    StreamReset(stream_id=s.stream_id, code=ErrorCode.UNAUTHORIZED, remote=False)
                )
                reset.append(s.stream_id)
            except _Fail as fail:
                self._fail(fail)
                break
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
        state = self._life.state
        if state is State.CONFIRMING:  # keys, but nothing reported: end it now
            self._outbox.local_close = (code, reason)
            self._send_close(code, reason)
            self._terminate(code, reason, remote=False)
            return
        if state is not State.HANDSHAKING and state is not State.ESTABLISHED:
            return
        self._outbox.local_close = (code, reason)
        if self._handshake is not None:
            self._handshake.abort(
                self._outbox, ErrorCode(code) if code in _CODES else ErrorCode.NO_ERROR
            )
            self._handshake = None
            self._terminate(code, reason, remote=False)
            return
        self._timers.arm_close()
        if code == ErrorCode.NO_ERROR:
            self._life.transition(Input.CLOSE_GRACEFULLY)
        else:
            self._send_close(code, reason)

    def data_to_send(self) -> bytes:
        """Return (and clear) the bytes to write to the transport.

        Control frames go first, then stream frames round-robin within
        flow-control credit, coalesced into records of up to 65519 bytes
        of plaintext; a graceful CLOSE follows the last queued stream byte.
        """
        outbox = self._outbox
        if self._handshake is not None:
            raw = outbox.take_raw()
            raw += self._handshake.hs.data_to_send()
            return bytes(raw)
        tr = self._transport
        if tr is None:
            return bytes(outbox.take_raw())
        try:
            out = outbox.drain(tr.writer, self._life, tr.conn_send)
        except LocalProtocolError as exc:  # the sending key is exhausted: cannot even CLOSE
            self._terminate(exc.code, exc.message, remote=False)
            out = b""
        if out:
            self._timers.sent()
        return out

    # -- timers ----------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline on the caller's clock, or None."""
        return self._timers.next_deadline(self._life.state)

    def handle_timer(self, now: float) -> None:
        """Act on expired deadlines (events follow from ``next_event``)."""
        timers = self._timers
        timers.tick(now)
        state = self._life.state
        expiry = timers.expired(state, now)
        if expiry is None:
            return
        if expiry is Expiry.HANDSHAKE:
            self._fail(_Fail(ErrorCode.HANDSHAKE_TIMEOUT, "handshake deadline passed"))
        elif expiry is Expiry.CLOSE:
            code, reason = self._outbox.local_close
            if state is State.DRAINING:  # the graceful drain never finished
                self._send_close(code, reason)
            self._terminate(code, "close timeout", remote=False)
        elif expiry is Expiry.IDLE:
            self._fail(_Fail(ErrorCode.IDLE_TIMEOUT, "idle timeout"))
        else:
            self.ping()
            timers.last_tx = now


def _terse(code: ErrorCode) -> str:
    """Wire reasons stay terse: the code name only."""
    return code.name.lower() if isinstance(code, ErrorCode) else ""


_CODES = {c.value for c in ErrorCode}
