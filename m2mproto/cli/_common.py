"""Helpers shared by the command modules: help layout and the logging options."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["add_logging_args", "command", "setup_logging"]

_LEVELS = ("debug", "info", "warning", "error")


def command(sub: Any, name: str, summary: str, description: str, *examples: str) -> Any:
    """Add subcommand *name*: *summary* in the command list, *description* and
    *examples* (shell lines) in its own ``--help``."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples) if examples else None
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_logging_args(p: argparse.ArgumentParser, default: str = "warning") -> None:
    """``-v/--verbose`` (repeatable) and ``--log-level LEVEL`` for a command that logs."""
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v for info, -vv for a debug trace (handshake, events; no secrets)",
    )
    p.add_argument(
        "--log-level",
        choices=_LEVELS,
        help=f"log level on stderr (default {default}; overrides -v)",
    )
    p.set_defaults(default_log_level=default)


def log_level(args: argparse.Namespace) -> int:
    """The level the logging options of *args* ask for."""
    if getattr(args, "log_level", None):
        return int(getattr(logging, args.log_level.upper()))
    default = getattr(logging, str(getattr(args, "default_log_level", "warning")).upper())
    verbose = int(getattr(args, "verbose", 0) or 0)
    return max(logging.DEBUG, int(default) - 10 * verbose)


def setup_logging(level: int) -> None:
    """Log the ``m2mproto`` loggers to stderr at *level*, one line per record."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("m2mproto")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
