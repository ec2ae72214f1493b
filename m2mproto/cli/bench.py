"""``m2m bench``: run the benchmark suite (``python -m bench``) of a source checkout.

The benchmarks live in the repository's ``bench/`` package, next to the
``m2mproto/`` package; they are not installed with it (they need the TLS and
noiseprotocol anchors, which are not runtime dependencies). So ``m2m bench``
works only when this ``m2mproto`` is imported from a checkout (an editable
install or a run from the source tree). The checkout's ``bench`` package is
loaded from its files (``sys.path`` is left alone, so no other module of the
checkout can shadow an installed one); everything after ``bench`` is passed on.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from ..errors import ErrorCode, LocalProtocolError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks against TLS 1.3 and noiseprotocol, from a checkout (python -m bench)",
        description="Run the benchmarks of a source checkout (python -m bench); "
        "m2m bench --help lists their options.",
        add_help=False,
    )
    p.add_argument(
        "bench_args", nargs=argparse.REMAINDER, metavar="...", help="options of the benchmarks"
    )
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    return run_bench(list(args.bench_args))


def find_checkout(package_dir: Path | None = None) -> Path | None:
    """The source checkout *package_dir* (default: ``m2mproto``'s own) belongs to, if any.

    A checkout is the parent of the package directory holding both a
    ``pyproject.toml`` and a ``bench/__main__.py``.
    """
    if package_dir is None:
        package_dir = Path(__file__).resolve().parents[1]
    root = package_dir.parent
    if (root / "pyproject.toml").is_file() and (root / "bench" / "__main__.py").is_file():
        return root
    return None


def run_bench(argv: list[str]) -> int:
    """Load ``bench`` from the checkout and run it with *argv*."""
    checkout = find_checkout()
    if checkout is None:
        package_dir = Path(__file__).resolve().parents[1]
        raise LocalProtocolError(
            f"m2m bench runs the benchmarks of a source checkout, and m2mproto is installed "
            f"from {package_dir.parent}: clone the repository, run make, then m2m bench "
            "(or python -m bench) there",
            ErrorCode.INVALID_ARGUMENT,
        )
    package = checkout / "bench"
    loaded = sys.modules.get("bench")
    if loaded is None or Path(getattr(loaded, "__file__", "") or "").parent != package:
        spec = importlib.util.spec_from_file_location(
            "bench", package / "__init__.py", submodule_search_locations=[str(package)]
        )
        if spec is None or spec.loader is None:  # pragma: no cover - the file exists
            raise LocalProtocolError(f"cannot load {package}", ErrorCode.INVALID_ARGUMENT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = module
        spec.loader.exec_module(module)
    main = importlib.import_module("bench.__main__")
    status: int = main.bench_main(argv, prog="m2m bench")
    return status
