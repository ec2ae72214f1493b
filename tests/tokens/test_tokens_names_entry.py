"""Names are validated where they enter; matching does not re-validate, and refuses no less."""

from __future__ import annotations

import pytest
from helpers import ALICE, BOB, Pair, seeded_entropy
from tok_helpers import NOW, ROOT, counter_entropy

from m2mproto import COMPILED
from m2mproto.config import Configuration
from m2mproto.errors import ErrorCode, LocalProtocolError, TokenError
from m2mproto.events import StreamOpened, StreamReset
from m2mproto.tokens import Grant, TokenAuthorizer, issue
from m2mproto.tokens import capabilities as capmod
from m2mproto.tokens.capabilities import Capability, Caveats, concrete_name_ok

#: Concrete names that a structural match alone would accept under "*" or "orders/*".
INVALID = ["orders/*", "*", "orders/../x", "orders//x", "orders/./x", "orders/x y", "", "o" * 1025]
BAD_PATTERNS = [["a/*/b", "x"], ["a", "*/x"], ["a//b", "x"], ["..", "x"], [7, "x"], ["a", ""]]


@pytest.mark.parametrize("item", BAD_PATTERNS)
def test_capability_parsing_refuses_invalid_patterns(item: list[object]) -> None:
    with pytest.raises(TokenError) as info:
        Capability.from_wire(item)
    assert info.value.code is ErrorCode.MALFORMED
    if COMPILED and not all(isinstance(name, str) for name in item):
        with pytest.raises(TypeError):  # compiled: the annotation refuses it first
            Capability(*item)  # type: ignore[arg-type]
        return
    with pytest.raises(LocalProtocolError) as local:
        Capability(*item)  # type: ignore[arg-type]
    assert local.value.code is ErrorCode.INVALID_ARGUMENT


def _grant(*caps: str) -> Grant:
    holder = ALICE.agent_id
    parsed = tuple(Capability.parse(c) for c in caps)
    return Grant(parsed, holder, ROOT.agent_id, (), 0, 2**40, Caveats(), None)


def test_grant_refuses_invalid_names_every_time_even_after_cache_churn() -> None:
    g = _grant("*=*", "orders/*=msg/send")
    for _ in range(2):
        for name in INVALID:
            assert not g.allows(name, "msg/send"), name
            assert not g.allows("orders/x", name or "msg/*"), name
        assert g.allows("orders/x", "msg/send")
        # churn the remembered-names cache past its bound
        for i in range(capmod._MAX_VALID_NAMES + 10):
            assert concrete_name_ok(f"n/{i}", 1024)
        assert len(capmod._VALID_NAMES) <= capmod._MAX_VALID_NAMES
    assert not any(name in INVALID for name, _ in capmod._VALID_NAMES)


def test_open_of_an_invalid_resource_is_refused_at_entry() -> None:
    token = issue(ROOT, ALICE.agent_id, ["*=*"], now=NOW, ttl=600, entropy=counter_entropy(9))
    authz = TokenAuthorizer(trust_roots=[ROOT.agent_id], audience=BOB.agent_id)
    cfg_b = Configuration(entropy=seeded_entropy(2), clock_offset=NOW - 1000 + 1)
    p = Pair(None, cfg_b, a={"tokens": [token]}, b={"authorizer": authz}).handshake()
    assert p.b.state.name == "ESTABLISHED"
    good = p.a.open_stream("orders/eu")
    bad = [p.a.open_stream(name) for name in ("orders/*", "orders/../x", "*")]
    for sid in [good, *bad]:
        p.a.send_message(sid, 1)
    p.run()
    evs = p.events[p.b]
    opened = [e.stream_id for e in evs if isinstance(e, StreamOpened)]
    refused = {e.stream_id for e in evs if isinstance(e, StreamReset)}
    assert opened == [good]
    assert refused == set(bad)
    assert all(e.code == ErrorCode.UNAUTHORIZED for e in evs if isinstance(e, StreamReset))
    assert p.b.state.name == "ESTABLISHED"
