"""``python -m bench`` (and ``m2m bench``): m2mproto against TLS 1.3, noiseprotocol and the floor.

Usage::

    python -m bench [--quick] [--backend asyncio|trio|both] [--json FILE] [--plot FILE.png]
                    [--duration S] [--levels 1,10,100] [--mem-conns N]

Prints a table; ``--json`` writes every figure and the ``ratios`` object. See
bench/README.md for what each figure measures.
"""

from __future__ import annotations

import argparse
import os
import platform
import ssl
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from . import compiled, inmem_m2m, noise_anchor, primitives, report
from .common import Settings, Unavailable

__all__ = ["bench_main", "main"]


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of counts: {text!r}"
        ) from None
    if not levels or any(n < 1 or n > 5000 for n in levels):
        raise argparse.ArgumentTypeError("levels must be 1..5000")
    return levels


def _parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark m2mproto against TLS 1.3 (ssl+anyio), noiseprotocol and the "
        "cryptography primitives. Reports ratios measured in the same run.",
    )
    p.add_argument("--quick", action="store_true", help="short run (well under 2 minutes)")
    p.add_argument("--backend", choices=("asyncio", "trio", "both"), default="both")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every figure and ratio")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw figures (matplotlib)")
    p.add_argument("--duration", type=float, help="seconds per figure (default 2, quick 0.4)")
    p.add_argument("--levels", type=_levels, help="concurrency levels, e.g. 1,10,100,1000")
    p.add_argument("--mem-conns", type=int, help="idle connections for the memory figure")
    p.add_argument(
        "--compiled",
        metavar="PY|none",
        default="auto",
        help="python of the mypyc-compiled build for the in-memory figures side by side "
        "(default: .venv-compiled/bin/python when it exists; none: pure only)",
    )
    return p


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _meta(settings: Settings, backends: list[str]) -> dict[str, Any]:
    import cryptography

    return {
        "quick": settings.quick,
        "duration": settings.duration,
        "levels": list(settings.levels),
        "mem_conns": settings.mem_conns,
        "backends": backends,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "openssl": ssl.OPENSSL_VERSION,
        "cryptography": cryptography.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ratio_definitions": {
            "*_vs_tls": "m2mproto / TLS 1.3 on the same loopback harness and backend, "
            "1 connection (memory: bytes per idle connection, lower is better)",
            "inmem_handshake_vs_noiseprotocol": "m2mproto XX handshakes/s / noiseprotocol XX "
            "with the Ed25519 binding signed per handshake and checked",
            "inmem_handshake_vs_floor": "m2mproto XX handshakes/s / 1 over the summed cost of "
            "2 X25519 keygen + 6 X25519 DH + 2 Ed25519 verify",
            "inmem_transport*_vs_aead": "m2mproto messages/s end to end in memory / "
            "ChaCha20-Poly1305 seal+open of the same size",
        },
    }


def _network(backends: list[str], settings: Settings, material: Path) -> dict[str, dict[str, Any]]:
    from . import m2m_side, net, tls_anchor

    tls_dir, m2m_dir = material / "tls", material / "m2m"
    tls_dir.mkdir()
    m2m_dir.mkdir()
    tls_anchor.make_material(tls_dir)
    m2m_reason: str | None = None
    m2m_client: Any = None
    try:
        m2m_side.make_material(m2m_dir)
        m2m_client = m2m_side.make_client(m2m_dir)
    except Unavailable as exc:
        m2m_reason = str(exc)

    out: dict[str, dict[str, Any]] = {}
    for backend in backends:
        entry: dict[str, Any] = {"tls": None, "m2m": None}
        _log(f"TLS 1.3 anchor on loopback, {backend}")
        try:
            entry["tls"] = net.measure_network(
                "tls", tls_anchor.TLSClient(tls_dir), backend, tls_dir, settings
            )
        except Exception as exc:  # report and carry on: one figure must not sink the run
            traceback.print_exc()
            entry["tls_error"] = f"{type(exc).__name__}: {exc}"
        if m2m_client is None:
            entry["m2m_unavailable"] = m2m_reason
        else:
            _log(f"m2mproto on loopback, {backend}")
            try:
                entry["m2m"] = net.measure_network("m2m", m2m_client, backend, m2m_dir, settings)
            except Unavailable as exc:
                entry["m2m_unavailable"] = str(exc)
            except Exception as exc:
                traceback.print_exc()
                entry["m2m_error"] = f"{type(exc).__name__}: {exc}"
        out[backend] = entry
    return out


