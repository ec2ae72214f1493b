"""Start a real nats-server for the NATS tests (imported by conftest and tests)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nats_server(
    *, jetstream: bool = True, port: int = 0, store: str = "", extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start nats-server; return (process, url, store dir). Fails or skips without it."""
    binary = shutil.which("nats-server")
    if binary is None:
        message = "nats-server is not installed (apt-get install nats-server)"
        if os.environ.get("M2M_REQUIRE_NATS") == "1":
            pytest.fail(message + " and M2M_REQUIRE_NATS=1", pytrace=False)
        pytest.skip(message)
    store = store or tempfile.mkdtemp(prefix="m2m-nats-")
    port = port or _free_port()
    args = [binary, "-a", "127.0.0.1", "-p", str(port)]
    if jetstream:
        args += ["-js", "-sd", store]
    args += list(extra)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"nats-server exited with {proc.returncode}", pytrace=False)
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("nats-server did not start within 10 s", pytrace=False)
    return proc, f"nats://127.0.0.1:{port}", store
