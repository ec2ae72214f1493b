"""``--revocations FILE`` fails closed: ``m2m serve`` and ``m2m token verify`` (subprocesses).

A missing, unreadable or corrupt file named on the command line is a user
mistake (exit 3, the file named), and a running server never forgets a
revocation while the file is being rewritten.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_cli_peer import m2m, ok, start_serve, stop

from m2mproto.cli import EXIT_CODES


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    d = tmp_path_factory.mktemp("revworld")
    ids = {n: ok("keygen", "--out", f"{n}.key", cwd=d).strip() for n in ("root", "a", "b", "srv")}
    ok("token", "issue", "--key", "root.key", "--to", ids["a"], "--cap", "echo=*",
       "--aud", ids["srv"], "--out", "a.tok", cwd=d)  # fmt: skip
    ok("token", "delegate", "--key", "a.key", "--parent", "a.tok", "--to", ids["b"],
       "--cap", "echo=*", "--aud", ids["srv"], "--out", "b.tok", cwd=d)  # fmt: skip
    ok("token", "revoke", "--key", "a.key", "b.tok", "--out", "rev.bin", cwd=d)
    yield d, ids


@pytest.mark.parametrize("what", ["missing", "directory", "corrupt", "bad-signature"])
def test_serve_refuses_a_bad_revocation_file(world: tuple[Path, dict[str, str]], what: str) -> None:
    d, ids = world
    name = f"bad-{what}.bin"
    if what == "directory":
        (d / name).mkdir(exist_ok=True)
    elif what == "corrupt":
        (d / name).write_bytes((d / "rev.bin").read_bytes() + b"\xff\x00junk")
    elif what == "bad-signature":
        data = bytearray((d / "rev.bin").read_bytes())
        data[-1] ^= 1
        (d / name).write_bytes(bytes(data))
    result = m2m("serve", "--key", "srv.key", "--listen", "127.0.0.1:0", "--root", ids["root"],
                 "--revocations", name, cwd=d, timeout=30)  # fmt: skip
    assert result.returncode == EXIT_CODES["local"], result.stderr
    assert name in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "listening" not in result.stdout


@pytest.mark.parametrize("what", ["missing", "corrupt"])
def test_verify_refuses_a_bad_revocation_file(
    world: tuple[Path, dict[str, str]], what: str
) -> None:
    d, ids = world
    name = f"verify-{what}.bin"
    if what == "corrupt":
        (d / name).write_bytes(b"\xff\x00junk")
    result = m2m("token", "verify", "a.tok", "--root", ids["root"], "--aud", ids["srv"],
                 "--revocations", name, cwd=d)  # fmt: skip
    assert result.returncode == EXIT_CODES["local"], result.stderr
    assert name in result.stderr and "Traceback" not in result.stderr


def test_serve_keeps_revocations_while_the_file_is_rewritten(
    world: tuple[Path, dict[str, str]],
) -> None:
    """Truncate-then-write, slowly, several times: the revoked token is refused throughout."""
    d, ids = world
    rev = d / "live-rev.bin"
    data = (d / "rev.bin").read_bytes()
    rev.write_bytes(data)
    peer = start_serve(d, "--root", ids["root"], "--revocations", str(rev))
    try:
        client = ("--connect", peer.address, "--peer", ids["srv"], "--timeout", "10")
        for cut in (0, 1, len(data) // 2, len(data) - 1):
            with rev.open("r+b") as fh:  # the writer has truncated and written a part
                fh.truncate(0)
                fh.write(data[:cut])
            time.sleep(1.2)  # more than two polls: the server has seen this state
            result = m2m("request", "--key", "b.key", "--token", "b.tok", *client, "echo", "1",
                         cwd=d)  # fmt: skip
            assert result.returncode == EXIT_CODES["token"], (cut, result.stderr)
            assert "TOKEN_INVALID" in result.stderr
        rev.write_bytes(data)
        assert ok("request", "--key", "a.key", "--token", "a.tok", *client, "echo", "2",
                  cwd=d).strip() == "2"  # fmt: skip
    finally:
        assert stop(peer) == 0
    log = peer.log()
    assert "(0 entries)" not in log and "Traceback" not in log
