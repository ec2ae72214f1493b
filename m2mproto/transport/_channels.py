"""Per-stream state and the anyio streams the application holds.

Theory of operation
-------------------
Each open stream has one :class:`_Channel` in its session: an inbox of data
chunks and messages the pump filled (with the credit each one holds), what
ended it, and the :class:`~._pump.Signal` readers wait on. :class:`DataStream`
(an ``anyio.abc.ByteStream``) and :class:`MessageStream` (an
``anyio.abc.ObjectStream``) are thin views of a channel: reading takes from
the inbox and returns the credit to the peer; writing queues into the core
through the session and waits for the queue to drain below the high-water
mark. :class:`Incoming` is one message delivered to ``async for incoming in
session``.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import ByteStream, ObjectStream

from ..errors import (
    ErrorCode,
    LocalProtocolError,
)
from ._errors import reset_error
from ._pump import Signal

if TYPE_CHECKING:
    from .server import Route
    from .session import Session

__all__ = ["DataStream", "Incoming", "MessageStream"]


@dataclass(eq=False, slots=True)
class _Channel:
    """Local view of one stream: the inbox and what ended it."""

    stream_id: int
    resource: str
    local: bool
    grant: object = None
    inbox: deque[tuple[bool, Any, int]] = dataclasses.field(default_factory=deque)
    inbox_bytes: int = 0
    recv_ended: bool = False
    send_ended: bool = False
    reset: tuple[int, bool] | None = None
    detached: bool = False
    #: A request/message route waiting for the stream's first message.
    route: Route | None = None
    #: The first message goes to ``async for incoming in session``.
    to_incoming: bool = False
    #: The handler task serving this stream (cancelled when the peer resets it).
    handler_scope: anyio.CancelScope | None = None
    changed: Signal = dataclasses.field(default_factory=Signal)

    def push(self, is_message: bool, value: Any, size: int) -> None:
        self.inbox.append((is_message, value, size))
        self.inbox_bytes += size
        self.changed.notify()


class Incoming:
    """A message the peer sent to this session with no handler registered for it.

    ``reply(value)`` answers it (a request); if the application does not reply,
    the stream is ended without a reply when the next message is taken.
    """

    __slots__ = ("_answered", "_session", "grant", "peer", "resource", "stream_id", "value")

    def __init__(
        self, session: Session, stream_id: int, resource: str, value: Any, grant: object
    ) -> None:
        self._session = session
        self._answered = False
        self.stream_id = stream_id
        self.resource = resource
        self.value = value
        self.grant = grant
        self.peer = session.peer

    async def reply(self, value: Any) -> None:
        """Send *value* as the reply and end the stream.

        Raises:
            LocalProtocolError: (``INVALID_STATE``) if already answered.
            ConnectionClosedError: the session is closed.
        """
        if self._answered:
            raise LocalProtocolError("this message was already answered", ErrorCode.INVALID_STATE)
        self._answered = True
        await self._session._queue_send(
            self.stream_id, value, message=True, end_stream=True, flush=True
        )

    def _finish(self) -> None:
        if not self._answered:
            self._answered = True
            self._session._end_quietly(self.stream_id)

    def __repr__(self) -> str:
        return f"Incoming(resource={self.resource!r}, peer={self.peer.short_id!r})"


class _StreamBase:
    """Shared lifecycle of :class:`DataStream` and :class:`MessageStream`."""

    def __init__(self, session: Session, chan: _Channel) -> None:
        self._session = session
        self._chan = chan

    @property
    def stream_id(self) -> int:
        """The stream's ID on the wire."""
        return self._chan.stream_id

    @property
    def resource(self) -> str:
        """The resource the stream was opened on."""
        return self._chan.resource

    @property
    def grant(self) -> object:
        """The grant that allowed the peer to open it (incoming streams)."""
        return self._chan.grant

    def _check_send(self) -> None:
        chan = self._chan
        self._session._check_open()
        if chan.reset is not None:
            raise reset_error(chan.stream_id, *chan.reset)
        if chan.send_ended:
            raise anyio.ClosedResourceError

    async def next_kind(self) -> str | None:
        """Wait for the peer's next item on the stream without taking it.

        Returns ``"message"`` (a MESSAGE) or ``"bytes"`` (STREAM data): what
        the next ``receive`` would take, so a handler can tell a message stream
        from a byte stream (spec/application.md); ``None`` once the peer ended
        the stream and nothing is left to read.

        Raises:
            AuthorizationError / StreamResetError / ConnectionClosedError.
        """
        chan, session = self._chan, self._session
        for _ in iter(int, 1):  # until an item, the end, a reset or the close
            if chan.inbox:
                return "message" if chan.inbox[0][0] else "bytes"
            if chan.recv_ended:
                return None
            session._check_open()
            if chan.reset is not None:
                raise reset_error(chan.stream_id, *chan.reset)
            await chan.changed.wait()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send_eof(self) -> None:
        """End our half of the stream (the peer's reads then end)."""
        chan = self._chan
        if chan.send_ended or chan.reset is not None or self._session.closed:
            return
        self._session._end_quietly(chan.stream_id)

    async def reset(self, code: int = ErrorCode.CANCELLED) -> None:
        """Abort the stream in both directions with *code*."""
        chan = self._chan
        if chan.reset is None and not self._session.closed:
            self._session._reset_quietly(chan.stream_id, code)
            chan.reset = (code, False)

    async def aclose(self) -> None:
        """End our half and stop reading; whatever we queued is still delivered."""
        await self.send_eof()
        chan = self._chan
        chan.detached = True
        while chan.inbox:
            _m, _v, size = chan.inbox.popleft()
            self._session._acknowledge(chan.stream_id, size)
        chan.inbox_bytes = 0
        self._session._pump.settle()
        self._session._maybe_forget(chan)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._session.extra_attributes


