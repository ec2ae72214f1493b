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
connection's outbox has :meth:`Stream.write_frames` encode them straight
into the record being filled. Connection-wide sums (bytes queued to send,
bytes of partial incoming messages) live in one :class:`StreamTotals` per
table, changed only by the :class:`Stream` methods that change a stream's
own counts, so they cannot drift from the per-stream values.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING, Final

from .cbor import head
from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError, StreamLimitReached
from .frames import MAX_VARINT, append_data_frame

if TYPE_CHECKING:
    from .config import Grant

_MAX_RECORD_PLAINTEXT = 65519  # records.MAX_RECORD_PLAINTEXT (records imports nothing from here)

__all__ = [
    "TRANSITIONS",
    "ConnectionWindows",
    "RecvWindow",
    "SendCredit",
    "Stream",
    "StreamInput",
    "StreamState",
    "StreamTable",
    "StreamTotals",
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


class StreamTotals:
    """Sums over the streams of one table (read them; only :class:`Stream` changes them)."""

    __slots__ = ("reassembly", "send_buffered")

    def __init__(self) -> None:
        #: Bytes queued by the application on all streams and not yet framed.
        self.send_buffered = 0
        #: Bytes of partial incoming messages held on all streams.
        self.reassembly = 0


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
    #: The grant of the peer's open, then of its latest message (None: no authorizer).
    grant: Grant | None = None
    #: Bytes queued by the application and not yet framed.
    send_buffered: int = 0
    #: Partial incoming message (CBOR bytes); change it only through the methods.
    reassembly: bytearray = field(default_factory=bytearray)
    #: The table's sums this stream contributes to (its own until added to a table).
    totals: StreamTotals = field(default_factory=StreamTotals)
    #: Final size announced by the peer (end flag or RESET).
    recv_final: int | None = None
    #: An OPEN frame still has to be sent (locally opened streams).
    open_pending: bool = False
    #: Whether an end-of-stream flag has been put on the wire.
    end_sent: bool = False
    #: Largest size of the message being received: our limit, narrowed by its grant.
    message_limit: int = 0
    #: Manual flow control: bytes of the partial message the core credited on receipt.
    credit_advance: int = 0
    #: Manual flow control: credit given ahead for delivered messages, not yet acknowledged.
    credit_owed: int = 0
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
        self.totals.send_buffered += len(data)

    def has_pending(self) -> bool:
        """Whether a frame is waiting (it may still be blocked on credit)."""
        return bool(self._queue) or self.open_pending

    def single_final_message(self) -> bytes | None:
        """The queued output if it is exactly one unsent message ending our half, else None."""
        queue = self._queue
        if len(queue) != 1:
            return None
        item = queue[0]
        if not (item.is_message and item.end_stream) or item.offset:
            return None
        return item.data

    def sent_whole(self, n: int) -> None:
        """The message of :meth:`single_final_message` (*n* bytes) went out in one frame."""
        self._queue.clear()
        self.send_credit.sent += n
        self.send_buffered -= n
        self.totals.send_buffered -= n
        self.end_sent = True

    def drop_pending(self) -> int:
        """Discard everything queued (on reset); return the bytes dropped."""
        dropped = self.send_buffered
        self._queue.clear()
        self.send_buffered = 0
        self.totals.send_buffered -= dropped
        return dropped

    # -- receiving -----------------------------------------------------------

    def add_fragment(self, fragment: bytes) -> None:
        """Hold a non-last fragment of an incoming message."""
        self.reassembly += fragment
        self.totals.reassembly += len(fragment)

    def take_message(self, last: bytes) -> bytes:
        """The whole message ending in fragment *last*; the held fragments are released."""
        if not self.reassembly:
            return last
        data = bytes(self.reassembly) + last
        self.drop_reassembly()
        return data

    def drop_reassembly(self) -> None:
        """Discard a partial incoming message (reset, refusal)."""
        self.totals.reassembly -= len(self.reassembly)
        self.reassembly = bytearray()

    def write_frames(
        self, buf: bytearray, conn_credit: int, *, min_room: int, one: bool
    ) -> tuple[int, int]:
        """Append encoded STREAM/MESSAGE frames for queued items to the record *buf*.

        The hot path of the outbox: frames are encoded in place (no frame
        objects, payload copied once) with :func:`~m2mproto.frames.append_data_frame`.
        Zero-length frames are only produced to carry an end-of-stream flag.
        Frames are written while credit allows and the record keeps at least
        *min_room* bytes free; with *one* (other streams are waiting) at most
        one frame is written, so streams take turns frame by frame. The caller
        ensures the record has *min_room* bytes free on entry and consumes the
        connection credit. Returns ``(payload bytes, frames)`` written.
        """
        queue = self._queue
        credit = self.send_credit
        sid_head = head(0, self.stream_id)
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
            append_data_frame(
                buf,
                sid_head,
                data if off == 0 and done else memoryview(data)[off:end_off],
                item.is_message,
                done,
                end,
            )
            item.offset = end_off
            if done:
                queue.popleft()
            credit.sent += take
            sent += take
            frames += 1
            if end:
                self.end_sent = True
            if one:
                break
        self.send_buffered -= sent
        self.totals.send_buffered -= sent
        return sent, frames


class StreamTable:
    """All streams of a connection: IDs by role, concurrency limits, history.

    Stream IDs: the connection initiator uses even IDs (0, 2, 4, ...), the
    responder odd IDs (1, 3, 5, ...); IDs increase and are never reused. A
    bounded history of recently finished streams lets a late frame be told
    apart: ignored after a RESET (it may have crossed ours), an error after a
    graceful end.
    """

    HISTORY: Final = 1024

    __slots__ = (
        "_history",
        "_owed",
        "local_open",
        "next_local",
        "next_remote",
        "parity",
        "remote_open",
        "streams",
        "totals",
    )

    def __init__(self, initiator: bool) -> None:
        self.parity = 0 if initiator else 1
        self.next_local = self.parity
        self.next_remote = 1 - self.parity
        self.streams: dict[int, Stream] = {}
        self.local_open = 0
        self.remote_open = 0
        #: Sums over the streams in the table (bytes to send, partial messages).
        self.totals = StreamTotals()
        #: Finished streams whose delivered messages were partly credited ahead.
        self._owed: OrderedDict[int, int] = OrderedDict()
        self._history: OrderedDict[int, bool] = OrderedDict()

    def is_local_id(self, stream_id: int) -> bool:
        """Whether *stream_id* has this endpoint's parity."""
        return stream_id % 2 == self.parity

    def allocate_local(self) -> int:
        """Return the next local stream ID.

        Raises:
            StreamLimitReached: (``STREAM_LIMIT_ERROR``) if IDs are exhausted.
        """
        sid = self.next_local
        if sid > MAX_VARINT:
            raise StreamLimitReached("stream IDs exhausted")
        self.next_local += 2
        return sid

    def add(self, stream: Stream) -> None:
        """Register a new stream; its counts join the table's :attr:`totals`."""
        self.totals.send_buffered += stream.send_buffered
        self.totals.reassembly += len(stream.reassembly)
        stream.totals = self.totals
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
        if stream.credit_owed:
            self._owed[stream.stream_id] = stream.credit_owed
            while len(self._owed) > self.HISTORY:
                self._owed.popitem(last=False)

    def take_owed(self, stream_id: int, n: int) -> int:
        """Of *n* acknowledged bytes of a finished stream, those already credited.

        Manual flow control: the core credits a message's earlier fragments
        on receipt; the application acknowledges the whole message later,
        possibly after the stream finished. Remembered for the last
        :attr:`HISTORY` finished streams that still owe.
        """
        owed = self._owed.get(stream_id, 0)
        if not owed:
            return 0
        ahead = min(n, owed)
        if ahead == owed:
            del self._owed[stream_id]
        else:
            self._owed[stream_id] = owed - ahead
        return ahead

    def finish_if_done(self, stream: Stream) -> None:
        """Forget *stream* once it is reset, or ended both ways with nothing left to send."""
        if stream.state is StreamState.RESET or (
            stream.state is StreamState.CLOSED and not stream.has_pending()
        ):
            self.finish(stream)

    def refuse_remote(self, stream_id: int) -> None:
        """Record a peer's stream refused before it was ever added (its ID is used up).

        Late frames for it are then ignored like those of any reset stream.
        """
        self.next_remote = max(self.next_remote, stream_id + 2)
        self._history[stream_id] = True
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
