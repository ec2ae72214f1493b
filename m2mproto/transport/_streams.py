"""Per-stream state and the anyio streams the application holds.

Theory of operation
-------------------
Each open stream has one :class:`~._link.Channel` in its session's
:class:`~._link.Link`: an inbox of data chunks and messages the pump filled
(with the credit each one holds), what ended it, and the signal readers wait
on. :class:`DataStream`
(an ``anyio.abc.ByteStream``) and :class:`MessageStream` (an
``anyio.abc.ObjectStream``) are thin views of a channel: reading takes from
the inbox and returns the credit to the peer; writing queues into the core
through the link and waits for the queue to drain below the high-water
mark. :class:`Incoming` is one message delivered to ``async for incoming in
session``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import ByteStream, ObjectStream

from ..errors import (
    ErrorCode,
    LocalProtocolError,
)
from ._errors import reset_error
from ._link import Channel, Link, Peer

__all__ = ["Attributes", "DataStream", "Incoming", "MessageStream"]

#: The typed attributes a session publishes (its streams publish the same).
Attributes = Callable[[], Mapping[Any, Callable[[], Any]]]


class Incoming:
    """A message the peer sent to this session with no handler registered for it.

    ``reply(value)`` answers it (a request); if the application does not reply,
    the stream is ended without a reply when the next message is taken.
    """

    __slots__ = ("_answered", "_link", "grant", "peer", "resource", "stream_id", "value")

    def __init__(
        self, link: Link, peer: Peer, stream_id: int, resource: str, value: Any, grant: object
    ) -> None:
        self._link = link
        self._answered = False
        self.stream_id = stream_id
        self.resource = resource
        self.value = value
        self.grant = grant
        self.peer = peer

    async def reply(self, value: Any) -> None:
        """Send *value* as the reply and end the stream.

        Raises:
            LocalProtocolError: (``INVALID_STATE``) if already answered.
            ConnectionClosedError: the session is closed.
        """
        if self._answered:
            raise LocalProtocolError("this message was already answered", ErrorCode.INVALID_STATE)
        self._answered = True
        await self._link.queue_send(
            self.stream_id, value, message=True, end_stream=True, flush=True
        )

    def _finish(self) -> None:
        if not self._answered:
            self._answered = True
            self._link.end(self.stream_id)

    def __repr__(self) -> str:
        return f"Incoming(resource={self.resource!r}, peer={self.peer.short_id!r})"


class _StreamBase:
    """Shared lifecycle of :class:`DataStream` and :class:`MessageStream`."""

    def __init__(self, link: Link, chan: Channel, attributes: Attributes) -> None:
        self._link = link
        self._chan = chan
        self._attributes = attributes

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
        self._link.check_open()
        if chan.reset is not None:
            raise reset_error(chan.stream_id, *chan.reset, chan.resource)
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
        chan = self._chan
        while True:  # until an item, the end, a reset or the close; each retry follows an event
            if chan.inbox:
                return "message" if chan.inbox[0][0] else "bytes"
            if chan.recv_ended:
                return None
            self._link.check_open()
            if chan.reset is not None:
                raise reset_error(chan.stream_id, *chan.reset, chan.resource)
            await chan.changed.wait()

    async def send_eof(self) -> None:
        """End our half of the stream (the peer's reads then end)."""
        chan = self._chan
        if chan.send_ended or chan.reset is not None or self._link.closed.is_set():
            return
        self._link.end(chan.stream_id)

    async def reset(self, code: int = ErrorCode.CANCELLED) -> None:
        """Abort the stream in both directions with *code*."""
        chan = self._chan
        if chan.reset is None and not self._link.closed.is_set():
            self._link.reset(chan, code)

    async def aclose(self) -> None:
        """End our half and stop reading; whatever we queued is still delivered."""
        await self.send_eof()
        self._link.detach(self._chan)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._attributes()


class DataStream(_StreamBase, ByteStream):
    """A byte stream over one m2mproto stream (an ``anyio.abc.ByteStream``).

    ``send`` waits for flow-control credit; ``receive`` raises
    ``anyio.EndOfStream`` at the peer's end of stream.
    """

    def as_message_stream(self) -> MessageStream:
        """The same stream read and written as CBOR messages (one stream, one state)."""
        return MessageStream(self._link, self._chan, self._attributes)

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
                self._link.acknowledge(chan.stream_id, max_bytes)
                self._link.pump.settle()
                return bytes(data[:max_bytes])
        got, value = await self._link.next_item(chan, want_message=False)
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
        link, sid = self._link, self._chan.stream_id
        step = max(link.high_water, 1)
        if type(item) is bytes and len(item) <= step:
            # the common case: the core keeps these very bytes (no slice, no copy)
            await link.queue_send(sid, item, message=False)
            await link.wait_drained(sid)
            return
        view = memoryview(bytes(item))
        for offset in range(0, len(view), step):
            await link.queue_send(sid, view[offset : offset + step], message=False)
            await link.wait_drained(sid)


class MessageStream(_StreamBase, ObjectStream[Any]):
    """A stream of CBOR messages (an ``anyio.abc.ObjectStream``)."""

    def as_data_stream(self) -> DataStream:
        """The same stream read and written as bytes (one stream, one state)."""
        return DataStream(self._link, self._chan, self._attributes)

    async def receive(self) -> Any:
        """Return the next message.

        Raises:
            anyio.EndOfStream: the peer ended the stream.
            AuthorizationError / StreamResetError / ConnectionClosedError.
        """
        got, value = await self._link.next_item(self._chan, want_message=True)
        if not got:
            raise anyio.EndOfStream
        return value

    async def send(self, item: Any, *, end_stream: bool = False) -> None:
        """Send one message (any value the CBOR profile encodes).

        With *end_stream*, the message is the last one: it carries our end of
        the stream in the same frame (spec/application.md), as
        ``send`` followed by ``send_eof`` would in two.

        Raises:
            LocalProtocolError: the value cannot be encoded or is too large.
            anyio.ClosedResourceError / AuthorizationError / StreamResetError /
            ConnectionClosedError.
        """
        self._check_send()
        await self._link.queue_send(
            self._chan.stream_id, item, message=True, end_stream=end_stream
        )
        await self._link.wait_drained(self._chan.stream_id)
