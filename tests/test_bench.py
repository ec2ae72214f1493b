"""Smoke test for ``python -m bench``: it runs end to end and writes the documented JSON shape.

No timing assertions: the figures depend on the machine. The test checks that
every ratio key is present for both backends (a number or null) and that the
anchors produced positive figures.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RATIO_KEYS = {
    "handshake_vs_tls",
    "bulk_vs_tls",
    "oneway_vs_tls",
    "rr_vs_tls",
    "memory_vs_tls",
    "inmem_handshake_vs_noiseprotocol",
    "inmem_handshake_vs_floor",
    "inmem_transport64k_vs_aead",
    "inmem_transport256_vs_aead",
}


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x > 0


@pytest.mark.slow
def test_bench_quick_json_shape(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bench", "--quick", "--duration", "0.03"]
    cmd += ["--levels", "1,3", "--mem-conns", "4", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TLS 1.3" in proc.stdout and "In memory" in proc.stdout

    data = json.loads(out.read_text())
    assert set(data["ratios"]) == {"asyncio", "trio"}
    for backend in ("asyncio", "trio"):
        ratios = data["ratios"][backend]
        assert set(ratios) == RATIO_KEYS
        assert all(v is None or _positive(v) for v in ratios.values()), ratios
        tls = data["backends"][backend]["tls"]
        for key in ("handshake_s", "bulk_mb_s", "oneway_msgs_s", "rr_s"):
            assert _positive(tls[key]), (backend, key, tls[key])
        assert set(tls["concurrency"]) == {"1", "3"}
        assert tls["memory_conns"] == 4
        # m2mproto either measured (then the ratio is a number) or said why not.
        entry = data["backends"][backend]
        if entry["m2m"] is None:
            assert entry.get("m2m_unavailable") or entry.get("m2m_error")
            assert ratios["handshake_vs_tls"] is None
        else:
            assert _positive(ratios["handshake_vs_tls"])
    prim = data["primitives"]
    assert _positive(prim["floor"]["handshakes_s"])
    assert prim["handshake_ops"] == {
        "x25519_keygen": 2,
        "x25519_dh": 6,
        "ed25519_verify": 2,
        "ed25519_sign": 0,
    }
    assert _positive(data["noiseprotocol"]["handshakes_s_sign"])
    assert _positive(prim["aead"]["64k"]["seal_open_msgs_s"])

    # --plot without matplotlib fails at once with one clear line (before measuring).
    if importlib.util.find_spec("matplotlib") is None:
        plot = subprocess.run(
            [sys.executable, "-m", "bench", "--plot", str(tmp_path / "p.png")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert plot.returncode == 2
        assert plot.stderr.strip().count("\n") == 0 and "matplotlib" in plot.stderr


def test_token_cost_bench_counts_signatures(tmp_path: Path) -> None:
    """``python -m bench.token_cost`` runs; its signature counts (not its timings) are checked."""
    out = tmp_path / "tokens.json"
    cmd = [sys.executable, "-m", "bench.token_cost", "--frames", "4", "--handshakes", "2"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["signatures_verify_uncached"] == 8
    assert data["signatures_verify_wrong_holder"] == 0
    assert data["signatures_verify_cached"] == 0
    assert data["signatures_frame_first_time"] == 8
    assert data["signatures_frame_cached"] == 0
    assert data["signatures_frame_wrong_holder"] == 0
    assert data["signatures_handshake_23_copies_default"] == 0
    assert data["state_handshake_23_copies_default"] == "CLOSED"
    assert data["signatures_handshake_23_copies_cap_23"] == 8
    assert data["state_handshake_23_copies_cap_23"] == "ESTABLISHED"
    assert all(_positive(v) for k, v in data.items() if k.endswith(("_us", "_ms")))


@pytest.mark.slow
def test_ik_bench_runs_both_patterns() -> None:
    """``python -m bench.ik_bench`` runs XX and IK (the IK client learned the key: it
    asserts so) through the delaying relay too, and prints one line per figure."""
    cmd = [sys.executable, "-m", "bench.ik_bench", "--backend", "asyncio", "--rounds", "1",
           "--n", "2", "--delay-ms", "1"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("in memory: one handshake pair") and " IK " in lines[0]
    assert lines[1].startswith("asyncio  delay 1 ms: connect+auth+request  XX ")
    assert " IK " in lines[1] and "saving" in lines[1]
