"""No byte is lost when the core's timer fires while the pump's reader waits for input.

The pump keeps the core's timer in the reader's task: on a transport whose
``receive()`` is known to be cancellation-safe (anyio's TCP and Unix socket
streams, the memory and NATS streams) the reader receives inside a cancel
scope that expires at the core's deadline. anyio's ``TLSStream.receive`` is not
safe: a cancellation while it flushes TLS protocol output (a key update
answer) drops the bytes it already decrypted and breaks the stream. On such
streams (and any stream it does not know) the pump runs the timer in a task of
its own and never cancels a receive before the end of the connection.

Each test streams many messages of mixed sizes, both ways, over a real
127.0.0.1 socket (TCP, Unix, TLS 1.3 over TCP) while keepalive timers of a few
milliseconds fire all the time, and checks that every message arrived intact.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trustme
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSStream
from transport_util import CLIENT_ID, SERVER_ID, make_server, token

from m2mproto.config import Configuration
from m2mproto.transport import Context, DataStream, Server, Session, connect
from m2mproto.transport._native import NativePump
from m2mproto.transport._pump import receive_cancel_safe

pytestmark = pytest.mark.anyio

#: A keepalive of a few milliseconds: the reader's timer scope expires all the time.
CONFIG = Configuration(keepalive_interval=0.003, idle_timeout=10.0)
MESSAGES = 400
STREAM_BYTES = 3_000_000
CAPS = ["sink=*", "echo=*", "received=*", "digest=*"]


class WatchedTLSStream(TLSStream):
    """anyio's TLSStream (the real one) counting the receives that were cancelled."""

    cancelled_receives = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await super().receive(max_bytes)
        except anyio.get_cancelled_exc_class():
            WatchedTLSStream.cancelled_receives += 1
            raise


