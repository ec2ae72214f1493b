"""Receiver of a Connection: records into frames, frames into state changes and events.

Theory of operation
-------------------
:class:`Receiver` exists once the handshake is done. :meth:`Receiver.read_record`
decrypts one record and decodes all of its frames before any takes effect (a
record with one bad frame changes nothing); :meth:`Receiver.handle` then
applies them one at a time through the handler table :data:`_HANDLERS` (one
row per frame class, checked exhaustive at import). Each handler checks the
frame against the stream table, flow control and the budgets, changes state
and returns an event (or ``None``; follow-up events go to the shared event
list). A fault of the peer raises ``_Fail`` (the connection closes with its
code); a fault confined to one stream resets that stream and returns
``StreamReset``. While ``CLOSING`` only CLOSE and KEY_UPDATE are processed.

The receiver owns the connection-level receive window and the decoded
frames of the current record. It sends through the :class:`FrameOutbox` (window
updates, PONG, RESET, KEY_UPDATE) and ends the connection through the two
callables it is handed (``send_close`` and ``terminate``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from . import cbor
from ._conn_auth import Authorization
from ._conn_budgets import Budgets
from ._conn_outbox import FrameOutbox
from ._conn_state import NEED_DATA, OPEN_STATES, Lifecycle, NeedData, State, _Fail
from ._conn_timers import Timers
from .config import Configuration, Grant, TransportParameters
from .errors import (
    AuthorizationError,
    DecodeError,
    ErrorCode,
    RemoteProtocolError,
    TokenBudgetExceeded,
)
from .events import (
    DataReceived,
    Event,
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
    FRAME_CLASSES,
    MAX_VARINT,
    CloseFrame,
    ExtensionFrame,
    Frame,
    KeyUpdateFrame,
    MessageFrame,
    OpenFrame,
    PingFrame,
    PongFrame,
    ReplyFrame,
    RequestFrame,
    ResetFrame,
    StreamFrame,
    TokenFrame,
    WindowUpdateFrame,
    decode_frames,
)
from .handshake import decode_abort_code
from .records import AbortReceived, RecordReader
from .streams import RecvWindow, SendCredit, Stream, StreamInput, StreamState, StreamTable

__all__ = ["Receiver"]

_RECEIVING = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})
#: Frames still processed while CLOSING: the peer's CLOSE, and KEY_UPDATE (it changes keys).
_WHILE_CLOSING = frozenset({CloseFrame, KeyUpdateFrame})


class Receiver:
    """The receive side of an established connection."""

    __slots__ = (
        "_auth",
        "_budgets",
        "_cfg",
        "_events",
        "_life",
        "_outbox",
        "_params",
        "_reader",
        "_rr",
        "_send_close",
        "_table",
        "_terminate",
        "_timers",
        "conn_recv",
        "conn_send",
        "frames",
    )

    def __init__(
        self,
        cfg: Configuration,
        *,
        reader: RecordReader,
        params: TransportParameters,
        conn_send: SendCredit,
        table: StreamTable,
        outbox: FrameOutbox,
        budgets: Budgets,
        events: list[Any],
        life: Lifecycle,
        auth: Authorization,
        timers: Timers,
        send_close: Callable[[int, str], None],
        terminate: Callable[..., None],
        request_reply: bool = False,
    ) -> None:
        self._cfg = cfg
        #: REQUEST and REPLY frames were negotiated (both sides advertised them).
        self._rr = request_reply
        self._reader = reader
        self._params = params
        self._table = table
        self._outbox = outbox
        self._budgets = budgets
        self._events = events
        self._life = life
        self._auth = auth
        self._timers = timers
        self._send_close = send_close
        self._terminate = terminate
        #: The peer's credit for the whole connection (we grant it).
        self.conn_recv = RecvWindow(cfg.initial_connection_window)
        #: Our credit for the whole connection (the peer grants it).
        self.conn_send = conn_send
        #: Decoded frames of the current record, in reverse order (popped from the end).
        self.frames: list[Frame] = []

    # -- records -------------------------------------------------------------

    def read_record(self, eof: bool) -> Literal[NeedData.NEED_DATA] | None:
        """Decrypt and decode the next record into :attr:`frames` (None: progress made).

        Raises:
            _Fail: a bad record or frame (the connection closes with its code).
        """
        try:
            plaintext = self._reader.next_record()
        except AbortReceived as abort:  # one name per exception type (mypyc)
            # spec/handshake.md §2.7: the peer failed the handshake after we finished it.
            # It has no transport keys, so nothing is answered; report its code.
            self._outbox.control.clear()
            code = decode_abort_code(abort.raw_code.to_bytes(2, "big"))
            self._terminate(code, "peer aborted the handshake", remote=True)
            return None
        except RemoteProtocolError as exc:
            raise _Fail(exc.code, exc.message) from None
        if plaintext is None:
            if eof:
                self._on_eof()
                return None
            return NEED_DATA
        try:
            frames = decode_frames(plaintext, request_reply=self._rr)
        except RemoteProtocolError as exc:
            raise _Fail(exc.code, exc.message) from None
        if not frames:
            self._budgets.no_progress_frame("empty record")
        self.frames.extend(reversed(frames))  # only ever extended when empty
        return None

    def handle(self, frame: Frame) -> Event | None:
        """Apply one received frame; return at most one event."""
        if self._life.state is State.CLOSING and type(frame) not in _WHILE_CLOSING:
            return None  # we are closing: only the peer's CLOSE matters now
        return _DISPATCH[type(frame)](self, frame)

    # -- helpers -------------------------------------------------------------

    def _lookup(self, stream_id: int, what: str, *, crossing: bool = False) -> Stream | None:
        """The live stream, or None for a frame to ignore; a frame the stream's
        history forbids is STREAM_STATE_ERROR. With *crossing*, a stream that
        ended gracefully also yields None: RESET and WINDOW_UPDATE may cross
        the end of a stream in flight (spec/streams.md)."""
        s = self._table.streams.get(stream_id)
        if s is not None:
            return s
        kind = self._table.classify_unknown(stream_id)
        if kind == "reset" or (crossing and kind == "closed"):
            return None
        raise _Fail(ErrorCode.STREAM_STATE_ERROR, f"{what} on {kind} stream {stream_id}")

    def _account(self, s: Stream | None, n: int) -> None:
        """Flow-control check for *n* received bytes (stream and connection)."""
        try:
            self.conn_recv.check(n)
            if s is not None:
                s.recv_window.check(n)
        except RemoteProtocolError as exc:
            raise _Fail(exc.code, exc.message) from None
        self.conn_recv.receive(n)
        if s is not None:
            s.recv_window.receive(n)
        else:  # bytes on a stream we already reset: discard, return the credit
            self.consumed(None, n)

    def consumed(self, s: Stream | None, n: int) -> None:
        """Received bytes were taken: return credit if automatic (always for dead streams)."""
        if not self._cfg.auto_window_update and s is not None:
            return
        inc = self.conn_recv.consume_and_update(n)
        if inc:
            self._outbox.control.append(WindowUpdateFrame(None, inc))
        if s is not None and s.state in _RECEIVING:
            inc = s.recv_window.consume_and_update(n)
            if inc:
                self._outbox.control.append(WindowUpdateFrame(s.stream_id, inc))

    def acknowledge(self, stream_id: int, s: Stream | None, n: int) -> None:
        """The application took *n* bytes (manual flow control): return the credit due.

        Credit the core already returned for the earlier fragments of the
        stream's delivered messages (``credit_owed``, kept by the table once
        the stream is finished) is deducted first, at both levels, so no
        byte is credited twice (spec/streams.md §6.4).
        """
        if s is not None:
            ahead = min(n, s.credit_owed)
            s.credit_owed -= ahead
        else:
            ahead = self._table.take_owed(stream_id, n)
        self.conn_recv.consume(n - ahead)
        inc = self.conn_recv.update_due()
        if inc:
            self._outbox.control.append(WindowUpdateFrame(None, inc))
        if s is None:
            return
        s.recv_window.consume(n - ahead)
        inc = s.recv_window.update_due()
        if inc and s.can_receive():
            self._outbox.control.append(WindowUpdateFrame(s.stream_id, inc))

    def _credit_fragment(self, s: Stream, n: int) -> None:
        """Manual flow control: the core holds this fragment, so its credit goes back now."""
        inc = self.conn_recv.consume_and_update(n)
        if inc:
            self._outbox.control.append(WindowUpdateFrame(None, inc))
        if s.state in _RECEIVING:
            inc = s.recv_window.consume_and_update(n)
            if inc:
                self._outbox.control.append(WindowUpdateFrame(s.stream_id, inc))
        s.credit_advance += n

    def _discard_fragment(self, n: int) -> None:
        """Manual flow control: bytes the core drops (never delivered) are credited now."""
        inc = self.conn_recv.consume_and_update(n)
        if inc:
            self._outbox.control.append(WindowUpdateFrame(None, inc))

    def _reset_local(self, s: Stream, code: ErrorCode) -> Event:
        """Reset a stream because of the peer's fault or a refusal (stream-level error).

        The peer provoked it, so it is charged to the peer's stream churn
        budget like a RESET the peer sends (MadeYouReset, CVE-2025-8671).

        Raises:
            _Fail: ``ENHANCE_YOUR_CALM`` when the churn budget is exhausted.
        """
        self._budgets.charge_churn(self._timers.now)
        self._outbox.reset(s, code)
        return StreamReset(stream_id=s.stream_id, code=code, remote=False)

    def _refuse_message(self, s: Stream, n: int, code: ErrorCode) -> Event:
        """Reset *s* for its message; with manual flow control the fragment's credit
        goes back here (the application never sees it)."""
        if not self._cfg.auto_window_update:
            self._discard_fragment(n)
        return self._reset_local(s, code)

    def _end_remote(self, s: Stream) -> None:
        s.recv_final = s.recv_window.received
        s.apply(StreamInput.RECV_END)
        self._events.append(StreamEnded(stream_id=s.stream_id))
        self._table.finish_if_done(s)

    # -- handlers (one per frame class: _HANDLERS) ------------------------------

    def _on_stream(self, f: StreamFrame) -> Event | None:
        s = self._lookup(f.stream_id, "STREAM")
        if s is None:  # a dead stream: never progress; empty frames are budgeted
            self._account(None, len(f.data))
            if not f.data:
                self._budgets.no_progress_frame("empty STREAM frame on a dead stream")
            return None
        if not s.can_receive():
            raise _Fail(ErrorCode.STREAM_STATE_ERROR, f"data after end on stream {s.stream_id}")
        if s.reassembly:
            raise _Fail(ErrorCode.PROTOCOL_ERROR, "STREAM frame inside a fragmented message")
        self._account(s, len(f.data))
        if not f.data and not f.end_stream:
            self._budgets.no_progress_frame("empty STREAM frame")
            return None
        self._budgets.progress()
        if f.end_stream:
            self._end_remote(s)
        if f.data:
            self.consumed(s, len(f.data))
            return DataReceived(stream_id=s.stream_id, data=f.data)
        return None

    def _on_message(self, f: MessageFrame) -> Event | None:
        s = self._table.streams.get(f.stream_id)
        if s is None:
            s = self._lookup(f.stream_id, "MESSAGE")
        if s is not None and not s.can_receive():
            raise _Fail(ErrorCode.STREAM_STATE_ERROR, f"message after end on stream {s.stream_id}")
        n = len(f.fragment)
        if s is None:  # a dead stream: never progress; empty fragments are budgeted
            self._account(None, n)
            if not n:
                self._budgets.no_progress_frame("empty MESSAGE fragment on a dead stream")
            return None
        cr, rw = self.conn_recv, s.recv_window
        if cr.received + n <= cr.limit and rw.received + n <= rw.limit:
            cr.received += n  # within both windows (what _account checks)
            rw.received += n
        else:
            self._account(s, n)  # raises FLOW_CONTROL_ERROR
        if not f.fragment and not f.last:
            self._budgets.no_progress_frame("empty MESSAGE fragment")
            return None
        self._budgets.progress()
        cfg = self._cfg
        auto = cfg.auto_window_update
        if auto:
            self.consumed(s, n)
        held = s.reassembly
        if not held:  # the first fragment of a message
            s.message_limit = cfg.max_message_size
            if self._auth.enabled and not s.local:
                # (messages on a stream we opened are replies: the open was ours)
                # each message is authorized, and its grant's limits taken, before buffering
                try:
                    s.grant = grant = self._auth.authorize(s.resource, cfg.policy.send_message)
                except AuthorizationError:
                    return self._refuse_message(s, n, ErrorCode.UNAUTHORIZED)
                if grant is not None:
                    s.message_limit = min(s.message_limit, _grant_limit(grant))
        if len(held) + n > s.message_limit or (
            self._table.totals.reassembly + n > cfg.max_reassembly_bytes
        ):
            return self._refuse_message(s, n, ErrorCode.MESSAGE_TOO_LARGE)
        if not f.last:
            s.add_fragment(f.fragment)
            if not auto:
                self._credit_fragment(s, n)
            return None
        data = s.take_message(f.fragment) if held else f.fragment
        grant = s.grant
        if grant is not None and not s.local:
            try:
                grant.check_message(len(data))
            except AuthorizationError as exc:
                code = ErrorCode.MESSAGE_TOO_LARGE
                if exc.code is not ErrorCode.MESSAGE_TOO_LARGE:
                    code = ErrorCode.UNAUTHORIZED
                return self._refuse_message(s, n, code)
            except Exception as fault:  # a fault of the grant's code, not of the peer
                raise _Fail(
                    ErrorCode.INTERNAL_ERROR, f"grant check failed: {type(fault).__name__}"
                ) from None
        try:
            value = cbor.decode(data)
        except DecodeError:
            return self._refuse_message(s, n, ErrorCode.DECODE_ERROR)
        if not auto:  # the application acknowledges the whole message; part is credited
            s.credit_owed += s.credit_advance
            s.credit_advance = 0
        if f.end_stream:
            self._end_remote(s)
        return MessageReceived(stream_id=s.stream_id, value=value, grant=s.grant, size=len(data))

    def _on_open(self, f: OpenFrame | RequestFrame) -> Event | None:
        sid = f.stream_id
        table = self._table
        if table.is_local_id(sid):
            raise _Fail(ErrorCode.STREAM_STATE_ERROR, f"peer opened stream {sid} with our parity")
        if sid in table.streams or table.classify_unknown(sid) != "new":
            raise _Fail(ErrorCode.STREAM_STATE_ERROR, f"stream {sid} reused")
        if table.remote_open >= self._cfg.max_concurrent_streams:
            raise _Fail(ErrorCode.STREAM_LIMIT_ERROR, "peer exceeded the concurrent stream limit")
        grant = None
        if self._auth.enabled:
            try:
                grant = self._auth.authorize(f.resource, self._cfg.policy.open_stream)
            except AuthorizationError:
                # Refused before it exists: the ID is used up, the peer hears RESET.
                self._budgets.charge_churn(self._timers.now)
                table.refuse_remote(sid)
                self._outbox.control.append(ResetFrame(sid, ErrorCode.UNAUTHORIZED, 0))
                return StreamReset(
                    stream_id=sid, code=ErrorCode.UNAUTHORIZED, remote=False, resource=f.resource
                )
        s = Stream(
            sid,
            f.resource,
            False,
            SendCredit(self._params.initial_stream_window),
            RecvWindow(self._cfg.initial_stream_window),
            grant=grant,
        )
        table.add(s)
        self._budgets.progress()  # only an accepted OPEN is progress
        return StreamOpened(stream_id=sid, resource=f.resource, grant=grant)

    def _on_request(self, f: RequestFrame) -> Event | None:
        """REQUEST: exactly OPEN(s, resource) then MESSAGE(s, payload, last, end_stream).

        Every check, charge and credit of those two frames applies unchanged
        (the decoder admits REQUEST only where it was negotiated). Events, all
        queued: ``StreamOpened``, ``MessageReceived``, ``StreamEnded`` as for
        the pair, or the refusal's ``StreamReset`` (the payload is then a
        message on a dead stream: its connection credit goes back at once).
        """
        opened = self._on_open(f)  # the fields OPEN has
        events = self._events
        # The open's event is queued before the message is applied: if the message
        # fails the connection, the open was still reported, as for the two frames.
        events.append(opened)
        at = len(events)
        got = self._on_message(MessageFrame(f.stream_id, f.payload, True, True))
        if got is not None:
            events.insert(at, got)  # before the StreamEnded the message queued
        return None

    def _on_reply(self, f: ReplyFrame) -> Event | None:
        """REPLY: exactly MESSAGE(s, payload, last, end_stream) on a stream the receiver opened.

        Raises:
            _Fail: ``PROTOCOL_ERROR`` on a stream ID of the peer's own parity.
        """
        if not self._table.is_local_id(f.stream_id):
            raise _Fail(ErrorCode.PROTOCOL_ERROR, f"REPLY on stream {f.stream_id} the peer opened")
        return self._on_message(MessageFrame(f.stream_id, f.payload, True, True))

    def _on_reset(self, f: ResetFrame) -> Event | None:
        s = self._lookup(f.stream_id, "RESET", crossing=True)
        self._budgets.charge_churn(self._timers.now)
        if s is None:
            return None
        expected = s.recv_window.received
        if f.final_size != expected or (s.recv_final is not None and f.final_size != s.recv_final):
            raise _Fail(ErrorCode.FINAL_SIZE_ERROR, f"final size {f.final_size} != {expected}")
        if s.state is StreamState.CLOSED:
            # Both ends were already sent: the RESET crossed our end in flight.
            # Whatever of ours is still queued will not be read: drop it.
            dropped = s.drop_pending()
            self._table.finish(s)
            return StreamReset(stream_id=s.stream_id, code=f.code, remote=True) if dropped else None
        s.drop_pending()
        s.drop_reassembly()
        s.apply(StreamInput.RECV_RESET)
        self._table.finish(s)
        return StreamReset(stream_id=s.stream_id, code=f.code, remote=True)

    def _on_window_update(self, f: WindowUpdateFrame) -> None:
        self._budgets.no_progress_frame("WINDOW_UPDATE")
        params = self._params
        try:
            if f.stream_id is None:
                waiting = self._table.totals.send_buffered > 0
                self._budgets.window_update(f.increment, params.initial_connection_window, waiting)
                self.conn_send.add(f.increment)
                return
            s = self._lookup(f.stream_id, "WINDOW_UPDATE", crossing=True)
            waiting = s is not None and s.send_buffered > 0
            self._budgets.window_update(f.increment, params.initial_stream_window, waiting)
            if s is not None:
                s.send_credit.add(f.increment)
        except RemoteProtocolError as exc:
            raise _Fail(exc.code, exc.message) from None

    def _on_ping(self, f: PingFrame) -> None:
        self._outbox.queue_control(PongFrame(f.payload), response=True)

    def _on_pong(self, f: PongFrame) -> Event | None:
        if self._outbox.pings.acknowledge(f.payload):
            return PingAcknowledged(payload=f.payload)
        self._budgets.no_progress_frame("unsolicited PONG")
        return None

    def _on_token(self, f: TokenFrame) -> Event:
        self._budgets.no_progress_frame("TOKEN")
        if len(f.token) > self._cfg.max_token_size:
            return TokenRejected(code=ErrorCode.TOO_LARGE)
        try:
            grant = self._auth.accept_tokens((f.token,))
        except TokenBudgetExceeded as spent:  # one name per exception type (mypyc)
            raise _Fail(ErrorCode.ENHANCE_YOUR_CALM, spent.message) from None
        except AuthorizationError as exc:
            return TokenRejected(code=exc.code)
        return TokenAccepted(grant=grant)

    def _on_key_update(self, f: KeyUpdateFrame) -> Event:
        self._budgets.key_update()
        self._reader.rekey()  # KEY_UPDATE is the last frame of its record
        outbox = self._outbox
        if f.update_requested and not outbox.key_update_queued and self._life.state in OPEN_STATES:
            outbox.queue_key_update(False)
        return KeyUpdated(remote=True, generation=self._reader.updates)

    def _on_close(self, f: CloseFrame) -> None:
        self.frames.clear()  # nothing after CLOSE reaches the application
        if self._life.state is State.CLOSING:
            code, reason = self._outbox.local_close
            self._terminate(code, reason, remote=False)
            return
        self._send_close(ErrorCode.NO_ERROR, "")
        self._terminate(f.code, f.reason, remote=True)

    def _on_extension(self, f: ExtensionFrame) -> None:
        self._budgets.no_progress_frame("ignored extension frame")

    def _on_eof(self) -> None:
        if self._life.state is State.CLOSING:
            code, reason = self._outbox.local_close
            self._terminate(code, reason, remote=False)
            return
        self._terminate(ErrorCode.TRUNCATED, "transport ended without CLOSE", remote=True)


def _grant_limit(grant: Grant) -> int:
    """The grant's ``max_message_size`` caveat (no caveat: no limit of its own).

    Raises:
        _Fail: ``INTERNAL_ERROR`` if the grant does not implement the protocol.
    """
    try:
        limit = grant.max_message_size
    except Exception as exc:  # a grant that is not a config.Grant
        raise _Fail(
            ErrorCode.INTERNAL_ERROR, f"grant has no limits: {type(exc).__name__}"
        ) from None
    if limit is None:
        return MAX_VARINT
    if type(limit) is not int or limit < 0:
        raise _Fail(ErrorCode.INTERNAL_ERROR, "grant max_message_size is not a size")
    return limit


#: The handler of each frame class (a method of :class:`Receiver`).
_HANDLERS: dict[type[Any], str] = {
    StreamFrame: "_on_stream",
    MessageFrame: "_on_message",
    OpenFrame: "_on_open",
    ResetFrame: "_on_reset",
    WindowUpdateFrame: "_on_window_update",
    PingFrame: "_on_ping",
    PongFrame: "_on_pong",
    TokenFrame: "_on_token",
    KeyUpdateFrame: "_on_key_update",
    CloseFrame: "_on_close",
    RequestFrame: "_on_request",
    ReplyFrame: "_on_reply",
    ExtensionFrame: "_on_extension",
}
# Exhaustiveness: a frame class without a handler fails at import.
assert set(_HANDLERS) == FRAME_CLASSES, "a Frame class has no receive handler"
assert all(callable(getattr(Receiver, name, None)) for name in _HANDLERS.values())

#: The same table with the functions themselves: built once here, not per connection.
_DISPATCH: dict[type[Any], Callable[[Receiver, Any], Event | None]] = {
    cls: getattr(Receiver, name) for cls, name in _HANDLERS.items()
}
