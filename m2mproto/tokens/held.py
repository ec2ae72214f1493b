"""check_held(): a client's own check of the tokens it is about to present.

Not a verification (no trust roots, no signatures): it only reads each leaf
and catches the mistakes a client can see alone, so that it says so before
connecting instead of the server refusing the handshake with
``TOKEN_INVALID``. Bytes that do not parse as a token are left to the server.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..errors import ErrorCode, TokenError
from ..identity import AgentId
from .claims import parse_link
from .verify import DEFAULT_CLOCK_SKEW

__all__ = ["check_held"]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def check_held(
    tokens: Sequence[bytes],
    holder: AgentId,
    *,
    now: float,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> None:
    """Check that each token in *tokens* is held by *holder* and valid at *now*.

    The window is widened by *clock_skew*, like the verifier's, so a token a
    server may still accept is never refused here.

    Raises:
        TokenError: ``CNF_MISMATCH`` (held by another agent), ``EXPIRED`` or
            ``NOT_YET_VALID``; the message names the token (1-based) and the times.
    """
    for index, token in enumerate(tokens, 1):
        try:
            link = parse_link(token)
        except TokenError:
            continue  # not a token: the server's verdict says why
        if link.holder != holder:
            raise TokenError(
                f"token {index} is held by {link.holder.text}, not by this identity "
                f"({holder.text}): the server would refuse it",
                ErrorCode.CNF_MISMATCH,
            )
        if now > link.expires + clock_skew:
            raise TokenError(
                f"token {index} expired at {_iso(link.expires)} (now {_iso(now)})",
                ErrorCode.EXPIRED,
            )
        if now < link.not_before - clock_skew:
            raise TokenError(
                f"token {index} is not valid before {_iso(link.not_before)} (now {_iso(now)})",
                ErrorCode.NOT_YET_VALID,
            )