def _best(old: Any, new: Any) -> Any:
    """Merge two result trees taking the larger of each number (None if either lacks it)."""
    if old is None:
        return new
    if isinstance(old, dict) and isinstance(new, dict):
        return {k: _best(old.get(k), v) for k, v in new.items()}
    if isinstance(old, int | float) and isinstance(new, int | float):
        if isinstance(old, bool) or isinstance(new, bool):
            return new
        return max(old, new)
    return new


def run(
    settings: Settings, backends: list[str], compiled_python: str | None = None
) -> dict[str, Any]:
    """Measure everything; return the JSON-ready results including ``ratios``.

    With *compiled_python*, the in-memory m2mproto figures are also measured on
    the compiled build (``inmem_m2m_compiled``), in the same interleaved rounds.
    """
    results: dict[str, Any] = {"meta": _meta(settings, backends)}
    # In-memory figures: interleaved rounds, best of each (noise only ever slows a run down,
    # and interleaving keeps a slow phase of the machine from favouring one side).
    rounds = 2 if settings.quick else 3
    results["meta"]["inmem_rounds"] = rounds
    for i in range(rounds):
        _log(f"in memory, round {i + 1}/{rounds}: primitives, noiseprotocol, m2mproto")
        for key, module in (
            ("primitives", primitives),
            ("noiseprotocol", noise_anchor),
            ("inmem_m2m", inmem_m2m),
        ):
            results[key] = _best(results.get(key), module.measure(settings))
        if compiled_python is not None and "compiled_unavailable" not in results["meta"]:
            _log(f"in memory, round {i + 1}/{rounds}: m2mproto compiled ({compiled_python})")
            try:
                figures = compiled.measure(compiled_python, settings)
            except Unavailable as exc:
                results["meta"]["compiled_unavailable"] = str(exc)
            else:
                results["inmem_m2m_compiled"] = _best(results.get("inmem_m2m_compiled"), figures)
    with tempfile.TemporaryDirectory(prefix="m2m-bench-") as tmp:
        results["backends"] = _network(backends, settings, Path(tmp))
    results["ratios"] = report.compute_ratios(results)
    results["concurrency_ratios"] = report.concurrency_ratios(results)
    results["targets"] = {k: f"{op} {v:g}" for k, (op, v) in report.TARGETS.items()}
    return results


def bench_main(argv: list[str] | None = None, prog: str = "python -m bench") -> int:
    """Entry point for ``python -m bench`` and ``m2m bench`` (*prog* names it in
    usage lines); returns the exit status."""
    args = _parser(prog).parse_args(argv)
    if args.plot is not None:
        problem = report.check_plot_available()
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    if args.mem_conns is not None and not 1 <= args.mem_conns <= 5000:
        print("error: --mem-conns must be 1..5000", file=sys.stderr)
        return 2
    if args.duration is not None and not 0 < args.duration <= 60:
        print("error: --duration must be in (0, 60] seconds", file=sys.stderr)
        return 2
    settings = Settings.make(
        quick=args.quick, duration=args.duration, levels=args.levels, mem_conns=args.mem_conns
    )
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    t0 = time.monotonic()
    compiled_python = compiled.default_python() if args.compiled == "auto" else args.compiled
    if compiled_python == "none":
        compiled_python = None
    results = run(settings, backends, compiled_python)
    results["meta"]["elapsed_s"] = round(time.monotonic() - t0, 1)
    print(report.render_table(results))
    if args.json is not None:
        report.write_json(results, args.json)
        _log(f"wrote {args.json}")
    if args.plot is not None:
        report.write_plot(results, args.plot)
        _log(f"wrote {args.plot}")
    return 0


main = bench_main

if __name__ == "__main__":
    raise SystemExit(bench_main())