def _payload(i: int) -> bytes:
    # sizes from 1 byte to ~40 KB: several TLS records and TCP segments per message
    size = 1 + (i * 7919) % 40_000
    return hashlib.sha256(i.to_bytes(4, "big")).digest() * (size // 32 + 1)


def _sink_server() -> tuple[Server, list[tuple[int, str]]]:
    server = make_server(config=CONFIG)
    received: list[tuple[int, str]] = []

    @server.message("sink")
    async def sink(value: Any, ctx: Context) -> None:
        received.append((value["i"], hashlib.sha256(value["data"]).hexdigest()))

    @server.request("echo")
    async def echo(value: Any, ctx: Context) -> Any:
        return value

    @server.request("received")
    async def count(value: Any, ctx: Context) -> Any:
        return len(received)

    @server.stream("digest")
    async def digest(stream: DataStream, ctx: Context) -> None:
        h = hashlib.sha256()
        total = 0
        for _ in range(100_000):  # bounded: until the end of the stream
            try:
                chunk = await stream.receive()
            except anyio.EndOfStream:
                break
            h.update(chunk)
            total += len(chunk)
        await stream.send(h.digest() + total.to_bytes(8, "big"))

    return server, received


async def _exercise(session: Session, server: Server, received: list[tuple[int, str]]) -> None:
    """Messages, requests and a data stream at once; every byte checked."""
    expected = [(i, hashlib.sha256(_payload(i)).hexdigest()) for i in range(MESSAGES)]

    async def messages() -> None:
        for i in range(MESSAGES):
            await session.send("sink", {"i": i, "data": _payload(i)})

    async def requests() -> None:
        for i in range(0, MESSAGES, 4):
            value = {"i": i, "data": _payload(i + 1)}
            assert await session.request("echo", value, timeout=20) == value

    async def stream() -> None:
        h = hashlib.sha256()
        data = await session.open_stream("digest")
        sent = 0
        i = 0
        while sent < STREAM_BYTES:  # bounded: STREAM_BYTES / ~20 KB chunks
            chunk = _payload(10_000 + i)[:20_000]
            await data.send(chunk)
            h.update(chunk)
            sent += len(chunk)
            i += 1
        await data.send_eof()
        reply = await data.receive()
        await data.aclose()
        assert reply == h.digest() + sent.to_bytes(8, "big")

    async with anyio.create_task_group() as tg:
        tg.start_soon(messages)
        tg.start_soon(requests)
        tg.start_soon(stream)
    # the messages were one-way: ask until the server has dispatched them all
    for _ in range(200):  # bounded: 200 x 0.05 s
        if await session.request("received", None, timeout=20) == MESSAGES:
            break
        await anyio.sleep(0.05)
    assert sorted(received) == expected


def _timer_wakeups(server: Server, session: Session) -> tuple[int, int]:
    (server_side,) = server.sessions
    return session._pump.timer_wakeups, server_side._pump.timer_wakeups


def _cancel_safe(server: Server, session: Session) -> tuple[bool, bool]:
    (server_side,) = server.sessions
    return (
        receive_cancel_safe(session._pump.transport),
        receive_cancel_safe(server_side._pump.transport),
    )


@asynccontextmanager
async def _tls_pair(
    server: Server,
) -> AsyncIterator[tuple[WatchedTLSStream, Callable[[], None]]]:
    """A TLS 1.3 client stream to *server* (which gets a WatchedTLSStream too)."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)

    async def handle(tcp: ByteStream) -> None:
        tls = await WatchedTLSStream.wrap(
            tcp, server_side=True, ssl_context=server_ctx, standard_compatible=False
        )
        await server.handle(tls)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        tcp = await anyio.connect_tcp("127.0.0.1", port)
        client = await WatchedTLSStream.wrap(
            tcp,
            hostname="localhost",
            ssl_context=client_ctx,
            standard_compatible=False,
        )
        assert client.extra(anyio.streams.tls.TLSAttribute.tls_version) == "TLSv1.3"
        try:
            yield client, tg.cancel_scope.cancel
        finally:
            tg.cancel_scope.cancel()


async def test_no_message_lost_over_tls_while_timers_fire() -> None:
    server, received = _sink_server()
    WatchedTLSStream.cancelled_receives = 0
    with anyio.fail_after(60):
        async with _tls_pair(server) as (outer, _stop), connect(
            outer,
            identity=CLIENT_ID,
            tokens=[token(CAPS)],
            peer=SERVER_ID.agent_id,
            config=CONFIG,
        ) as session:
            assert _cancel_safe(server, session) == (False, False)
            await _exercise(session, server, received)
            client_timer, server_timer = _timer_wakeups(server, session)
            # the timers fired during the transfer ...
            assert client_timer > 5 and server_timer > 5, (client_timer, server_timer)
            # ... and never by cancelling a TLS receive (only the end may)
            assert WatchedTLSStream.cancelled_receives == 0


@asynccontextmanager
async def _served(server: Server, kind: str) -> AsyncIterator[Any]:
    async with anyio.create_task_group() as tg:
        if kind == "tcp":
            address = await tg.start(server.serve_tcp, "127.0.0.1", 0)
            try:
                yield address
            finally:
                tg.cancel_scope.cancel()
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "m2m.sock")
                await tg.start(server.serve_unix, path)
                try:
                    yield path
                finally:
                    tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    "kind",
    [
        "tcp",
        pytest.param(
            "unix", marks=pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets")
        ),
    ],
)
async def test_no_message_lost_over_sockets_while_the_timer_cancels_receive(kind: str) -> None:
    server, received = _sink_server()
    with anyio.fail_after(60):
        async with _served(server, kind) as address, await connect(
            address,
            identity=CLIENT_ID,
            tokens=[token(CAPS)],
            peer=SERVER_ID.agent_id,
            config=CONFIG,
        ) as session:
            if isinstance(session._pump, NativePump):
                # native path: no receive to cancel, the timer is a loop.call_at handle
                (server_side,) = server.sessions
                assert isinstance(server_side._pump, NativePump)
            else:
                # the reader's own receive is cancelled at the timer
                assert _cancel_safe(server, session) == (True, True)
            await _exercise(session, server, received)
            client_timer, server_timer = _timer_wakeups(server, session)
            if isinstance(session._pump, NativePump):
                # the loop.call_at timer fell due during the transfer too
                assert client_timer + server_timer >= 1, (client_timer, server_timer)
            else:
                # the reader's timer scope expired (cancelling its receive) many times
                assert client_timer > 5 and server_timer > 5, (client_timer, server_timer)
