"""The asyncio-native path and the anyio path behave alike: which one runs, and the
failure cases over real sockets (every test runs on asyncio native, asyncio anyio, trio)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream
from transport_util import CLIENT_ID, SERVER_ID, make_server, running_tcp

from m2mproto.config import Configuration
from m2mproto.connection import Connection, Role
from m2mproto.errors import ErrorCode, LocalProtocolError, M2MError
from m2mproto.transport import (
    ConnectionClosedError,
    Context,
    DataStream,
    Server,
    Session,
    connect,
)
from m2mproto.transport._native import ENV_VAR, NativePump, _on_asyncio
from m2mproto.transport._pump import Pump
from m2mproto.transport.session import DEFAULT_HIGH_WATER

pytestmark = pytest.mark.anyio

KiB = 1024


def _native_expected() -> bool:
    return _on_asyncio() and os.environ.get(ENV_VAR) != "0"


def _open_server(**kwargs: Any) -> Server:
    server = make_server(authorizer_factory=lambda: None, **kwargs)

    @server.request("echo")
    async def echo(value: Any, ctx: Context) -> Any:
        return value

    return server


async def test_the_path_follows_the_backend_and_the_escape_hatch(tmp_path: Any) -> None:
    server = _open_server()
    expected = NativePump if _native_expected() else Pump
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            async with await connect(address, identity=CLIENT_ID, peer=SERVER_ID.agent_id) as s:
                assert await s.request("echo", 1) == 1
                assert type(s._pump) is expected
                (served,) = server.sessions
                assert type(served._pump) is expected
                assert s.remote_address == f"{address[0]}:{address[1]}"
            # native=False forces the anyio path on every backend
            async with await connect(
                address, identity=CLIENT_ID, peer=SERVER_ID.agent_id, native=False
            ) as s:
                assert type(s._pump) is Pump
                assert await s.request("echo", 2) == 2
        path = tmp_path / "s.sock"
        async with (
            server.listen_unix(path),
            await connect(path, identity=CLIENT_ID, peer=SERVER_ID.agent_id) as s,
        ):
            assert await s.request("echo", 3) == 3
            assert type(s._pump) is expected
    # Server(native=False) does the same for the sessions it accepts
    anyio_server = _open_server(native=False)
    with anyio.fail_after(10):
        async with (
            running_tcp(anyio_server) as address,
            await connect(address, identity=CLIENT_ID, peer=SERVER_ID.agent_id) as s,
        ):
            assert await s.request("echo", 4) == 4
            assert type(s._pump) is expected
            (served,) = anyio_server.sessions
            assert type(served._pump) is Pump
    if not _on_asyncio():
        with pytest.raises(LocalProtocolError) as info:
            await connect(address, identity=CLIENT_ID, peer=SERVER_ID.agent_id, native=True)
        assert info.value.code == ErrorCode.INVALID_ARGUMENT
        with pytest.raises(LocalProtocolError) as info:
            async with _open_server(native=True).listen_tcp():
                pass  # pragma: no cover
        assert info.value.code == ErrorCode.INVALID_ARGUMENT


@contextlib.asynccontextmanager
async def _raw_server(script: Any) -> AsyncIterator[tuple[str, int]]:
    """A TCP server on 127.0.0.1 that runs ``script(stream)`` for each connection."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, script)
        try:
            yield "127.0.0.1", port
        finally:
            tg.cancel_scope.cancel()


def _first_flight() -> bytes:
    """A real client's first handshake record (from the sans-IO core)."""
    conn = Connection(Role.INITIATOR, CLIENT_ID, Configuration())
    conn.start(0.0)
    return conn.data_to_send()


async def _connect_error(script: Any) -> M2MError:
    cfg = Configuration(handshake_timeout=3)
    with anyio.fail_after(10):
        async with _raw_server(script) as address:
            with pytest.raises(M2MError) as info:
                await connect(address, identity=CLIENT_ID, config=cfg, peer=SERVER_ID.agent_id)
    return info.value


@pytest.mark.parametrize("cut", [0, 1, 3])
async def test_a_server_that_closes_mid_record_fails_the_handshake_truncated(cut: int) -> None:
    flight = _first_flight()

    async def script(stream: ByteStream) -> None:
        await stream.receive()
        if cut:
            await stream.send(flight[:cut])  # part of a record's length, then EOF
        await stream.aclose()

    error = await _connect_error(script)
    assert isinstance(error, ConnectionClosedError)
    assert error.close_code == ErrorCode.TRUNCATED


