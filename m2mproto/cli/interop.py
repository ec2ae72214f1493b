"""``m2m interop ...``: provided by the separate interoperability distribution.

The conformance runner, the vector generator and checkers live in the
``m2mproto-interop`` distribution (import package ``m2m_interop``, directory
``interop/`` of a checkout). When it is installed, its ``register`` adds the
``interop`` commands; otherwise ``m2m interop`` prints one line saying how to
install it and exits with the user-mistake status.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ErrorCode, LocalProtocolError

#: How to get the interoperability suite (printed when it is missing).
INSTALL_HINT = "pip install ./interop (from a checkout) or pip install m2mproto-interop"


def installed() -> bool:
    """Whether the interoperability suite (``m2m_interop``) can be imported."""
    try:
        import m2m_interop  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "m2m_interop":
            raise
        return False
    return True


def register(sub: Any) -> None:
    if installed():
        from m2m_interop.cli import register as register_suite

        register_suite(sub)
    else:
        register_missing(sub)


def register_missing(sub: Any) -> None:
    """Register an ``interop`` command that only says how to install the suite."""
    p = sub.add_parser(
        "interop",
        help="interoperability tools (not installed: pip install ./interop)",
        add_help=False,
    )
    p.add_argument("interop_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_missing)


def cmd_missing(args: argparse.Namespace) -> int:
    raise missing_error()


def missing_error() -> LocalProtocolError:
    """The one-line error for ``m2m interop ...`` without the suite."""
    return LocalProtocolError(
        f"the interoperability suite is not installed: {INSTALL_HINT}",
        ErrorCode.INVALID_ARGUMENT,
    )
