"""Transport tests run on both anyio backends (anyio's pytest plugin), and on asyncio
along both paths: the native one (``asyncio.Protocol``, the default there for TCP and
Unix sockets) and the anyio streams one (``M2MPROTO_NATIVE=0``)."""

from __future__ import annotations

import pytest

from m2mproto.transport._native import ENV_VAR


@pytest.fixture(params=["asyncio", "asyncio-anyio", "trio"])
def anyio_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "asyncio-anyio":
        monkeypatch.setenv(ENV_VAR, "0")
        return "asyncio"
    monkeypatch.delenv(ENV_VAR, raising=False)
    return str(request.param)
