"""Server admission limits and hostile peers on loopback (spec/streams.md §7 limits).

Every attack runs against a real ``Server`` on 127.0.0.1 while a benign client
(from 127.0.0.2, so per-source limits do not hit it) completes a handshake and
an ``echo`` request; the test asserts it needed under 5 s. Hostile traffic is
built from the project's own codec: a sans-IO ``Handshake`` for the
handshake, ``encode_frame`` + ``RecordWriter`` for the records, so the
attacker is a valid peer that misbehaves, not line noise.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream
from transport_util import CLIENT_ID, SERVER_ID, make_server, running_tcp, token

from m2mproto.config import Configuration
from m2mproto.errors import ErrorCode, LocalProtocolError, M2MError
from m2mproto.frames import (
    CloseFrame,
    Frame,
    KeyUpdateFrame,
    MessageFrame,
    OpenFrame,
    PingFrame,
    ResetFrame,
    WindowUpdateFrame,
    decode_frames,
    encode_frame,
)
from m2mproto.handshake import Handshake
from m2mproto.identity import Identity
from m2mproto.records import RecordReader, RecordWriter
from m2mproto.transport import Server, connect

pytestmark = pytest.mark.anyio

BENIGN_HOST = "127.0.0.2"
#: The issue's bound for the benign client during an attack.
BENIGN_DEADLINE = 5.0

TOKEN = token(["echo=*", "sink=*"])


class Hostile:
    """A peer that completes a real handshake and then sends chosen frames."""

    def __init__(self, stream: SocketStream, writer: RecordWriter, reader: RecordReader) -> None:
        self.stream = stream
        self.writer = writer
        self.reader = reader
        self.next_stream = 0

    @classmethod
    async def connect(
        cls,
        address: tuple[str, int],
        *,
        identity: Identity = CLIENT_ID,
        tokens: Sequence[bytes] = (TOKEN,),
        local_host: str | None = None,
    ) -> Hostile:
        stream = await anyio.connect_tcp(*address, local_host=local_host)
        hs = Handshake(True, identity, entropy=os.urandom, tokens=tokens)
        result = None
        for _ in range(8):  # XX: at most two flights each way
            out = hs.data_to_send()
            if out:
                await stream.send(out)
            if result is not None:
                break
            hs.receive_data(await stream.receive())
            result = hs.next_event()
        assert result is not None
        writer = RecordWriter(result.send_cipher, key_update_after=2**24, max_records_per_key=2**32)
        reader = RecordReader(result.recv_cipher, max_records_per_key=2**32, accept_abort=True)
        reader.feed(result.trailing_data)
        return cls(stream, writer, reader)

    async def send(self, frames: Sequence[Frame]) -> None:
        """Seal *frames* in one record (a KEY_UPDATE must come last) and send it."""
        await self.stream.send(self.writer.seal(b"".join(encode_frame(f) for f in frames)))
        if frames and isinstance(frames[-1], KeyUpdateFrame):
            self.writer.rekey()

    def new_stream(self) -> int:
        sid = self.next_stream
        self.next_stream += 2
        return sid

    async def close_code(self, timeout: float = 10.0) -> int | None:
        """Read until the server's CLOSE (its code) or EOF (None); bounded by *timeout*."""
        with anyio.fail_after(timeout):
            for _ in iter(int, 1):  # until CLOSE or EOF, under fail_after
                try:
                    data = await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return None
                self.reader.feed(data)
                while (plaintext := self.reader.next_record()) is not None:
                    frames = decode_frames(plaintext)
                    for frame in frames:
                        if isinstance(frame, CloseFrame):
                            return frame.code
                    if frames and isinstance(frames[-1], KeyUpdateFrame):
                        self.reader.rekey()
        return None  # pragma: no cover

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self.stream)


async def benign_request(address: tuple[str, int]) -> float:
    """Handshake + echo from another source address; return the seconds it took."""
    start = anyio.current_time()
    with anyio.fail_after(BENIGN_DEADLINE * 2):
        stream = await anyio.connect_tcp(*address, local_host=BENIGN_HOST)
        async with connect(
            stream, identity=CLIENT_ID, tokens=[TOKEN], peer=SERVER_ID.agent_id
        ) as session:
            assert await session.request("echo", {"hi": 1}) == {"hi": 1}
    return anyio.current_time() - start


def echo_server(**kwargs: Any) -> Server:
    server = make_server(**kwargs)

    @server.request("echo")
    async def echo(message: Any, ctx: Any) -> Any:
        return message

    @server.request("sink")
    async def sink(message: Any, ctx: Any) -> Any:
        return b"\0" * 60000  # a large reply: fills the window of a peer that never reads

    return server


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[tuple[str, int]]:
    with anyio.fail_after(60):
        async with running_tcp(server) as address:
            yield address


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


