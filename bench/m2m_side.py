"""m2mproto's side of the loopback harness (plug-in for :mod:`bench.net`).

Provides what the harness needs from a protocol: ``make_material(dir)``
(identities, a trust root and a token for the client), ``make_client(dir)``
(a client whose ``connect`` returns a channel with ``oneway``, ``request``,
``bulk``, ``flush``, ``aclose``) and ``serve(dir, ready)`` (a server with an
echo request handler, a message sink and a stream sink).

The m2mproto anyio transport is imported lazily; while it is missing from the
checkout every entry point raises :class:`bench.common.Unavailable`, and the
figures are reported as "not yet available".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import Unavailable

__all__ = ["make_client", "make_material", "serve"]


def _transport() -> Any:
    try:
        from m2mproto.transport import connect, serve  # type: ignore[attr-defined]
    except ImportError as exc:
        raise Unavailable(f"m2mproto transport not importable: {exc}") from None
    return connect, serve


def make_material(directory: Path) -> None:
    """Write identities, trust roots and the client's token into ``directory``.

    Raises:
        Unavailable: while the m2mproto transport is missing.
    """
    _transport()
    raise Unavailable("m2mproto transport API not yet wired into the bench")


def make_client(directory: Path) -> Any:
    """Return the harness client for m2mproto.

    Raises:
        Unavailable: while the m2mproto transport is missing.
    """
    _transport()
    raise Unavailable("m2mproto transport API not yet wired into the bench")


async def serve(directory: Path, ready: Any) -> None:
    """Serve m2mproto on 127.0.0.1 for the harness.

    Raises:
        Unavailable: while the m2mproto transport is missing.
    """
    _transport()
    raise Unavailable("m2mproto transport API not yet wired into the bench")
