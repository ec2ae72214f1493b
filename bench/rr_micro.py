"""Focused micro-benchmark: request/response round trips and handshakes on loopback.

Theory of operation
-------------------
For each backend, one m2mproto bench server and one TLS anchor server run in
their own processes (as in :mod:`bench.net`). This process then alternates
rounds: *n* sequential round trips on one connection of each protocol, and
*h* sequential handshakes (connect, authenticate, one request, close) of each.
Interleaving keeps a slow phase of the shared machine from favouring one side;
the best round of each is kept and the ratio m2mproto / TLS printed.

``--profile FILE`` runs only the m2mproto client's round trips under cProfile
(the server keeps running in its own process) and writes the stats to FILE.

Run: ``python -m bench.rr_micro [--backend both] [--rounds 3] [--rr 2000] [--hs 40]
[--stream oneway] [--stream bulk]`` (the last two: the streaming figures of
``python -m bench``, to check that a round-trip change costs them nothing).
Every loop is bounded by its count and every phase by ``anyio.fail_after``.
"""

from __future__ import annotations

import argparse
import cProfile
import tempfile
from pathlib import Path
from typing import Any

import anyio

from . import m2m_side, tls_anchor
from .net import HOST, MESSAGE, ServerProcess, drive

__all__ = ["main"]


async def _rr(client: Any, port: int, n: int) -> float:
    """Round trips per second over one connection (after a short warm-up)."""
    with anyio.fail_after(120):
        ch = await client.connect(HOST, port)
        try:
            for _ in range(20):
                await ch.request(MESSAGE)
            start = anyio.current_time()
            for _ in range(n):
                await ch.request(MESSAGE)
            elapsed = anyio.current_time() - start
        finally:
            await ch.aclose()
    return n / max(elapsed, 1e-9)


async def _hs(client: Any, port: int, n: int) -> float:
    """Sequential handshakes per second (connect, authenticate, one request, close)."""
    with anyio.fail_after(120):
        start = anyio.current_time()
        for _ in range(n):
            ch = await client.connect(HOST, port)
            try:
                await ch.request(MESSAGE)
            finally:
                await ch.aclose()
        elapsed = anyio.current_time() - start
    return n / max(elapsed, 1e-9)


async def _stream(client: Any, port: int, kind: str, duration: float) -> float:
    """One-way messages/s or bulk MB/s on one connection (as ``python -m bench``)."""
    with anyio.fail_after(duration + 60):
        ch = await client.connect(HOST, port)
        try:
            return await drive([ch], kind, duration, 1 << 30)
        finally:
            await ch.aclose()


def _run_backend(backend: str, material: Path, args: argparse.Namespace) -> dict[str, float]:
    tls_dir, m2m_dir = material / "tls", material / "m2m"
    clients = {"tls": tls_anchor.TLSClient(tls_dir), "m2m": m2m_side.make_client(m2m_dir)}
    best: dict[str, float] = {}
    with (
        ServerProcess("tls", backend, tls_dir) as tls_srv,
        ServerProcess("m2m", backend, m2m_dir) as m2m_srv,
    ):
        ports = {"tls": tls_srv.port, "m2m": m2m_srv.port}
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            anyio.run(_rr, clients["m2m"], ports["m2m"], args.rr, backend=backend)
            prof.disable()
            prof.dump_stats(f"{args.profile}.{backend}")
            return {}
        for _ in range(args.rounds):
            for proto in ("tls", "m2m"):
                rr = anyio.run(_rr, clients[proto], ports[proto], args.rr, backend=backend)
                best[f"{proto}_rr"] = max(best.get(f"{proto}_rr", 0.0), rr)
                for kind in args.stream:
                    got = anyio.run(
                        _stream, clients[proto], ports[proto], kind, 0.5, backend=backend
                    )
                    best[f"{proto}_{kind}"] = max(best.get(f"{proto}_{kind}", 0.0), got)
                if args.hs:
                    hs = anyio.run(_hs, clients[proto], ports[proto], args.hs, backend=backend)
                    best[f"{proto}_hs"] = max(best.get(f"{proto}_hs", 0.0), hs)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rr_micro")
    parser.add_argument("--backend", choices=("asyncio", "trio", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rr", type=int, default=2000, help="round trips per round")
    parser.add_argument("--hs", type=int, default=40, help="handshakes per round (0: none)")
    parser.add_argument(
        "--stream",
        action="append",
        default=[],
        choices=("oneway", "bulk"),
        help="also measure one-way messages/s or bulk MB/s (0.5 s per round)",
    )
    parser.add_argument("--profile", default="", help="cProfile the m2m client's round trips")
    args = parser.parse_args(argv)
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory(prefix="m2m-rr-") as tmp:
        material = Path(tmp)
        (material / "tls").mkdir()
        (material / "m2m").mkdir()
        tls_anchor.make_material(material / "tls")
        m2m_side.make_material(material / "m2m")
        for backend in backends:
            best = _run_backend(backend, material, args)
            if not best:
                print(f"{backend}: profile written to {args.profile}.{backend}")
                continue
            line = (
                f"{backend:8s} rr: m2m {best['m2m_rr']:8.0f}/s  tls {best['tls_rr']:8.0f}/s"
                f"  ratio {best['m2m_rr'] / best['tls_rr']:.2f}"
            )
            if args.hs:
                line += (
                    f"   hs: m2m {best['m2m_hs']:6.1f}/s  tls {best['tls_hs']:6.1f}/s"
                    f"  ratio {best['m2m_hs'] / best['tls_hs']:.2f}"
                )
            for kind in args.stream:
                m2m, tls = best[f"m2m_{kind}"], best[f"tls_{kind}"]
                line += f"   {kind}: m2m {m2m:8.1f}  tls {tls:8.1f}  ratio {m2m / tls:.2f}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
