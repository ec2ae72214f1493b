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
    ErrorCode,
    LimitExceeded,
    LocalProtocolError,
    M2MError,
    RemoteProtocolError,
    TokenError,
)


def _build() -> str:
    """Which build runs: ``compiled`` (mypyc core) or ``pure`` Python."""
    from .. import COMPILED

    return "compiled" if COMPILED else "pure"


__all__ = ["EXIT_CODES", "error_name", "exit_code_for", "main", "report"]

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


_CLOSE_CLASSES = {
    ErrorCode.TOKEN_INVALID: "token",
    ErrorCode.UNAUTHORIZED: "authorization",
    ErrorCode.HANDSHAKE_FAILURE: "authentication",
    ErrorCode.HANDSHAKE_TIMEOUT: "timeout",
    ErrorCode.IDLE_TIMEOUT: "timeout",
    ErrorCode.ENHANCE_YOUR_CALM: "limit",
    ErrorCode.TRUNCATED: "network",
    ErrorCode.NO_ERROR: "network",
}


def _close_code(exc: BaseException) -> ErrorCode | None:
    """The registry code a closed connection carried, if *exc* reports one."""
    close_code = getattr(exc, "close_code", None)
    if close_code is None:
        return None
    try:
        return ErrorCode(close_code)
    except ValueError:
        return None


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the documented exit status."""
    close_code = _close_code(exc)
    if close_code is not None:
        return EXIT_CODES[_CLOSE_CLASSES.get(close_code, "protocol")]
    code = getattr(exc, "code", None)
    if code is ErrorCode.TIMEOUT or isinstance(exc, TimeoutError):
        return EXIT_CODES["timeout"]
    if code in (ErrorCode.TOKEN_INVALID,):
        return EXIT_CODES["token"]
    if code in (ErrorCode.CONNECTION_CLOSED,):
        return EXIT_CODES["network"]
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
    if isinstance(exc, OSError):
        return EXIT_CODES["network"]
    return EXIT_CODES["failure"]


def _leaf(exc: BaseException) -> BaseException:
    """The first meaningful exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        members: list[BaseException] = list(exc.exceptions)
        inner = [e for e in members if isinstance(e, (M2MError, OSError))]
        exc = (inner or members)[0]
    return exc


def error_name(exc: BaseException) -> str:
    """The registry name that best describes *exc* (a peer's close code wins)."""
    close_code = _close_code(exc)
    if close_code not in (None, ErrorCode.NO_ERROR):
        assert close_code is not None
        return close_code.name
    code = getattr(exc, "code", None)
    return code.name if isinstance(code, ErrorCode) else type(exc).__name__


def report(exc: BaseException) -> int:
    """Print one line for *exc* on stderr; return its exit status."""
    exc = _leaf(exc)
    if isinstance(exc, M2MError):
        print(f"m2m: {error_name(exc)}: {exc.message}", file=sys.stderr)
    elif isinstance(exc, OSError):
        print(f"m2m: {exc.strerror or exc}", file=sys.stderr)
    else:
        print(f"m2m: {type(exc).__name__}: {exc}", file=sys.stderr)
    return exit_code_for(exc)


def build_parser() -> argparse.ArgumentParser:
    from . import bench, demo, interop, keys, peer, token

    parser = argparse.ArgumentParser(
        prog="m2m",
        description="m2mproto reference peer and tooling: secure machine-to-machine messaging.",
    )
    parser.add_argument("--version", action="version", version=f"m2m {__version__} ({_build()})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (keys, token, peer, demo, interop, bench):
        module.register(sub)
    return parser


def _leaf_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The (sub)parser of the subcommand *args* selected (``parser`` if none)."""
    while True:  # one level per nested subcommand (bounded by the parser tree)
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions:
            return parser
        chosen = getattr(args, actions[0].dest or "", None)
        child = actions[0].choices.get(chosen) if chosen is not None else None
        if child is None:
            return parser
        parser = child


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``m2m`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after "bench" belongs to python -m bench
        from .bench import run_bench

        try:
            return run_bench(argv[1:])
        except M2MError as exc:
            return report(exc)
    if argv[:1] == ["interop"]:  # say how to install the suite before argparse sees its options
        from .interop import installed, missing_error

        if not installed():
            return report(missing_error())
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand that got them, with its own usage
        _leaf_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_CODES["usage"]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except (M2MError, OSError, TimeoutError) as exc:
        return report(exc)
    except BaseExceptionGroup as group:
        leaf = _leaf(group)
        if isinstance(leaf, (M2MError, OSError, TimeoutError)):
            return report(leaf)
        raise