# --------------------------------------------------------------------- construction


def test_limits_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError):
        make_server(max_pending_per_source=0)
    with pytest.raises(LocalProtocolError):
        make_server(handshake_timeout=0)
    server = make_server(handshake_timeout=2.5)
    assert server.config is not None and server.config.handshake_timeout == 2.5


# --------------------------------------------------------------------- unauthenticated floods


@pytest.mark.slow
async def test_silent_connections_dropped_at_the_deadline_memory_bounded() -> None:
    """300 connections that never send a byte: each dropped at the deadline.

    (tracemalloc slows the loop several times, and a loaded machine more: hence an 8 s
    deadline, so that all 300 are still pending when the memory is read.)
    """
    deadline = 8.0
    server = echo_server(
        handshake_timeout=deadline, max_pending_handshakes=400, max_pending_per_source=400
    )
    count = 300
    async with serving(server) as address:
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            socks = [await anyio.connect_tcp(*address) for _ in range(count)]
            start = anyio.current_time()
            await wait_for(lambda: server.stats.accepted == count, deadline)
            assert server.pending_handshakes == count
            held = tracemalloc.get_traced_memory()[0] - base
            benign = await benign_request(address)
            await wait_for(lambda: server.stats.timed_out == count, deadline + 10)
            elapsed = anyio.current_time() - start
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        for s in socks:
            await s.aclose()
    assert server.pending_handshakes == 0 and server.stats.evicted == 0
    assert elapsed < deadline + 3.0
    assert benign < BENIGN_DEADLINE
    per_conn = held / count
    assert per_conn < 64 * 1024, per_conn  # each pending handshake costs well under 64 KiB
    assert peak - base < 64 * 1024 * count
    print(f"silent: {count} pending, {per_conn / 1024:.1f} KiB each, benign {benign:.3f}s")


async def test_slowloris_one_byte_per_second_dropped_at_the_deadline() -> None:
    """Clients dribbling a valid preface one byte per second never outlive the deadline."""
    server = echo_server(
        handshake_timeout=1.5, max_pending_per_source=200, max_pending_handshakes=200
    )
    prefix = Handshake(True, CLIENT_ID, entropy=os.urandom).data_to_send()
    count = 100
    dropped: list[float] = []

    async def dribble(address: tuple[str, int]) -> None:
        start = anyio.current_time()
        async with await anyio.connect_tcp(*address) as s:
            try:
                for byte in prefix:  # bounded by the preface length
                    await s.send(bytes([byte]))
                    with anyio.move_on_after(1.0):
                        if not await s.receive():
                            break
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
        dropped.append(anyio.current_time() - start)

    async with serving(server) as address:
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(dribble, address)
            await anyio.sleep(0.3)
            benign = await benign_request(address)
        await wait_for(lambda: server.stats.timed_out == count)  # the server's bookkeeping
    assert len(dropped) == count
    assert max(dropped) < 1.5 + 2.0  # the deadline plus one dribble interval
    assert min(dropped) >= 1.0
    assert server.stats.timed_out == count
    assert benign < BENIGN_DEADLINE


async def test_per_source_limit_evicts_the_oldest_from_that_source_only() -> None:
    server = echo_server(handshake_timeout=5.0, max_pending_per_source=8, max_pending_handshakes=64)
    async with serving(server) as address:
        socks = [await anyio.connect_tcp(*address) for _ in range(30)]
        await wait_for(lambda: server.stats.accepted == 30)
        assert server.pending_handshakes == 8
        assert server.stats.evicted == 22
        others = [await anyio.connect_tcp(*address, local_host="127.0.0.3") for _ in range(5)]
        await wait_for(lambda: server.stats.accepted == 35)
        assert server.pending_handshakes == 13 and server.stats.evicted == 22
        # the evicted connections were closed by the server: EOF, no data
        with anyio.fail_after(5):
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await socks[0].receive()
        benign = await benign_request(address)
        for s in socks + others:
            await s.aclose()
    assert benign < BENIGN_DEADLINE


async def test_total_pending_limit_from_many_sources_keeps_benign_clients_served() -> None:
    """An attacker spread over 8 source addresses fills the table; evicting the
    oldest keeps a fresh honest handshake possible."""
    server = echo_server(handshake_timeout=5.0, max_pending_handshakes=32, max_pending_per_source=8)
    socks = []
    async with serving(server) as address:
        for i in range(200):
            socks.append(await anyio.connect_tcp(*address, local_host=f"127.0.1.{i % 8 + 1}"))
        await wait_for(lambda: server.stats.accepted == 200)
        assert server.pending_handshakes <= 32
        benign = await benign_request(address)
        for s in socks:
            await s.aclose()
    assert server.stats.evicted >= 200 - 32
    assert benign < BENIGN_DEADLINE


