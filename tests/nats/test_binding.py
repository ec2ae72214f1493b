"""The NATS binding against a real nats-server, on asyncio and trio."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import anyio
import pytest

from m2mproto import Identity
from m2mproto.errors import ErrorCode
from m2mproto.tokens import InMemoryRevocationStore, issue, revoke
from m2mproto.transport import ConnectionClosedError, Server, connect
from m2mproto.transport.nats import (
    DATA,
    HEADER,
    NatsLink,
    NatsLivenessError,
    NatsSequenceError,
    connect_nats,
    open_nats_stream,
    publish_revocation,
    serve_nats,
)

pytestmark = pytest.mark.anyio


def _server(identity: Identity | None = None, **kw: Any) -> Server:
    server = Server(identity or Identity.generate(), **kw)

    @server.request("echo")
    async def echo(message: Any, ctx: Any) -> Any:
        return message

    @server.stream("count")
    async def count(stream: Any, ctx: Any) -> None:
        size = 0
        async for chunk in stream:
            size += len(chunk)
        await stream.send(str(size).encode())

    return server


async def _pair(link: NatsLink, listener: Any, service: str, **kw: Any) -> tuple[Any, Any]:
    accepted: list[Any] = []

    async def accept() -> None:
        accepted.append(await listener.accept())

    async with anyio.create_task_group() as tg:
        tg.start_soon(accept)
        client = await open_nats_stream(link, service, timeout=10, **kw)
    return client, accepted[0]


async def test_session_over_nats(nats_url: str) -> None:
    server = _server(authorizer_factory=lambda: None)
    client = Identity.generate()
    async with anyio.create_task_group() as tg:
        await tg.start(serve_nats, server, nats_url)
        with anyio.fail_after(30):
            async with connect_nats(nats_url, identity=client, peer=server.identity.agent_id) as s:
                assert s.peer.agent_id == server.identity.agent_id
                for i in range(20):
                    assert await s.request("echo", {"i": i}, timeout=10) == {"i": i}
                # 3 MB through a data stream: many records, chunks and window updates
                async with await s.open_stream("count") as stream:
                    for _ in range(30):
                        await stream.send(os.urandom(100_000))
                    await stream.send_eof()
                    assert (await stream.receive()).decode() == "3000000"
        tg.cancel_scope.cancel()


async def test_large_write_is_chunked_by_max_payload(nats_url: str) -> None:
    """One send() larger than max_payload arrives whole and in order."""
    from m2mproto.transport.nats import NatsListener

    async with NatsLink.connect(nats_url) as link:
        listener = NatsListener(link, ["chunks"])
        await listener.start()
        client, server = await _pair(link, listener, "chunks")
        data = os.urandom(link.max_payload * 2 + 12345)
        await client.send(data)
        await client.send_eof()
        got = bytearray()
        with anyio.fail_after(20):
            while True:
                try:
                    got += await server.receive()
                except anyio.EndOfStream:
                    break
        assert bytes(got) == data
        assert client.messages_out >= 3
        await client.aclose()
        await server.aclose()
        await listener.aclose()


async def test_broker_sees_no_plaintext(nats_url: str) -> None:
    """A subscriber on '>' records every message of a session: no marker appears."""
    marker = b"PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
    seen: list[bytes] = []
    server = _server(authorizer_factory=lambda: None)
    async with NatsLink.connect(nats_url) as spy, anyio.create_task_group() as tg:
        await spy.subscribe(">", lambda msg: seen.append(bytes(msg.data)))
        await spy.flush()
        await tg.start(serve_nats, server, nats_url)
        with anyio.fail_after(30):
            async with connect_nats(
                nats_url, identity=Identity.generate(), peer=server.identity.agent_id
            ) as s:
                reply = await s.request("echo", {"secret": marker}, timeout=10)
                assert reply == {"secret": marker}
                async with await s.open_stream("count") as stream:
                    await stream.send(marker * 100)
                    await stream.send_eof()
                    assert int(await stream.receive()) == len(marker) * 100
            await spy.flush()
            await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    assert len(seen) >= 8  # OPEN, ACCEPT, the handshake, requests, replies, EOFs...
    blob = b"\0".join(seen)
    assert marker not in blob
    assert marker[:12] not in blob


@pytest.mark.parametrize("attack", ["gap", "duplicate", "reorder"])
async def test_lost_or_reordered_message_fails_closed(nats_url: str, attack: str) -> None:
    """A message out of sequence ends the stream with NatsSequenceError before any
    byte of it reaches the record layer, and the session closes."""
    server = _server(authorizer_factory=lambda: None)
    async with NatsLink.connect(nats_url) as link, anyio.create_task_group() as tg:
        await tg.start(serve_nats, server, link)
        stream = await open_nats_stream(link, server.identity.agent_id.text)
        async with connect(stream, identity=Identity.generate(), peer=server.identity.agent_id,
                           connect_timeout=None) as s:  # fmt: skip
            assert await s.request("echo", 1, timeout=10) == 1
            expected = stream._seq_in + 1
            seq = {"gap": expected + 1, "duplicate": expected - 1, "reorder": 0}[attack]
            link.publish_nowait(stream._receive_subject, HEADER.pack(DATA, seq) + b"x" * 40)
            with anyio.fail_after(10):
                await s.wait_closed()
            with pytest.raises(ConnectionClosedError):
                await s.request("echo", 2, timeout=5)
        assert isinstance(stream._error, NatsSequenceError)
        assert "expected sequence" in str(stream._error)
        tg.cancel_scope.cancel()


async def test_forged_message_in_sequence_fails_in_record_layer(nats_url: str) -> None:
    """A message with the right sequence number but forged bytes passes the
    transport check and is refused by the record layer (DECRYPT/DECODE)."""
    server = _server(authorizer_factory=lambda: None)
    async with NatsLink.connect(nats_url) as link, anyio.create_task_group() as tg:
        await tg.start(serve_nats, server, link)
        stream = await open_nats_stream(link, server.identity.agent_id.text)
        async with connect(stream, identity=Identity.generate(), peer=server.identity.agent_id,
                           connect_timeout=None) as s:  # fmt: skip
            assert await s.request("echo", 1, timeout=10) == 1
            forged = HEADER.pack(DATA, stream._seq_in + 1) + b"\x00\x40" + os.urandom(64)
            link.publish_nowait(stream._receive_subject, forged)
            with anyio.fail_after(10):
                await s.wait_closed()
            with pytest.raises(ConnectionClosedError) as info:
                await s.request("echo", 2, timeout=5)
        # the record layer refused the forged record (the genuine message with the
        # same number, if it came later, is then a duplicate for the transport)
        assert info.value.close_code in (ErrorCode.DECRYPT_ERROR, ErrorCode.DECODE_ERROR,
                                         ErrorCode.PROTOCOL_ERROR)  # fmt: skip
        tg.cancel_scope.cancel()


async def test_nobody_serving_is_refused_quickly(nats_url: str) -> None:
    async with NatsLink.connect(nats_url) as link:
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError, match="no responders"):
            await open_nats_stream(link, "nobody-here", timeout=10)
        assert time.monotonic() - started < 5


async def test_silent_peer_fails_after_liveness(nats_url: str) -> None:
    """A server that stops answering (its NATS connection dies) is noticed within
    the liveness bound."""
    from m2mproto.transport.nats import NatsListener

    async with NatsLink.connect(nats_url) as client_link:
        server_link = await NatsLink.open(nats_url)
        listener = NatsListener(server_link, ["silent"], keepalive=0.2, liveness=1.0)
        await listener.start()
        stream, server_end = await _pair(
            client_link, listener, "silent", keepalive=0.2, liveness=1.0
        )
        await server_end.send(b"hello")
        assert await stream.receive() == b"hello"
        await anyio.sleep(1.3)  # keepalives keep an idle stream up
        await server_end.send(b"still")
        assert await stream.receive() == b"still"
        await server_link.abort()  # no CLOSE, no EOF: like a killed process
        started = time.monotonic()
        with anyio.fail_after(5), pytest.raises(NatsLivenessError):
            await stream.receive()
        assert 0.5 < time.monotonic() - started < 3
        await stream.aclose()


async def test_revocation_published_reaches_server_and_resets(nats_url: str) -> None:
    authority, holder = Identity.generate(), Identity.generate()
    store = InMemoryRevocationStore()
    server = _server(trust_roots=[authority.agent_id], revocations=store)
    token = issue(authority, holder.agent_id, ["echo=*"], now=time.time(), ttl=600)
    prefix = "t" + os.urandom(4).hex()
    async with anyio.create_task_group() as tg:
        listener = await tg.start(partial_serve(server, nats_url, prefix))
        assert listener.feed is not None
        async with connect_nats(nats_url, identity=holder, peer=server.identity.agent_id,
                                tokens=[token], prefix=prefix) as s:  # fmt: skip
            assert await s.request("echo", "ok", timeout=10) == "ok"
            forged = revoke(Identity.generate(), [token], now=time.time())
            await publish_revocation(nats_url, forged, prefix=prefix)  # well signed, wrong revoker
            statement = revoke(authority, [token], now=time.time())
            sent = time.monotonic()
            how = await publish_revocation(nats_url, statement, prefix=prefix)
            assert how == "jetstream"
            with anyio.fail_after(5):
                while listener.feed.applied < 2:
                    await anyio.sleep(0.01)
            assert listener.feed.last_applied is not None
            assert listener.feed.last_applied - sent < 1.0
            with pytest.raises(Exception, match=r"UNAUTHORIZED|REVOKED|refused"):
                await s.request("echo", "again", timeout=10)
        tg.cancel_scope.cancel()


def partial_serve(server: Server, url: str, prefix: str) -> Any:
    from functools import partial

    return partial(serve_nats, server, url, prefix=prefix, revocation_feed=True)


async def test_unreachable_feed_warns_and_refuses_by_policy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """NATS goes away: after max_feed_silence the feed logs a WARNING and is stale;
    with refuse_when_stale new sessions get REFUSE; when NATS is back it recovers."""
    import logging
    from functools import partial

    from m2m_nats_server import start_nats_server

    caplog.set_level(logging.WARNING, logger="m2mproto.nats")
    proc, url, store = start_nats_server()
    port = int(url.rsplit(":", 1)[1])
    server = _server(trust_roots=[Identity.generate().agent_id],
                     revocations=InMemoryRevocationStore())  # fmt: skip
    try:
        async with anyio.create_task_group() as tg:
            listener = await tg.start(partial(
                serve_nats, server, url, revocation_feed=True, max_feed_silence=1.0,
                refuse_when_stale=True))  # fmt: skip
            feed = listener.feed
            assert feed is not None and not feed.stale and feed.jetstream
            proc.kill()
            proc.wait()
            with anyio.fail_after(10):
                while not feed.stale:
                    await anyio.sleep(0.05)
            assert any("revocation feed unreachable" in r.getMessage()
                       and r.levelno == logging.WARNING for r in caplog.records)  # fmt: skip
            proc, url, store = start_nats_server(port=port, store=store)
            with anyio.fail_after(15):
                while feed.stale:
                    await anyio.sleep(0.05)
            # the policy: while stale, an OPEN is answered with REFUSE and the reason
            feed._check_interval = 3600  # after the check in progress, no more recovery
            await anyio.sleep(1.5)
            feed.stale = True
            async with NatsLink.connect(url) as link:
                with pytest.raises(ConnectionRefusedError, match="revocation feed unreachable"):
                    await open_nats_stream(link, server.identity.agent_id.text, timeout=10)
            assert listener.refused == 1
            tg.cancel_scope.cancel()
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(store, ignore_errors=True)


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # empty
        b"\x04\x00\x00",  # shorter than the header
        bytes([9]) + (99).to_bytes(8, "big"),  # unknown type
        bytes([2]) + bytes(8) + b"m2m.s." + b"a" * 32,  # a second ACCEPT
        bytes([3]) + bytes(8) + b"go away",  # REFUSE after ACCEPT
        bytes([1]) + bytes(8) + b"\x01",  # an OPEN on a session subject
    ],
    ids=["empty", "short", "unknown-type", "second-accept", "late-refuse", "open"],
)
async def test_malformed_message_on_session_subject_fails_closed(
    nats_url: str, payload: bytes
) -> None:
    server = _server(authorizer_factory=lambda: None)
    async with NatsLink.connect(nats_url) as link, anyio.create_task_group() as tg:
        await tg.start(serve_nats, server, link)
        stream = await open_nats_stream(link, server.identity.agent_id.text)
        async with connect(stream, identity=Identity.generate(), peer=server.identity.agent_id,
                           connect_timeout=None) as s:  # fmt: skip
            assert await s.request("echo", 1, timeout=10) == 1
            link.publish_nowait(stream._receive_subject, payload)
            with anyio.fail_after(10):
                await s.wait_closed()
        assert isinstance(stream._error, NatsSequenceError)
        tg.cancel_scope.cancel()


async def test_listener_ignores_or_refuses_bad_opens(nats_url: str) -> None:
    """Garbage on the connect subject never stops the listener; an unknown binding
    version is refused with a reason."""
    from m2mproto.transport.nats import HEADER, OPEN, NatsListener, connect_subject

    async with NatsLink.connect(nats_url) as link:
        listener = NatsListener(link, ["opens"])
        await listener.start()
        subject = connect_subject("m2m", "opens")
        replies: list[bytes] = []
        probe = "m2m.s." + "0" * 32
        evil: list[bytes] = []
        await link.subscribe(probe, lambda m: replies.append(bytes(m.data)))
        await link.subscribe("evil.>", lambda m: evil.append(bytes(m.data)))
        for junk in (b"", b"\x01", HEADER.pack(OPEN, 5) + b"\x01", HEADER.pack(7, 0) + b"\x01"):
            link.publish_nowait(subject, junk, reply=probe)
        link.publish_nowait(subject, HEADER.pack(OPEN, 0) + b"\x01")  # no reply subject
        for aimed in ("evil.subject", "evil.s." + "0" * 32, probe + ".x"):  # not a session's
            link.publish_nowait(subject, HEADER.pack(OPEN, 0) + b"\x01", reply=aimed)
        link.publish_nowait(subject, HEADER.pack(OPEN, 0) + b"\x02", reply=probe)
        await link.flush()
        with anyio.fail_after(10):
            while not replies:
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)
        assert len(replies) == 1 and replies[0].startswith(bytes([3]) + bytes(8))
        assert evil == []
        assert b"unsupported NATS binding version 2" in replies[0]
        assert listener.accepted == 0 and listener.refused == 1
        client, server = await _pair(link, listener, "opens")  # still serving
        await client.send(b"ping")
        assert await server.receive() == b"ping"
        for end in (client, server):
            await end.aclose()
        await listener.aclose()


@pytest.mark.parametrize("named", ["$JS.API.STREAM.DELETE.M2M_REVOCATIONS", "m2m.revocations",
                                   "m2m.s.short", "other.s." + "0" * 32])  # fmt: skip
async def test_accept_naming_another_subject_fails_closed(nats_url: str, named: str) -> None:
    """A hostile responder cannot aim the client's bytes at a non-session subject."""
    from m2mproto.transport.nats import ACCEPT, connect_subject

    async with NatsLink.connect(nats_url) as link:

        def answer(msg: Any) -> None:
            link.publish_nowait(msg.reply, HEADER.pack(ACCEPT, 0) + named.encode())

        await link.subscribe(connect_subject("m2m", "hostile"), answer)
        await link.flush()
        with pytest.raises(NatsSequenceError, match="not a session"):
            await open_nats_stream(link, "hostile", timeout=10)
