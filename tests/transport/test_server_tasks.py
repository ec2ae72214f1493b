"""The task structure of a server connection (real loopback sockets, all three paths).

An idle authenticated server connection is one task: ``Server.handle`` runs the
session's lifetime itself, the handshake backstop is a deadline on the lifetime's
cancel scope (lifted once the session is ready), and the idle/grant watch runs on
the pump's alarm. Tasks are counted with ``anyio.get_running_tasks()``: a server
connection is its ``Server.handle`` task plus every task below it.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from typing import Any

import anyio
import pytest
from test_limits import serving, wait_for
from transport_util import CLIENT_ID, SERVER_ID, make_server, token

from m2mproto.errors import ErrorCode
from m2mproto.tokens.authorizer import DEFAULT_CLOCK_SKEW
from m2mproto.transport import Server, connect
from m2mproto.transport._dispatch import WORKER_IDLE

pytestmark = pytest.mark.anyio

TOKEN = token(["echo=*", "hold=*"])


def server_connection_tasks() -> list[int]:
    """For each live ``Server.handle`` task: how many tasks it and its descendants are."""
    tasks = anyio.get_running_tasks()
    children: defaultdict[int | None, list[Any]] = defaultdict(list)
    for info in tasks:
        children[info.parent_id].append(info)
    counts = []
    for info in tasks:
        if info.name.endswith("Server.handle"):
            seen, stack = 0, [info]
            while stack:  # the subtree under this connection's task (a finite tree)
                node = stack.pop()
                seen += 1
                stack.extend(children[node.id])
            counts.append(seen)
    return sorted(counts)


def hold_server(**kwargs: Any) -> tuple[Server, anyio.Event, anyio.Event]:
    """A server with ``echo`` and ``hold`` (runs until *release* is set)."""
    server = make_server(**kwargs)
    entered, release = anyio.Event(), anyio.Event()

    @server.request("echo")
    async def echo(message: Any, ctx: Any) -> Any:
        return message

    @server.request("hold")
    async def hold(message: Any, ctx: Any) -> Any:
        entered.set()
        await release.wait()
        return message

    return server, entered, release


async def test_an_idle_authenticated_server_connection_is_one_task() -> None:
    server, entered, release = hold_server()
    async with serving(server) as address:
        with anyio.fail_after(20):
            sessions = [
                await connect(address, identity=CLIENT_ID, tokens=[TOKEN], peer=SERVER_ID.agent_id)
                for _ in range(3)
            ]
            for i, session in enumerate(sessions):
                assert await session.request("echo", i) == i
            # idle: the workers (and the anyio pump's writer) end after WORKER_IDLE
            await anyio.sleep(WORKER_IDLE)
            await wait_for(lambda: server_connection_tasks() == [1, 1, 1], 5)
            # a running handler is a task of its own (a worker), counted under its connection
            async with anyio.create_task_group() as tg:
                tg.start_soon(sessions[0].request, "hold", 1)
                await entered.wait()
                busy = server_connection_tasks()
                assert busy[:2] == [1, 1] and busy[2] >= 2, busy
                release.set()
            await wait_for(lambda: server_connection_tasks() == [1, 1, 1], 5)
            assert len(server.sessions) == 3
            for session in sessions:
                await session.aclose()
            await wait_for(lambda: server_connection_tasks() == [], 5)
    assert server.stats.established == 3 and server.stats.failed == 0


async def test_an_established_session_outlives_the_handshake_backstop() -> None:
    """The backstop is a deadline on the connection's lifetime: lifted once ready."""
    server, _entered, _release = hold_server(handshake_timeout=0.3)
    async with serving(server) as address:
        with anyio.fail_after(20):
            async with connect(
                address, identity=CLIENT_ID, tokens=[TOKEN], peer=SERVER_ID.agent_id
            ) as session:
                await anyio.sleep(0.3 + 1.0 + 0.5)  # past the backstop of its handshake
                assert await session.request("echo", 1) == 1
                assert not session.closed
    assert server.stats.timed_out == 0 and server.stats.failed == 0


