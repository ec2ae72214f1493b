"""Frame handlers of a Connection: apply one received frame, return at most one event.

Theory of operation
-------------------
``next_event`` decodes a whole record first (a record with one bad frame
changes nothing), then hands its frames one at a time to
:meth:`FrameHandlers._handle_frame`. Each handler checks the frame against the
stream table, flow control and the budgets, then changes state and returns an
event (or ``None``; follow-up events go to ``_events``). A fault of the peer
raises :class:`_Fail` (the caller closes the connection with its code); a fault
confined to one stream resets that stream and returns ``StreamReset``. While
CLOSING only CLOSE and KEY_UPDATE are still processed.
"""

from __future__ import annotations

from . import cbor
from ._conn_base import ConnectionCore, ConnectionState
from ._conn_budgets import _Fail
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
)
from .streams import RecvWindow, SendCredit, Stream, StreamInput, StreamState

__all__ = ["FrameHandlers"]

_RECEIVING = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})


class FrameHandlers(ConnectionCore):
    """The receive side of an established Connection (internal mixin)."""

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
            self._budgets.no_progress_frame("unsolicited PONG")
            return None
        if isinstance(frame, TokenFrame):
            return self._on_token(frame)
        if isinstance(frame, KeyUpdateFrame):
            return self._on_key_update(frame)
        if isinstance(frame, CloseFrame):
            self._on_close(frame)
            return None
        assert isinstance(frame, ExtensionFrame)
        self._budgets.no_progress_frame("ignored extension frame")
        return None

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
        inc = self._conn_recv.consume_and_update(n)
        if inc:
            self._control.append(WindowUpdateFrame(None, inc))
        if s is not None and s.state in _RECEIVING:
            inc = s.recv_window.consume_and_update(n)
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
            self._budgets.no_progress_frame("empty STREAM frame")
            return None
        self._budgets.progress()
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

    def _on_message(self, f: MessageFrame) -> Event | None:
        s = self._table.streams.get(f.stream_id)
        if s is None:
            s = self._lookup(f.stream_id, "MESSAGE")
        if s is not None and not s.can_receive():
            raise _Fail(ErrorCode.STREAM_STATE_ERROR, f"message after end on stream {s.stream_id}")
        n = len(f.fragment)
        if s is None:
            self._account(s, n)
            return None
        cr, rw = self._conn_recv, s.recv_window
        if cr.received + n <= cr.limit and rw.received + n <= rw.limit:
            cr.received += n  # within both windows (what _account checks)
            rw.received += n
        else:
            self._account(s, n)  # raises FLOW_CONTROL_ERROR
        if not f.fragment and not f.last:
            self._budgets.no_progress_frame("empty MESSAGE fragment")
            return None
        self._budgets.progress()
        self._consumed(s, len(f.fragment))
        grant: object = None
        if not s.reassembly and self._authorizer is not None and not s.local:
            # (messages on a stream we opened are replies: the open was ours)
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
        return MessageReceived(stream_id=s.stream_id, value=value, grant=s.grant, size=len(data))

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
        self._budgets.progress()
        if self._authorizer is not None:
            assert self.peer is not None
            try:
                s.grant = self._authorizer.authorize(
                    self.peer, f.resource, self.config.policy.open_stream, self._unix()
                )
            except AuthorizationError:
                self._budgets.charge_churn(self._now)
                return self._reset_local(s, ErrorCode.UNAUTHORIZED)
        return StreamOpened(stream_id=sid, resource=f.resource, grant=s.grant)

    def _on_reset(self, f: ResetFrame) -> Event | None:
        s = self._lookup(f.stream_id, "RESET", crossing=True)
        self._budgets.charge_churn(self._now)
        if s is None:
            return None
        expected = s.recv_window.received
        if f.final_size != expected or (s.recv_final is not None and f.final_size != s.recv_final):
            raise _Fail(ErrorCode.FINAL_SIZE_ERROR, f"final size {f.final_size} != {expected}")
        if s.state is StreamState.CLOSED:
            # Both ends were already sent: the RESET crossed our end in flight.
            # Whatever of ours is still queued will not be read: drop it.
            dropped = s.drop_pending()
            self._send_buffered -= dropped
            self._table.finish(s)
            return StreamReset(stream_id=s.stream_id, code=f.code, remote=True) if dropped else None
        self._send_buffered -= s.drop_pending()
        self._reassembly_total -= len(s.reassembly)
        s.reassembly = bytearray()
        s.apply(StreamInput.RECV_RESET)
        self._table.finish(s)
        return StreamReset(stream_id=s.stream_id, code=f.code, remote=True)

    def _on_window_update(self, f: WindowUpdateFrame) -> None:
        self._budgets.no_progress_frame("WINDOW_UPDATE")
        params = self.peer_parameters
        assert params is not None  # frames are only read once established
        try:
            if f.stream_id is None:
                self._budgets.window_update(
                    f.increment, params.initial_connection_window, self._send_buffered > 0
                )
                self._conn_send.add(f.increment)
                return
            s = self._lookup(f.stream_id, "WINDOW_UPDATE", crossing=True)
            waiting = s is not None and s.send_buffered > 0
            self._budgets.window_update(f.increment, params.initial_stream_window, waiting)
            if s is not None:
                s.send_credit.add(f.increment)
        except RemoteProtocolError as exc:
            raise _Fail(exc.code, exc.message) from None

    def _on_token(self, f: TokenFrame) -> Event:
        self._budgets.no_progress_frame("TOKEN")
        if len(f.token) > self.config.max_token_size:
            return TokenRejected(code=ErrorCode.TOO_LARGE)
        try:
            grant = self._accept_tokens((f.token,), at_handshake=False)
        except TokenBudgetExceeded as exc:
            raise _Fail(ErrorCode.ENHANCE_YOUR_CALM, exc.message) from None
        except AuthorizationError as exc:
            return TokenRejected(code=exc.code)
        return TokenAccepted(grant=grant)

    def _on_key_update(self, f: KeyUpdateFrame) -> Event:
        self._budgets.key_update()
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
