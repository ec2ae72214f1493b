"""Every caveat of a grant, enforced end to end through a Connection pair (spec/tokens.md §6.4)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from helpers import ALICE, BOB, Pair, seeded_entropy
from tok_helpers import NOW, ROOT, counter_entropy

from m2mproto import cbor
from m2mproto.config import Configuration
from m2mproto.errors import ErrorCode
from m2mproto.events import ConnectionClosed, Event, MessageReceived, StreamReset
from m2mproto.identity import AgentId, Identity
from m2mproto.tokens import TokenAuthorizer, delegate, issue

CAROL = Identity.from_seed(b"\x04" * 32)


def _pair(token: bytes, **cfg_b: object) -> Pair:
    """a presents *token* to b (BOB), whose authorizer is the real TokenAuthorizer."""
    authz = TokenAuthorizer(trust_roots=[ROOT.agent_id], audience=BOB.agent_id)
    config_b = Configuration(
        entropy=seeded_entropy(2),
        clock_offset=NOW - 1000 + 1,
        **cfg_b,  # type: ignore[arg-type]
    )
    return Pair(None, config_b, a={"tokens": [token]}, b={"authorizer": authz}).handshake()


def _token(caveats: dict[str, object] | None, seed: int = 1) -> bytes:
    return issue(
        ROOT,
        ALICE.agent_id,
        ["*=*"],
        now=NOW,
        ttl=600,
        caveats=caveats,
        entropy=counter_entropy(seed),
    )


def _bytes_of(size: int) -> bytes:
    """A CBOR byte string encoding to exactly *size* bytes."""
    for pad in range(size, -1, -1):
        if len(cbor.encode(b"\x00" * pad)) == size:
            return b"\x00" * pad
    raise ValueError(size)


def _send(p: Pair, sizes: Sequence[int], resource: str = "orders/eu") -> list[Event]:
    sid = p.a.open_stream(resource)
    for size in sizes:
        p.a.send_message(sid, _bytes_of(size))
    before = len(p.events[p.b])
    p.run()
    return p.events[p.b][before:]


def _outcome(evs: Sequence[Event]) -> list[object]:
    out: list[object] = []
    for e in evs:
        if isinstance(e, MessageReceived):
            out.append(e.size)
        elif isinstance(e, StreamReset):
            out.append(ErrorCode(e.code).name)
        elif isinstance(e, ConnectionClosed):
            out.append(("closed", e.code))
    return out


def test_max_message_size_caveat_boundary() -> None:
    p = _pair(_token({"max_message_size": 16}))
    assert _outcome(_send(p, [16])) == [16]
    assert _outcome(_send(p, [17])) == ["MESSAGE_TOO_LARGE"]
    assert p.b.state.name == "ESTABLISHED"


def test_twenty_thousand_bytes_under_a_caveat_of_sixteen() -> None:
    """The reported case: delivered before; now refused, and never buffered whole."""
    p = _pair(_token({"max_message_size": 16}))
    assert _outcome(_send(p, [20_000])) == ["MESSAGE_TOO_LARGE"]
    assert p.b.connection_windows().recv_received < 20_000 + 100  # at most what was in flight


def test_caveat_applies_to_every_message_on_the_stream() -> None:
    p = _pair(_token({"max_message_size": 100}))
    assert _outcome(_send(p, [10, 100, 101])) == [10, 100, "MESSAGE_TOO_LARGE"]


def test_connection_limit_below_the_caveat_still_applies() -> None:
    p = _pair(_token({"max_message_size": 5000}), max_message_size=1000)
    sid = p.a.open_stream("orders/eu")
    assert p.a.peer_parameters is not None and p.a.peer_parameters.max_message_size == 1000
    # a's own sender refuses above the advertised limit; the caveat is the wider one here
    p.a.send_message(sid, _bytes_of(1000))
    p.run()
    assert _outcome(p.events[p.b][-1:]) == [1000]


def test_no_caveat_means_the_connection_limit() -> None:
    p = _pair(_token(None))
    assert _outcome(_send(p, [60_000])) == [60_000]


def test_delegated_caveat_is_the_strictest_of_the_chain() -> None:
    parent = issue(
        ROOT,
        ALICE.agent_id,
        ["*=*"],
        now=NOW,
        ttl=600,
        caveats={"max_message_size": 64},
        entropy=counter_entropy(3),
    )
    child = delegate(
        ALICE,
        parent,
        ALICE.agent_id,
        ["orders/*=*"],
        now=NOW,
        ttl=600,
        caveats={"max_message_size": 32},
        entropy=counter_entropy(4),
    )
    p = _pair(child)
    assert _outcome(_send(p, [32, 33])) == [32, "MESSAGE_TOO_LARGE"]


def test_replies_on_our_own_stream_are_not_limited_by_the_peers_grant() -> None:
    p = _pair(_token({"max_message_size": 16}))
    sid = p.b.open_stream("orders/reply")  # b opened it: a's answers need no capability
    p.b.send_message(sid, 1)
    p.run()
    p.a.send_message(sid, _bytes_of(500))
    before = len(p.events[p.b])
    p.run()
    assert _outcome(p.events[p.b][before:]) == [500]


@pytest.mark.parametrize("listed", [True, False])
def test_allowed_peers_caveat(listed: bool) -> None:
    verifier = BOB if listed else CAROL
    p = _pair(_token({"allowed_peers": [verifier.agent_id.text]}))
    if listed:
        assert p.b.state.name == "ESTABLISHED"
        assert _outcome(_send(p, [10])) == [10]
    else:
        closed = [e for e in p.events[p.b] if isinstance(e, ConnectionClosed)]
        assert closed and closed[0].code == ErrorCode.WRONG_AUDIENCE


class _Broken:
    """An authorizer whose grant does not implement config.Grant."""

    def accept_tokens(self, peer: AgentId, tokens: Sequence[bytes], now: float) -> object:
        return None

    def authorize(self, peer: AgentId, resource: str, ability: str, now: float) -> object:
        return object()


def test_a_grant_without_the_protocol_closes_with_internal_error() -> None:
    p = Pair(None, None, b={"authorizer": _Broken()}).handshake()
    sid = p.a.open_stream("r")
    p.a.send_message(sid, 1)
    p.run()
    closed = [e for e in p.events[p.b] if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == ErrorCode.INTERNAL_ERROR
