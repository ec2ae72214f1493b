"""Stream state machine and credit-based flow control (spec/streams.md).

Theory of operation
-------------------
A stream is bidirectional. Each side's half is ended either gracefully (an
end-of-stream flag on STREAM or MESSAGE) or abortively (RESET, which aborts
both halves). The lifecycle is role-agnostic (h11's "Rule 2"): the same table
serves the stream's initiator and its acceptor, and inputs are named from this
endpoint's point of view::

    OPEN --SEND_END--> HALF_CLOSED_LOCAL --RECV_END--> CLOSED
    OPEN --RECV_END--> HALF_CLOSED_REMOTE --SEND_END--> CLOSED
    any non-terminal --SEND_RESET / RECV_RESET--> RESET

An input missing from :data:`TRANSITIONS` is refused: a local input raises
``LocalProtocolError(INVALID_STATE)`` naming the state and input, a remote
one raises ``RemoteProtocolError(STREAM_STATE_ERROR)``. The state does not
change on a refused input.

Flow control follows HTTP/2 and QUIC. The receiver grants *credit*: an
absolute limit on the bytes (STREAM data and MESSAGE fragments) the sender
may put on a stream, and a second limit for the connection as a whole.
:class:`SendCredit` tracks what we may still send; :class:`RecvWindow` checks
what the peer sends against what we granted and decides, as the application
consumes bytes, when a WINDOW_UPDATE is due (once half a window was consumed,
so updates cost O(bytes / window)). Credit never exceeds 2^62-1; nothing here
ever makes a window negative.

Outgoing bytes wait in the stream's send queue until credit allows; the
connection pulls frames from it with :meth:`Stream.next_frame`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum, auto

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .frames import MAX_VARINT, MessageFrame, StreamFrame, frame_overhead

_MAX_RECORD_PLAINTEXT = 65519  # records.MAX_RECORD_PLAINTEXT (records imports nothing from here)


def _head(major: int, value: int) -> bytes:
    mt = major << 5
    if value < 24:
        return bytes((mt | value,))
    if value < 0x100:
        return bytes((mt | 24, value))
    if value < 0x10000:
        return bytes((mt | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((mt | 26,)) + value.to_bytes(4, "big")
    return bytes((mt | 27,)) + value.to_bytes(8, "big")


__all__ = [
    "TRANSITIONS",
    "ConnectionWindows",
    "RecvWindow",
    "SendCredit",
    "Stream",
    "StreamInput",
    "StreamState",
    "StreamTable",
]


class StreamState(Enum):
    """Lifecycle of one stream, from this endpoint's point of view."""

    #: Both halves open.
    OPEN = auto()
    #: We ended our half; the peer may still send.
    HALF_CLOSED_LOCAL = auto()
    #: The peer ended its half; we may still send.
    HALF_CLOSED_REMOTE = auto()
    #: Both halves ended gracefully (terminal).
    CLOSED = auto()
    #: Aborted by either side (terminal).
    RESET = auto()


class StreamInput(Enum):
    """Inputs of the stream state machine."""

    SEND_DATA = auto()
    SEND_END = auto()
    SEND_RESET = auto()
    RECV_DATA = auto()
    RECV_END = auto()
    RECV_RESET = auto()


S, In = StreamState, StreamInput
#: (state, input) -> next state. Pairs not listed are errors.
TRANSITIONS: dict[tuple[StreamState, StreamInput], StreamState] = {
    (S.OPEN, In.SEND_DATA): S.OPEN,
    (S.OPEN, In.SEND_END): S.HALF_CLOSED_LOCAL,
    (S.OPEN, In.RECV_DATA): S.OPEN,
    (S.OPEN, In.RECV_END): S.HALF_CLOSED_REMOTE,
    (S.OPEN, In.SEND_RESET): S.RESET,
    (S.OPEN, In.RECV_RESET): S.RESET,
    (S.HALF_CLOSED_LOCAL, In.RECV_DATA): S.HALF_CLOSED_LOCAL,
    (S.HALF_CLOSED_LOCAL, In.RECV_END): S.CLOSED,
    (S.HALF_CLOSED_LOCAL, In.SEND_RESET): S.RESET,
    (S.HALF_CLOSED_LOCAL, In.RECV_RESET): S.RESET,
    (S.HALF_CLOSED_REMOTE, In.SEND_DATA): S.HALF_CLOSED_REMOTE,
    (S.HALF_CLOSED_REMOTE, In.SEND_END): S.CLOSED,
    (S.HALF_CLOSED_REMOTE, In.SEND_RESET): S.RESET,
    (S.HALF_CLOSED_REMOTE, In.RECV_RESET): S.RESET,
}
del S, In

