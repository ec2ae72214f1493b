"""TokenAuthorizer: accept per peer, authorize at now, expiry and revocation mid-connection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_helpers import ALICE, BOB, MALLORY, NOW, ROOT, SERVER, counter_entropy

from m2mproto.errors import AuthorizationError, ErrorCode, TokenError
from m2mproto.tokens import (
    Grant,
    InMemoryRevocationStore,
    TokenAuthorizer,
    TokenLimits,
    delegate,
    issue,
    revoke,
)

TTL = 600


def make_authorizer(**kwargs: object) -> TokenAuthorizer:
    args: dict[str, object] = {"trust_roots": [ROOT.agent_id], "audience": SERVER.agent_id}
    args.update(kwargs)
    return TokenAuthorizer(**args)  # type: ignore[arg-type]


def alice_token(caps: list[str] | None = None, n: int = 1, ttl: int = TTL) -> bytes:
    return issue(
        ROOT,
        ALICE.agent_id,
        caps or ["orders/*=msg/send"],
        now=NOW,
        ttl=ttl,
        entropy=counter_entropy(n),
    )


def assert_unauthorized(
    auth: TokenAuthorizer, peer: object, resource: str, ability: str, now: float
) -> None:
    with pytest.raises(AuthorizationError) as info:
        auth.authorize(peer, resource, ability, now)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.UNAUTHORIZED
    assert not isinstance(info.value, TokenError)


def test_accept_then_authorize() -> None:
    auth = make_authorizer()
    grants = auth.accept_tokens(ALICE.agent_id, [alice_token()], NOW)
    assert len(grants) == 1 and isinstance(grants[0], Grant)
    assert auth.authorize(ALICE.agent_id, "orders/eu/1", "msg/send", NOW + 1) == grants[0]
    assert_unauthorized(auth, ALICE.agent_id, "orders/eu/1", "stream/open", NOW + 1)
    assert_unauthorized(auth, ALICE.agent_id, "billing", "msg/send", NOW + 1)
    assert_unauthorized(auth, BOB.agent_id, "orders/eu/1", "msg/send", NOW + 1)  # per peer


def test_stolen_token_is_refused_with_cnf_mismatch() -> None:
    auth = make_authorizer()
    with pytest.raises(TokenError) as info:
        auth.accept_tokens(MALLORY.agent_id, [alice_token()], NOW)
    assert info.value.code == ErrorCode.CNF_MISMATCH
    assert auth.grants(MALLORY.agent_id) == ()


def test_one_bad_token_changes_nothing() -> None:
    auth = make_authorizer()
    bad = issue(MALLORY, ALICE.agent_id, ["*=*"], now=NOW, ttl=TTL)
    with pytest.raises(TokenError) as info:
        auth.accept_tokens(ALICE.agent_id, [alice_token(), bad], NOW)
    assert info.value.code == ErrorCode.UNTRUSTED_ROOT
    assert auth.grants(ALICE.agent_id) == ()


def test_audience_is_the_authorizers() -> None:
    token = issue(ROOT, ALICE.agent_id, ["a=msg/send"], now=NOW, ttl=TTL, audience=BOB.agent_id)
    with pytest.raises(TokenError) as info:
        make_authorizer().accept_tokens(ALICE.agent_id, [token], NOW)
    assert info.value.code == ErrorCode.WRONG_AUDIENCE


def test_expiry_mid_connection() -> None:
    auth = make_authorizer(clock_skew=5)
    auth.accept_tokens(ALICE.agent_id, [alice_token()], NOW)
    assert auth.authorize(ALICE.agent_id, "orders/x", "msg/send", NOW + TTL + 5)
    assert_unauthorized(auth, ALICE.agent_id, "orders/x", "msg/send", NOW + TTL + 6)
    assert [g.expires for g in auth.prune(ALICE.agent_id, NOW + TTL + 6)] == [NOW + TTL]
    assert auth.grants(ALICE.agent_id) == ()


def test_refresh_with_a_new_token_mid_connection() -> None:
    auth = make_authorizer(clock_skew=0)
    auth.accept_tokens(ALICE.agent_id, [alice_token()], NOW)
    later = issue(
        ROOT,
        ALICE.agent_id,
        ["orders/*=msg/send"],
        now=NOW + TTL - 10,
        ttl=TTL,
        entropy=counter_entropy(9),
    )
    auth.accept_tokens(ALICE.agent_id, [later], NOW + TTL - 10)
    grant = auth.authorize(ALICE.agent_id, "orders/x", "msg/send", NOW + TTL + 1)
    assert grant.token_id == (9).to_bytes(16, "big")


def test_revocation_mid_connection() -> None:
    store = InMemoryRevocationStore()
    auth = make_authorizer(revocations=store)
    parent = alice_token(["orders/*=msg/*"])
    child = delegate(
        ALICE,
        parent,
        BOB.agent_id,
        ["orders/eu/*=msg/send"],
        now=NOW,
        ttl=TTL,
        entropy=counter_entropy(40),
    )
    auth.accept_tokens(BOB.agent_id, [child], NOW)
    assert auth.authorize(BOB.agent_id, "orders/eu/1", "msg/send", NOW + 1)
    store.add(revoke(ROOT, [parent], now=NOW + 2))  # the ancestor is revoked
    assert_unauthorized(auth, BOB.agent_id, "orders/eu/1", "msg/send", NOW + 3)
    assert len(auth.prune(BOB.agent_id, NOW + 3)) == 1
    with pytest.raises(TokenError) as info:
        auth.accept_tokens(BOB.agent_id, [child], NOW + 3)
    assert info.value.code == ErrorCode.REVOKED


def test_grants_per_peer_are_bounded_and_replaced() -> None:
    auth = make_authorizer(limits=TokenLimits(max_grants_per_peer=3))
    tokens = [alice_token([f"r{i}=msg/send"], n=i) for i in range(5)]
    auth.accept_tokens(ALICE.agent_id, tokens, NOW)
    assert [g.capabilities[0].resource for g in auth.grants(ALICE.agent_id)] == ["r2", "r3", "r4"]
    assert_unauthorized(auth, ALICE.agent_id, "r0", "msg/send", NOW)
    auth.accept_tokens(ALICE.agent_id, [tokens[2]], NOW)  # presented again: replaced, not doubled
    assert [g.capabilities[0].resource for g in auth.grants(ALICE.agent_id)] == ["r3", "r4", "r2"]
    auth.forget(ALICE.agent_id)
    assert auth.grants(ALICE.agent_id) == ()


@pytest.mark.parametrize("resource", ["orders/*", "orders//x", "", "orders/../x"])
def test_wildcard_or_invalid_requests_are_unauthorized(resource: str) -> None:
    auth = make_authorizer()
    auth.accept_tokens(ALICE.agent_id, [alice_token(["*=*"])], NOW)
    assert_unauthorized(auth, ALICE.agent_id, resource, "msg/send", NOW)


@settings(max_examples=40)
@given(offset=st.integers(min_value=-200, max_value=TTL + 200), skew=st.integers(0, 120))
def test_authorize_follows_the_window(offset: int, skew: int) -> None:
    auth = make_authorizer(clock_skew=skew)
    auth.accept_tokens(ALICE.agent_id, [alice_token()], NOW)
    now = NOW + offset
    if -skew <= offset <= TTL + skew:
        assert auth.authorize(ALICE.agent_id, "orders/x", "msg/send", now)
    else:
        assert_unauthorized(auth, ALICE.agent_id, "orders/x", "msg/send", now)
