"""A real nats-server (JetStream in a temp dir) on a free loopback port per test session.

Without the ``nats-server`` binary the NATS tests skip with a reason, except
when ``M2M_REQUIRE_NATS=1`` (set by ``.ci/run``): then they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from m2m_nats_server import start_nats_server

if os.environ.get("M2M_REQUIRE_NATS") == "1":
    import nats  # noqa: F401  (CI: a missing client is a failure, not a skip)
else:
    pytest.importorskip("nats", reason="nats-py is not installed (pip install 'm2mproto[nats]')")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    proc, url, store = start_nats_server()
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(store, ignore_errors=True)
