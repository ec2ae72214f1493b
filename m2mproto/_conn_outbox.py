"""FrameOutbox of a Connection: what we send, and how frames become sealed records.

Theory of operation
-------------------
:class:`FrameOutbox` owns everything queued for the peer: bytes produced before
the record layer existed (handshake messages, ABORT), control frames (PONG,
window updates, RESET, TOKEN, KEY_UPDATE, CLOSE), the round-robin order of
streams with something to send, our graceful-close reason, and our
outstanding PINGs (:class:`Pings`). Stream bytes themselves wait in each
:class:`~m2mproto.streams.Stream`; the connection-wide count of them is the
table's :class:`~m2mproto.streams.StreamTotals`, never a copy kept here.

:meth:`FrameOutbox.drain` turns the queue into records, in order: control frames
(a CLOSE is held back to go last), then stream frames round-robin over the
streams with something to send, each within the stream's and the
connection's credit. Frames are coalesced into records of up to 65519 bytes
of plaintext; a frame that would leave less than ``_MIN_ROOM`` bytes of
payload room starts a new record. A KEY_UPDATE ends its record and the
sending key is ratcheted right after sealing it; an automatic KEY_UPDATE
follows when the writer's volume limit is reached. In ``DRAINING`` the
graceful CLOSE goes out once every queued stream byte has been framed, and
the lifecycle moves to ``CLOSING``.
"""

from __future__ import annotations

from typing import Any, Final

from ._conn_budgets import Budgets
from ._conn_state import OPEN_STATES, Input, Lifecycle, State, _Fail
from .config import Configuration
from .errors import ErrorCode, LocalProtocolError
from .events import KeyUpdated
from .frames import (
    CloseFrame,
    Frame,
    KeyUpdateFrame,
    OpenFrame,
    ResetFrame,
    append_reply_frame,
    append_request_frame,
    encode_frame,
)
from .records import MAX_RECORD_PLAINTEXT, RecordWriter
from .streams import SendCredit, Stream, StreamInput, StreamTable

__all__ = ["FrameOutbox", "Pings"]

_MIN_ROOM = 64  # start a new record rather than a frame with less payload room
_AUTO_KEY_UPDATE: Final = encode_frame(KeyUpdateFrame(False))
#: Outstanding PINGs remembered; the oldest is forgotten first.
MAX_PINGS_OUT = 64


class Pings:
    """Our outstanding PING payloads, oldest first (at most :data:`MAX_PINGS_OUT`)."""

    __slots__ = ("_counter", "_out")

    def __init__(self) -> None:
        self._out: dict[bytes, None] = {}  # insertion order: FIFO eviction
        self._counter = 0

    def next_payload(self) -> bytes:
        """A fresh payload (a counter: unique per connection, no entropy needed)."""
        self._counter += 1
        return self._counter.to_bytes(8, "big")

    def sent(self, payload: bytes) -> None:
        """Remember a PING; the oldest is forgotten when :data:`MAX_PINGS_OUT` are out."""
        self._out.pop(payload, None)
        if len(self._out) >= MAX_PINGS_OUT:
            del self._out[next(iter(self._out))]
        self._out[payload] = None

    def acknowledge(self, payload: bytes) -> bool:
        """Whether a PONG with *payload* answers an outstanding PING (then forgotten)."""
        if payload in self._out:
            del self._out[payload]
            return True
        return False

    def __len__(self) -> int:
        return len(self._out)


