"""Backpressure, timers, close, abort and cancellation (both backends)."""

from __future__ import annotations

import hashlib
from typing import Any

import anyio
import pytest
from transport_util import CLIENT_ID, SERVER_ID, make_server, running_tcp

from m2mproto.config import Configuration
from m2mproto.errors import ErrorCode
from m2mproto.transport import (
    ConnectionClosedError,
    Context,
    DataStream,
    connect,
    memory_pair,
)
from m2mproto.transport.session import DEFAULT_HIGH_WATER

pytestmark = pytest.mark.anyio

KiB = 1024


async def test_slow_reader_makes_the_writer_wait() -> None:
    """A stream whose reader does not read: bytes in flight stay within the windows."""
    cfg = Configuration(initial_stream_window=64 * KiB, initial_connection_window=256 * KiB)
    server = make_server(config=cfg, authorizer_factory=lambda: None)
    release = anyio.Event()
    received = hashlib.sha256()
    sizes: list[int] = []

    @server.stream("sink")
    async def sink(stream: DataStream, ctx: Context) -> None:
        await release.wait()
        async for chunk in stream:
            received.update(chunk)
            sizes.append(len(chunk))

    payload = hashlib.shake_256(b"bp").digest(2 * 1024 * 1024)
    progress = 0
    with anyio.fail_after(20):
        async with memory_pair(server=server, config=cfg) as (client, server_session):
            stream = await client.open_stream("sink")

            async def writer() -> None:
                nonlocal progress
                for offset in range(0, len(payload), 16 * KiB):
                    await stream.send(payload[offset : offset + 16 * KiB])
                    progress = offset + 16 * KiB
                await stream.send_eof()

            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                await anyio.sleep(0.3)  # plenty of time to overrun any unbounded buffer
                # the sender is blocked: accepted <= peer window + our high-water mark
                assert progress < len(payload)
                assert progress <= 64 * KiB + DEFAULT_HIGH_WATER + 16 * KiB
                queued = client.connection.send_buffered(stream.stream_id)
                assert queued <= DEFAULT_HIGH_WATER + 16 * KiB
                (chan,) = server_session._link.channels.values()
                held = sum(size for _m, _v, size in chan.inbox)
                assert held <= 64 * KiB  # the receiver holds at most one window
                release.set()
            await anyio.sleep(0.05)
    assert received.digest() == hashlib.sha256(payload).digest()
    assert sum(sizes) == len(payload)


async def test_handshake_timeout_against_a_silent_server() -> None:
    async def silent(stream: Any) -> None:
        await anyio.sleep(30)

    cfg = Configuration(handshake_timeout=0.3)
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, silent)
            start = anyio.current_time()
            with pytest.raises(ConnectionClosedError) as info:
                await connect(
                    ("127.0.0.1", port), identity=CLIENT_ID, config=cfg, peer=SERVER_ID.agent_id
                )
            assert info.value.close_code == ErrorCode.HANDSHAKE_TIMEOUT
            assert 0.25 <= anyio.current_time() - start < 3
            tg.cancel_scope.cancel()


async def test_server_drops_a_client_that_sends_nothing() -> None:
    server = make_server(config=Configuration(handshake_timeout=0.3))
    with anyio.fail_after(10):
        async with running_tcp(server) as (host, port):
            raw = await anyio.connect_tcp(host, port)
            start = anyio.current_time()
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                for _ in range(100):
                    await raw.receive()  # only an ABORT record, then EOF
            assert anyio.current_time() - start < 3
            await raw.aclose()
            for _ in range(50):  # the server's bookkeeping follows the close
                if server.failed_handshakes:
                    break
                await anyio.sleep(0.02)
            assert server.failed_handshakes == 1 and not server.sessions


async def test_idle_timeout_closes_and_keepalive_prevents_it() -> None:
    idle = Configuration(idle_timeout=0.4)
    with anyio.fail_after(10):
        async with memory_pair(config=idle) as (client, server):
            await client.wait_closed()
            assert client.close_info is not None
            assert client.close_info[0] == ErrorCode.IDLE_TIMEOUT
            with pytest.raises(ConnectionClosedError) as info:
                await client.send("x", 1)
            assert info.value.close_code == ErrorCode.IDLE_TIMEOUT

    alive = Configuration(idle_timeout=0.4, keepalive_interval=0.1)
    with anyio.fail_after(10):
        async with memory_pair(config=alive) as (client, server):
            await anyio.sleep(1.2)  # three idle timeouts
            assert not client.closed and not server.closed
            assert await client.ping() < 1


