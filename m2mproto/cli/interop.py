"""``m2m interop ...``: vector runners and (later) the conformance runner."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("interop", help="interoperability tools: vector runners, conformance")
    isub = p.add_subparsers(dest="interop_command", metavar="SUBCOMMAND")
    v = isub.add_parser(
        "noise-vectors",
        help="replay Noise test-vector files (cacophony, snow, noise-c, flynn dialects)",
    )
    v.add_argument("files", nargs="+", metavar="FILE", help="JSON vector files")
    v.add_argument("-v", "--verbose", action="store_true", help="one line per vector")
    v.set_defaults(handler=cmd_noise_vectors)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def cmd_noise_vectors(args: argparse.Namespace) -> int:
    from ..noise.vectors import run_files

    return run_files(args.files, verbose=args.verbose)