class _Records:
    """Coalesces encoded frames into record plaintexts and seals them into *parts*."""

    __slots__ = ("box", "buf", "life", "parts", "writer")

    def __init__(
        self, box: FrameOutbox, writer: RecordWriter, life: Lifecycle, parts: list[bytes]
    ) -> None:
        self.box = box
        self.writer = writer
        self.life = life
        self.parts = parts
        #: The record being filled (plaintext).
        self.buf = bytearray()

    def add(self, raw: bytes) -> None:
        """Append one encoded frame, sealing the current record first if it would overflow."""
        if len(self.buf) + len(raw) > MAX_RECORD_PLAINTEXT:
            self.flush()
        self.buf += raw

    def add_key_update(self, raw: bytes) -> None:
        """Append a KEY_UPDATE frame: it ends its record, then the sending key ratchets."""
        self.add(raw)
        record, self.buf = self.buf, bytearray()
        self.ratchet(record)

    def ratchet(self, record: bytes | bytearray) -> None:
        """Seal *record* (ending in KEY_UPDATE) and ratchet the sending key."""
        w = self.writer
        w.seal_to(record, self.parts)
        w.rekey()
        self.box.key_update_queued = False
        self.box._events.append(KeyUpdated(remote=False, generation=w.updates))

    def flush(self) -> None:
        """Seal the current record (if any); ratchet automatically when the volume is due."""
        if self.buf:
            self.writer.seal_to(self.buf, self.parts)
            self.buf = bytearray()
        if self.writer.update_due and self.life.state in OPEN_STATES:
            self.ratchet(_AUTO_KEY_UPDATE)  # automatic, by volume