_LOCAL_INPUTS = frozenset({StreamInput.SEND_DATA, StreamInput.SEND_END, StreamInput.SEND_RESET})
TERMINAL = frozenset({StreamState.CLOSED, StreamState.RESET})


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionWindows:
    """A snapshot of the connection-level flow-control state (read-only).

    Invariants the core keeps: ``0 <= recv_consumed <= recv_received <=
    recv_limit`` and ``0 <= send_sent <= send_limit``.
    """

    #: Bytes of STREAM data and MESSAGE fragments received from the peer.
    recv_received: int
    #: Of those, bytes the application has taken (credit returned or due).
    recv_consumed: int
    #: The absolute limit we granted the peer (its credit is ``limit - received``).
    recv_limit: int
    #: Bytes we sent to the peer.
    send_sent: int
    #: The absolute limit the peer granted us.
    send_limit: int

    @property
    def recv_available(self) -> int:
        """Bytes the peer may still send before it must wait for an update."""
        return self.recv_limit - self.recv_received

    @property
    def send_available(self) -> int:
        """Bytes we may still send before the peer must grant more."""
        return self.send_limit - self.send_sent


class SendCredit:
    """Credit the peer granted us: ``limit`` is the highest offset we may reach."""

    __slots__ = ("limit", "sent")

    def __init__(self, initial: int) -> None:
        self.limit = initial
        self.sent = 0

    @property
    def available(self) -> int:
        """Bytes we may still send (never negative)."""
        return self.limit - self.sent

    def add(self, increment: int) -> None:
        """Apply a WINDOW_UPDATE.

        Raises:
            RemoteProtocolError: ``FLOW_CONTROL_ERROR`` if the limit would
                pass 2^62-1 (the state is unchanged).
        """
        if self.limit + increment > MAX_VARINT:
            raise RemoteProtocolError("window above 2^62-1", ErrorCode.FLOW_CONTROL_ERROR)
        self.limit += increment

    def consume(self, n: int) -> None:
        """Record *n* bytes sent; the caller never exceeds :attr:`available`."""
        if n > self.available:  # pragma: no cover - internal invariant
            raise LocalProtocolError("send credit exceeded", ErrorCode.INTERNAL_ERROR)
        self.sent += n


