"""Outbox of a Connection: control frames and stream frames into sealed records.

Theory of operation
-------------------
``data_to_send()`` drains, in order: bytes produced before the record layer
existed (handshake messages, ABORT), then queued control frames (PONG, window
updates, RESET, TOKEN, KEY_UPDATE; a CLOSE is held back), then stream frames
round-robin over the streams with something to send, each within the stream's
and the connection's credit. Frames are coalesced into records of up to 65519
bytes of plaintext; a frame that would leave less than ``_MIN_ROOM`` bytes of
payload room starts a new record. A KEY_UPDATE ends its record and the sending
key is ratcheted right after sealing it; an automatic KEY_UPDATE follows when
the writer's volume limit is reached. A graceful CLOSE goes last, once every
queued stream byte has been framed.
"""

from __future__ import annotations

from typing import Final

from ._conn_base import ConnectionCore, ConnectionState
from .errors import LocalProtocolError
from .events import KeyUpdated
from .frames import (
    CloseFrame,
    Frame,
    KeyUpdateFrame,
    OpenFrame,
    encode_frame,
)
from .records import MAX_RECORD_PLAINTEXT, RecordWriter

__all__ = ["Outbox"]

_MIN_ROOM = 64  # start a new record rather than a frame with less payload room
_AUTO_KEY_UPDATE: Final = encode_frame(KeyUpdateFrame(False))


class _Records:
    """Coalesces encoded frames into record plaintexts and seals them into *parts*."""

    __slots__ = ("buf", "conn", "parts", "writer")

    def __init__(self, conn: Outbox, writer: RecordWriter, parts: list[bytes]) -> None:
        self.conn = conn
        self.writer = writer
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
        conn = self.conn
        conn._key_update_queued = False
        conn._events.append(KeyUpdated(remote=False, generation=w.updates))

    def flush(self) -> None:
        """Seal the current record (if any); ratchet automatically when the volume is due."""
        if self.buf:
            self.writer.seal_to(self.buf, self.parts)
            self.buf = bytearray()
        if self.writer.update_due and self.conn.state is ConnectionState.ESTABLISHED:
            self.ratchet(_AUTO_KEY_UPDATE)  # automatic, by volume


class Outbox(ConnectionCore):
    """The send side of a Connection (internal mixin)."""

    def data_to_send(self) -> bytes:
        """Return (and clear) the bytes to write to the transport.

        Control frames go first, then stream frames round-robin within
        flow-control credit, coalesced into records of up to 65519 bytes
        of plaintext; a graceful CLOSE follows the last queued stream byte.
        """
        raw = self._raw_out
        self._raw_out = bytearray()
        if self._hs is not None:
            raw += self._hs.data_to_send()
            return bytes(raw)
        w = self._writer
        if w is None or (self.state is ConnectionState.CLOSED and not self._control):
            return bytes(raw)
        parts: list[bytes] = [bytes(raw)] if raw else []
        rec = _Records(self, w, parts)
        try:
            close: Frame | None = None
            control = self._control
            if control:
                for frame in control:  # nothing queues control frames while sealing
                    if isinstance(frame, CloseFrame):
                        close = frame
                    elif isinstance(frame, KeyUpdateFrame):
                        rec.add_key_update(encode_frame(frame))
                    else:
                        rec.add(encode_frame(frame))
                control.clear()
            if close is None and self.state is ConnectionState.ESTABLISHED:
                if self._order:
                    self._emit_streams(rec)
                if self._close_pending is not None and self._send_buffered == 0:
                    code, reason = self._close_pending
                    self._close_pending = None
                    close = CloseFrame(code, reason)
                    control.clear()
            if close is not None:
                rec.add(encode_frame(close))
                if self.state is ConnectionState.ESTABLISHED:
                    self.state = ConnectionState.CLOSING
            rec.flush()
        except LocalProtocolError as exc:  # the sending key is exhausted: cannot even CLOSE
            self._control.clear()
            self._terminate(exc.code, exc.message, remote=False)
        if parts and self._now is not None:
            self._last_tx = self._now
        return b"".join(parts)

    def _emit_streams(self, rec: _Records) -> None:
        order = self._order
        streams = self._table.streams
        conn_send = self._conn_send
        for _ in range(1_000_000):  # bounded: each round sends a frame or stops
            if not order:
                return
            progressed = False
            for _ in range(len(order)):
                sid = order.pop(0)
                s = streams.get(sid)
                if s is None or not s.has_pending():
                    if s is not None:
                        self._maybe_finish(s)
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
                    self._send_buffered -= sent
                    if sent:
                        self._budgets.no_progress = 0
                    progressed = True
                if s.has_pending():
                    order.append(sid)
                else:
                    self._maybe_finish(s)
            if not progressed:
                return
