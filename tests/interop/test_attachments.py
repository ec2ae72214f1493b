"""The socket attachments: the reference shim (spec/interop.md §5) and a running
``m2m serve`` over TCP, each on a small slice of the catalog (the full runs are CI jobs)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2m_interop import mint, runner
from m2m_interop.framework import CASES, select
from m2m_interop.inprocess import IUTProfile
from m2m_interop.netlink import ShimLink, Unsupported, shim_factory, tcp_factory
from m2mproto.identity import Identity

SHIM = f"{sys.executable} -m m2m_interop.shim"
SLICE = ["2.1/1", "2.3/3", "2.5/1", "3.1/7", "4.2/3", "5.4/3", "5.7/1", "6.6/2", "5.5/1"]


@pytest.mark.slow
def test_shim_slice_passes() -> None:
    cases = [c for c in CASES if c.id in SLICE]
    results = runner.run_cases(cases, shim_factory(SHIM), capabilities=runner.CAPABILITIES["shim"])
    assert [(r.case.id, r.result) for r in results if r.result != "PASS"] == []
    # local codes travel back through the shim's stderr
    by_id = {r.case.id: r for r in results}
    assert by_id["2.5/1"].actual is not None and by_id["2.5/1"].actual.local == "AUTH_SIGNATURE"
    assert by_id["5.7/1"].actual is not None and by_id["5.7/1"].actual.local == "UNAUTHORIZED"


def test_shim_unknown_config_is_unimplemented() -> None:
    profile = IUTProfile(config={"no_such_limit": 1})
    with pytest.raises(Unsupported, match="UNIMPLEMENTED"):
        ShimLink(SHIM, profile, 1)


_WRONG_ID_SHIM = (
    "import socket, sys; a = sys.argv; p = int(a[a.index('--port') + 1]); "
    "s = socket.create_connection(('127.0.0.1', p)); s.sendall(bytes(8)); s.close()"
)


def test_shim_wrong_test_id_is_detected() -> None:
    with pytest.raises(ConnectionError, match="test ID"):
        ShimLink(f'{sys.executable} -c "{_WRONG_ID_SHIM}"', IUTProfile(), 1)


def test_clock_cases_skip_over_sockets() -> None:
    (case,) = [c for c in CASES if c.id == "5.8/1"]
    (r,) = runner.run_cases([case], shim_factory(SHIM), capabilities=runner.CAPABILITIES["shim"])
    assert r.result == "SKIP" and "clock" in r.note


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    d = tmp_path_factory.mktemp("serve")
    root, server = Identity.generate(), Identity.generate()
    root.save(d / "root.pem")
    server.save(d / "server.pem")
    proc = subprocess.Popen(
        [sys.executable, "-m", "m2mproto", "serve", "--key", str(d / "server.pem"),
         "--listen", "127.0.0.1:0", "--root", root.agent_id.text, "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on "), line
        host, _, port = line.removeprefix("listening on ").rpartition(":")
        yield host, int(port), d / "root.pem"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_tcp_target_slice(serve: tuple[str, int, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    host, port, root_key = serve
    monkeypatch.setattr(mint, "ROOT", mint.ROOT)  # restored after the test
    monkeypatch.setattr(mint, "NOW", mint.NOW)
    mint.set_root(Identity.load(root_key), int(time.time()))
    try:
        # 5.9/24, /25 and /36 carry tokens of their own (signed by the target's root)
        ids = ["2.1", "3.1/5", "3.1/7", "4.1/1", "4.2/3", "6.6/1", "6.6/10", "5.9/24", "5.9/25"]
        cases = select(CASES, [*ids, "5.9/36"])
        results = runner.run_cases(
            cases, tcp_factory(host, port), capabilities=runner.CAPABILITIES["tcp"]
        )
    finally:
        mint._CATALOG.clear()
    bad = [(r.case.id, r.result, r.note) for r in results if r.result not in ("PASS", "SKIP")]
    assert bad == []
    assert sum(r.result == "PASS" for r in results) >= 8
    skipped = {r.case.id for r in results if r.result == "SKIP"}
    assert "2.1/8" in skipped  # needs a configured IUT



def test_catalog_follows_a_new_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case mints its tokens when it runs: a run against a socket target re-roots the
    catalog (``--root-key``) after it was imported, and a token signed at import time would
    carry the default root (TOKEN_INVALID at the target)."""
    monkeypatch.setattr(mint, "ROOT", mint.ROOT)
    try:
        mint.set_root(Identity.generate())  # the in-process IUT trusts mint.ROOT when it starts
        results = runner.run_cases(CASES)
    finally:
        mint._CATALOG.clear()
    assert [(r.case.id, r.result, r.note) for r in results if r.result != "PASS"] == []
