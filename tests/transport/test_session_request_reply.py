"""Sessions use REQUEST and REPLY frames when both sides advertise them, the old
frames with a peer that does not (both anyio backends, memory and TCP)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from helpers import SealLog
from transport_util import CLIENT_ID, SERVER_ID, make_server, running_tcp, token

from m2mproto.config import Configuration
from m2mproto.errors import AuthorizationError, ErrorCode
from m2mproto.frames import decode_frames
from m2mproto.transport import Context, RequestTimeout, Server, connect, memory_pair
from m2mproto.transport._errors import StreamResetError

pytestmark = pytest.mark.anyio


Sealed = SealLog


@pytest.fixture
def sealed() -> Iterator[Sealed]:
    """The seal log of the test (connections join it through ``sealed.watch``)."""
    yield SealLog()


def kinds(log: Sealed, writer: object, start: int = 0) -> list[str]:
    """Frame class names one side sealed (window updates and closes left out)."""
    out: list[str] = []
    for who, plaintext in log[start:]:
        if who == id(writer):
            out += [
                type(f).__name__
                for f in decode_frames(plaintext, request_reply=True)
                if type(f).__name__ not in ("WindowUpdateFrame", "CloseFrame")
            ]
    return out


def server(request_reply: bool = True, **kw: Any) -> Server:
    srv = make_server(config=Configuration(request_reply=request_reply), **kw)

    @srv.request("echo")
    async def echo(value: Any, ctx: Context) -> Any:
        return value

    @srv.request("slow")
    async def slow(value: Any, ctx: Context) -> Any:
        await anyio.sleep(30)
        return value  # pragma: no cover

    @srv.request("fail")
    async def fail(value: Any, ctx: Context) -> Any:
        raise RuntimeError("handler failed")

    @srv.message("log")
    async def log(value: Any, ctx: Context) -> None:
        return None

    return srv


TOKEN = ["echo=*", "slow=*", "fail=*", "log=*"]


@pytest.mark.parametrize(
    ("client_rr", "server_rr", "request_kinds", "reply_kinds"),
    [
        (True, True, ["RequestFrame"], ["ReplyFrame"]),
        (True, False, ["OpenFrame", "MessageFrame"], ["MessageFrame"]),
        (False, True, ["OpenFrame", "MessageFrame"], ["MessageFrame"]),
    ],
    ids=["negotiated", "old-server", "old-client"],
)
async def test_request_uses_the_frames_only_when_both_advertise(
    sealed: Sealed,
    client_rr: bool,
    server_rr: bool,
    request_kinds: list[str],
    reply_kinds: list[str],
) -> None:
    with anyio.fail_after(20):
        async with memory_pair(
            server=server(server_rr),
            client_identity=CLIENT_ID,
            client_tokens=[token(TOKEN)],
            config=Configuration(request_reply=client_rr),
        ) as (client, srv_side):
            start = sealed.watch(client.connection, srv_side.connection)
            for i in range(3):
                assert await client.request("echo", {"i": i}) == {"i": i}
            await client.send("log", "boot", confirm=True)
            cw, sw = client.connection._writer, srv_side.connection._writer
            assert kinds(sealed, cw, start) == request_kinds * 4
            # three replies, then the one-way message's end (an empty STREAM frame)
            assert kinds(sealed, sw, start) == reply_kinds * 3 + ["StreamFrame"]
            assert client.connection.streams == {}


async def test_large_request_and_reply_fall_back_and_arrive(sealed: Sealed) -> None:
    big = b"z" * 200_000  # larger than a record: fragments
    with anyio.fail_after(20):
        async with memory_pair(
            server=server(), client_identity=CLIENT_ID, client_tokens=[token(TOKEN)]
        ) as (client, srv_side):
            start = sealed.watch(client.connection, srv_side.connection)
            assert await client.request("echo", big) == big
            sent = kinds(sealed, client.connection._writer, start)
            assert sent[0] == "OpenFrame" and "RequestFrame" not in sent
            assert "ReplyFrame" not in kinds(sealed, srv_side.connection._writer, start)
            assert await client.request("echo", 1) == 1  # small again: one frame
            assert kinds(sealed, client.connection._writer, start)[-1] == "RequestFrame"


async def test_errors_refusals_and_cancellation_over_request_frames() -> None:
    with anyio.fail_after(20):
        async with memory_pair(
            server=server(),
            client_identity=CLIENT_ID,
            client_tokens=[token(["echo=*", "slow=*", "fail=*", "nope=*"])],
        ) as (client, srv_side):
            with pytest.raises(StreamResetError) as failed:
                await client.request("fail", 1)
            assert failed.value.reset_code == ErrorCode.APPLICATION_ERROR
            with pytest.raises(AuthorizationError) as refused:
                await client.request("log", 1)  # no stream/open on log
            assert refused.value.code is ErrorCode.UNAUTHORIZED
            with pytest.raises(StreamResetError) as nobody:
                await client.request("nope", 1)  # allowed, but no handler
            assert nobody.value.reset_code == ErrorCode.REFUSED
            with pytest.raises(RequestTimeout):
                await client.request("slow", 1, timeout=0.2)
            with anyio.fail_after(5):  # the reset cancelled the server's handler
                while srv_side.running_handlers:
                    await anyio.sleep(0.01)
            assert await client.request("echo", "still up") == "still up"
            assert client.connection.streams == {}


async def test_request_reply_over_tcp(sealed: Sealed) -> None:
    with anyio.fail_after(20):
        async with (
            running_tcp(server()) as address,
            await connect(
                address, identity=CLIENT_ID, tokens=[token(TOKEN)], peer=SERVER_ID.agent_id
            ) as s,
        ):
            start = sealed.watch(s.connection)
            results = []
            async with anyio.create_task_group() as tg:

                async def one(i: int) -> None:
                    results.append(await s.request("echo", i))

                for i in range(20):
                    tg.start_soon(one, i)
            assert sorted(results) == list(range(20))
            assert s.connection.peer_parameters is not None
            assert s.connection.peer_parameters.request_reply == 1
            assert set(kinds(sealed, s.connection._writer, start)) == {"RequestFrame"}
