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

from collections.abc import Callable
from typing import Final

from ._conn_base import ConnectionCore, ConnectionState
from .errors import LocalProtocolError
from .events import KeyUpdated
from .frames import (
    CloseFrame,
    Frame,
    KeyUpdateFrame,
    OpenFrame,
    StreamFrame,
    encode_frame,
)
from .records import MAX_RECORD_PLAINTEXT
from .streams import payload_room as _payload_room

__all__ = ["Outbox"]

_MIN_ROOM = 64  # start a new record rather than a frame with less payload room
_AUTO_KEY_UPDATE: Final = encode_frame(KeyUpdateFrame(False))


class Outbox(ConnectionCore):
    """The send side of a Connection (internal mixin)."""

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
                        self._budgets.no_progress = 0
                    emit(frame)
                    progressed = True
                if s.has_pending():
                    self._order.append(sid)
                else:
                    self._maybe_finish(s)
            if not progressed:
                return
