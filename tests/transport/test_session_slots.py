"""Established-session slots: per-source caps, a deadline for sessions without a
valid grant, and refused opens that do not keep a session alive (real loopback
sockets; the attacker is 127.0.0.1, the benign client 127.0.0.2)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import anyio
import pytest
from test_limits import BENIGN_DEADLINE, benign_request, serving, wait_for
from transport_util import CLIENT_ID, SERVER_ID, make_server, token

from m2mproto.config import Configuration
from m2mproto.errors import AuthorizationError, ErrorCode, LocalProtocolError
from m2mproto.identity import Identity
from m2mproto.tokens.authorizer import DEFAULT_CLOCK_SKEW
from m2mproto.transport import ConnectionClosedError, Server, Session, connect

pytestmark = pytest.mark.anyio

TOKEN = token(["echo=*"])


def echo_server(**kwargs: Any) -> Server:
    server = make_server(**kwargs)

    @server.request("echo")
    async def echo(message: Any, ctx: Any) -> Any:
        return message

    return server


async def _hold(address: tuple[str, int], tokens: list[bytes], held: list[Session]) -> None:
    """Connect from 127.0.0.1 (a fresh identity each time) and keep the session."""
    stream = await anyio.connect_tcp(*address, local_host="127.0.0.1")
    with contextlib.suppress(ConnectionClosedError, OSError):  # refused: transport closed
        held.append(
            await connect(
                stream, identity=Identity.generate(), tokens=tokens, peer=SERVER_ID.agent_id
            )
        )


def test_slot_limits_must_be_positive() -> None:
    for bad in ({"max_sessions_per_source": 0}, {"grantless_timeout": 0}):
        with pytest.raises(LocalProtocolError) as info:
            make_server(**bad)
        assert info.value.code == ErrorCode.INVALID_ARGUMENT


async def test_one_source_cannot_take_every_established_slot() -> None:
    """40 token-less sessions from one address against 40 slots: at most 16 are
    held, and a client from another address is served."""
    server = echo_server(max_connections=40, max_sessions_per_source=16, grantless_timeout=60)
    held: list[Session] = []
    async with serving(server) as address:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(40):
                    tg.start_soon(_hold, address, [], held)
        await wait_for(lambda: server.stats.accepted == 40)
        live = [s for s in held if not s.closed]
        assert len(server.sessions) <= 16 and len(live) <= 16
        # the rest were refused: past the source cap, or evicted as pending handshakes
        # of that source (how many of each depends on how fast accepts arrive)
        assert server.stats.source_limited + server.stats.evicted >= 40 - 16
        benign = await benign_request(address)
        for s in held:
            await s.aclose()
    assert benign < BENIGN_DEADLINE


async def test_a_session_without_a_valid_grant_is_closed_at_the_deadline() -> None:
    server = echo_server(grantless_timeout=0.5)
    async with serving(server) as address:
        with anyio.fail_after(15):
            bare = await connect(address, identity=CLIENT_ID, peer=SERVER_ID.agent_id)
            late = await connect(address, identity=CLIENT_ID, peer=SERVER_ID.agent_id)
            await late.present_token(TOKEN)  # within the deadline: it keeps its slot
            start = anyio.current_time()
            async with await connect(
                address, identity=CLIENT_ID, tokens=[TOKEN], peer=SERVER_ID.agent_id
            ) as good:
                await bare.wait_closed()
                assert anyio.current_time() - start < 3
                assert bare.close_info is not None
                assert bare.close_info[0] == ErrorCode.UNAUTHORIZED and bare.close_info[2]
                await anyio.sleep(1.2)  # two more checks: tokens are still valid
                assert await good.request("echo", 1) == 1
                assert await late.request("echo", 2) == 2
            await late.aclose()
            await bare.aclose()
    assert server.stats.grantless_closed == 1


async def test_an_expired_grant_counts_as_none() -> None:
    server = echo_server(grantless_timeout=0.4)
    # issued in the past so that it expires, clock skew included, 1.5 s from now
    short = token(["echo=*"], ttl=11.5, now=time.time() - DEFAULT_CLOCK_SKEW - 10)
    async with serving(server) as address:
        with anyio.fail_after(15):
            session = await connect(
                address, identity=CLIENT_ID, tokens=[short], peer=SERVER_ID.agent_id
            )
            assert await session.request("echo", 1) == 1
            await session.wait_closed()  # within a check or two of the expiry
            assert session.close_info is not None
            assert session.close_info[0] == ErrorCode.UNAUTHORIZED
            await session.aclose()


async def test_refused_opens_do_not_keep_a_session_alive() -> None:
    """A session whose only traffic is refused opens is idle: closed at the idle
    timeout, although every refused open is a record the core counts as traffic.
    A session with real requests at the same rate stays."""
    cfg = Configuration(idle_timeout=1.0)
    server = echo_server(config=cfg, grantless_timeout=60)
    async with serving(server) as address:
        with anyio.fail_after(20):
            noisy = await connect(
                address, identity=CLIENT_ID, tokens=[TOKEN], peer=SERVER_ID.agent_id
            )
            busy = await connect(
                address, identity=CLIENT_ID, tokens=[TOKEN], peer=SERVER_ID.agent_id
            )
            refused = 0
            start = anyio.current_time()
            for _ in range(40):  # 4 s at 10 opens per second, unless closed first
                if noisy.closed:
                    break
                try:
                    await noisy.request("forbidden", 1)
                except AuthorizationError:
                    refused += 1
                except ConnectionClosedError:
                    break
                assert await busy.request("echo", 1) == 1
                await anyio.sleep(0.1)
            await noisy.wait_closed()
            elapsed = anyio.current_time() - start
            assert refused >= 3
            assert noisy.close_info is not None
            assert noisy.close_info[0] == ErrorCode.IDLE_TIMEOUT and noisy.close_info[2]
            assert elapsed < 3.0
            assert not busy.closed, busy.close_info
            assert await busy.request("echo", 2) == 2
            await busy.aclose()
            await noisy.aclose()
    assert server.stats.idle_closed == 1
