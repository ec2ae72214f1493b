"""Every public way to open a session or run a server is structured-concurrency safe:
under ``fail_after``, and with the session used and closed from another task."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from transport_util import CLIENT_ID, SERVER_ID, make_server, running_tcp, token

from m2mproto.config import Configuration
from m2mproto.errors import AuthenticationError, ErrorCode
from m2mproto.identity import Identity
from m2mproto.transport import ConnectionClosedError, Server, Session, connect, memory_pair

pytestmark = pytest.mark.anyio

ALL = ["echo=*"]


def echo_server(**kwargs: Any) -> Server:
    server = make_server(**kwargs)

    @server.request("echo")
    async def echo(msg: Any, ctx: Any) -> Any:
        return msg

    return server


async def test_awaited_connect_under_fail_after_then_async_with() -> None:
    server = echo_server()
    async with running_tcp(server) as address:
        with anyio.fail_after(5):
            session = await connect(
                address, identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
            )
        # the scope above is over; the session lives on
        async with session:
            with anyio.fail_after(5):
                assert await session.request("echo", 1) == 1
        assert session.closed and session.close_info is not None
        assert session.close_info[0] == ErrorCode.NO_ERROR
        assert session._finished.is_set()  # its tasks are over


async def test_awaited_session_used_and_closed_in_other_tasks() -> None:
    server = echo_server()
    async with running_tcp(server) as address:
        got: list[Any] = []
        holder: list[Session] = []

        async def opener() -> None:
            with anyio.fail_after(5):
                holder.append(
                    await connect(
                        address, identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
                    )
                )

        async def user(n: int) -> None:
            got.append(await holder[0].request("echo", n))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(opener)
            async with anyio.create_task_group() as tg:  # the opener task has ended
                for n in range(3):
                    tg.start_soon(user, n)
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder[0].aclose)
        assert sorted(got) == [0, 1, 2]
        assert holder[0].closed
        with pytest.raises(ConnectionClosedError):
            await holder[0].request("echo", 9)


async def test_async_with_connect_under_fail_after_and_errors_are_not_wrapped() -> None:
    server = echo_server()
    async with running_tcp(server) as address:
        with anyio.fail_after(5):
            async with connect(
                address, identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
            ) as session:
                assert await session.request("echo", "x") == "x"
        assert session.closed
        # an exception from the block comes out as itself, after a graceful close
        with pytest.raises(KeyError):
            async with connect(
                address, identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
            ) as session:
                raise KeyError("mine")
        assert session.closed
        # so does a handshake failure
        other = Identity.generate().agent_id
        with pytest.raises(AuthenticationError) as info:
            async with connect(address, identity=CLIENT_ID, peer=other):
                pass  # pragma: no cover
        assert info.value.code == ErrorCode.AUTH_UNEXPECTED_PEER
        # a cancelled block aborts the session and leaves no task behind
        with anyio.move_on_after(0.2) as scope:
            async with connect(
                address, identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
            ) as session:
                await anyio.sleep(5)
        assert scope.cancelled_caught and session.closed and session._finished.is_set()


async def test_connect_cancelled_during_the_handshake_leaves_nothing() -> None:
    """A server that never answers: the caller's deadline ends the handshake."""
    accepted: list[anyio.abc.SocketStream] = []

    async def silent(stream: anyio.abc.SocketStream) -> None:
        accepted.append(stream)
        await anyio.sleep(10)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, silent)
        for form in ("await", "async with"):
            start = anyio.current_time()
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.3):
                    if form == "await":
                        await connect(
                            ("127.0.0.1", port), identity=CLIENT_ID, peer=SERVER_ID.agent_id
                        )
                    else:
                        async with connect(
                            ("127.0.0.1", port), identity=CLIENT_ID, peer=SERVER_ID.agent_id
                        ):
                            pass  # pragma: no cover
            assert anyio.current_time() - start < 3
        # our side closed the transport: the silent server reads EOF
        with anyio.fail_after(5):
            for stream in accepted:
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    for _ in range(100):
                        await stream.receive()
        tg.cancel_scope.cancel()


async def test_memory_pair_awaited_under_fail_after_and_closed_elsewhere() -> None:
    with anyio.fail_after(5):
        client, server = await memory_pair()
    async with anyio.create_task_group() as tg:

        async def serve() -> None:
            async for incoming in server:
                await incoming.reply(incoming.value * 2)

        tg.start_soon(serve)
        with anyio.fail_after(5):
            assert await client.request("double", 21) == 42
            await client.aclose()  # the server's loop ends at the graceful close
    await server.aclose()
    assert client.closed and server.closed


async def test_server_listen_ready_serve_forever_and_graceful_aclose() -> None:
    server = echo_server()
    ended: list[str] = []

    async def run() -> None:
        async with server.listen_tcp("127.0.0.1", 0) as address:
            addresses.append(address)
            ready.set()
            await server.serve_forever()
        ended.append("listen")

    addresses: list[tuple[str, int]] = []
    ready = anyio.Event()
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await ready.wait()  # the block is entered once the socket listens
            session = await connect(
                addresses[0], identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
            )
            assert await session.request("echo", 5) == 5
            await server.aclose()  # from another task: graceful
            await session.wait_closed()
            assert session.close_info is not None
            assert session.close_info[:1] == (ErrorCode.NO_ERROR,) and session.close_info[2]
            await session.aclose()
        assert ended == ["listen"] and not server.sessions
        # the listener is closed
        with pytest.raises(OSError):
            await anyio.connect_tcp(*addresses[0])


async def test_handshake_timeout_in_config_still_raises_connection_closed() -> None:
    """The core's own deadline (not the caller's) gives HANDSHAKE_TIMEOUT."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def silent(stream: anyio.abc.SocketStream) -> None:
        await anyio.sleep(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, silent)
        with anyio.fail_after(5), pytest.raises(ConnectionClosedError) as info:
            async with connect(
                ("127.0.0.1", port),
                identity=CLIENT_ID,
                peer=SERVER_ID.agent_id,
                config=Configuration(handshake_timeout=0.2),
            ):
                pass  # pragma: no cover
        assert info.value.close_code == ErrorCode.HANDSHAKE_TIMEOUT
        tg.cancel_scope.cancel()
