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

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import ByteStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

if TYPE_CHECKING:
    from ..config import Configuration
    from ..identity import AgentId, Identity
    from .server import Router, Server
    from .session import Session

__all__ = ["MemoryByteStream", "MemoryPair", "memory_pair", "memory_stream_pair"]


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


class MemoryPair:
    """What :func:`memory_pair` returns: await it for ``(client, server)``, or
    ``async with memory_pair(...) as (client, server)``.

    Awaited, both sessions live in the caller's task: close them there, the
    server session first (``async with client, server:`` does that).
    """

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self._kwargs = kwargs
        self._pair: tuple[Session, Session] | None = None

    async def _open(self) -> tuple[Session, Session]:
        from .session import Session

        kw = self._kwargs
        a, b = memory_stream_pair(kw["max_buffer_chunks"])
        client = Session.create(a, server_side=False, **kw["client"])
        server = Session.create(b, server_side=True, **kw["server"])
        await client._begin()
        try:
            await server._begin()
        except BaseException as exc:
            await client._fail_start(exc)
            raise
        try:
            with anyio.fail_after(kw["timeout"]):
                await client._wait_handshake()
                await server._wait_handshake()
        except BaseException as exc:
            await server._fail_start(exc)
            await client._fail_start(exc)
            raise
        return client, server

    def __await__(self) -> Generator[Any, None, tuple[Session, Session]]:
        return self._open().__await__()

    async def __aenter__(self) -> tuple[Session, Session]:
        self._pair = await self._open()
        return self._pair

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._pair is not None
        client, server = self._pair
        try:
            await server.__aexit__(exc_type, exc, tb)
        finally:
            await client.__aexit__(exc_type, exc, tb)


def memory_pair(
    *,
    server: Server | None = None,
    client_identity: Identity | None = None,
    server_identity: Identity | None = None,
    client_tokens: Sequence[bytes] = (),
    client_trust_roots: Iterable[AgentId] | None = None,
    client_router: Router | None = None,
    config: Configuration | None = None,
    max_buffer_chunks: int = 16,
    timeout: float = 30.0,
) -> MemoryPair:
    """Two sessions connected in memory, after a real handshake: ``(client, server)``.

    With *server* (a :class:`~m2mproto.transport.Server`) the server side uses
    its identity, tokens, per-connection authorizer and handlers, exactly as
    over a socket. Without it the server side has a fresh identity (or
    *server_identity*), no authorizer (everything allowed) and delivers
    incoming messages by ``async for``. Missing identities are generated.
    """
    from ..identity import Identity as _Identity
    from ..tokens import TokenAuthorizer

    client_id = client_identity or _Identity.generate()
    client_authorizer = None
    if client_trust_roots is not None:
        client_authorizer = TokenAuthorizer(
            trust_roots=client_trust_roots, audience=client_id.agent_id
        )
    client_kw: dict[str, Any] = {
        "identity": client_id,
        "config": config,
        "tokens": tuple(client_tokens),
        "authorizer": client_authorizer,
        "router": client_router,
        "accept_incoming": True,
    }
    if server is not None:
        server_kw: dict[str, Any] = {
            "identity": server.identity,
            "config": server.config if server.config is not None else config,
            "tokens": server.tokens,
            "authorizer": server.new_authorizer(),
            "authenticate_peer": server.authenticate_peer,
            "router": server,
            "accept_incoming": False,
            "high_water": server.high_water,
        }
    else:
        server_kw = {
            "identity": server_identity or _Identity.generate(),
            "config": config,
            "accept_incoming": True,
        }
    return MemoryPair(
        {
            "client": client_kw,
            "server": server_kw,
            "max_buffer_chunks": max_buffer_chunks,
            "timeout": timeout,
        }
    )
