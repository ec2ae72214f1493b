"""``m2m interop ...``: vector runners, vector generator and the conformance runner."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

_DEFAULT_VECTORS = Path("interop") / "vectors"


def _help(description: str, *examples: str) -> dict[str, Any]:
    """``add_parser`` keywords: a description and an examples epilog, kept as written."""
    return {
        "description": description,
        "epilog": "examples:\n" + "\n".join(f"  {line}" for line in examples),
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def register(sub: Any) -> None:
    p = sub.add_parser(
        "interop",
        help="interoperability tools: vector runners, conformance",
        **_help(
            "The interoperability suite: test vectors and the conformance runner.",
            "m2m interop run -q",
            "m2m interop noise-vectors interop/vectors/third_party/noise/*.json",
        ),
    )
    isub = p.add_subparsers(dest="interop_command", metavar="SUBCOMMAND")
    v = isub.add_parser(
        "noise-vectors",
        help="replay Noise test-vector files (cacophony, snow, noise-c, flynn dialects)",
        **_help(
            "Replay Noise test vectors against the Noise engine; exits 1 if one fails.",
            "m2m interop noise-vectors interop/vectors/third_party/noise/*.json -v",
        ),
    )
    v.add_argument("files", nargs="+", metavar="FILE", help="JSON vector files")
    v.add_argument("-v", "--verbose", action="store_true", help="one line per vector")
    v.set_defaults(handler=cmd_noise_vectors)

    g = isub.add_parser(
        "vectors",
        help="write or check the m2mproto vector files",
        **_help(
            "Regenerate (--write) or compare (--check) the m2mproto test-vector files.",
            "m2m interop vectors --check",
            "m2m interop vectors --write --dir interop/vectors",
        ),
    )
    mode = g.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="(re)generate the files")
    mode.add_argument("--check", action="store_true", help="fail if a file differs")
    g.add_argument(
        "--dir",
        type=Path,
        default=_DEFAULT_VECTORS,
        help=f"vector directory (default: {_DEFAULT_VECTORS})",
    )
    g.set_defaults(handler=cmd_vectors)

    r = isub.add_parser(
        "run",
        help="run the conformance suite (in-process by default)",
        **_help(
            "Run the conformance cases against this implementation in-process, a running\n"
            "peer (--target) or another implementation's shim (--shim); exits 1 on a failure.",
            "m2m interop run -q",
            "m2m interop run --case 'tokens*' --json report.json",
            "m2m interop run --shim './my-impl-shim'",
        ),
    )
    r.add_argument("--list", action="store_true", help="list the cases and their requirements")
    r.add_argument(
        "--case",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run only cases whose ID or name matches (glob or prefix; repeatable)",
    )
    r.add_argument("--json", type=Path, metavar="FILE", help="write a JSON report")
    r.add_argument("--junit", type=Path, metavar="FILE", help="write a JUnit XML report")
    r.add_argument("-q", "--quiet", action="store_true", help="no per-case progress lines")
    r.add_argument(
        "--no-sanity", action="store_true", help="skip the benign sessions around hostile cases"
    )
    r.add_argument("--target", metavar="HOST:PORT", help="test a running peer over TCP")
    r.add_argument("--root-key", metavar="FILE", help="with --target: the root key the peer trusts")
    r.add_argument(
        "--shim",
        metavar="COMMAND",
        help="test an implementation through its shim (spec/interop.md)",
    )
    r.set_defaults(handler=cmd_run)

    sh = isub.add_parser(
        "shim",
        help="the reference implementation's shim (spec/interop.md)",
        **_help(
            "Speak m2mproto to the conformance runner on 127.0.0.1:PORT as one side of one\n"
            "case (spec/interop.md); the runner starts it, people rarely do.",
            "m2m interop shim --port 7000 --test-id 3 --role initiator --identity-seed HEX",
        ),
    )
    from .shim import add_arguments, unimplemented

    add_arguments(sh)
    sh.error = unimplemented  # an unknown flag: status 89, as the shim itself
    sh.set_defaults(handler=cmd_shim)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def cmd_noise_vectors(args: argparse.Namespace) -> int:
    from .noise_vectors import run_files

    return run_files(args.files, verbose=args.verbose)


def cmd_vectors(args: argparse.Namespace) -> int:
    from . import generate

    directory: Path = args.dir
    if args.write:
        for path in generate.write(directory):
            print(f"wrote {path}")
        return 0
    bad = generate.check(directory)
    for name in bad:
        print(f"m2m: vector file {directory / name} differs from the generator", file=sys.stderr)
    if not bad:
        print(f"{len(generate.FILES)} vector files in {directory} match the generator")
    return 1 if bad else 0


def cmd_shim(args: argparse.Namespace) -> int:
    from .shim import run

    return run(args)


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import main

    return main(args)
