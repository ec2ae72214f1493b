"""Handshake, identity, messages, requests and authorization over real sockets."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio
import pytest
from transport_util import AUTHORITY, CLIENT_ID, SERVER_ID, make_server, running_tcp, token

from m2mproto.errors import AuthenticationError, AuthorizationError, ErrorCode, TokenError
from m2mproto.identity import Identity
from m2mproto.tokens import Grant
from m2mproto.transport import (
    Context,
    DataStream,
    M2MAttribute,
    RequestTimeout,
    Session,
    StreamResetError,
    connect,
)

pytestmark = pytest.mark.anyio

ALL = ["echo=*", "log/*=*", "files/*=*", "slow=*", "boom=*", "nowhere=*"]
# replies to calls the server makes to us are authorized as messages from us
CALLBACK = [*ALL, "whoami=msg/send"]


def echo_server() -> Any:
    server = make_server()
    seen: list[tuple[str, Any, Context]] = []

    @server.request("echo")
    async def echo(msg: Any, ctx: Context) -> Any:
        return {"echo": msg, "from": ctx.peer.agent_id.text}

    @server.request("boom")
    async def boom(msg: Any, ctx: Context) -> Any:
        raise RuntimeError("handler failure")

    @server.request("slow")
    async def slow(msg: Any, ctx: Context) -> Any:
        await anyio.sleep(msg)
        return "late"

    @server.message("log/*")
    async def log(msg: Any, ctx: Context) -> None:
        seen.append((ctx.resource, msg, ctx))

    @server.stream("files/*")
    async def upload(stream: DataStream, ctx: Context) -> None:
        digest = hashlib.sha256()
        total = 0
        async for chunk in stream:
            digest.update(chunk)
            total += len(chunk)
        await stream.send(digest.digest() + total.to_bytes(8, "big"))

    return server, seen


async def test_handshake_and_identity_over_tcp() -> None:
    server, _ = echo_server()
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            tok = token(ALL)
            async with await connect(
                address, identity=CLIENT_ID, tokens=[tok], peer=SERVER_ID.agent_id
            ) as session:
                assert session.peer.agent_id == SERVER_ID.agent_id
                assert session.extra(M2MAttribute.agent_id) == SERVER_ID.agent_id
                assert session.extra(M2MAttribute.identity_key) == SERVER_ID.public_key
                assert session.extra(M2MAttribute.server_side) is False
                assert len(session.handshake_hash) == 32
                await anyio.sleep(0.05)
                (server_session,) = server.sessions
                assert server_session.peer.agent_id == CLIENT_ID.agent_id
                assert server_session.handshake_hash == session.handshake_hash
                (grant,) = server_session.capabilities
                assert isinstance(grant, Grant)
                assert grant.allows("echo", "msg/send")
                reply = await session.request("echo", {"hello": "world"}, timeout=5)
                assert reply == {"echo": {"hello": "world"}, "from": CLIENT_ID.agent_id.text}
                assert await session.ping() >= 0


async def test_context_manager_form_and_unix_socket(tmp_path: Path) -> None:
    server, _ = echo_server()
    path = tmp_path / "agent.sock"
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve_unix, path)
            async with connect(
                str(path), identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
            ) as session:
                assert await session.request("echo", [1, 2, 3]) == {
                    "echo": [1, 2, 3],
                    "from": CLIENT_ID.agent_id.text,
                }
            tg.cancel_scope.cancel()
    assert not path.exists()


async def test_unexpected_peer_is_refused() -> None:
    server, _ = echo_server()
    other = Identity.from_seed(b"\x09" * 32)
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            with pytest.raises(AuthenticationError) as info:
                await connect(address, identity=CLIENT_ID, peer=other.agent_id)
            assert info.value.code == ErrorCode.AUTH_UNEXPECTED_PEER
            # the server is unaffected
            async with await connect(
                address, identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
            ) as s:
                assert (await s.request("echo", 1))["echo"] == 1


async def test_messages_carry_peer_and_grant() -> None:
    server, seen = echo_server()
    with anyio.fail_after(10):
        async with (
            running_tcp(server) as address,
            await connect(
                address, identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
            ) as s,
        ):
            for i in range(20):
                await s.send("log/app", {"n": i})
            await s.send("log/audit", "last", confirm=True)
    # each message is its own stream: handlers run concurrently, in no set order
    resources = [r for r, _m, _c in seen]
    assert resources.count("log/app") == 20 and resources.count("log/audit") == 1
    assert sorted(m["n"] for r, m, _c in seen if r == "log/app") == list(range(20))
    ctx = seen[0][2]
    assert ctx.peer.agent_id == CLIENT_ID.agent_id
    assert isinstance(ctx.grant, Grant) and ctx.grant.allows("log/app", "msg/send")


async def test_request_errors_are_distinct() -> None:
    server, _ = echo_server()
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            tok = token(["echo=*", "boom=*", "slow=*", "nowhere=*"])
            async with await connect(
                address, identity=CLIENT_ID, tokens=[tok], peer=SERVER_ID.agent_id
            ) as s:
                with pytest.raises(StreamResetError) as failed:
                    await s.request("boom", None)
                assert failed.value.code == ErrorCode.APPLICATION_ERROR
                with pytest.raises(StreamResetError) as nowhere:
                    await s.request("nowhere", None)
                assert nowhere.value.code == ErrorCode.REFUSED
                with pytest.raises(AuthorizationError) as refused:
                    await s.request("admin", None)
                assert refused.value.code == ErrorCode.UNAUTHORIZED
                with pytest.raises(RequestTimeout) as late:
                    await s.request("slow", 5, timeout=0.2)
                assert late.value.code == ErrorCode.TIMEOUT
                with pytest.raises(AuthorizationError):
                    await s.send("log/x", 1, confirm=True)  # token has no log/* capability
                # every failure was confined to its stream
                assert (await s.request("echo", "still here"))["echo"] == "still here"


async def test_no_token_means_no_access() -> None:
    server, _ = echo_server()
    with anyio.fail_after(10):
        async with (
            running_tcp(server) as address,
            await connect(address, identity=CLIENT_ID, peer=SERVER_ID.agent_id) as s,
        ):
            with pytest.raises(AuthorizationError) as info:
                await s.request("echo", 1)
            assert info.value.code == ErrorCode.UNAUTHORIZED
            stream = await s.open_stream("files/a")
            with pytest.raises(AuthorizationError):
                await stream.receive()


async def test_token_for_someone_else_is_refused_before_connecting() -> None:
    """connect() reads its own tokens' leaves: a token held by another agent is
    never sent; the error names both agents and no connection is made."""
    server, _ = echo_server()
    other = Identity.from_seed(b"\x07" * 32).agent_id
    stolen = token(ALL, holder=other)
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            with pytest.raises(TokenError) as info:
                await connect(address, identity=CLIENT_ID, tokens=[stolen], peer=SERVER_ID.agent_id)
    assert info.value.code == ErrorCode.CNF_MISMATCH
    assert other.text in info.value.message and CLIENT_ID.agent_id.text in info.value.message
    assert server.stats.accepted == 0


async def test_token_for_someone_else_is_rejected_at_handshake() -> None:
    """The server's verdict on handshake tokens is raised by the connect itself
    (as TokenError), not by the first request (Session.wrap has no local check)."""
    server, _ = echo_server()
    stolen = token(ALL, holder=Identity.from_seed(b"\x07" * 32).agent_id)
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            for _ in range(2):  # both lifetimes: awaited and entered
                stream = await anyio.connect_tcp(*address)
                opener = Session.wrap(
                    stream, identity=CLIENT_ID, tokens=[stolen], expected_peer=SERVER_ID.agent_id
                )
                with pytest.raises(TokenError) as info:
                    if _ == 0:
                        await opener
                    else:
                        async with opener:
                            raise AssertionError("entered a session whose tokens were refused")
                assert info.value.code == ErrorCode.TOKEN_INVALID
                assert f"{address[0]}:{address[1]}" in info.value.message


async def test_token_refresh_on_live_session() -> None:
    server, _ = echo_server()
    with anyio.fail_after(10):
        async with (
            running_tcp(server) as address,
            await connect(
                address, identity=CLIENT_ID, tokens=[token(["echo=*"])], peer=SERVER_ID.agent_id
            ) as s,
        ):
            with pytest.raises(AuthorizationError):
                await s.send("log/app", "before", confirm=True)
            await s.present_token(token(["log/*=*"]))
            await s.send("log/app", "after", confirm=True)
            assert (await s.request("echo", 1))["echo"] == 1
            (server_session,) = server.sessions
            assert len(server_session.capabilities) == 2


async def test_upload_several_megabytes_with_checksum() -> None:
    server, _ = echo_server()
    payload = hashlib.shake_256(b"m2m").digest(3 * 1024 * 1024 + 17)
    with anyio.fail_after(30):
        async with (
            running_tcp(server) as address,
            await connect(
                address, identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
            ) as s,
        ):
            stream = await s.open_stream("files/big")
            async with stream:
                for offset in range(0, len(payload), 100_000):
                    await stream.send(payload[offset : offset + 100_000])
                await stream.send_eof()
                answer = b""
                async for chunk in stream:
                    answer += chunk
    assert answer[:32] == hashlib.sha256(payload).digest()
    assert int.from_bytes(answer[32:], "big") == len(payload)


async def test_send_takes_bytes_bytearray_and_memoryview_of_any_size() -> None:
    """bytes up to the high-water mark are queued as they are; larger items and other
    buffer types are copied first, so changing a bytearray after send() returns does not
    change what the peer receives."""
    server, _ = echo_server()
    parts = [hashlib.shake_256(bytes([i])).digest(n) for i, n in enumerate((1, 4096, 300_001))]
    sent = b""
    with anyio.fail_after(30):
        async with (
            running_tcp(server) as address,
            await connect(
                address, identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
            ) as s,
        ):
            stream = await s.open_stream("files/mixed")
            async with stream:
                for part in parts:
                    mutable = bytearray(part)
                    for item in (part, mutable, memoryview(part)[1:]):
                        await stream.send(item)  # type: ignore[arg-type]
                        sent += bytes(item)
                    mutable[:] = bytes(len(mutable))  # after send: must not reach the peer
                await stream.send_eof()
                answer = b""
                async for chunk in stream:
                    answer += chunk
    assert answer[:32] == hashlib.sha256(sent).digest()
    assert int.from_bytes(answer[32:], "big") == len(sent)


async def test_hundred_concurrent_streams() -> None:
    server, _ = echo_server()
    results: dict[int, bytes] = {}
    with anyio.fail_after(30):
        async with (
            running_tcp(server) as address,
            await connect(
                address, identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
            ) as s,
        ):

            async def one(i: int) -> None:
                data = bytes([i]) * (20_000 + i * 97)
                async with await s.open_stream(f"files/{i}") as stream:
                    await stream.send(data)
                    await stream.send_eof()
                    answer = b""
                    async for chunk in stream:
                        answer += chunk
                assert answer[:32] == hashlib.sha256(data).digest()
                results[i] = answer

            async def ask(i: int) -> None:
                assert (await s.request("echo", i))["echo"] == i

            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(one, i)
                    tg.start_soon(ask, i)
    assert sorted(results) == list(range(100))


async def test_router_on_the_client_side() -> None:
    """Agents are symmetric: the server may call the client back."""
    server = make_server()
    got: list[Any] = []

    @server.request("echo")
    async def echo(msg: Any, ctx: Context) -> Any:
        # call back into the client over the same session
        got.append(await ctx.session.request("whoami", None))
        return msg

    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            tok = token(CALLBACK)
            async with await connect(
                address, identity=CLIENT_ID, tokens=[tok], peer=SERVER_ID.agent_id
            ) as s:

                async def answer() -> None:
                    async for incoming in s:
                        assert incoming.peer.agent_id == SERVER_ID.agent_id
                        await incoming.reply(incoming.resource + "!")

                async with anyio.create_task_group() as tg:
                    tg.start_soon(answer)
                    assert await s.request("echo", "x") == "x"
                    tg.cancel_scope.cancel()
    assert got == ["whoami!"]


def test_authority_is_distinct() -> None:
    assert len({AUTHORITY.agent_id, SERVER_ID.agent_id, CLIENT_ID.agent_id}) == 3


async def test_connect_requires_the_server_identity_or_an_explicit_opt_out() -> None:
    from m2mproto.errors import LocalProtocolError
    from m2mproto.transport import ANY_PEER, Session, memory_stream_pair

    for call in (
        lambda: connect(("127.0.0.1", 1), identity=CLIENT_ID),
        lambda: connect(("127.0.0.1", 1), identity=CLIENT_ID, peer=None),
        lambda: Session.wrap(memory_stream_pair()[0], identity=CLIENT_ID),
    ):
        with pytest.raises(LocalProtocolError) as info:  # at once: nothing was opened
            call()
        assert info.value.code == ErrorCode.INVALID_ARGUMENT
        assert "ANY_PEER" in str(info.value)
    server, _ = echo_server()
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            # the loudly named opt-out: any server that authenticates
            async with connect(
                address, identity=CLIENT_ID, tokens=[token(ALL)], peer=ANY_PEER
            ) as s:
                assert s.peer.agent_id == SERVER_ID.agent_id
            # a custom check counts as naming the server
            seen: list[Any] = []
            async with connect(
                address, identity=CLIENT_ID, tokens=[token(ALL)], authenticate_peer=seen.append
            ) as s:
                assert seen == [SERVER_ID.agent_id]


async def test_request_expect_types_the_reply() -> None:
    from m2mproto.errors import DecodeError

    server, _ = echo_server()
    with anyio.fail_after(10):
        async with (
            running_tcp(server) as address,
            connect(address, identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id) as s,
        ):
            reply = await s.request("echo", [1], expect=dict)
            assert reply["echo"] == [1]
            with pytest.raises(DecodeError) as info:
                await s.request("echo", 1, expect=list)
            assert info.value.code == ErrorCode.DECODE_ERROR
            assert "dict" in str(info.value)
            assert (await s.request("echo", 2))["echo"] == 2  # the session is fine
