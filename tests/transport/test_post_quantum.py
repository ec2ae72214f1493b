"""Hybrid post-quantum negotiation over real sockets (spec/handshake.md 2.13).

A classical-only peer is ``Configuration(post_quantum=False)``: its offer is
byte-identical to an implementation of the classical-only spec, and as a
responder it refuses hybrid offers with VERSION_MISMATCH exactly as such an
implementation does (an unknown pattern string).
"""

from __future__ import annotations

import anyio
import pytest
from transport_util import CLIENT_ID, SERVER_ID, make_server, running_tcp

from m2mproto.config import Configuration
from m2mproto.errors import ErrorCode, M2MError
from m2mproto.handshake import PATTERNS
from m2mproto.transport import connect

pytestmark = pytest.mark.anyio

HYBRID = PATTERNS["XXhfs"]
CLASSICAL = PATTERNS["XX"]


async def _suites(server_cfg: Configuration, client_cfg: Configuration) -> tuple[str, str]:
    """Connect with *client_cfg* to a server with *server_cfg*; the suites both saw.

    Raises:
        M2MError: the client's handshake failure (outside the server's task group).
    """
    failure: list[M2MError] = []
    result = await _run(server_cfg, client_cfg, failure)
    if failure:
        raise failure[0]
    assert result is not None
    return result


async def _run(
    server_cfg: Configuration, client_cfg: Configuration, failure: list[M2MError]
) -> tuple[str, str] | None:
    server = make_server(config=server_cfg, authorizer_factory=lambda: None)
    seen: list[str] = []

    @server.request("echo")
    async def echo(message: object, ctx: object) -> object:
        seen.append(ctx.session.suite)  # type: ignore[attr-defined]
        return message

    with anyio.fail_after(20):
        async with running_tcp(server) as address:
            try:
                async with connect(
                    address, identity=CLIENT_ID, peer=SERVER_ID.agent_id, config=client_cfg
                ) as session:
                    assert await session.request("echo", {"x": 1}) == {"x": 1}
                    client_suite = session.suite
            except M2MError as exc:
                failure.append(exc)
                return None
    assert client_suite is not None
    return client_suite, seen[0]


def _code(exc: M2MError) -> int:
    """The handshake failure code (a ConnectionClosedError carries it as close_code)."""
    return int(getattr(exc, "close_code", exc.code))


async def test_default_negotiates_hybrid() -> None:
    assert await _suites(Configuration(), Configuration()) == (HYBRID, HYBRID)


async def test_classical_client_against_default_server() -> None:
    classical = Configuration(post_quantum=False)
    assert await _suites(Configuration(), classical) == (CLASSICAL, CLASSICAL)


async def test_default_client_falls_back_to_classical_server() -> None:
    classical = Configuration(post_quantum=False)
    assert await _suites(classical, Configuration()) == (CLASSICAL, CLASSICAL)


async def test_require_post_quantum_server_refuses_classical_client() -> None:
    with pytest.raises(M2MError) as info:
        await _suites(
            Configuration(require_post_quantum=True), Configuration(post_quantum=False)
        )
    assert _code(info.value) == ErrorCode.VERSION_MISMATCH  # the wire code the client sees


async def test_require_post_quantum_client_refuses_classical_server() -> None:
    with pytest.raises(M2MError) as info:
        await _suites(
            Configuration(post_quantum=False), Configuration(require_post_quantum=True)
        )
    assert _code(info.value) == ErrorCode.POST_QUANTUM_REQUIRED


async def test_require_post_quantum_both_sides() -> None:
    cfg = Configuration(require_post_quantum=True)
    assert await _suites(cfg, cfg) == (HYBRID, HYBRID)


async def test_fallback_offer_to_hybrid_server_fails_closed() -> None:
    # What a client sends after someone forged the refusal of its hybrid offer.
    with pytest.raises(M2MError) as info:
        await _suites(Configuration(), Configuration(post_quantum_fallback=True))
    assert _code(info.value) == ErrorCode.VERSION_MISMATCH
