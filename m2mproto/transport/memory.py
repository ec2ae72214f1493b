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

import contextlib
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
from anyio.abc import ByteStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import ErrorCode, LocalProtocolError, M2MError
from ..identity import AgentId, Identity
from ..tokens import TokenAuthorizer
from ._native import AnyTransport
from .session import RouteTable, Session

if TYPE_CHECKING:
    from ..config import Configuration
    from .server import Server

__all__ = ["MemoryByteStream", "MemoryPair", "memory_pair", "memory_stream_pair"]


class MemoryByteStream(ByteStream):
    """One end of an in-memory, bounded, bidirectional byte stream."""

    #: A cancelled ``receive`` consumes nothing (the pump may cancel it at a timer).
    m2m_receive_cancel_safe: ClassVar[bool] = True

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
    """What :func:`memory_pair` returns: ``async with memory_pair(...) as (client,
    server)`` (both sessions in a task group of the caller, closed at the end of
    the block, the server side first), or ``client, server = await
    memory_pair(...)`` (sessions usable and closable from any task)."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self._kwargs = kwargs
        self._cm: contextlib.AbstractAsyncContextManager[tuple[Session, Session]] | None = None

    async def _streams(self) -> tuple[AnyTransport, AnyTransport]:
        """The two connected ends (the transport tests swap in a socket pair)."""
        return memory_stream_pair(self._kwargs["max_buffer_chunks"])

    async def _make(self) -> tuple[Session, Session]:
        kw = self._kwargs
        a, b = await self._streams()
        client = Session.create(a, server_side=False, **kw["client"])
        server = Session.create(b, server_side=True, **kw["server"])
        return client, server

    async def _ready(self, client: Session, server: Session) -> None:
        try:
            with anyio.fail_after(self._kwargs["timeout"]):
                await client._wait_ready()
                await server._wait_ready()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await server.abort()
                await client.abort()
            raise

    async def _detached(self) -> tuple[Session, Session]:
        client, server = await self._make()
        client._launch(None)
        server._launch(None)
        await self._ready(client, server)
        return client, server

    def __await__(self) -> Generator[Any, None, tuple[Session, Session]]:
        return self._detached().__await__()

    @contextlib.asynccontextmanager
    async def _structured(self) -> AsyncIterator[tuple[Session, Session]]:
        client, server = await self._make()
        error: BaseException | None = None  # raised outside the task group: not wrapped
        async with anyio.create_task_group() as tg:
            client._launch(tg)
            server._launch(tg)
            try:
                await self._ready(client, server)
            except (M2MError, TimeoutError) as exc:  # both lifetimes are over already
                error = exc
            else:
                try:
                    yield client, server
                except BaseException as exc:
                    error = exc
                    try:
                        await server.__aexit__(type(exc), exc, exc.__traceback__)
                    finally:
                        await client.__aexit__(type(exc), exc, exc.__traceback__)
                else:
                    try:
                        await server.aclose()
                    finally:
                        await client.aclose()
        if error is not None:
            raise error

    async def __aenter__(self) -> tuple[Session, Session]:
        if self._cm is not None:
            raise LocalProtocolError("this pair was already opened", ErrorCode.INVALID_STATE)
        self._cm = self._structured()
        return await self._cm.__aenter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        assert self._cm is not None
        return await self._cm.__aexit__(exc_type, exc, tb)


def memory_pair(
    *,
    server: Server | None = None,
    client_identity: Identity | None = None,
    server_identity: Identity | None = None,
    client_tokens: Sequence[bytes] = (),
    client_trust_roots: Iterable[AgentId] | None = None,
    client_router: RouteTable | None = None,
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
    client_id = client_identity or Identity.generate()
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
        "routes": client_router,
        "accept_incoming": True,
    }
    if server is not None:
        server_kw: dict[str, Any] = {
            "identity": server.identity,
            "config": server.config if server.config is not None else config,
            "tokens": server.tokens,
            "authorizer": server.new_authorizer(),
            "authenticate_peer": server.authenticate_peer,
            "routes": server.router,
            "accept_incoming": False,
            "high_water": server.high_water,
            "static_keys": server.static_keys,
        }
    else:
        server_kw = {
            "identity": server_identity or Identity.generate(),
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
