"""Verification cost: cheap checks first, the cache, the budget (spec/tokens.md §6.6, §6.9).

Signature verifications are counted by the real verifier
(:func:`m2mproto.tokens.cose.signature_verifications`), not a mock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from tok_helpers import ALICE, BOB, CAROL, MALLORY, NOW, ROOT, SERVER, counter_entropy

from m2mproto.errors import (
    AuthorizationError,
    ErrorCode,
    LocalProtocolError,
    TokenBudgetExceeded,
    TokenError,
)
from m2mproto.identity import Identity
from m2m_interop import mint
from m2mproto.tokens import (
    InMemoryRevocationStore,
    TokenAuthorizer,
    TokenLimits,
    VerificationCache,
    delegate,
    issue,
    revoke,
    verify,
)
from m2mproto.tokens.cose import signature_verifications

ROOTS = [ROOT.agent_id]
TTL = 3600


class Counter:
    def __init__(self) -> None:
        self.start = signature_verifications()

    @property
    def n(self) -> int:
        return signature_verifications() - self.start


@contextmanager
def counting() -> Iterator[Counter]:
    yield Counter()


def chain(links: int, *, seed: int = 100, holders: tuple[Identity, ...] = (ALICE, BOB)) -> bytes:
    """A valid chain of *links* links under ROOT; the leaf is held by ``holders[(links-1) % 2]``."""
    token = issue(
        ROOT,
        holders[0].agent_id,
        ["orders/*=msg/*"],
        now=NOW,
        ttl=TTL,
        entropy=counter_entropy(seed),
    )
    for i in range(1, links):
        token = delegate(
            holders[(i - 1) % 2],
            token,
            holders[i % 2].agent_id,
            ["orders/*=msg/*"],
            now=NOW,
            ttl=TTL,
            entropy=counter_entropy(seed * 100 + i),
        )
    return token


LEAF8 = chain(8)  # held by BOB
HOLDER8 = BOB.agent_id


def authz(**kwargs: Any) -> TokenAuthorizer:
    args: dict[str, Any] = {"trust_roots": ROOTS, "audience": SERVER.agent_id}
    args.update(kwargs)
    return TokenAuthorizer(**args)


def code_of(fn: Any) -> ErrorCode:
    with pytest.raises(TokenError) as info:
        fn()
    return info.value.code


# ---------------------------------------------------------------- cheap checks first


def test_valid_chain_costs_one_verification_per_link() -> None:
    with counting() as c:
        grant = verify(LEAF8, trust_roots=ROOTS, now=NOW, holder=HOLDER8)
    assert len(grant.chain) == 8
    assert c.n == 8


def test_wrong_holder_costs_no_signature_verification() -> None:
    with counting() as c:
        code = code_of(lambda: verify(LEAF8, trust_roots=ROOTS, now=NOW, holder=MALLORY.agent_id))
    assert code == ErrorCode.CNF_MISMATCH
    assert c.n == 0


def test_wrong_holder_is_reported_before_a_bad_signature() -> None:
    corrupted = bytearray(LEAF8)
    corrupted[-1] ^= 1  # the leaf's signature no longer verifies
    with counting() as c:
        code = code_of(
            lambda: verify(bytes(corrupted), trust_roots=ROOTS, now=NOW, holder=MALLORY.agent_id)
        )
    assert (code, c.n) == (ErrorCode.CNF_MISMATCH, 0)
    # the right holder gets to the signatures, root first: 7 good ones, then the leaf's
    with counting() as c:
        code = code_of(lambda: verify(bytes(corrupted), trust_roots=ROOTS, now=NOW, holder=HOLDER8))
    assert (code, c.n) == (ErrorCode.BAD_SIGNATURE, 8)


def test_wrong_holder_is_reported_before_time_and_audience() -> None:
    expired = issue(ROOT, ALICE.agent_id, ["a=b"], now=NOW - 10 * TTL, ttl=60)
    other_aud = issue(ROOT, ALICE.agent_id, ["a=b"], now=NOW, ttl=60, audience=CAROL.agent_id)
    for token in (expired, other_aud):
        code = code_of(lambda t=token: verify(t, trust_roots=ROOTS, now=NOW, holder=BOB.agent_id))
        assert code == ErrorCode.CNF_MISMATCH


def test_wrong_holder_is_decided_on_the_leaf_before_its_ancestors() -> None:
    # The leaf's holder is checked before the prf ancestors are unwrapped, so a chain the
    # peer does not hold costs the parse of one link: too deep, a malformed or untrusted
    # ancestor, or a broken link behind it are not looked at.
    too_deep = chain(9)  # held by ALICE
    assert code_of(lambda: verify(too_deep, trust_roots=ROOTS, now=NOW, holder=BOB.agent_id)) == (
        ErrorCode.CNF_MISMATCH
    )
    from tok_helpers import base_claims

    from m2mproto.tokens.claims import sign_claims

    bad_parent = sign_claims(MALLORY, base_claims() | {8: "not a cnf"})  # MALFORMED if parsed
    child = sign_claims(ALICE, base_claims() | {1: ALICE.agent_id.text, -65539: bad_parent})
    assert code_of(lambda: verify(child, trust_roots=ROOTS, now=NOW, holder=ALICE.agent_id)) == (
        ErrorCode.MALFORMED
    )
    assert code_of(lambda: verify(child, trust_roots=ROOTS, now=NOW, holder=BOB.agent_id)) == (
        ErrorCode.CNF_MISMATCH
    )


def _forged_link() -> bytes:
    # Mallory signs a child of Alice's token: linkage broken (issuer is not the parent's holder).
    from tok_helpers import claims_of

    from m2mproto.tokens.claims import CLAIM_ISS, sign_claims

    parent = chain(1)
    child = delegate(ALICE, parent, BOB.agent_id, ["orders/*=msg/*"], now=NOW, ttl=60)
    return sign_claims(MALLORY, claims_of(child) | {CLAIM_ISS: MALLORY.agent_id.text})


@pytest.mark.parametrize(
    ("make", "kwargs", "code"),
    [
        (lambda: chain(9), {"holder": ALICE.agent_id}, ErrorCode.TOO_DEEP),
        (lambda: LEAF8, {"limits": TokenLimits(max_token_size=100)}, ErrorCode.TOO_LARGE),
        (lambda: LEAF8, {"trust_roots": [MALLORY.agent_id]}, ErrorCode.UNTRUSTED_ROOT),
        (_forged_link, {"holder": BOB.agent_id}, ErrorCode.CHAIN_INVALID),
        (lambda: LEAF8, {"holder": ALICE.agent_id}, ErrorCode.CNF_MISMATCH),
    ],
    ids=["depth", "size", "root", "linkage", "holder"],
)
def test_cheap_rejections_verify_no_signature(
    make: Any, kwargs: dict[str, Any], code: ErrorCode
) -> None:
    token = make()
    args: dict[str, Any] = {"trust_roots": ROOTS, "now": NOW, "holder": HOLDER8}
    args.update(kwargs)
    with counting() as c:
        assert code_of(lambda: verify(token, **args)) == code
    assert c.n == 0


# ---------------------------------------------------------------- cache


def test_duplicate_chain_in_one_call_verifies_each_link_once() -> None:
    auth = authz()
    with counting() as c:
        grants = auth.accept_tokens(HOLDER8, [LEAF8] * 23, NOW)
    assert len(grants) == 23
    assert c.n == 8


def test_duplicate_chain_presented_repeatedly_verifies_each_link_once() -> None:
    auth = authz()
    with counting() as c:
        for i in range(2800):
            auth.accept_tokens(HOLDER8, [LEAF8], NOW + i / 1000)
    assert c.n == 8
    assert len(auth.grants(HOLDER8)) == 1  # presented again: replaced, not doubled


def test_shared_ancestors_are_verified_once() -> None:
    parent = chain(7)  # held by ALICE
    children = [
        delegate(
            ALICE,
            parent,
            BOB.agent_id,
            ["orders/eu/*=msg/send"],
            now=NOW,
            ttl=60,
            entropy=counter_entropy(900 + i),
        )
        for i in range(3)
    ]
    auth = authz()
    with counting() as c:
        for child in children:
            auth.accept_tokens(BOB.agent_id, [child], NOW)
    assert c.n == 7 + 3


def test_cached_chain_rechecks_time_each_use() -> None:
    auth = authz(clock_skew=0)
    auth.accept_tokens(HOLDER8, [LEAF8], NOW)
    with counting() as c:
        auth.accept_tokens(HOLDER8, [LEAF8], NOW + TTL)  # exp = now: still valid
        assert code_of(lambda: auth.accept_tokens(HOLDER8, [LEAF8], NOW + TTL + 1)) == (
            ErrorCode.EXPIRED
        )
        assert code_of(lambda: auth.accept_tokens(HOLDER8, [LEAF8], NOW - 1)) == (
            ErrorCode.NOT_YET_VALID
        )
    assert c.n == 0


def test_cached_chain_rechecks_revocation_each_use() -> None:
    store = InMemoryRevocationStore()
    auth = authz(revocations=store)
    auth.accept_tokens(HOLDER8, [LEAF8], NOW)
    root_link = chain(1)
    assert root_link != LEAF8
    # revoke the root link of the chain (same bytes as chain(1): same seed)
    store.add(revoke(ROOT, [root_link], now=NOW + 1))
    with counting() as c:
        assert code_of(lambda: auth.accept_tokens(HOLDER8, [LEAF8], NOW + 2)) == ErrorCode.REVOKED
    assert c.n == 0


def test_cached_chain_rechecks_holder_and_audience() -> None:
    cache = VerificationCache(trust_roots=ROOTS)
    verify(LEAF8, trust_roots=ROOTS, now=NOW, holder=HOLDER8, cache=cache)
    with counting() as c:
        assert (
            code_of(
                lambda: verify(
                    LEAF8, trust_roots=ROOTS, now=NOW, holder=ALICE.agent_id, cache=cache
                )
            )
            == ErrorCode.CNF_MISMATCH
        )
        aud = issue(ROOT, ALICE.agent_id, ["a=b"], now=NOW, ttl=60, audience=CAROL.agent_id)
        verify(
            aud,
            trust_roots=ROOTS,
            now=NOW,
            holder=ALICE.agent_id,
            audience=CAROL.agent_id,
            cache=cache,
        )
        assert (
            code_of(
                lambda: verify(
                    aud,
                    trust_roots=ROOTS,
                    now=NOW,
                    holder=ALICE.agent_id,
                    audience=SERVER.agent_id,
                    cache=cache,
                )
            )
            == ErrorCode.WRONG_AUDIENCE
        )
    assert c.n == 1  # only the audience token's own signature, once


def test_cache_is_bounded_lru() -> None:
    tokens = [
        issue(ROOT, ALICE.agent_id, [f"r{i}=msg/send"], now=NOW, ttl=60, entropy=counter_entropy(i))
        for i in range(3)
    ]
    cache = VerificationCache(trust_roots=ROOTS, max_entries=2)

    def run(token: bytes) -> None:
        verify(token, trust_roots=ROOTS, now=NOW, holder=ALICE.agent_id, cache=cache)

    with counting() as c:
        run(tokens[0])
        run(tokens[1])
        run(tokens[0])  # hit; tokens[1] is now the least recently used
        run(tokens[2])  # evicts tokens[1]
        assert c.n == 3 and len(cache) == 2
        run(tokens[0])
        run(tokens[2])
        assert c.n == 3
        run(tokens[1])
        assert c.n == 4
    assert cache.hits == 3 and cache.misses == 4


def test_cache_stores_only_verified_links() -> None:
    corrupted = bytearray(LEAF8)
    corrupted[-1] ^= 1
    cache = VerificationCache(trust_roots=ROOTS)
    for _ in range(2):
        with counting() as c:
            code = code_of(
                lambda: verify(
                    bytes(corrupted), trust_roots=ROOTS, now=NOW, holder=HOLDER8, cache=cache
                )
            )
        assert code == ErrorCode.BAD_SIGNATURE
    assert c.n == 1  # the 7 good ancestors were cached; the bad leaf is checked again
    assert len(cache) == 7


def test_cache_never_crosses_trust_root_sets() -> None:
    cache = VerificationCache(trust_roots=ROOTS)
    with pytest.raises(LocalProtocolError) as info:
        TokenAuthorizer(trust_roots=[MALLORY.agent_id], cache=cache)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(LocalProtocolError):
        verify(
            LEAF8,
            trust_roots=[ROOT.agent_id, MALLORY.agent_id],
            now=NOW,
            holder=HOLDER8,
            cache=cache,
        )
    shared = TokenAuthorizer(trust_roots=ROOTS, cache=cache)
    shared.accept_tokens(HOLDER8, [LEAF8], NOW)
    with counting() as c:
        TokenAuthorizer(trust_roots=ROOTS, cache=cache).accept_tokens(HOLDER8, [LEAF8], NOW)
    assert c.n == 0


def test_cached_depth_still_limited() -> None:
    cache = VerificationCache(trust_roots=ROOTS)
    verify(LEAF8, trust_roots=ROOTS, now=NOW, holder=HOLDER8, cache=cache)
    small = TokenLimits(max_chain_length=7)
    assert (
        code_of(
            lambda: verify(
                LEAF8, trust_roots=ROOTS, now=NOW, holder=HOLDER8, limits=small, cache=cache
            )
        )
        == ErrorCode.TOO_DEEP
    )
    child = delegate(BOB, LEAF8, ALICE.agent_id, ["orders/*=msg/*"], now=NOW, ttl=60)
    with counting() as c:
        assert (
            code_of(
                lambda: verify(
                    child, trust_roots=ROOTS, now=NOW, holder=ALICE.agent_id, cache=cache
                )
            )
            == ErrorCode.TOO_DEEP
        )
    assert c.n == 0


def _vector_context() -> dict[str, Any]:
    return {
        "trust_roots": [mint.ROOT.agent_id],
        "now": mint.NOW,
        "audience": mint.VERIFIER.agent_id,
        "revocations": InMemoryRevocationStore([mint.revocation_statement()]),
    }


def test_cache_does_not_change_any_verdict() -> None:
    """Every catalog token gives the same verdict uncached, cached (twice) and after the others."""
    catalog = mint.token_catalog()
    cache = VerificationCache(trust_roots=[mint.ROOT.agent_id], max_entries=1024)

    def verdict(tc: mint.TokenCase, **extra: Any) -> str:
        try:
            verify(tc.token, holder=tc.holder, **_vector_context(), **extra)
        except TokenError as exc:
            return exc.code.name
        return "valid"

    expected = [tc.code.name if tc.code else "valid" for tc in catalog]
    assert [verdict(tc) for tc in catalog] == expected
    for _ in range(2):
        assert [verdict(tc, cache=cache) for tc in catalog] == expected
    assert cache.hits > 0


# ---------------------------------------------------------------- budget


def distinct_chains(n: int, links: int = 8) -> list[bytes]:
    return [chain(links, seed=1000 + i) for i in range(n)]


def test_budget_boundary_pair() -> None:
    auth = authz()  # burst 64: eight distinct 8-link chains
    tokens = distinct_chains(9)
    with counting() as c:
        for token in tokens[:8]:
            auth.accept_tokens(HOLDER8, [token], NOW)
        assert c.n == 64
        with pytest.raises(TokenBudgetExceeded) as info:
            auth.accept_tokens(HOLDER8, [tokens[8]], NOW)
        assert c.n == 64  # refused before any signature
    exc = info.value
    assert isinstance(exc, AuthorizationError) and not isinstance(exc, TokenError)
    assert exc.code == ErrorCode.ENHANCE_YOUR_CALM
    # duplicates and cheap rejections cost nothing, so they still pass / fail as before
    auth.accept_tokens(HOLDER8, [tokens[0]] * 8, NOW)
    assert code_of(lambda: auth.accept_tokens(MALLORY.agent_id, [tokens[8]], NOW)) == (
        ErrorCode.CNF_MISMATCH
    )


def test_budget_refills_with_the_callers_clock() -> None:
    auth = authz(limits=TokenLimits(verification_burst=8, verification_rate=2.0))
    tokens = distinct_chains(3)
    auth.accept_tokens(HOLDER8, [tokens[0]], NOW)
    with pytest.raises(TokenBudgetExceeded):
        auth.accept_tokens(HOLDER8, [tokens[1]], NOW + 3.5)  # 7 verifications refilled
    auth.accept_tokens(HOLDER8, [tokens[1]], NOW + 4.0)  # 8
    with pytest.raises(TokenBudgetExceeded):
        auth.accept_tokens(HOLDER8, [tokens[2]], NOW + 1.0)  # a clock going back refills nothing
    auth.accept_tokens(HOLDER8, [tokens[2]], NOW + 100.0)  # never more than the burst
    with pytest.raises(TokenBudgetExceeded):
        auth.accept_tokens(HOLDER8, [chain(1, seed=9, holders=(BOB,))], NOW + 100.0)


def test_budget_is_per_peer() -> None:
    auth = authz(limits=TokenLimits(verification_burst=8, verification_rate=0.0))
    alice_chain = chain(8, seed=77, holders=(BOB, ALICE))
    auth.accept_tokens(HOLDER8, [LEAF8], NOW)
    auth.accept_tokens(ALICE.agent_id, [alice_chain], NOW)
    with pytest.raises(TokenBudgetExceeded):
        auth.accept_tokens(HOLDER8, [chain(1, seed=5, holders=(BOB,))], NOW)


def test_budget_exhausted_changes_no_grant() -> None:
    auth = authz(limits=TokenLimits(verification_burst=8, verification_rate=0.0))
    good = chain(1, seed=3, holders=(BOB,))
    with pytest.raises(TokenBudgetExceeded):
        auth.accept_tokens(HOLDER8, [good, LEAF8], NOW)
    assert auth.grants(HOLDER8) == ()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"verification_burst": 7},  # below max_chain_length: a full chain could never verify
        {"verification_burst": 0},
        {"verification_rate": -1.0},
        {"verification_rate": float("nan")},
        {"verification_cache_entries": 0},
        {"max_chain_length": 0},
    ],
)
def test_limits_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError) as info:
        TokenLimits(**kwargs)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