class DataStream(_StreamBase, ByteStream):
    """A byte stream over one m2mproto stream (an ``anyio.abc.ByteStream``).

    ``send`` waits for flow-control credit; ``receive`` raises
    ``anyio.EndOfStream`` at the peer's end of stream.
    """

    def as_message_stream(self) -> MessageStream:
        """The same stream read and written as CBOR messages (one stream, one state)."""
        return MessageStream(self._session, self._chan)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return up to *max_bytes* bytes.

        Raises:
            anyio.EndOfStream: the peer ended the stream.
            AuthorizationError: the peer refused the stream (``UNAUTHORIZED``).
            StreamResetError: the stream was reset.
            ConnectionClosedError: the session closed.
        """
        chan = self._chan
        if chan.inbox and not chan.inbox[0][0]:
            _m, data, size = chan.inbox[0]
            if size > max_bytes:
                chan.inbox[0] = (False, data[max_bytes:], size - max_bytes)
                chan.inbox_bytes -= max_bytes
                self._session._acknowledge(chan.stream_id, max_bytes)
                self._session._pump.settle()
                return bytes(data[:max_bytes])
        got, value = await self._session._next_item(chan, want_message=False)
        if not got:
            raise anyio.EndOfStream
        if len(value) > max_bytes:  # pragma: no cover - handled above
            raise AssertionError("oversized chunk")
        return bytes(value)

    async def send(self, item: bytes) -> None:
        """Send bytes; waits while more than the high-water mark is queued.

        If cancelled while waiting, the bytes are already queued (the stream
        stays consistent).

        Raises:
            anyio.ClosedResourceError: we already ended or closed the stream.
            AuthorizationError / StreamResetError / ConnectionClosedError.
        """
        self._check_send()
        session, sid = self._session, self._chan.stream_id
        view = memoryview(bytes(item))
        step = max(session._high_water, 1)
        for offset in range(0, len(view), step):
            await session._queue_send(sid, view[offset : offset + step], message=False)
            await session._wait_drained(sid)


class MessageStream(_StreamBase, ObjectStream[Any]):
    """A stream of CBOR messages (an ``anyio.abc.ObjectStream``)."""

    def as_data_stream(self) -> DataStream:
        """The same stream read and written as bytes (one stream, one state)."""
        return DataStream(self._session, self._chan)

    async def receive(self) -> Any:
        """Return the next message.

        Raises:
            anyio.EndOfStream: the peer ended the stream.
            AuthorizationError / StreamResetError / ConnectionClosedError.
        """
        got, value = await self._session._next_item(self._chan, want_message=True)
        if not got:
            raise anyio.EndOfStream
        return value

    async def send(self, item: Any) -> None:
        """Send one message (any value the CBOR profile encodes).

        Raises:
            LocalProtocolError: the value cannot be encoded or is too large.
            anyio.ClosedResourceError / AuthorizationError / StreamResetError /
            ConnectionClosedError.
        """
        self._check_send()
        await self._session._queue_send(self._chan.stream_id, item, message=True)
        await self._session._wait_drained(self._chan.stream_id)