@pytest.mark.parametrize(
    ("garbage", "code"),
    [
        (b"GET / HTTP/1.1\r\n\r\n" * 4, ErrorCode.VERSION_MISMATCH),
        (b"\x00" * 64, ErrorCode.VERSION_MISMATCH),
    ],
)
async def test_a_server_that_sends_garbage_fails_the_handshake_with_its_code(
    garbage: bytes, code: ErrorCode
) -> None:
    async def script(stream: ByteStream) -> None:
        await stream.receive()
        await stream.send(garbage)
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            for _ in range(100):  # until the client closes
                await stream.receive()

    error = await _connect_error(script)
    assert getattr(error, "close_code", error.code) == code, error


class _Recording(Server):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures: list[BaseException] = []

    def handshake_failed(self, exc: BaseException, transport: Any) -> None:
        self.failures.append(exc)
        super().handshake_failed(exc, transport)


@pytest.mark.parametrize(
    ("what", "code"),
    [
        ("half", ErrorCode.TRUNCATED),
        ("garbage", ErrorCode.VERSION_MISMATCH),
    ],
)
async def test_a_client_that_closes_mid_record_or_sends_garbage(what: str, code: int) -> None:
    server = _Recording(SERVER_ID, authorizer_factory=lambda: None)
    flight = _first_flight()
    data = flight[: len(flight) // 2] if what == "half" else b"\xff" * 200
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            raw = await anyio.connect_tcp(*address)
            await raw.send(data)
            await raw.send_eof()
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                for _ in range(100):  # until the server closes
                    await raw.receive()
            await raw.aclose()
            while not server.failures:
                await anyio.sleep(0.01)
            assert not server.sessions
    (exc,) = server.failures
    assert getattr(exc, "close_code", getattr(exc, "code", None)) == code, exc


@pytest.mark.parametrize(
    ("junk", "code"),
    [
        (b"\x00\x20" + b"\xaa" * 32, ErrorCode.DECRYPT_ERROR),  # a record no key sealed
        (b"\x00\x05" + b"\xaa" * 5, ErrorCode.FRAME_SIZE_ERROR),  # a length below 16
    ],
)
async def test_garbage_inside_an_established_session_closes_it_with_its_code(
    junk: bytes, code: ErrorCode
) -> None:
    server = _open_server()
    with anyio.fail_after(10):
        async with running_tcp(server) as address:
            s = await connect(address, identity=CLIENT_ID, peer=SERVER_ID.agent_id)
            assert await s.request("echo", 1) == 1
            (served,) = server.sessions
            pump = served._pump
            if isinstance(pump, NativePump):
                pump._transport.write(junk)
            else:
                await pump.transport.send(junk)
            await s.wait_closed()
            assert s.close_info is not None
            assert s.close_info[0] == code and not s.close_info[2], s.close_info
            with pytest.raises(ConnectionClosedError):
                await s.request("echo", 2)
            await s.aclose()


class _Gate:
    """Open or closed; ``wait`` returns while open."""

    def __init__(self) -> None:
        self.open = True
        self._event = anyio.Event()

    def close(self) -> None:
        self.open, self._event = False, anyio.Event()

    def reopen(self) -> None:
        self.open = True
        self._event.set()

    async def wait(self) -> None:
        while not self.open:  # until reopened
            await self._event.wait()


@contextlib.asynccontextmanager
async def _relay(target: tuple[str, int], gate: _Gate) -> AsyncIterator[tuple[str, int]]:
    """A TCP relay to *target*; bytes toward the client move only while *gate* is open
    (closed, the relay stops reading from *target*: its socket buffers fill up)."""

    async def pipe(src: ByteStream, dst: ByteStream, gate: _Gate | None) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            while True:  # until either side ends
                data = await src.receive()
                if gate is not None:
                    await gate.wait()
                await dst.send(data)
        with contextlib.suppress(Exception):
            await dst.send_eof()

    async def handle(client: ByteStream) -> None:
        upstream = await anyio.connect_tcp(*target)
        async with upstream, anyio.create_task_group() as tg:
            tg.start_soon(pipe, client, upstream, None)
            await pipe(upstream, client, gate)

    async with _raw_server(handle) as address:
        yield address


async def test_a_client_that_stops_reading_bounds_what_the_server_holds() -> None:
    """Windows large enough that the core would let all 32 MiB go: the sender still stops
    when the socket does, holding at most one batch beyond its high-water marks."""
    cfg = Configuration(initial_stream_window=64 << 20, initial_connection_window=64 << 20)
    server = make_server(authorizer_factory=lambda: None, config=cfg)
    payload = hashlib.shake_256(b"native-bp").digest(32 << 20)
    chunk = 16 * KiB
    progress = 0

    @server.stream("source")
    async def source(stream: DataStream, ctx: Context) -> None:
        nonlocal progress
        assert await stream.receive() == b"go"
        for offset in range(0, len(payload), chunk):
            await stream.send(payload[offset : offset + chunk])
            progress = offset + chunk
        await stream.send_eof()

    gate = _Gate()
    received = hashlib.sha256()
    with anyio.fail_after(60):
        async with (
            running_tcp(server) as target,
            _relay(target, gate) as address,
            await connect(
                address, identity=CLIENT_ID, config=cfg, peer=SERVER_ID.agent_id
            ) as client,
        ):
            stream = await client.open_stream("source")
            gate.close()
            await stream.send(b"go")
            last = -1
            for _ in range(100):  # until the sender has stalled (at most 10 s)
                await anyio.sleep(0.1)
                if progress == last and progress > 0:
                    break
                last = progress
            assert 0 < progress < len(payload)
            (served,) = server.sessions
            held = served.connection.send_buffered()
            pump = served._pump
            if isinstance(pump, NativePump):
                held += pump._transport.get_write_buffer_size()
            else:
                held += len(pump._held)
            # in the core: its high-water mark and one chunk; in the transport: its
            # high-water mark (64 KiB) and one batch (all the core held), records' overhead
            batch = DEFAULT_HIGH_WATER + chunk
            assert held <= batch + 64 * KiB + batch + 4 * KiB, held
            gate.reopen()
            async for data in stream:
                received.update(data)
    assert progress == len(payload)
    assert received.digest() == hashlib.sha256(payload).digest()


async def test_server_aclose_with_live_connections_closes_them_gracefully() -> None:
    server = _open_server()
    gate = anyio.Event()

    @server.request("slow")
    async def slow(value: Any, ctx: Context) -> Any:
        await gate.wait()
        return value

    outcome: list[Any] = []
    with anyio.fail_after(20):
        async with running_tcp(server) as address:
            sessions: list[Session] = [
                await connect(address, identity=CLIENT_ID, peer=SERVER_ID.agent_id)
                for _ in range(3)
            ]
            assert [await s.request("echo", i) for i, s in enumerate(sessions)] == [0, 1, 2]

            async def pending() -> None:
                try:
                    outcome.append(await sessions[0].request("slow", "late"))
                except ConnectionClosedError as exc:  # the CLOSE came before the reply
                    outcome.append(exc.close_code)

            async with anyio.create_task_group() as tg:
                tg.start_soon(pending)
                while not any(s.running_handlers for s in server.sessions):
                    await anyio.sleep(0.01)
                tg.start_soon(server.aclose)
                await anyio.sleep(0.05)
                gate.set()
            for s in sessions:
                await s.wait_closed()
                assert s.close_info is not None
                assert s.close_info[0] == ErrorCode.NO_ERROR and s.close_info[2]
                await s.aclose()
            assert not server.sessions
    # the close ends the session: a reply not queued before it is not sent
    assert outcome == [ErrorCode.NO_ERROR]


async def test_bytes_before_the_session_starts_are_held_up_to_a_bound() -> None:
    """A client that floods an accepted connection before its session runs (the listener
    not served yet): the protocol holds at most HOLD_LIMIT bytes and one read, then stops
    reading, so the sender blocks instead of the server's memory growing."""
    if not _native_expected():
        pytest.skip("the native listener's hold: asyncio native path only")
    from m2mproto.transport._native import HOLD_LIMIT, NativeListener, _Accepting

    accepted: list[Any] = []
    listener = await NativeListener.tcp("127.0.0.1", 0)
    accepting: _Accepting = listener._accepting
    with anyio.fail_after(10):
        host, port = listener.local_address
        raw = await anyio.connect_tcp(host, port)
        sent = 0
        with anyio.move_on_after(1.0):  # until the sender blocks (reading paused, buffers full)
            for _ in range(4096):  # at most 64 MiB
                await raw.send(b"\xee" * 16384)
                sent += 16384
        assert accepting._waiting is not None
        (stream,) = accepting._waiting
        held = stream._protocol._held_size
        assert 0 < held <= HOLD_LIMIT + 262144, held
        assert sent < 64 << 20
        # served now: the held bytes go to the handler's session (here: just counted)
        async with anyio.create_task_group() as tg:

            async def handler(s: Any) -> None:
                accepted.append(s)

            tg.start_soon(listener.serve, handler, tg)
            while not accepted:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        await listener.aclose()
        await raw.aclose()
        await stream.aclose()
    assert accepted == [stream]
