"""``m2m serve --reliable --state-dir`` and ``m2m send --reliable --state-dir`` (subprocesses)."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))

from test_cli_peer import m2m, ok, start_serve, stop

from m2mproto.cli import EXIT_CODES


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    d = tmp_path_factory.mktemp("rworld")
    ids = {n: ok("keygen", "--out", f"{n}.key", cwd=d).strip() for n in ("root", "a", "srv")}
    ok("token", "issue", "--key", "root.key", "--to", ids["a"], "--cap", "log=*",
       "--aud", ids["srv"], "--out", "a.tok", cwd=d)  # fmt: skip
    yield d, ids


def logged(d: Path) -> list[object]:
    path = d / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["message"] for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_reliable_send_survives_a_down_server(world: tuple[Path, dict[str, str]]) -> None:
    d, ids = world
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    send = ("send", "--reliable", "--state-dir", "cli-state", "--key", "a.key", "--token",
            "a.tok", "--peer", ids["srv"])  # fmt: skip
    # the server is down: the message stays in the durable outbox, exit status "timeout"
    result = m2m(*send, "--connect", dead, "--timeout", "1", "log", '{"n": 1}', cwd=d)
    assert result.returncode == EXIT_CODES["timeout"], result.stderr
    peer = start_serve(d, "--root", ids["root"], "--reliable", "--state-dir", "srv-state",
                       "--log-file", "log.jsonl")  # fmt: skip
    try:
        out = ok(*send, "--connect", peer.address, "log", '{"n": 2}', cwd=d)
        assert json.loads(out)["delivered"] is True and json.loads(out)["seq"] == 1
        assert logged(d) == [{"n": 1}, {"n": 2}]  # the leftover first, each once
        ok(*send, "--connect", peer.address, "log", '{"n": 3}', cwd=d)
        assert logged(d) == [{"n": 1}, {"n": 2}, {"n": 3}]
    finally:
        assert stop(peer) == 0
    assert (d / "srv-state" / "dedup.sqlite3").exists()
    assert (d / "cli-state" / "outbox.sqlite3").exists()


def test_state_dir_needs_reliable(world: tuple[Path, dict[str, str]]) -> None:
    d, _ids = world
    result = m2m("send", "--state-dir", "x", "--key", "a.key", "--connect", "127.0.0.1:1",
                 "log", "1", cwd=d)  # fmt: skip
    assert result.returncode == EXIT_CODES["local"], result.stderr
    assert "--reliable" in result.stderr
