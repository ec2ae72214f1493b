"""Property tests: attenuation soundness, and verify()/inspect() on hostile bytes."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from tok_helpers import ALICE, BOB, CAROL, NOW, ROOT, counter_entropy

from m2mproto import cbor
from m2mproto.errors import ErrorCode, TokenError
from m2mproto.identity import Identity
from m2mproto.tokens import Capability, inspect, issue, verify
from m2mproto.tokens.capabilities import covers_all
from m2mproto.tokens.claims import build_claims, parse_link, sign_claims

ROOTS = [ROOT.agent_id]
HOLDERS: list[Identity] = [ALICE, BOB, CAROL]

_seg = st.sampled_from(["a", "b", "c"])
_name = st.lists(_seg, min_size=1, max_size=3).map("/".join)
_pattern = st.one_of(_name, st.lists(_seg, max_size=2).map(lambda s: "/".join([*s, "*"])))
_cap = st.builds(Capability, _pattern, _pattern)
_caps = st.lists(_cap, min_size=1, max_size=4, unique=True)
_probe = st.tuples(_name, _name)


def _link(
    issuer: Identity, holder: Identity, caps: list[Capability], parent: bytes | None, n: int
) -> bytes:
    """Sign a link directly (no delegate() checks), so verify() alone must catch violations."""
    claims = build_claims(
        issuer=issuer.agent_id,
        holder=holder.agent_id,
        capabilities=caps,
        issued_at=NOW,
        not_before=NOW,
        expires=NOW + 100,
        token_id=n.to_bytes(16, "big"),
        parent=parent,
    )
    return sign_claims(issuer, claims)


@pytest.mark.slow
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    chain_caps=st.lists(_caps, min_size=2, max_size=4),
    probes=st.lists(_probe, min_size=1, max_size=30),
)
def test_verified_child_never_grants_more_than_any_ancestor(
    chain_caps: list[list[Capability]], probes: list[tuple[str, str]]
) -> None:
    token = _link(ROOT, HOLDERS[0], chain_caps[0], None, 0)
    for i, caps in enumerate(chain_caps[1:], start=1):
        token = _link(HOLDERS[(i - 1) % 3], HOLDERS[i % 3], caps, token, i)
    holder = HOLDERS[(len(chain_caps) - 1) % 3]
    attenuated = all(covers_all(p, c) for p, c in itertools.pairwise(chain_caps))
    try:
        grant = verify(token, trust_roots=ROOTS, now=NOW, holder=holder.agent_id)
    except TokenError as exc:
        assert exc.code == ErrorCode.ATTENUATION_VIOLATION
        assert not attenuated  # a properly attenuated chain always verifies
        event("rejected")
        return
    event("verified")
    assert attenuated
    for resource, ability in probes:
        if grant.allows(resource, ability):
            for caps in chain_caps:
                assert any(c.matches(resource, ability) for c in caps)


@settings(max_examples=300)
@given(data=st.binary(max_size=600))
def test_verify_random_bytes_raises_only_token_error(data: bytes) -> None:
    with contextlib.suppress(TokenError):
        verify(data, trust_roots=ROOTS, now=NOW, holder=ALICE.agent_id)
    try:
        inspect(data)
    except TokenError as exc:
        assert exc.code == ErrorCode.MALFORMED


_VALID = issue(
    ROOT, ALICE.agent_id, ["orders/*=msg/*"], now=NOW, ttl=60, entropy=counter_entropy(1)
)


@settings(max_examples=300)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "insert", "delete"]),
            st.integers(0, 10_000),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_verify_mutated_token_raises_only_token_error(edits: list[tuple[str, int, int]]) -> None:
    data = bytearray(_VALID)
    for kind, pos, value in edits:
        at = pos % max(1, len(data))
        if kind == "flip" and data:
            data[at] ^= 1 << (value % 8)
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data.insert(at, value)
        elif kind == "delete" and data:
            del data[at]
    assume(bytes(data) != _VALID)
    try:
        verify(bytes(data), trust_roots=ROOTS, now=NOW, holder=ALICE.agent_id)
    except TokenError:
        return
    # Survivors must be semantically the same token (e.g. nothing changed the signed bytes).
    assert parse_link(bytes(data)).sign1.payload == parse_link(_VALID).sign1.payload


_leaf = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
)
_cbor = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.integers(-70000, 10), st.text(max_size=5)), inner, max_size=5),
    ),
    max_leaves=20,
)


@pytest.mark.slow
@settings(max_examples=300)
@given(
    protected=st.dictionaries(st.integers(-3, 5), _cbor, max_size=4),
    unprotected=_cbor,
    claims=st.dictionaries(
        st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, -65537, -65538, -65539]), _cbor
    ),
    sig=st.binary(max_size=70),
)
def test_verify_structured_garbage_raises_only_token_error(
    protected: dict[int, Any], unprotected: Any, claims: dict[int, Any], sig: bytes
) -> None:
    body = [cbor.encode(protected), unprotected, cbor.encode(claims), sig]
    data = cbor.encode(cbor.Tag(18, body))
    try:
        verify(data, trust_roots=ROOTS, now=NOW, holder=ALICE.agent_id)
    except TokenError:
        pass
    else:
        raise AssertionError("a random signature verified")
    try:
        inspect(data)
    except TokenError as exc:
        assert exc.code == ErrorCode.MALFORMED