async def test_max_connections_refuses_beyond_live_sessions() -> None:
    server = echo_server(max_connections=2)
    async with serving(server) as address:
        async with (
            connect(address, identity=CLIENT_ID, tokens=[TOKEN], peer=SERVER_ID.agent_id) as a,
            connect(address, identity=CLIENT_ID, tokens=[TOKEN], peer=SERVER_ID.agent_id) as b,
        ):
            await a.request("echo", 1)
            await b.request("echo", 2)
            with anyio.fail_after(5), pytest.raises(M2MError):
                async with connect(
                    address, identity=CLIENT_ID, tokens=[TOKEN], peer=SERVER_ID.agent_id
                ) as c:
                    await c.request("echo", 3)
        assert server.stats.refused >= 1
        assert await benign_request(address) < BENIGN_DEADLINE


# --------------------------------------------------------------------- authenticated floods


def _ping_flood(h: Hostile) -> list[list[Frame]]:
    return [[PingFrame(i.to_bytes(4, "big")) for i in range(2000)] for _ in range(10)]


def _window_flood(h: Hostile) -> list[list[Frame]]:
    return [[WindowUpdateFrame(None, 1)] for _ in range(200)]


def _key_update_flood(h: Hostile) -> list[list[Frame]]:
    return [[KeyUpdateFrame(False)] for _ in range(200)]


def _rapid_reset(h: Hostile) -> list[list[Frame]]:
    records: list[list[Frame]] = []
    for _ in range(50):
        frames: list[Frame] = []
        for _ in range(20):
            sid = h.new_stream()
            frames += [OpenFrame(sid, "echo"), ResetFrame(sid, ErrorCode.CANCELLED, 0)]
        records.append(frames)
    return records


FLOODS = {
    "ping": (_ping_flood, ErrorCode.ENHANCE_YOUR_CALM),
    "window_update": (_window_flood, ErrorCode.ENHANCE_YOUR_CALM),
    "key_update": (_key_update_flood, ErrorCode.ENHANCE_YOUR_CALM),
    "open_reset": (_rapid_reset, ErrorCode.ENHANCE_YOUR_CALM),
}


@pytest.mark.parametrize("kind", sorted(FLOODS))
async def test_flood_closes_the_attacker_and_spares_the_benign_client(kind: str) -> None:
    build, expected = FLOODS[kind]
    server = echo_server()
    attackers = 4
    codes: list[int | None] = []

    async def attack(address: tuple[str, int]) -> None:
        h = await Hostile.connect(address)
        sent = 0
        try:
            for frames in build(h):  # a bounded program of records
                await h.send(frames)
                sent += 1
        except (anyio.BrokenResourceError, OSError):
            pass  # the server closed on us mid-flood
        codes.append(await h.close_code())
        await h.aclose()

    async with serving(server) as address:
        async with anyio.create_task_group() as tg:
            for _ in range(attackers):
                tg.start_soon(attack, address)
            benign = await benign_request(address)
        await wait_for(lambda: not server.sessions)
    assert codes == [expected] * attackers, [ErrorCode(c) if c else c for c in codes]
    assert benign < BENIGN_DEADLINE
    print(f"flood {kind}: {attackers} attackers closed with {expected.name}; benign {benign:.3f}s")


@pytest.mark.slow
async def test_peer_that_never_reads_is_bounded_and_benign_served() -> None:
    """A peer requests large replies and never reads: the server's queue stays within
    the windows, other clients are served, and the peer is cut at the idle deadline."""
    server = echo_server(config=Configuration(idle_timeout=3.0, close_timeout=1.0))
    async with serving(server) as address:
        h = await Hostile.connect(address)
        for _ in range(40):  # 40 requests x 60 KB replies: far beyond what loopback buffers
            sid = h.new_stream()
            await h.send(
                [OpenFrame(sid, "sink"), MessageFrame(sid, b"\xf6", last=True, end_stream=True)]
            )
        await wait_for(lambda: len(server.sessions) == 1)
        await anyio.sleep(0.5)
        (session,) = server.sessions
        queued = session.connection.send_buffered()
        benign = await benign_request(address)
        # never reading: nothing more arrives from us, so the idle timeout ends it
        await wait_for(lambda: not server.sessions, 15)
        await h.aclose()
    # the core queues at most 40 replies; bytes on the wire are capped by our window
    assert queued <= 40 * 60100
    assert benign < BENIGN_DEADLINE
