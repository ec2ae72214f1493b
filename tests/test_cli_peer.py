"""The reference peer through the real entry point, in subprocesses on loopback.

keygen -> issue -> delegate -> serve -> send/request -> revoke -> refused, the
failure exit codes, serve on both backends, and ``m2m demo``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2mproto.cli import EXIT_CODES

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def m2m(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "m2mproto", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=ENV,
    )


def ok(*args: str, cwd: Path) -> str:
    result = m2m(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


class Peer:
    def __init__(self, proc: subprocess.Popen[str], address: str, stderr: Path) -> None:
        self.proc, self.address, self.stderr = proc, address, stderr

    def log(self) -> str:
        return self.stderr.read_text()


def start_serve(d: Path, *args: str, backend: str = "asyncio") -> Peer:
    stderr = d / f"serve-{backend}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "m2mproto", "serve", "--key", "srv.key", "--listen",
         "127.0.0.1:0", "--backend", backend, *args],
        cwd=d, stdout=subprocess.PIPE, stderr=stderr.open("w"), text=True, env=ENV,
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    line = ""
    while not line and time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
    assert line.startswith("listening on 127.0.0.1:"), (line, stderr.read_text())
    return Peer(proc, line.split()[-1], stderr)


def stop(peer: Peer) -> int:
    peer.proc.send_signal(signal.SIGTERM)
    try:
        return peer.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        peer.proc.kill()
        peer.proc.wait()
        raise


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    d = tmp_path_factory.mktemp("world")
    ids = {n: ok("keygen", "--out", f"{n}.key", cwd=d).strip() for n in ("root", "a", "b", "srv")}
    ok("token", "issue", "--key", "root.key", "--to", ids["a"], "--cap", "echo=*", "--cap",
       "log=*", "--aud", ids["srv"], "--out", "a.tok", cwd=d)  # fmt: skip
    ok("token", "delegate", "--key", "a.key", "--parent", "a.tok", "--to", ids["b"], "--cap",
       "echo=*", "--aud", ids["srv"], "--out", "b.tok", cwd=d)  # fmt: skip
    yield d, ids


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_full_flow(world: tuple[Path, dict[str, str]], backend: str) -> None:
    d, ids = world
    revocations = d / f"rev-{backend}.bin"
    revocations.write_bytes(b"")  # it must exist: an empty file revokes nothing
    peer = start_serve(d, "--root", ids["root"], "--revocations", str(revocations),
                       "--log-file", f"log-{backend}.jsonl", backend=backend)  # fmt: skip
    try:
        client = ("--connect", peer.address, "--backend", backend, "--peer", ids["srv"])
        out = ok("request", "--key", "a.key", "--token", "a.tok", *client, "echo",
                 '{"hello": [1, 2]}', cwd=d)  # fmt: skip
        assert json.loads(out) == {"hello": [1, 2]}
        out = ok("send", "--key", "a.key", "--token", "a.tok", *client, "log", '{"n": 1}',
                 cwd=d)  # fmt: skip
        assert json.loads(out)["sent"] is True
        logged = [json.loads(x) for x in (d / f"log-{backend}.jsonl").read_text().splitlines()]
        assert logged == [{"peer": ids["a"], "message": {"n": 1}}]

        # B's delegation covers echo only.
        out = ok("request", "--key", "b.key", "--token", "b.tok", *client, "echo", "7", cwd=d)
        assert json.loads(out) == 7
        result = m2m("send", "--key", "b.key", "--token", "b.tok", *client, "log", "1", cwd=d)
        assert result.returncode == EXIT_CODES["authorization"]
        assert result.stderr.startswith("m2m: UNAUTHORIZED:")

        # A revokes B's token; the peer picks the file up while running.
        ok("token", "revoke", "--key", "a.key", "b.tok", "--out", str(revocations), cwd=d)
        deadline = time.monotonic() + 10
        result = m2m("request", "--key", "b.key", "--token", "b.tok", *client, "echo", "1", cwd=d)
        # until the reload: accepted (0), or refused mid-request (the reload re-checked
        # the live session: UNAUTHORIZED); from then on the handshake refuses the token
        racing = (0, EXIT_CODES["authorization"])
        while result.returncode in racing and time.monotonic() < deadline:
            time.sleep(0.2)
            result = m2m("request", "--key", "b.key", "--token", "b.tok", *client, "echo", "1",
                         cwd=d)  # fmt: skip
        assert result.returncode == EXIT_CODES["token"], result.stderr
        assert "TOKEN_INVALID" in result.stderr
        # A is unaffected.
        assert json.loads(ok("request", "--key", "a.key", "--token", "a.tok", *client, "echo",
                             '"x"', cwd=d)) == "x"  # fmt: skip
    finally:
        assert stop(peer) == 0
    log = peer.log()
    short_a, short_b = ids["a"][:12], ids["b"][:12]
    assert short_a in log and short_b in log
    # Each refusal is logged with the peer's short ID: the stream B had no
    # capability for, and B's revoked token at the handshake.
    b_lines = [line for line in log.splitlines() if short_b in line]
    assert any("refused stream" in line and "UNAUTHORIZED" in line for line in b_lines), log
    assert any("closed (REVOKED" in line for line in b_lines), log  # the precise local reason
    assert "Traceback" not in log


@pytest.mark.slow
def test_client_failures(world: tuple[Path, dict[str, str]]) -> None:
    d, ids = world
    peer = start_serve(d, "--root", ids["root"])
    try:
        client = ("--connect", peer.address)
        # No token at all: authenticated, but no capability.
        result = m2m("request", "--key", "a.key", *client, "--peer", ids["srv"], "echo", "1",
                     cwd=d)  # fmt: skip
        assert result.returncode == EXIT_CODES["authorization"]
        # Wrong expected peer.
        result = m2m("request", "--key", "a.key", "--token", "a.tok", "--peer", ids["b"],
                     *client, "echo", "1", cwd=d)  # fmt: skip
        assert result.returncode == EXIT_CODES["authentication"], result.stderr
        # Malformed JSON and malformed agent ID are user mistakes.
        result = m2m("request", "--key", "a.key", *client, "--peer", ids["srv"], "echo", "{nope",
                     cwd=d)  # fmt: skip
        assert result.returncode == EXIT_CODES["local"] and "INVALID_ARGUMENT" in result.stderr
        result = m2m("request", "--key", "a.key", "--peer", "m2m1xyz", *client, "echo", "1",
                     cwd=d)  # fmt: skip
        assert result.returncode == EXIT_CODES["local"] and "AGENT_ID_INVALID" in result.stderr
    finally:
        stop(peer)
    # Nobody listens any more: unreachable host.
    result = m2m("request", "--key", "a.key", "--connect", peer.address, "--insecure-any-peer",
                 "echo", "1", cwd=d)  # fmt: skip
    assert result.returncode == EXIT_CODES["network"]
    assert "ANY_PEER" in result.stderr  # the warning, then the failure
    assert result.stderr.count("\n") == 2 and "Traceback" not in result.stderr


def test_client_must_name_the_server(world: tuple[Path, dict[str, str]]) -> None:
    """Without --peer a client would accept any server that trusts the same root."""
    d, ids = world
    peer = start_serve(d, "--root", ids["root"])
    try:
        base = ("--key", "a.key", "--token", "a.tok", "--connect", peer.address)
        for kind in ("request", "send"):
            result = m2m(kind, *base, "echo", "1", cwd=d)
            assert result.returncode == EXIT_CODES["local"], result.stderr
            assert "INVALID_ARGUMENT" in result.stderr and "--peer" in result.stderr
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        both = m2m("request", *base, "--peer", ids["srv"], "--insecure-any-peer", "echo", "1",
                   cwd=d)  # fmt: skip
        assert both.returncode == EXIT_CODES["local"] and "INVALID_ARGUMENT" in both.stderr
        # the explicit opt-out works, loudly
        result = m2m("request", *base, "--insecure-any-peer", "echo", "2", cwd=d)
        assert result.returncode == 0 and json.loads(result.stdout) == 2
        assert "ANY_PEER" in result.stderr and "not authenticated" in result.stderr
        assert json.loads(ok("request", *base, "--peer", ids["srv"], "echo", "3", cwd=d)) == 3
    finally:
        stop(peer)


@pytest.mark.slow
def test_request_with_ik_remembers_the_key_in_a_private_file(
    world: tuple[Path, dict[str, str]],
) -> None:
    """--ik keeps the server's static key in a 0600 file; a wrong key there falls back to XX
    once (the server logs the failed IK handshake) and is replaced by the real one."""
    d, ids = world
    cache = d / "state" / "peer-keys.json"
    env_home = {"XDG_STATE_HOME": str(d / "xdg")}
    peer = start_serve(d, "--root", ids["root"])
    try:
        base = ("--key", "a.key", "--token", "a.tok", "--connect", peer.address,
                "--peer", ids["srv"])  # fmt: skip
        (d / "state").mkdir(mode=0o700, exist_ok=True)
        assert json.loads(ok("request", *base, "--ik", "--ik-cache", str(cache), "echo", "1",
                             cwd=d)) == 1  # fmt: skip
        assert (cache.stat().st_mode & 0o777) == 0o600
        learned = json.loads(cache.read_text())["entries"]
        assert [(e["peer"], e["address"]) for e in learned] == [
            (ids["srv"], "tcp:" + peer.address)
        ]
        assert json.loads(ok("request", *base, "--ik", "--ik-cache", str(cache), "echo", "2",
                             cwd=d)) == 2  # fmt: skip
        assert json.loads(cache.read_text())["entries"] == learned  # same key: IK worked
        stale = json.loads(cache.read_text())
        stale["entries"][0]["static_key"] = "11" * 32
        cache.write_text(json.dumps(stale))
        assert json.loads(ok("send", *base, "--ik", "--ik-cache", str(cache), "log", "3",
                             cwd=d))["sent"] is True  # fmt: skip
        assert json.loads(cache.read_text())["entries"] == learned  # refreshed
        assert "DECRYPT_ERROR" in peer.log()  # the stale-key attempt, seen by the server
        # the default file lives under $XDG_STATE_HOME
        result = subprocess.run(
            [sys.executable, "-m", "m2mproto", "request", *base, "--ik", "echo", "4"],
            capture_output=True, text=True, timeout=60, cwd=d, env={**ENV, **env_home},
        )  # fmt: skip
        assert result.returncode == 0 and json.loads(result.stdout) == 4, result.stderr
        assert (d / "xdg" / "m2mproto" / "peer-keys.json").stat().st_mode & 0o777 == 0o600
        # misuse
        result = m2m("request", *base, "--ik-cache", str(cache), "echo", "1", cwd=d)
        assert result.returncode == EXIT_CODES["local"] and "--ik" in result.stderr
        anyone = ("--key", "a.key", "--token", "a.tok", "--connect", peer.address,
                  "--insecure-any-peer", "--ik")  # fmt: skip
        result = m2m("request", *anyone, "echo", "1", cwd=d)
        assert result.returncode == EXIT_CODES["local"] and "--peer" in result.stderr
    finally:
        stop(peer)


@pytest.mark.slow
def test_serve_untrusted_root_refuses_tokens(world: tuple[Path, dict[str, str]]) -> None:
    d, ids = world
    peer = start_serve(d, "--root", ids["b"])  # trusts someone else
    try:
        result = m2m("request", "--key", "a.key", "--token", "a.tok", "--connect", peer.address,
                     "--peer", ids["srv"], "echo", "1", cwd=d)  # fmt: skip
        assert result.returncode == EXIT_CODES["token"]
        assert "TOKEN_INVALID" in result.stderr
    finally:
        stop(peer)


def test_serve_user_mistakes(tmp_path: Path) -> None:
    result = m2m("serve", "--key", "missing.key", "--listen", "127.0.0.1:0", "--root",
                 "m2m1bad", cwd=tmp_path)  # fmt: skip
    assert result.returncode == EXIT_CODES["local"]
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.slow
def test_demo(tmp_path: Path) -> None:
    result = m2m("demo", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Transcript" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 6
    assert "refused: UNAUTHORIZED" in rows[3] and "refused: TOKEN_INVALID" in rows[4]
    assert "All steps behaved as expected" in out


@pytest.mark.slow
def test_make_demo(tmp_path: Path) -> None:
    """The README's main command, through the Makefile, with this test run's virtualenv."""
    root = Path(__file__).resolve().parent.parent
    venv = Path(sys.prefix)  # the Makefile reuses it (installing first if it lacks the stamp)
    result = subprocess.run(
        ["make", "-s", "-C", str(root), "demo", f"VENV={venv}"],
        capture_output=True, text=True, timeout=180, env=ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All steps behaved as expected" in result.stdout


def test_request_verbose_shows_the_hybrid_suite(world: tuple[Path, dict[str, str]]) -> None:
    d, ids = world
    peer = start_serve(d, "--root", ids["root"])
    try:
        result = m2m("request", "-v", "--key", "a.key", "--token", "a.tok", "--connect",
                     peer.address, "--peer", ids["srv"], "echo", "1", cwd=d)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == 1
        suite = "Noise_XXhfs_25519+ML-KEM-768_ChaChaPoly_SHA256"
        assert f"connected to {ids['srv']} ({suite})" in result.stderr.splitlines()
        quiet = ok("request", "--key", "a.key", "--token", "a.tok", "--connect", peer.address,
                   "--peer", ids["srv"], "echo", "2", cwd=d)  # fmt: skip
        assert json.loads(quiet) == 2
    finally:
        assert stop(peer) == 0
    echo_lines = [line for line in peer.log().splitlines() if "echo message from" in line]
    assert len(echo_lines) == 2 and all(f"({suite})" in line for line in echo_lines)
