"""Transport tests run on both anyio backends (anyio's pytest plugin), and on asyncio
along both of its paths:

* ``asyncio``: the native path (``asyncio.Protocol``, the default on asyncio for TCP
  and Unix sockets); ``memory_pair`` then runs over a Unix ``socketpair`` driven
  natively, so the tests written against in-memory sessions exercise the native pump;
* ``asyncio-anyio``: anyio streams (``M2MPROTO_NATIVE=0``), memory streams in memory;
* ``trio``: anyio streams.
"""

from __future__ import annotations

import socket

import pytest

from m2mproto.transport._native import ENV_VAR, NativeStream, open_native_socket
from m2mproto.transport.memory import MemoryPair


async def _socket_streams(self: MemoryPair) -> tuple[NativeStream, NativeStream]:
    a, b = socket.socketpair()
    return await open_native_socket(a), await open_native_socket(b)


@pytest.fixture(params=["asyncio", "asyncio-anyio", "trio"])
def anyio_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "asyncio-anyio":
        monkeypatch.setenv(ENV_VAR, "0")
        return "asyncio"
    monkeypatch.delenv(ENV_VAR, raising=False)
    if request.param == "asyncio":
        monkeypatch.setattr(MemoryPair, "_streams", _socket_streams)
    return str(request.param)
