"""`m2m serve/request/send --nats`, `m2m token revoke --publish` and `m2m demo --nats`
through the real entry point, against a real nats-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m2mproto.cli import EXIT_CODES

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def m2m(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "m2mproto", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=ENV)  # fmt: skip


def ok(*args: str, cwd: Path) -> str:
    result = m2m(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_serve_request_send_revoke_over_nats(nats_url: str, tmp_path: Path, backend: str) -> None:
    d = tmp_path
    for name in ("root", "srv", "alice"):
        ok("keygen", "--out", f"{name}.key", cwd=d)
    root, srv, alice = (ok("id", f"{n}.key", cwd=d).strip() for n in ("root", "srv", "alice"))
    ok("token", "issue", "--key", "root.key", "--to", alice, "--cap", "echo=*", "--cap", "log=*",
       "--aud", srv, "--out", "a.tok", cwd=d)  # fmt: skip
    prefix = f"cli{backend}{os.getpid()}"
    nats = ["--nats", nats_url, "--nats-prefix", prefix]
    err = (d / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "m2mproto", "serve", "--key", "srv.key", "--root", root, *nats,
         "--service", "orders", "--backend", backend],
        cwd=d, stdout=subprocess.PIPE, stderr=err, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on nats "), (line, (d / "serve.log").read_text())
        assert f"{prefix}.connect.orders" in line and f"{prefix}.connect.{srv}" in line
        common = ["--key", "alice.key", "--token", "a.tok", "--peer", srv, *nats,
                  "--backend", backend]  # fmt: skip
        # by service name, and by the server's agent ID alone
        out = ok("request", *common, "--service", "orders", "echo", '{"n": 1}', cwd=d)
        assert json.loads(out) == {"n": 1}
        assert json.loads(ok("request", *common, "echo", '"id"', cwd=d)) == "id"
        assert json.loads(ok("send", *common, "log", '{"e": 2}', cwd=d))["sent"] is True
        # a service nobody serves: refused at once, network class
        result = m2m("request", *common, "--service", "nobody", "echo", "1", cwd=d)
        assert result.returncode == EXIT_CODES["network"], result.stderr
        assert "no responders" in result.stderr
        # --nats without --peer is a command-line mistake
        result = m2m("request", "--key", "alice.key", *nats, "echo", "1", cwd=d)
        assert result.returncode == EXIT_CODES["local"] and "--peer" in result.stderr
        # revoke and publish: the replica applies it, the next request is refused
        out = ok("token", "revoke", "--key", "root.key", "a.tok", "--publish", nats_url,
                 "--nats-prefix", prefix, cwd=d)  # fmt: skip
        assert "(jetstream)" in out
        deadline = time.monotonic() + 10
        while "revocation from" not in (d / "serve.log").read_text():
            assert time.monotonic() < deadline, (d / "serve.log").read_text()
            time.sleep(0.05)
        result = m2m("request", *common, "echo", "1", cwd=d)
        assert result.returncode == EXIT_CODES["token"], result.stderr
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (d / "serve.log").read_text()


def test_demo_over_nats(nats_url: str, tmp_path: Path) -> None:
    result = m2m("demo", "--nats", nats_url, "--keep", str(tmp_path), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "publishes it over NATS (jetstream)" in result.stdout
    assert "All steps behaved as expected" in result.stdout
