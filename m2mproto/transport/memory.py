"""In-memory byte streams: a connected pair for tests and for agents in one process.

Theory of operation
-------------------
:func:`memory_stream_pair` returns two :class:`MemoryByteStream` objects whose
``send`` puts chunks on a bounded anyio memory object stream that the other
side's ``receive`` takes from. The bound (``max_buffer_chunks``) gives real
backpressure: a writer whose peer does not read blocks once the buffer holds
that many chunks, exactly like a full TCP window. ``send_eof`` closes one
direction; ``aclose`` closes both, and the peer then sees ``EndOfStream``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import ByteStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["MemoryByteStream", "memory_stream_pair"]


class MemoryByteStream(ByteStream):
    """One end of an in-memory, bounded, bidirectional byte stream."""

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._pending = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return up to *max_bytes* bytes.

        Raises:
            anyio.EndOfStream: the peer closed its sending direction.
            anyio.ClosedResourceError: this end was closed.
        """
        if not self._pending:
            try:
                self._pending = await self._receive.receive()
            except anyio.EndOfStream:
                raise
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        """Send *item* (blocks while the peer's buffer is full).

        Raises:
            anyio.BrokenResourceError: the peer closed its receiving end.
            anyio.ClosedResourceError: this end was closed or EOF was sent.
        """
        if item:
            await self._send.send(bytes(item))

    async def send_eof(self) -> None:
        """Close the sending direction; the peer's ``receive`` raises ``EndOfStream``."""
        await self._send.aclose()

    async def aclose(self) -> None:
        """Close both directions."""
        await self._send.aclose()
        await self._receive.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


def memory_stream_pair(max_buffer_chunks: int = 16) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Return two connected :class:`MemoryByteStream` ends.

    Each direction buffers at most *max_buffer_chunks* chunks (one chunk per
    ``send`` call); a sender blocks beyond that.
    """
    a_send, b_receive = anyio.create_memory_object_stream[bytes](max_buffer_chunks)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](max_buffer_chunks)
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)
