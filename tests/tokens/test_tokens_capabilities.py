"""Capability names, matching, covering and caveats (spec/tokens.md 6.3, 6.4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_helpers import ALICE, BOB, CAROL

from m2mproto.errors import ErrorCode, LocalProtocolError, TokenError
from m2mproto.tokens import Capability, Caveats
from m2mproto.tokens.capabilities import covers_all, pattern_covers, pattern_matches


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("orders/eu/*", "orders/eu/x", True),
        ("orders/eu/*", "orders/eu/x/y", True),
        ("orders/eu/*", "orders/eu", False),
        ("orders/eu/*", "orders/euro/x", False),
        ("orders/eu/*", "orders", False),
        ("orders/eu", "orders/eu", True),
        ("orders/eu", "orders/eu/x", False),
        ("*", "anything", True),
        ("*", "a/b/c", True),
        ("msg/*", "msg/send", True),
        ("msg/*", "msg/x/y", True),
        ("msg/*", "msg", False),
        ("msg/*", "stream/open", False),
    ],
)
def test_matching_table(pattern: str, name: str, expected: bool) -> None:
    assert pattern_matches(pattern, name) is expected


@pytest.mark.parametrize(
    ("parent", "child", "expected"),
    [
        ("orders/*", "orders/eu/*", True),
        ("orders/*", "orders/eu", True),
        ("orders/*", "orders/*", True),
        ("orders/eu/*", "orders/*", False),
        ("orders/eu/*", "orders/eu", False),
        ("orders/eu", "orders/eu/*", False),
        ("orders/eu", "orders/eu", True),
        ("*", "*", True),
        ("*", "a", True),
        ("a", "*", False),
        ("a/*", "b/*", False),
    ],
)
def test_covering_table(parent: str, child: str, expected: bool) -> None:
    assert pattern_covers(parent, child) is expected


def test_capability_parse_and_matches() -> None:
    cap = Capability.parse("orders/eu/*=msg/send")
    assert cap == Capability("orders/eu/*", "msg/send")
    assert str(cap) == "orders/eu/*=msg/send"
    assert cap.matches("orders/eu/42", "msg/send")
    assert not cap.matches("orders/eu/42", "msg/recv")
    assert not cap.matches("orders/eu/*", "msg/send")  # wildcard requests never match
    assert not cap.matches("orders/eu//x", "msg/send")
    assert Capability.parse("*=*").matches("x/y", "stream/open")


@pytest.mark.parametrize(
    "text",
    [
        "orders",
        "a=b=c",
        "=msg",
        "orders/*/x=msg",
        "orders/eu*=msg",
        "a//b=msg",
        "a/./b=m",
        "a/../b=m",
        "a b=m",
        "a=",
        "/a=m",
        "a/=m",
        "x" * 1025 + "=m",
        "a=" + "m" * 129,
    ],
)
def test_capability_parse_rejects(text: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        Capability.parse(text)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("item", [["a"], ["a", 1], "a=b", ["a/*/b", "m"], ["a", "m", "x"], None])
def test_capability_from_wire_rejects(item: object) -> None:
    with pytest.raises(TokenError) as info:
        Capability.from_wire(item)
    assert info.value.code == ErrorCode.MALFORMED


def test_covers_all_needs_one_parent_per_child() -> None:
    parent = [Capability("a/*", "msg/send"), Capability("b", "*")]
    assert covers_all(parent, [Capability("a/x", "msg/send"), Capability("b", "stream/open")])
    assert not covers_all(parent, [Capability("a/x", "stream/open")])
    assert not covers_all(parent, [Capability("b/x", "msg/send")])


def test_caveats_wire_round_trip_and_errors() -> None:
    cav = Caveats.from_mapping({"max_message_size": 10, "allowed_peers": [BOB.agent_id]})
    assert Caveats.from_wire(cav.to_wire()) == cav
    with pytest.raises(TokenError) as info:
        Caveats.from_wire({"max_rate": 5})
    assert info.value.code == ErrorCode.UNKNOWN_CAVEAT
    for bad in (
        {"max_message_size": -1},
        {"max_message_size": True},
        {"allowed_peers": []},
        {"allowed_peers": ["m2m1nope"]},
        {"allowed_peers": [BOB.agent_id.text] * 2},
        [],
    ):
        with pytest.raises(TokenError) as info:
            Caveats.from_wire(bad)
        assert info.value.code == ErrorCode.MALFORMED
    with pytest.raises(LocalProtocolError):
        Caveats.from_mapping({"unknown": 1})


def test_caveats_narrowing_and_merge() -> None:
    loose = Caveats(max_message_size=100, allowed_peers=frozenset({BOB.agent_id, CAROL.agent_id}))
    tight = Caveats(max_message_size=50, allowed_peers=frozenset({BOB.agent_id}))
    assert tight.narrows(loose)
    assert not loose.narrows(tight)
    assert not Caveats().narrows(loose)  # dropping a caveat widens
    assert loose.narrows(Caveats())
    assert Caveats(max_message_size=100).merge(
        Caveats(allowed_peers=frozenset({ALICE.agent_id}))
    ) == (Caveats(100, frozenset({ALICE.agent_id})))
    assert loose.merge(tight) == tight


_segment = st.sampled_from(["a", "b", "c"])
_name = st.lists(_segment, min_size=1, max_size=4).map("/".join)
_pattern = st.one_of(
    _name, st.lists(_segment, min_size=0, max_size=3).map(lambda s: "/".join([*s, "*"]))
)


@settings(max_examples=300)
@given(parent=_pattern, child=_pattern, names=st.lists(_name, max_size=20))
def test_covering_is_sound(parent: str, child: str, names: list[str]) -> None:
    """If parent covers child, every name child matches is matched by parent."""
    if pattern_covers(parent, child):
        for name in names:
            if pattern_matches(child, name):
                assert pattern_matches(parent, name)


@settings(max_examples=300)
@given(parent=_pattern, child=_pattern)
def test_covering_is_complete_on_small_alphabet(parent: str, child: str) -> None:
    """If parent does not cover child, some name up to 5 segments shows it."""
    if pattern_covers(parent, child):
        return
    names = ["/".join(p) for n in range(1, 6) for p in _product("abcd", n)]
    assert any(pattern_matches(child, n) and not pattern_matches(parent, n) for n in names)


def _product(alphabet: str, n: int) -> list[tuple[str, ...]]:
    import itertools

    return list(itertools.product(alphabet, repeat=n))