async def test_graceful_close_delivers_everything_in_flight() -> None:
    server = make_server(authorizer_factory=lambda: None)
    got: list[int] = []
    digest: list[bytes] = []

    @server.message("log")
    async def log(msg: Any, ctx: Context) -> None:
        got.append(msg)

    @server.stream("blob")
    async def blob(stream: DataStream, ctx: Context) -> None:
        h = hashlib.sha256()
        async for chunk in stream:
            h.update(chunk)
        digest.append(h.digest())

    payload = hashlib.shake_256(b"close").digest(1024 * 1024)
    with anyio.fail_after(20):
        async with running_tcp(server) as address:
            session = await connect(address, identity=CLIENT_ID, peer=SERVER_ID.agent_id)
            async with session:
                for i in range(200):
                    await session.send("log", i)
                stream = await session.open_stream("blob")
                await stream.send(payload)
                await stream.send_eof()
                # leave at once: nothing may be lost
            assert session.close_info is not None
            assert session.close_info[0] == ErrorCode.NO_ERROR
            for _ in range(100):
                if len(got) == 200 and digest:
                    break
                await anyio.sleep(0.02)
    assert sorted(got) == list(range(200))
    assert digest == [hashlib.sha256(payload).digest()]


async def test_abort_cuts_the_connection() -> None:
    with anyio.fail_after(10):
        async with memory_pair() as (client, server):
            stream = await client.open_stream("x")
            await stream.send(b"pending")
            await client.abort()
            assert client.closed
            with pytest.raises(ConnectionClosedError) as info:
                await client.request("x", 1)
            assert info.value.code == ErrorCode.CONNECTION_CLOSED
            with pytest.raises(ConnectionClosedError):
                await stream.send(b"more")
            await server.wait_closed()
            assert server.close_info is not None
            code, _reason, remote = server.close_info
            assert remote and code in (ErrorCode.CANCELLED, ErrorCode.TRUNCATED)


async def test_cancelled_send_leaves_the_session_usable() -> None:
    cfg = Configuration(initial_stream_window=32 * KiB, initial_connection_window=128 * KiB)
    server = make_server(config=cfg, authorizer_factory=lambda: None)
    stuck = anyio.Event()

    @server.stream("stuck")
    async def never_reads(stream: DataStream, ctx: Context) -> None:
        await stuck.wait()

    @server.request("echo")
    async def echo(msg: Any, ctx: Context) -> Any:
        return msg

    with anyio.fail_after(10):
        async with memory_pair(server=server, config=cfg) as (client, _srv):
            stream = await client.open_stream("stuck")
            with anyio.move_on_after(0.2) as scope:
                await stream.send(b"\0" * (1024 * 1024))  # blocks on credit
            assert scope.cancelled_caught
            # the connection is intact: other streams work, the stuck one can be reset
            assert await client.request("echo", "ok") == "ok"
            await stream.reset()
            assert await client.request("echo", "still ok") == "still ok"
            stuck.set()


async def test_cancelled_request_resets_its_stream_only() -> None:
    server = make_server(authorizer_factory=lambda: None)
    cancelled = anyio.Event()

    @server.request("slow")
    async def slow(msg: Any, ctx: Context) -> Any:
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return "late"

    @server.request("echo")
    async def echo(msg: Any, ctx: Context) -> Any:
        return msg

    with anyio.fail_after(10):
        async with memory_pair(server=server) as (client, _srv):
            with anyio.move_on_after(0.2):
                await client.request("slow", None)
            assert await client.request("echo", 1) == 1
            assert not client.closed
            await cancelled.wait()  # the peer's reset cancelled the handler
            channels = client._link.channels
            assert not channels or all(c.reset is None for c in channels.values())


async def test_connection_credit_survives_many_finished_streams() -> None:
    cfg = Configuration(initial_connection_window=64 * KiB, initial_stream_window=32 * KiB)
    done = 0
    with anyio.fail_after(10):
        async with memory_pair(config=cfg) as (client, server):

            async def serve() -> None:
                async for incoming in server:
                    await incoming.reply(b"r" * 8000)

            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                with anyio.move_on_after(2):
                    for i in range(40):  # 320 kB of replies through a 64 KiB window
                        await client.request("x", i)
                        done += 1
                tg.cancel_scope.cancel()
    assert done == 40