class FrameOutbox:
    """Everything queued for the peer, and the framing of it into records."""

    __slots__ = (
        "_budgets",
        "_cfg",
        "_events",
        "_table",
        "control",
        "key_update_queued",
        "liveness_due",
        "local_close",
        "order",
        "pings",
        "raw",
        "request_reply",
    )

    def __init__(
        self, cfg: Configuration, table: StreamTable, budgets: Budgets, events: list[Any]
    ) -> None:
        self._cfg = cfg
        self._table = table
        self._budgets = budgets
        self._events = events
        #: Bytes to send before any record (handshake messages, ABORT).
        self.raw = bytearray()
        #: Control frames, in order (short; a list costs less than a deque).
        self.control: list[Frame] = []
        #: Streams with something to send, in round-robin order.
        self.order: list[int] = []
        self.key_update_queued = False
        #: IK initiator: the next drain must seal a record even if it has nothing to
        #: say (an empty record proves liveness to the responder, spec/handshake.md §2.12).
        self.liveness_due = False
        #: The code and reason of our close (set once by ``Connection.close``).
        self.local_close: tuple[int, str] = (ErrorCode.NO_ERROR, "")
        self.pings = Pings()
        #: REQUEST and REPLY frames were negotiated: a stream whose whole output is one
        #: message ending its half, fitting credit and the record, goes out as one of them.
        self.request_reply = False

    # -- queueing ------------------------------------------------------------

    def queue_control(self, frame: Frame, *, response: bool = False) -> None:
        """Queue a control frame; a *response* to the peer counts against the budget.

        Raises:
            _Fail: ``ENHANCE_YOUR_CALM`` past ``max_queued_control`` responses.
        """
        if response and len(self.control) >= self._cfg.max_queued_control:
            raise _Fail(ErrorCode.ENHANCE_YOUR_CALM, "too many queued control responses")
        self.control.append(frame)

    def queue_key_update(self, request: bool) -> None:
        """Queue a KEY_UPDATE (at most one is pending)."""
        self.control.append(KeyUpdateFrame(request))
        self.key_update_queued = True

    def schedule(self, stream_id: int) -> None:
        """Give a stream with something to send its turn."""
        if stream_id not in self.order:
            self.order.append(stream_id)

    def reset(self, s: Stream, code: int) -> None:
        """Reset *s* from our side: drop both directions' buffers, queue RESET, finish it."""
        s.drop_pending()
        s.drop_reassembly()
        if s.open_pending:
            s.open_pending = False  # never announced: nothing to tell the peer
        else:
            self.control.append(ResetFrame(s.stream_id, code, s.send_credit.sent))
        s.apply(StreamInput.SEND_RESET)
        self._table.finish(s)

    def queue_close(self, code: int, reason: str) -> None:
        """Queue an abortive CLOSE: queued stream bytes are dropped, control frames still go."""
        for s in list(self._table.streams.values()):
            s.drop_pending()
        self.control.append(CloseFrame(code, reason))

    def take_raw(self) -> bytearray:
        """The bytes queued before the record layer, cleared."""
        raw, self.raw = self.raw, bytearray()
        return raw

    # -- framing -------------------------------------------------------------

    def drain(self, writer: RecordWriter, life: Lifecycle, conn_send: SendCredit) -> bytes:
        """Return (and clear) the bytes to write: raw bytes, then sealed records.

        Raises:
            LocalProtocolError: the sending key is exhausted (nothing can be
                sealed, not even a CLOSE); the control queue is cleared.
        """
        raw = self.take_raw()
        if life.state is State.CLOSED and not self.control:
            return bytes(raw)
        parts: list[bytes] = [bytes(raw)] if raw else []
        before = len(parts)
        rec = _Records(self, writer, life, parts)
        try:
            close: Frame | None = None
            control = self.control
            if control:
                for frame in control:  # nothing queues control frames while sealing
                    if isinstance(frame, CloseFrame):
                        close = frame
                    elif isinstance(frame, KeyUpdateFrame):
                        rec.add_key_update(encode_frame(frame))
                    else:
                        rec.add(encode_frame(frame))
                control.clear()
            if close is None and life.state in OPEN_STATES:
                if self.order:
                    self._emit_streams(rec, conn_send)
                if life.state is State.DRAINING and self._table.totals.send_buffered == 0:
                    close = CloseFrame(*self.local_close)
                    life.transition(Input.SEND_CLOSE)
            if close is not None:
                rec.add(encode_frame(close))
            rec.flush()
            if self.liveness_due:
                if len(parts) == before:
                    writer.seal_to(b"", parts)  # an empty record: proof of liveness
                self.liveness_due = False
        except LocalProtocolError:
            self.control.clear()
            raise
        return b"".join(parts)

    def _emit_streams(self, rec: _Records, conn_send: SendCredit) -> None:
        order = self.order
        table = self._table
        streams = table.streams
        # Bounded: each outer round either writes a frame for some stream or
        # returns; a frame uses credit or ends a queued item, both finite.
        for _ in range(1_000_000):
            if not order:
                return
            progressed = False
            for _ in range(len(order)):
                sid = order.pop(0)
                s = streams.get(sid)
                if s is None or not s.has_pending():
                    if s is not None:
                        table.finish_if_done(s)
                    continue
                if self.request_reply and self._whole_message(s, rec, conn_send):
                    progressed = True
                    table.finish_if_done(s)
                    continue
                if s.open_pending:
                    rec.add(encode_frame(OpenFrame(sid, s.resource)))
                    s.open_pending = False
                    progressed = True
                if MAX_RECORD_PLAINTEXT - len(rec.buf) < _MIN_ROOM:
                    rec.flush()
                sent, frames = s.write_frames(
                    rec.buf, conn_send.limit - conn_send.sent, min_room=_MIN_ROOM, one=bool(order)
                )
                if frames:
                    conn_send.sent += sent
                    if sent:
                        self._budgets.data_sent()
                    progressed = True
                if s.has_pending():
                    order.append(sid)
                else:
                    table.finish_if_done(s)
            if not progressed:
                return

    def _whole_message(self, s: Stream, rec: _Records, conn_send: SendCredit) -> bool:
        """Send *s*'s output as one REQUEST (OPEN pending) or REPLY (a peer's stream) frame.

        Only when it is exactly one whole message ending our half, within the
        stream's and the connection's credit, in one record; otherwise (False)
        the ordinary OPEN / MESSAGE frames carry it (spec/application.md §7.2).
        """
        data = s.single_final_message()
        if data is None:
            return False
        n = len(data)
        credit = s.send_credit
        if n > credit.limit - credit.sent or n > conn_send.limit - conn_send.sent:
            return False
        if s.open_pending:
            raw = s.resource.encode("utf-8")
        elif s.local:
            return False  # a message on our own stream is a request: MESSAGE frames
        else:
            raw = b""
        size = len(raw) + n + 24  # head, kind, stream ID, two length heads: at most 24
        if size > MAX_RECORD_PLAINTEXT:
            return False
        if len(rec.buf) + size > MAX_RECORD_PLAINTEXT:
            rec.flush()
        if s.open_pending:
            append_request_frame(rec.buf, s.stream_id, raw, data)
            s.open_pending = False
        else:
            append_reply_frame(rec.buf, s.stream_id, data)
        s.sent_whole(n)
        conn_send.sent += n
        if n:
            self._budgets.data_sent()
        return True
