"""``m2m bench``: run the benchmark suite (``python -m bench``) from a checkout.

The benchmarks live in the repository's ``bench/`` package (they need the TLS
and noiseprotocol anchors, which are not runtime dependencies), so this
command works from a source checkout; everything after ``bench`` is passed on.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from ..errors import ErrorCode, LocalProtocolError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks against TLS 1.3 and noiseprotocol (see python -m bench --help)",
        add_help=False,
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    return run_bench(list(args.bench_args))


def run_bench(argv: list[str]) -> int:
    """Import ``bench`` from the checkout and run it with *argv*."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "bench" / "__main__.py").exists() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        module = importlib.import_module("bench.__main__")
    except ImportError:
        raise LocalProtocolError(
            "the benchmark suite is in the source checkout's bench/ directory; "
            "run m2m bench from a clone (pip install -e '.[bench]')",
            ErrorCode.INVALID_ARGUMENT,
        ) from None
    status: int = module.bench_main(argv)
    return status