async def test_a_silent_peer_is_closed_at_the_handshake_deadline() -> None:
    server, _entered, _release = hold_server(handshake_timeout=0.5)
    async with serving(server) as address:
        with anyio.fail_after(20):
            stream = await anyio.connect_tcp(*address)
            start = anyio.current_time()
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                while True:  # the server's ABORT record, then EOF
                    await stream.receive()
            elapsed = anyio.current_time() - start
            await stream.aclose()
            await wait_for(lambda: server.stats.failed == 1)
    assert 0.4 < elapsed < 3.0, elapsed
    assert server.stats.timed_out == 1 and server.pending_handshakes == 0


async def test_the_backstop_cuts_a_handshake_the_core_does_not_end() -> None:
    """With the core's own deadline far away, the backstop (``handshake_timeout`` + 1 s,
    a deadline on the lifetime's cancel scope) still closes the connection."""
    server, _entered, _release = hold_server(handshake_timeout=0.3)
    assert server.config is not None
    server.config = dataclasses.replace(server.config, handshake_timeout=60.0)
    async with serving(server) as address:
        with anyio.fail_after(20):
            stream = await anyio.connect_tcp(*address)
            start = anyio.current_time()
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                while True:  # nothing until the transport is cut
                    await stream.receive()
            elapsed = anyio.current_time() - start
            await stream.aclose()
            await wait_for(lambda: server.stats.failed == 1)
    assert 1.2 < elapsed < 5.0, elapsed
    assert server.stats.timed_out == 1 and server.pending_handshakes == 0


async def test_a_failing_session_creation_releases_its_admission_slot() -> None:
    """The server's own set-up failing for one connection (here its authorizer factory)
    frees that connection's admission slot, closes it, and keeps the server serving."""
    calls = 0

    def flaky_authorizer() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("authorizer store unavailable")
        return None  # allow everything

    server, _entered, _release = hold_server(
        authorizer_factory=flaky_authorizer, max_pending_handshakes=1, max_connections=1
    )
    async with serving(server) as address:
        with anyio.fail_after(20):
            stream = await anyio.connect_tcp(*address)
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                while True:  # closed by the server at once
                    await stream.receive()
            await stream.aclose()
            await wait_for(lambda: server.stats.accepted == 1 and server.pending_handshakes == 0)
            async with connect(
                address, identity=CLIENT_ID, tokens=[TOKEN], peer=SERVER_ID.agent_id
            ) as session:
                assert await session.request("echo", 7) == 7
    assert calls == 2
    # the second connection needed no eviction: the first one's slot was free
    assert server.stats.evicted == 0 and server.stats.refused == 0
    assert server.stats.established == 1


async def test_the_grant_watch_fires_on_a_one_task_connection() -> None:
    """The grant check runs on the pump's alarm: it closes a session whose grant
    expired while the connection is idle, with no task of its own."""
    server, _entered, _release = hold_server(grantless_timeout=0.4)
    # issued in the past so that it expires, clock skew included, 2.5 s from now
    short = token(["echo=*"], ttl=12.5, now=time.time() - DEFAULT_CLOCK_SKEW - 10)
    async with serving(server) as address:
        with anyio.fail_after(20):
            session = await connect(
                address, identity=CLIENT_ID, tokens=[short], peer=SERVER_ID.agent_id
            )
            assert await session.request("echo", 1) == 1
            await wait_for(lambda: server_connection_tasks() == [1], 2.0)  # idle: one task
            assert not session.closed
            await session.wait_closed()
            assert session.close_info is not None
            assert session.close_info[0] == ErrorCode.UNAUTHORIZED and session.close_info[2]
            await session.aclose()
            await wait_for(lambda: not server.sessions and server_connection_tasks() == [], 5)
    assert server.stats.grantless_closed == 1
