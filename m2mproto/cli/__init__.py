"""The ``m2m`` command line: reference peer, key and token tooling.

Each command group lives in its own module and registers itself through a
``register(subparsers)`` function. Errors from the library become one line on
stderr, ``m2m: CODE: message``, and an exit status per failure class
(:data:`EXIT_CODES`); a traceback is never shown for a user mistake.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .._version import __version__
from ..errors import (
    AuthenticationError,
    AuthorizationError,
    LimitExceeded,
    LocalProtocolError,
    M2MError,
    RemoteProtocolError,
    TokenError,
)

__all__ = ["EXIT_CODES", "exit_code_for", "main"]

#: Exit status per failure class (stable: scripts rely on them).
EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "failure": 1,  # a check that ran and failed (e.g. vectors, verification)
    "usage": 2,  # argparse's own code for bad command lines
    "local": 3,  # user mistake: file, key, agent ID, argument
    "authentication": 4,  # handshake / identity failure
    "authorization": 5,  # refused by the peer: no capability
    "token": 6,  # the token itself is invalid (expired, revoked, ...)
    "network": 7,  # unreachable host, connection lost
    "protocol": 8,  # the peer broke the protocol
    "timeout": 9,
    "limit": 10,
}

Handler = Callable[[argparse.Namespace], int]


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the documented exit status."""
    if isinstance(exc, TokenError):
        return EXIT_CODES["token"]
    if isinstance(exc, AuthorizationError):
        return EXIT_CODES["authorization"]
    if isinstance(exc, AuthenticationError):
        return EXIT_CODES["authentication"]
    if isinstance(exc, LimitExceeded):
        return EXIT_CODES["limit"]
    if isinstance(exc, RemoteProtocolError):
        return EXIT_CODES["protocol"]
    if isinstance(exc, LocalProtocolError):
        return EXIT_CODES["local"]
    if isinstance(exc, TimeoutError):
        return EXIT_CODES["timeout"]
    if isinstance(exc, OSError):
        return EXIT_CODES["network"]
    return EXIT_CODES["failure"]


def build_parser() -> argparse.ArgumentParser:
    from . import demo, interop, keys, token

    parser = argparse.ArgumentParser(
        prog="m2m",
        description="m2mproto reference peer and tooling: secure machine-to-machine messaging.",
    )
    parser.add_argument("--version", action="version", version=f"m2m {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (keys, token, demo, interop):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``m2m`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_CODES["usage"]
    try:
        return handler(args)
    except M2MError as exc:
        print(f"m2m: {exc.code.name}: {exc.message}", file=sys.stderr)
        return exit_code_for(exc)
    except OSError as exc:
        print(f"m2m: {exc.strerror or exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130