class RecvWindow:
    """Credit we granted the peer, with automatic window-update scheduling."""

    __slots__ = ("consumed", "limit", "received", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.limit = window
        self.received = 0
        self.consumed = 0

    @property
    def available(self) -> int:
        """Bytes the peer may still send before it must wait."""
        return self.limit - self.received

    def check(self, n: int) -> None:
        """Raise if *n* more bytes would exceed the granted credit.

        Raises:
            RemoteProtocolError: ``FLOW_CONTROL_ERROR``.
        """
        if self.received + n > self.limit:
            raise RemoteProtocolError(
                f"{n} bytes exceed the flow-control window ({self.available} left)",
                ErrorCode.FLOW_CONTROL_ERROR,
            )

    def receive(self, n: int) -> None:
        """Account *n* received bytes (call :meth:`check` first)."""
        self.check(n)
        self.received += n

    def consume(self, n: int) -> None:
        """The application took *n* received bytes; credit may be returned."""
        self.consumed = min(self.consumed + n, self.received)

    def consume_and_update(self, n: int) -> int:
        """:meth:`consume` then :meth:`update_due` in one call (the per-frame hot path)."""
        consumed = self.consumed + n
        if consumed > self.received:
            consumed = self.received
        self.consumed = consumed
        target = consumed + self.window
        if target > MAX_VARINT:
            target = MAX_VARINT
        increment = target - self.limit
        if increment <= 0 or increment < self.window // 2:
            return 0
        self.limit = target
        return increment

    def update_due(self, *, force: bool = False) -> int:
        """Return the increment to grant now (0 if no update is due) and apply it."""
        target = min(self.consumed + self.window, MAX_VARINT)
        increment = target - self.limit
        if increment <= 0 or (not force and increment < self.window // 2):
            return 0
        self.limit = target
        return increment


@dataclass(eq=False, slots=True)
class _Pending:
    """One queued outgoing item: stream bytes or one encoded message."""

    is_message: bool
    data: bytes
    end_stream: bool
    offset: int = 0


@dataclass(eq=False, slots=True)
class Stream:
    """One stream: state, windows, send queue and message reassembly."""

    stream_id: int
    resource: str
    local: bool
    send_credit: SendCredit
    recv_window: RecvWindow
    state: StreamState = StreamState.OPEN
    grant: object = None
    #: Bytes queued by the application and not yet framed.
    send_buffered: int = 0
    #: Partial incoming message (CBOR bytes).
    reassembly: bytearray = field(default_factory=bytearray)
    #: Final size announced by the peer (end flag or RESET).
    recv_final: int | None = None
    #: An OPEN frame still has to be sent (locally opened streams).
    open_pending: bool = False
    #: Whether an end-of-stream flag has been put on the wire.
    end_sent: bool = False
    _queue: deque[_Pending] = field(default_factory=deque)

    # -- state machine -----------------------------------------------------

    def apply(self, event: StreamInput) -> StreamState:
        """Apply *event* via :data:`TRANSITIONS`.

        Raises:
            LocalProtocolError: ``INVALID_STATE`` for a refused local input.
            RemoteProtocolError: ``STREAM_STATE_ERROR`` for a refused remote input.
        """
        try:
            new = TRANSITIONS[(self.state, event)]
        except KeyError:
            msg = f"stream {self.stream_id}: {event.name} not allowed in state {self.state.name}"
            if event in _LOCAL_INPUTS:
                raise LocalProtocolError(msg, ErrorCode.INVALID_STATE) from None
            raise RemoteProtocolError(msg, ErrorCode.STREAM_STATE_ERROR) from None
        self.state = new
        return new

    def can_send(self) -> bool:
        """Whether the application may still queue bytes on this stream."""
        return self.state in (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)

    def can_receive(self) -> bool:
        """Whether the peer may still send bytes on this stream."""
        return self.state in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL)

    # -- sending -------------------------------------------------------------

    def queue(self, data: bytes, *, is_message: bool, end_stream: bool) -> None:
        """Queue bytes (or one encoded message) after the state check passed."""
        self._queue.append(_Pending(is_message, bytes(data), end_stream))
        self.send_buffered += len(data)

    def has_pending(self) -> bool:
        """Whether a frame is waiting (it may still be blocked on credit)."""
        return bool(self._queue) or self.open_pending

    def drop_pending(self) -> int:
        """Discard everything queued (on reset); return the bytes dropped."""
        dropped = self.send_buffered
        self._queue.clear()
        self.send_buffered = 0
        return dropped

    def write_frames(
        self, buf: bytearray, conn_credit: int, *, min_room: int, one: bool
    ) -> tuple[int, int]:
        """Append encoded STREAM/MESSAGE frames for queued items to the record *buf*.

        The hot path of the outbox: the same frames :meth:`next_frame` would
        produce, encoded in place (no frame objects, payload copied once).
        Frames are written while credit allows and the record keeps at least
        *min_room* bytes free; with *one* (other streams are waiting) at most
        one frame is written, so streams take turns frame by frame. The caller
        ensures the record has *min_room* bytes free on entry and consumes the
        connection credit. Returns ``(payload bytes, frames)`` written.
        """
        queue = self._queue
        credit = self.send_credit
        sid_head = _head(0, self.stream_id)
        overhead = 4 + len(sid_head)  # kind prefix 2, flags <= 2, + the length head
        sent = frames = 0
        while queue:
            space = _MAX_RECORD_PLAINTEXT - len(buf)
            if space < min_room:
                break
            item = queue[0]
            data = item.data
            off = item.offset
            remaining = len(data) - off
            room = space - overhead - (1 if space < 24 else 2 if space < 256 else 3)
            take = min(remaining, room, credit.limit - credit.sent, conn_credit - sent)
            if take <= 0 and remaining > 0:
                break
            end_off = off + take
            done = end_off == len(data)
            end = done and item.end_stream
            buf += b"\x85\x03" if item.is_message else b"\x84\x01"
            buf += sid_head
            buf += _head(2, take)
            if off == 0 and done:
                buf += data
            else:
                buf += memoryview(data)[off:end_off]
            if item.is_message:
                buf += _FLAGS2[done, end]
            else:
                buf += b"\xf5" if end else b"\xf4"
            item.offset = end_off
            if done:
                queue.popleft()
            credit.sent += take
            self.send_buffered -= take
            sent += take
            frames += 1
            if end:
                self.end_sent = True
            if one:
                break
        return sent, frames

    def next_frame(self, max_payload: int, conn_credit: int) -> StreamFrame | MessageFrame | None:
        """Pop the next STREAM/MESSAGE frame that credit allows, or None.

        *max_payload* bounds the frame's payload (record space); *conn_credit*
        is the connection-level credit. Zero-length frames are only produced
        to carry an end-of-stream flag. The caller consumes the connection
        credit for ``len(payload)``.
        """
        if not self._queue:
            return None
        item = self._queue[0]
        remaining = len(item.data) - item.offset
        take = min(remaining, max_payload, self.send_credit.available, conn_credit)
        if take <= 0 and remaining > 0:
            return None
        chunk = item.data[item.offset : item.offset + take]
        item.offset += take
        done = item.offset == len(item.data)
        if done:
            self._queue.popleft()
        end = done and item.end_stream
        self.send_credit.consume(take)
        self.send_buffered -= take
        if end:
            self.end_sent = True
        if item.is_message:
            return MessageFrame(self.stream_id, chunk, last=done, end_stream=end)
        return StreamFrame(self.stream_id, chunk, end)


_FLAGS2 = {
    (False, False): b"\xf4\xf4",
    (True, False): b"\xf5\xf4",
    (True, True): b"\xf5\xf5",
}


def payload_room(stream_id: int, space: int) -> int:
    """Largest payload whose STREAM/MESSAGE frame fits in *space* bytes."""
    room = space - frame_overhead(stream_id, space)
    return max(room, 0)


class StreamTable:
    """All streams of a connection: IDs by role, concurrency limits, history.

    Stream IDs: the connection initiator uses even IDs (0, 2, 4, ...), the
    responder odd IDs (1, 3, 5, ...); IDs increase and are never reused. A
    bounded history of recently finished streams lets a late frame be told
    apart: ignored after a RESET (it may have crossed ours), an error after a
    graceful end.
    """

    HISTORY = 1024

    def __init__(self, initiator: bool) -> None:
        self.parity = 0 if initiator else 1
        self.next_local = self.parity
        self.next_remote = 1 - self.parity
        self.streams: dict[int, Stream] = {}
        self.local_open = 0
        self.remote_open = 0
        self._history: OrderedDict[int, bool] = OrderedDict()

    def is_local_id(self, stream_id: int) -> bool:
        """Whether *stream_id* has this endpoint's parity."""
        return stream_id % 2 == self.parity

    def allocate_local(self) -> int:
        """Return the next local stream ID.

        Raises:
            LocalProtocolError: ``STREAM_LIMIT_ERROR`` if IDs are exhausted.
        """
        sid = self.next_local
        if sid > MAX_VARINT:
            raise LocalProtocolError("stream IDs exhausted", ErrorCode.STREAM_LIMIT_ERROR)
        self.next_local += 2
        return sid

    def add(self, stream: Stream) -> None:
        """Register a new stream."""
        self.streams[stream.stream_id] = stream
        if stream.local:
            self.local_open += 1
        else:
            self.remote_open += 1
            self.next_remote = stream.stream_id + 2

    def finish(self, stream: Stream) -> None:
        """Forget a stream in a terminal state, remembering how it ended."""
        if self.streams.pop(stream.stream_id, None) is None:
            return
        if stream.local:
            self.local_open -= 1
        else:
            self.remote_open -= 1
        self._history[stream.stream_id] = stream.state is StreamState.RESET
        while len(self._history) > self.HISTORY:
            self._history.popitem(last=False)

    def classify_unknown(self, stream_id: int) -> str:
        """For an ID not in the table: ``"new"``, ``"reset"`` (ignore), ``"closed"``, or ``"idle"``.

        ``"closed"``: ended gracefully (frames are STREAM_STATE_ERROR);
        ``"reset"``: ended by RESET or forgotten (late frames are ignored);
        ``"idle"``: a local-parity ID we never opened (STREAM_STATE_ERROR);
        ``"new"``: a remote-parity ID the peer has not used yet.
        """
        if stream_id in self._history:
            return "reset" if self._history[stream_id] else "closed"
        if self.is_local_id(stream_id):
            return "reset" if stream_id < self.next_local else "idle"
        return "reset" if stream_id < self.next_remote else "new"
