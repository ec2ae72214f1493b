"""Benchmark server process: ``python -m bench.server --proto tls|m2m --backend B --material DIR``.

Runs one protocol's bench server on 127.0.0.1 (ephemeral port) under the
chosen anyio backend, prints ``READY <port>`` on stdout once listening, and
exits when its stdin reaches end of file (the parent closes it), so a server
never outlives the benchmark that started it. Running the server in its own
process is what lets the harness measure its memory (RSS) alone, and puts
client and server on separate cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import traceback
from pathlib import Path

import anyio

__all__ = ["main"]


def _exit_on_stdin_eof() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server")
    parser.add_argument("--proto", choices=("tls", "m2m"), required=True)
    parser.add_argument("--backend", choices=("asyncio", "trio"), required=True)
    parser.add_argument("--material", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.proto == "tls":
        from .tls_anchor import serve
    else:
        from .m2m_side import serve

    def ready(port: int) -> None:
        sys.stdout.write(f"READY {port}\n")
        sys.stdout.flush()

    threading.Thread(target=_exit_on_stdin_eof, daemon=True).start()
    status = 0
    try:
        anyio.run(serve, args.material, ready, backend=args.backend)
    except BaseException:
        traceback.print_exc()
        status = 1
    # Leave at once: the stdin watcher thread must not race interpreter shutdown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    raise SystemExit(main())
