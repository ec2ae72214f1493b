"""Errors that say what and where, the event hook, the DEBUG trace and throttled
log lines: the real API over loopback, on both backends."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import Any

import anyio
import pytest
from transport_util import AUTHORITY, CLIENT_ID, SERVER_ID, make_server, running_tcp, token

from m2mproto import events as ev
from m2mproto.errors import (
    AuthenticationError,
    AuthorizationError,
    ErrorCode,
    NetworkError,
    TokenError,
)
from m2mproto.identity import Identity
from m2mproto.tokens import issue, verify
from m2mproto.tokens.verify import DEFAULT_CLOCK_SKEW
from m2mproto.transport import Server, Session, StreamResetError, connect
from m2mproto.transport._dispatch import TOKEN_LOG

pytestmark = pytest.mark.anyio

OTHER = Identity.from_seed(b"\x09" * 32)


def echo_server(**kwargs: Any) -> Server:
    server = make_server(**kwargs)

    @server.request("echo")
    async def echo(msg: Any, ctx: Any) -> Any:
        return msg

    @server.request("admin")
    async def admin(msg: Any, ctx: Any) -> Any:  # the token does not cover it
        return msg

    @server.stream("empty")
    async def empty(stream: Any, ctx: Any) -> None:  # ends its half without a reply
        return None

    @server.request("silent")
    async def silent(msg: Any, ctx: Any) -> None:
        return None

    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connect_failure_names_the_address_and_has_a_code() -> None:
    port = free_port()  # nobody listens there
    with anyio.fail_after(10), pytest.raises(NetworkError) as info:
        await connect(("127.0.0.1", port), identity=CLIENT_ID, peer=SERVER_ID.agent_id)
    exc = info.value
    assert exc.code == ErrorCode.UNREACHABLE
    assert isinstance(exc, OSError)  # what callers caught before
    assert f"127.0.0.1:{port}" in exc.message
    assert isinstance(exc.__cause__, OSError)


async def test_address_in_use_names_the_address_and_has_a_code() -> None:
    server = echo_server()
    with anyio.fail_after(10):
        async with server.listen_tcp("127.0.0.1", 0) as (host, port):
            with pytest.raises(NetworkError) as info:
                async with echo_server().listen_tcp(host, port):
                    raise AssertionError("listened twice on one port")
    assert info.value.code == ErrorCode.LISTEN_FAILED
    assert isinstance(info.value, OSError)
    assert f"127.0.0.1:{port}" in info.value.message


async def test_unexpected_peer_names_both_agents() -> None:
    server = echo_server()
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            with pytest.raises(AuthenticationError) as info:
                await connect(address, identity=CLIENT_ID, peer=OTHER.agent_id)
    assert info.value.code == ErrorCode.AUTH_UNEXPECTED_PEER
    assert OTHER.agent_id.text in info.value.message  # expected
    assert SERVER_ID.agent_id.text in info.value.message  # actual
    assert f"{address[0]}:{address[1]}" in info.value.message


async def test_refusals_name_the_resource() -> None:
    server = echo_server()
    with anyio.fail_after(10):
        async with (
            running_tcp(server) as address,
            await connect(
                address,
                identity=CLIENT_ID,
                tokens=[token(["echo=*", "nowhere=*", "silent=*", "empty=*"])],
                peer=SERVER_ID.agent_id,
            ) as s,
        ):
            with pytest.raises(AuthorizationError) as refused:
                await s.request("admin", 1)
            assert refused.value.code == ErrorCode.UNAUTHORIZED
            assert "'admin'" in refused.value.message
            assert "stream 0" not in refused.value.message.split("(")[0]
            with pytest.raises(AuthorizationError) as sent:
                await s.send("admin", 1, confirm=True)
            assert "'admin'" in sent.value.message
            with pytest.raises(StreamResetError) as no_handler:
                await s.request("nowhere", 1)
            assert no_handler.value.code == ErrorCode.REFUSED
            assert "'nowhere'" in no_handler.value.message
            stream = await s.open_stream("admin")
            with pytest.raises(AuthorizationError) as opened:
                await stream.receive()
            assert "'admin'" in opened.value.message
            with pytest.raises(StreamResetError) as ended:
                await s.request("empty", 1)
            assert "'empty'" in ended.value.message and "without a reply" in ended.value.message
            # a request handler that returns None replies None: not "ended without a reply"
            assert await s.request("silent", 1) is None


@pytest.mark.parametrize(
    ("shift", "code"),
    [(-3600 - DEFAULT_CLOCK_SKEW - 60, ErrorCode.EXPIRED), (600, ErrorCode.NOT_YET_VALID)],
)
async def test_connect_checks_its_own_token_window(shift: float, code: ErrorCode) -> None:
    server = echo_server()
    stale = issue(AUTHORITY, CLIENT_ID.agent_id, ["echo=*"], now=time.time() + shift, ttl=3600,
                  audience=SERVER_ID.agent_id)  # fmt: skip
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            with pytest.raises(TokenError) as info:
                await connect(address, identity=CLIENT_ID, tokens=[stale], peer=SERVER_ID.agent_id)
    assert info.value.code == code
    assert "token 1" in info.value.message and "T" in info.value.message  # ISO times
    assert server.stats.accepted == 0  # said before connecting


async def test_a_token_refused_by_the_server_fails_connect() -> None:
    """A token valid locally but from a root the server does not trust: connect()
    itself raises TokenError (it waited for the verdict), in both lifetimes."""
    server = echo_server(trust_roots=[OTHER.agent_id])
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            with pytest.raises(TokenError) as awaited:
                await connect(address, identity=CLIENT_ID, tokens=[token(["echo=*"])],
                              peer=SERVER_ID.agent_id)  # fmt: skip
            with pytest.raises(TokenError) as entered:
                async with connect(address, identity=CLIENT_ID, tokens=[token(["echo=*"])],
                                   peer=SERVER_ID.agent_id):  # fmt: skip
                    raise AssertionError("entered a session whose tokens were refused")
    for info in (awaited, entered):
        assert info.value.code == ErrorCode.TOKEN_INVALID
        assert f"{address[0]}:{address[1]}" in info.value.message


async def test_issue_takes_agent_id_text_and_defaults_now() -> None:
    before = time.time()
    tok = issue(AUTHORITY, CLIENT_ID.agent_id.text, ["echo=*"], ttl=60,
                audience=SERVER_ID.agent_id.text)  # fmt: skip
    grant = verify(tok, trust_roots=[AUTHORITY.agent_id], now=time.time(),
                   holder=CLIENT_ID.agent_id, audience=SERVER_ID.agent_id)  # fmt: skip
    assert grant.holder == CLIENT_ID.agent_id
    assert before - 1 <= grant.not_before <= time.time()
    assert grant.expires - grant.not_before in (59, 60)


async def test_on_event_hooks_see_the_core_events() -> None:
    seen_client: list[tuple[Session, ev.Event]] = []
    seen_server: list[tuple[Session, ev.Event]] = []

    def broken(session: Session, event: ev.Event) -> None:
        seen_server.append((session, event))
        raise RuntimeError("a hook bug never breaks the session")

    server = echo_server(on_event=broken)
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            async with await connect(
                address,
                identity=CLIENT_ID,
                tokens=[token(["echo=*"])],
                peer=SERVER_ID.agent_id,
                on_event=lambda s, e: seen_client.append((s, e)),
            ) as s:
                assert await s.request("echo", {"x": 1}) == {"x": 1}
            with anyio.fail_after(5):
                while not any(isinstance(e, ev.ConnectionClosed) for _, e in seen_server):
                    await anyio.sleep(0.01)
    client_kinds = [type(e) for _, e in seen_client]
    server_kinds = [type(e) for _, e in seen_server]
    assert client_kinds[0] is ev.HandshakeCompleted and client_kinds[-1] is ev.ConnectionClosed
    assert ev.MessageReceived in client_kinds and ev.PingAcknowledged in client_kinds
    assert server_kinds[0] is ev.HandshakeCompleted
    assert ev.TokenAccepted in server_kinds and ev.StreamOpened in server_kinds
    assert all(session is s for session, _ in seen_client)


async def test_debug_trace_names_frames_and_sizes_but_no_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "the-payload-text-never-logged"
    server = echo_server()
    with caplog.at_level(logging.DEBUG, logger="m2mproto"), anyio.fail_after(10):
        async with running_tcp(server) as address:
            async with await connect(address, identity=CLIENT_ID, tokens=[token(["echo=*"])],
                                     peer=SERVER_ID.agent_id) as s:  # fmt: skip
                assert await s.request("echo", secret) == secret
                hh = s.handshake_hash.hex()
    text = caplog.text
    assert "handshake started (initiator)" in text and "handshake started (responder)" in text
    assert "HandshakeCompleted" in text and "StreamOpened stream=0 resource='echo'" in text
    assert "MessageReceived stream=0 message bytes=" in text
    assert secret not in text and hh not in text
    for who in (CLIENT_ID, SERVER_ID):
        assert who.private_bytes_for_testing_only().hex() not in text


async def test_transport_log_lines_name_the_peer_address(caplog: pytest.LogCaptureFixture) -> None:
    server = echo_server()
    with caplog.at_level(logging.INFO, logger="m2mproto"), anyio.fail_after(10):
        async with running_tcp(server) as address:
            async with await connect(address, identity=CLIENT_ID, tokens=[token(["echo=*"])],
                                     peer=SERVER_ID.agent_id) as s:  # fmt: skip
                with pytest.raises(AuthorizationError):
                    await s.request("admin", 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "m2mproto.transport"]
    assert lines
    for line in lines:
        assert "@127.0.0.1:" in line, line
    assert any("refused stream 0 to 'admin'" in line for line in lines), lines


async def test_flooded_log_lines_are_throttled_and_name_the_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One source fails 40 handshakes and gets 40 token verdicts: a handful of lines each,
    one line saying the rest are suppressed, every line naming the address."""
    server = echo_server()
    TOKEN_LOG.reset()
    tok = token(["echo=*"])
    with caplog.at_level(logging.INFO, logger="m2mproto"), anyio.fail_after(30):
        async with running_tcp(server) as address:
            for _ in range(40):  # garbage instead of a handshake
                stream = await anyio.connect_tcp(*address)
                await stream.send(b"GET / HTTP/1.1\r\n\r\n" * 4)
                with (
                    anyio.move_on_after(5),
                    contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError),
                ):
                    while True:  # until the server closes it
                        await stream.receive()
                await stream.aclose()
            with anyio.fail_after(10):
                while server.stats.failed < 40:
                    await anyio.sleep(0.01)
            for _ in range(10):  # 40 token verdicts: one at each handshake, 3 TOKEN frames
                async with await connect(address, identity=CLIENT_ID, tokens=[tok],
                                         peer=SERVER_ID.agent_id) as s:  # fmt: skip
                    for _ in range(3):
                        await s.present_token(tok)
                    assert await s.request("echo", 1) == 1  # after every token frame
    records = [r for r in caplog.records if r.name.startswith("m2mproto")]
    failed = [r.getMessage() for r in records if "handshake" in r.getMessage()
              and ("failed" in r.getMessage() or "suppress" in r.getMessage())]  # fmt: skip
    tokens = [r.getMessage() for r in records if "token" in r.getMessage()]
    assert 2 <= len(failed) <= server.log_throttle.burst + 2, failed
    assert all("127.0.0.1" in line and "?" not in line.split(":")[0] for line in failed), failed
    assert any("suppressing" in line for line in failed)
    assert 2 <= len(tokens) <= TOKEN_LOG.burst + 2, tokens
    assert all("127.0.0.1" in line for line in tokens), tokens
    assert any("suppressing" in line for line in tokens)
