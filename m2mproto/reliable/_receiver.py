"""The receiving side of reliable delivery (spec/reliability.md §4).

Theory of operation
-------------------
:class:`ReliableReceiver` is a ``message_stream`` handler. For each stream it
reads ``hello`` and answers ``welcome`` with the high-water mark of
(authenticated peer, resource, epoch). Epochs are scoped per peer: the same
epoch bytes from another identity name another, unrelated channel, so a peer
can neither block another's epoch by using it first nor learn its mark.
Then each ``data`` at the mark is delivered to the application, the new mark
is stored, and an ``ack`` is sent; a ``data`` below the mark is a resend and is
only acknowledged again.

At most one stream serves a key at a time: a new ``hello`` for a key cancels
the stream serving it (the old connection is dead but not yet detected) and
waits for it to let go. Delivery plus the store of the new mark are shielded
from that cancellation, so a takeover never loses or repeats a message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from ..errors import DecodeError, ErrorCode, M2MError
from ._store import DedupStore, MemoryDedup
from ._wire import Ack, Data, Hello, Welcome, parse

__all__ = ["Delivery", "ReliableReceiver"]

logger = logging.getLogger("m2mproto.reliable")


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the application learns with each reliably delivered message."""

    #: The authenticated sender (agent ID text).
    peer: str
    #: The resource (channel) the message was sent to.
    resource: str
    #: The sender's epoch.
    epoch: bytes
    #: The message's sequence number in the epoch.
    seq: int


Key = tuple[str, str, bytes]


class _Slot:
    __slots__ = ("lock", "scope")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.scope: anyio.CancelScope | None = None


class ReliableReceiver:
    """Deduplicating, acknowledging receiver of reliable channels.

    *deliver* is ``async def deliver(body, delivery: Delivery) -> None``; it is
    called once per message, in order. *store* keeps high-water marks
    (default: in memory).
    """

    def __init__(
        self,
        deliver: Callable[[Any, Delivery], Awaitable[None]],
        store: DedupStore | None = None,
    ) -> None:
        self._deliver = deliver
        self.store = store if store is not None else MemoryDedup()
        self._slots: dict[Key, _Slot] = {}
        #: Messages delivered to the application.
        self.delivered = 0
        #: Resent messages dropped as duplicates.
        self.duplicates = 0
        #: Streams that took over a key from an older stream.
        self.takeovers = 0

    def install(self, router: Any, pattern: str) -> None:
        """Serve reliable channels on *pattern* of a ``Router``/``Server``."""
        router.add(pattern, "message_stream", self.serve)

    async def serve(self, stream: Any, ctx: Any) -> None:
        """The ``message_stream`` handler: serve one reliable stream until it ends."""
        peer = ctx.peer.agent_id.text
        try:
            first = parse(await stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError, M2MError) as exc:
            if isinstance(exc, DecodeError):
                await stream.reset(ErrorCode.DECODE_ERROR)
            return
        if not isinstance(first, Hello):
            await stream.reset(ErrorCode.PROTOCOL_ERROR)
            return
        key: Key = (peer, ctx.resource, first.epoch)
        slot = self._slots.setdefault(key, _Slot())
        if slot.scope is not None:
            self.takeovers += 1
            slot.scope.cancel()
        scope = anyio.CancelScope()
        slot.scope = scope
        try:
            with scope:
                async with slot.lock:
                    await self._run(stream, key, first)
        finally:
            if slot.scope is scope:
                slot.scope = None
                if not slot.lock.locked():
                    self._slots.pop(key, None)

    async def _run(self, stream: Any, key: Key, hello: Hello) -> None:
        peer, resource, epoch = key
        nxt = max(self.store.get(*key), hello.first_unacked)
        self.store.set(peer, resource, epoch, nxt)
        await stream.send(Welcome(nxt).to_wire())
        while True:  # until the sender ends the stream
            try:
                msg = parse(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError, M2MError) as exc:
                if isinstance(exc, DecodeError):
                    await stream.reset(ErrorCode.DECODE_ERROR)
                return  # ended, reset, or the connection is gone: the sender resumes
            if not isinstance(msg, Data) or msg.seq > nxt:
                await stream.reset(ErrorCode.PROTOCOL_ERROR)
                return
            if msg.seq < nxt:
                self.duplicates += 1
            else:
                with anyio.CancelScope(shield=True):  # deliver and record: all or nothing
                    await self._deliver(msg.body, Delivery(peer, resource, epoch, msg.seq))
                    nxt = msg.seq + 1
                    self.store.set(peer, resource, epoch, nxt)
                    self.delivered += 1
            try:
                await stream.send(Ack(nxt).to_wire())
            except (M2MError, anyio.BrokenResourceError):
                return  # the connection is gone; the sender resends after reconnecting
