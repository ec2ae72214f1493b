"""The pump's tasks: one per idle session, the writer only while there is something
to write, and handlers that never share context variables.

An idle session holds one task (its lifetime, which runs the pump's reader); the
writer is spawned when there is something to write and ends once idle for
``WRITER_IDLE`` seconds, and the
reader acts on the core's deadlines (keepalive pings, the idle timeout). Each
handler runs in a fresh copy of the context, so what one handler sets in a
``contextvars.ContextVar`` is never seen by the next.
"""

from __future__ import annotations

import contextvars
from typing import Any

import anyio
import pytest
from transport_util import make_server

from m2mproto.config import Configuration
from m2mproto.transport import Context, DataStream, memory_pair
from m2mproto.transport._dispatch import WORKER_IDLE
from m2mproto.transport._pump import WRITER_IDLE

pytestmark = pytest.mark.anyio

_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("m2m_test_handler_var", default="unset")


def _task_names() -> list[str]:
    return [task.name or "" for task in anyio.get_running_tasks()]


async def _settle() -> None:
    """Until a writer that found nothing more to write has ended."""
    await anyio.sleep(max(WRITER_IDLE, WORKER_IDLE) + 0.1)
    for _ in range(3):  # bounded: a few rounds of every task being blocked
        await anyio.wait_all_tasks_blocked()
        await anyio.sleep(0.01)


async def test_an_idle_session_runs_no_writer_and_no_pump_task() -> None:
    server = make_server(authorizer_factory=lambda: None)

    @server.request("echo")
    async def echo(value: Any, ctx: Context) -> Any:
        return value

    @server.stream("sink")
    async def sink(stream: DataStream, ctx: Context) -> None:
        total = 0
        for _ in range(10_000):  # bounded: until the end of the stream
            try:
                total += len(await stream.receive())
            except anyio.EndOfStream:
                break
        await stream.send(str(total).encode())

    with anyio.fail_after(10):
        async with memory_pair(server=server) as (client, _server):
            for i in range(5):
                assert await client.request("echo", i) == i
            await _settle()
            names = _task_names()
            assert not [n for n in names if "_writer_task" in n], names
            assert not [n for n in names if "Pump.run" in n], names
            assert not [n for n in names if "_worker" in n], names
            # writing spawns the writer again: a stream of data gets through
            stream = await client.open_stream("sink")
            await stream.send(b"x" * 200_000)
            await stream.send_eof()
            assert await stream.receive() == b"200000"
            await stream.aclose()
            await _settle()
            assert not [n for n in _task_names() if "_writer_task" in n]
            assert not [n for n in _task_names() if "_worker" in n]
            assert await client.request("echo", "still") == "still"


async def test_the_reader_drives_the_core_timer_while_idle() -> None:
    """With a keepalive, an idle session pings on the reader's timer scope: the peer's
    activity clock moves although the application sends nothing."""
    server = make_server(authorizer_factory=lambda: None)
    config = Configuration(keepalive_interval=0.05)
    with anyio.fail_after(10):
        async with memory_pair(server=server, config=config) as (client, server_side):
            start = server_side._pump.bytes_received
            await anyio.sleep(0.4)
            # several keepalive pings arrived (each is a record)
            assert server_side._pump.bytes_received > start
            assert not client.closed and not server_side.closed


async def test_handlers_do_not_share_context_variables() -> None:
    server = make_server(authorizer_factory=lambda: None)
    seen: list[str] = []
    tasks: set[int] = set()

    @server.request("set")
    async def set_var(value: Any, ctx: Context) -> Any:
        tasks.add(anyio.get_current_task().id)
        before = _VAR.get()
        _VAR.set(value)
        await anyio.sleep(0)
        assert _VAR.get() == value
        return before

    @server.stream("stream")
    async def stream_handler(stream: DataStream, ctx: Context) -> None:
        seen.append(_VAR.get())
        _VAR.set("from-stream")
        await stream.send(b"ok")

    with anyio.fail_after(10):
        async with memory_pair(server=server) as (client, _server):
            for value in ("a", "b", "c"):
                assert await client.request("set", value) == "unset"
            for _ in range(2):
                stream = await client.open_stream("stream")
                assert await stream.receive() == b"ok"
                await stream.aclose()
            assert await client.request("set", "d") == "unset"
    assert seen == ["unset", "unset"]
    assert _VAR.get() == "unset"
    # sequential requests ran on one reused worker: the fresh context is per handler
    assert len(tasks) == 1, tasks


async def test_sequential_requests_reuse_one_worker_and_a_slow_handler_blocks_none() -> None:
    server = make_server(authorizer_factory=lambda: None)
    release = anyio.Event()
    started = anyio.Event()
    fast_tasks: list[int] = []
    slow_task: list[int] = []

    @server.request("echo")
    async def echo(value: Any, ctx: Context) -> Any:
        fast_tasks.append(anyio.get_current_task().id)
        return value

    @server.request("slow")
    async def slow(value: Any, ctx: Context) -> Any:
        slow_task.append(anyio.get_current_task().id)
        started.set()
        await release.wait()
        return value

    with anyio.fail_after(10):
        async with (
            memory_pair(server=server) as (client, server_side),
            anyio.create_task_group() as tg,
        ):
            for i in range(5):
                assert await client.request("echo", i) == i
            assert len(set(fast_tasks)) == 1  # one worker served them in turn
            replies: list[Any] = []

            async def call_slow() -> None:
                replies.append(await client.request("slow", "late"))

            tg.start_soon(call_slow)
            await started.wait()
            # the slow handler holds its worker; others are served meanwhile
            for i in range(5):
                assert await client.request("echo", i) == i
            assert server_side.running_handlers == 1
            assert slow_task[0] not in fast_tasks[5:]
            release.set()
    assert replies == ["late"]


async def test_a_reset_cancels_the_handler_and_the_next_request_is_served() -> None:
    server = make_server(authorizer_factory=lambda: None)
    cancelled = anyio.Event()
    started = anyio.Event()

    @server.request("echo")
    async def echo(value: Any, ctx: Context) -> Any:
        return value

    @server.request("hang")
    async def hang(value: Any, ctx: Context) -> Any:
        started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return value

    with anyio.fail_after(10):
        async with memory_pair(server=server) as (client, server_side):
            assert await client.request("echo", 1) == 1  # a worker now waits for work
            with anyio.move_on_after(5) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.request, "hang", 0)
                    await started.wait()
                    tg.cancel_scope.cancel()  # the client resets the request's stream
            assert not scope.cancelled_caught
            await cancelled.wait()
            assert await client.request("echo", 2) == 2
            for _ in range(100):  # bounded: the cancelled worker has released its slot
                if server_side.running_handlers == 0:
                    break
                await anyio.sleep(0.01)
            assert server_side.running_handlers == 0
