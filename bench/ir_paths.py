"""Instructions per operation on the core's hot paths, pure vs compiled (callgrind).

Theory of operation
-------------------
``python -m bench.ir_paths PATH N`` runs *N* operations of one path between two
sans-IO ``Connection`` objects in memory (no sockets, no event loop):

* ``stream256`` / ``stream64k``: 256 B / 64 KiB of stream data from A to B
  (``send``, records, AEAD, frames, flow control; B's window updates back);
* ``message256``: one 256-byte message (``send_message``, CBOR value);
* ``roundtrip``: open a stream, a 256-byte request with end-of-stream, the
  reply with end-of-stream, credit returned (as :mod:`bench.rr_ir` ``core``);
* ``handshake``: one handshake (the default configuration: XXhfs) between two
  fresh connections.

Under ``valgrind --tool=callgrind`` the difference of the instruction counts
(Ir) of two values of *N*, divided by the difference of *N*, is the cost of
one operation: imports, set-up and teardown cancel out. ``--compare`` does
exactly that for every path, for this interpreter's build and for the
compiled build's interpreter (``.venv-compiled/bin/python``), and prints a
table::

    python -m bench.ir_paths --compare [--compiled PY]

The compiled interpreter imports its installed (compiled) package: the
checkout is only appended to ``sys.path`` for ``bench`` itself.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Path -> (small N, large N) for the callgrind difference.
PATHS: dict[str, tuple[int, int]] = {
    "stream256": (100, 300),
    "message256": (100, 300),
    "stream64k": (20, 60),
    "roundtrip": (50, 150),
    "handshake": (4, 12),
}


def _pair() -> tuple[Any, Any, Callable[[Any, Any], list[Any]]]:
    from m2mproto.config import Configuration
    from m2mproto.connection import NEED_DATA, Connection, Role
    from m2mproto.events import DataReceived, MessageReceived
    from m2mproto.identity import Identity

    cfg = Configuration(auto_window_update=False)
    a = Connection(Role.INITIATOR, Identity.from_seed(bytes(32)), cfg)
    b = Connection(Role.RESPONDER, Identity.from_seed(bytes(range(32))), cfg)
    a.start(0.0)
    b.start(0.0)

    def deliver(src: Any, dst: Any) -> list[Any]:
        data = src.data_to_send()
        if data:
            dst.receive_data(data, 0.0)
        got = []
        for _ in range(1000):
            event = dst.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, MessageReceived):
                dst.acknowledge_data(event.stream_id, event.size or 0)
                got.append(event)
            elif isinstance(event, DataReceived):
                dst.acknowledge_data(event.stream_id, len(event.data))
                got.append(event)
        return got

    return a, b, deliver


def run(path: str, n: int) -> None:
    """*n* operations of *path* (after one warm-up operation)."""
    if path == "handshake":
        for _ in range(n + 1):
            a, b, deliver = _pair()
            for _ in range(10):
                deliver(a, b)
                deliver(b, a)
            assert a.state.name == "ESTABLISHED", a.state
        return
    a, b, deliver = _pair()
    for _ in range(10):
        deliver(a, b)
        deliver(b, a)
    if path == "roundtrip":
        for _ in range(n + 1):
            sid = a.open_stream("echo")
            a.send_message(sid, bytes(256), end_stream=True)
            (request,) = deliver(a, b)
            b.send_message(request.stream_id, request.value, end_stream=True)
            (reply,) = deliver(b, a)
            assert reply.value == bytes(256)
            deliver(a, b)
            deliver(b, a)
        return
    sid = a.open_stream("echo")
    payload = bytes(65536 if path == "stream64k" else 256)
    for _ in range(n + 1):
        if path == "message256":
            a.send_message(sid, payload)
        else:
            a.send(sid, payload)
        assert deliver(a, b)
        deliver(b, a)  # window updates back


def _ir(python: str, path: str, n: int) -> int:
    code = (
        "import sys; sys.path.append(sys.argv[1]); "
        "from bench.ir_paths import run; run(sys.argv[2], int(sys.argv[3]))"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                python, "-c", code, str(ROOT), path, str(n),
            ],
            capture_output=True, text=True, timeout=1800, check=True, cwd=tmp,
            env={**os.environ, "PYTHONSAFEPATH": "1", "PYTHONHASHSEED": "0"},
        )  # fmt: skip
    match = re.search(r"refs:\s+([\d,]+)", out.stderr)
    if match is None:
        raise RuntimeError(f"no Ir count in callgrind output: {out.stderr[-500:]}")
    return int(match.group(1).replace(",", ""))


def _build(python: str) -> str:
    code = "import m2mproto; print('compiled' if m2mproto.COMPILED else 'pure')"
    with tempfile.TemporaryDirectory() as tmp:
        return subprocess.run(
            [python, "-c", code], capture_output=True, text=True, check=True, cwd=tmp,
            env={**os.environ, "PYTHONSAFEPATH": "1"}, timeout=120,
        ).stdout.strip()  # fmt: skip


def compare(pythons: list[str]) -> dict[str, dict[str, int]]:
    """Ir per operation of every path, per build (``{path: {build: Ir}}``)."""
    builds = [_build(python) for python in pythons]
    if len(set(builds)) != len(builds):
        raise SystemExit(f"the interpreters run the same build: {builds}")
    out: dict[str, dict[str, int]] = {}
    for path, (small, large) in PATHS.items():
        for python in pythons:
            per_op = (_ir(python, path, large) - _ir(python, path, small)) // (large - small)
            out.setdefault(path, {})[_build(python)] = per_op
            print(f"[ir_paths] {path} {_build(python)}: {per_op:,} Ir", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ir_paths")
    parser.add_argument("path", nargs="?", choices=sorted(PATHS))
    parser.add_argument("n", nargs="?", type=int, default=100)
    parser.add_argument("--compare", action="store_true", help="callgrind, both builds")
    parser.add_argument("--compiled", default=str(ROOT / ".venv-compiled" / "bin" / "python"))
    args = parser.parse_args(argv)
    if not args.compare:
        if args.path is None:
            parser.error("name a path, or --compare")
        run(args.path, args.n)
        return
    table = compare([sys.executable, args.compiled])
    print("| path | pure Ir | compiled Ir | compiled / pure |\n|---|---:|---:|---:|")
    for path, builds in table.items():
        pure, compiled = builds.get("pure"), builds.get("compiled")
        ratio = f"{compiled / pure:.2f}" if pure and compiled else "-"
        cells = [f"{x:,}" if x else "-" for x in (pure, compiled)]
        print(f"| {path} | {cells[0]} | {cells[1]} | {ratio} |")


if __name__ == "__main__":
    main()
