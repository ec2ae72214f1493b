"""The transport under a plain ``asyncio.run`` (not ``anyio.run``), where the native
path's loop callbacks run outside any task and no library has told sniffio that
asyncio runs: servers, clients, handlers, timers and alarms must still work."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
import sniffio
from transport_util import CLIENT_ID, SERVER_ID, make_server, token

from m2mproto.config import Configuration
from m2mproto.errors import ErrorCode
from m2mproto.transport import ConnectionClosedError, Context, DataStream, connect
from m2mproto.transport._native import ENV_VAR, NativePump

ALL = ["echo=*", "log=*", "up=*"]


def _server(**kwargs: Any) -> tuple[Any, list[Any]]:
    server = make_server(**kwargs)
    seen: list[Any] = []

    @server.request("echo")
    async def echo(value: Any, ctx: Context) -> Any:
        return value

    @server.message("log")
    async def log(value: Any, ctx: Context) -> None:
        seen.append(value)

    @server.stream("up")
    async def up(stream: DataStream, ctx: Context) -> None:
        total = 0
        async for chunk in stream:
            total += len(chunk)
        await stream.send(total.to_bytes(8, "big"))

    return server, seen


async def _exchange(idle_timeout: float) -> dict[str, Any]:
    server, seen = _server(config=Configuration(idle_timeout=idle_timeout))
    out: dict[str, Any] = {}
    async with server.listen_tcp("127.0.0.1", 0) as (host, port):
        async with await connect(
            (host, port),
            identity=CLIENT_ID,
            tokens=[token(ALL)],
            peer=SERVER_ID.agent_id,
            config=Configuration(keepalive_interval=0.05),
        ) as s:
            out["native"] = isinstance(s._link.pump, NativePump)
            out["echo"] = [await s.request("echo", i) for i in range(20)]
            for i in range(5):
                await s.send("log", i)
            stream = await s.open_stream("up")
            async with stream:
                await stream.send(bytes(200_000))
                await stream.send_eof()
                out["up"] = int.from_bytes(await stream.receive(), "big")
            await anyio.sleep(0.3)  # client keepalive pings fire from the pump's timer
            out["after_pings"] = await s.request("echo", "still")
        # a second client stays silent: the server's idle timeout closes it from a callback
        async with await connect(
            (host, port), identity=CLIENT_ID, tokens=[token(ALL)], peer=SERVER_ID.agent_id
        ) as quiet:
            await anyio.sleep(idle_timeout + 0.5)
            try:
                await quiet.request("echo", "late")
                out["quiet"] = "answered"
            except ConnectionClosedError as exc:
                out["quiet"] = (ErrorCode(exc.close_code).name, exc.remote)
        out["seen"] = sorted(seen)
    return out


def test_native_path_under_plain_asyncio_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(sniffio.AsyncLibraryNotFoundError):
        sniffio.current_async_library()  # nothing set it for this thread

    async def main() -> dict[str, Any]:
        async with asyncio.timeout(30):
            return await _exchange(idle_timeout=0.5)

    out = asyncio.run(main())
    assert out["native"] is True
    assert out["echo"] == list(range(20))
    assert out["up"] == 200_000
    assert out["after_pings"] == "still"
    assert out["seen"] == list(range(5))
    assert out["quiet"] == ("IDLE_TIMEOUT", True)  # closed by the server's timer
