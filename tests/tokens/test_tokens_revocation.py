"""Revocation statements, the in-memory and file stores (spec/tokens.md 6.7)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tok_helpers import ALICE, BOB, CAROL, MALLORY, NOW, ROOT, counter_entropy

from m2mproto import cbor
from m2mproto.errors import ErrorCode, LocalProtocolError, TokenError
from m2mproto.tokens import (
    FileRevocationStore,
    InMemoryRevocationStore,
    RevocationStore,
    delegate,
    issue,
    revoke,
    verify,
)
from m2mproto.tokens.claims import CLAIM_IAT, CLAIM_ISS, CLAIM_REVOKED, sign_claims
from m2mproto.tokens.revocation import parse_statement

ROOTS = [ROOT.agent_id]


def three_links() -> tuple[bytes, bytes, bytes]:
    """ROOT -> ALICE -> BOB -> CAROL."""
    t1 = issue(
        ROOT, ALICE.agent_id, ["orders/*=msg/*"], now=NOW, ttl=3600, entropy=counter_entropy(10)
    )
    t2 = delegate(
        ALICE, t1, BOB.agent_id, ["orders/*=msg/*"], now=NOW, ttl=3600, entropy=counter_entropy(20)
    )
    t3 = delegate(
        BOB,
        t2,
        CAROL.agent_id,
        ["orders/eu/*=msg/send"],
        now=NOW,
        ttl=3600,
        entropy=counter_entropy(30),
    )
    return t1, t2, t3


def cti(n: int) -> bytes:
    return n.to_bytes(16, "big")


def verify_leaf(token: bytes, store: RevocationStore) -> None:
    verify(token, trust_roots=ROOTS, now=NOW, holder=CAROL.agent_id, revocations=store)


def assert_revoked(token: bytes, store: RevocationStore) -> None:
    with pytest.raises(TokenError) as info:
        verify_leaf(token, store)
    assert info.value.code == ErrorCode.REVOKED


def test_stores_implement_the_protocol(tmp_path: Path) -> None:
    assert isinstance(InMemoryRevocationStore(), RevocationStore)
    assert isinstance(FileRevocationStore(tmp_path / "r.cbor"), RevocationStore)


def test_revoked_leaf_by_its_issuer() -> None:
    _, _, leaf = three_links()
    store = InMemoryRevocationStore()
    verify_leaf(leaf, store)
    store.add(revoke(BOB, [leaf], now=NOW))
    assert_revoked(leaf, store)


def test_revoked_ancestor_revokes_descendants() -> None:
    _, middle, leaf = three_links()
    store = InMemoryRevocationStore([revoke(ALICE, [middle], now=NOW)])
    assert_revoked(leaf, store)
    with pytest.raises(TokenError) as info:
        verify(middle, trust_roots=ROOTS, now=NOW, holder=BOB.agent_id, revocations=store)
    assert info.value.code == ErrorCode.REVOKED


def test_authority_above_may_revoke_deeper_links() -> None:
    _, _, leaf = three_links()
    store = InMemoryRevocationStore([revoke(ROOT, [cti(30)], now=NOW)])  # root revokes the leaf ID
    assert_revoked(leaf, store)


def test_unrelated_or_lower_revoker_is_ignored() -> None:
    root_link, _, leaf = three_links()
    store = InMemoryRevocationStore(
        [
            revoke(MALLORY, [leaf, cti(20), cti(10)], now=NOW),  # outsider
            revoke(BOB, [root_link], now=NOW),  # Bob is below the root link
            revoke(CAROL, [leaf], now=NOW),  # the holder is not an authority over its own token
        ]
    )
    verify_leaf(leaf, store)


def test_local_revocation_applies_to_any_chain() -> None:
    _, _, leaf = three_links()
    store = InMemoryRevocationStore()
    store.revoke_locally(cti(10))
    assert_revoked(leaf, store)


def test_statement_round_trip_and_dedup() -> None:
    st = revoke(ROOT, [cti(1), cti(2), cti(1)], now=NOW + 0.9)
    parsed = parse_statement(st)
    assert parsed.revoker == ROOT.agent_id
    assert parsed.issued_at == NOW
    assert parsed.token_ids == (cti(1), cti(2))


def test_revoke_refuses_bad_input() -> None:
    with pytest.raises(LocalProtocolError):
        revoke(ROOT, [], now=NOW)
    with pytest.raises(LocalProtocolError):
        revoke(ROOT, [b"short"], now=NOW)
    with pytest.raises(LocalProtocolError):
        revoke(ROOT, ["text"], now=NOW)  # type: ignore[list-item]
    with pytest.raises(TokenError):
        revoke(ROOT, [b"x" * 100], now=NOW)  # long bytes are parsed as a token


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({CLAIM_ISS: ROOT.agent_id.text, CLAIM_IAT: NOW}, ErrorCode.MALFORMED),
        ({CLAIM_ISS: ROOT.agent_id.text, CLAIM_IAT: NOW, CLAIM_REVOKED: []}, ErrorCode.MALFORMED),
        (
            {CLAIM_ISS: ROOT.agent_id.text, CLAIM_IAT: NOW, CLAIM_REVOKED: [b"x"]},
            ErrorCode.MALFORMED,
        ),
        (
            {CLAIM_ISS: BOB.agent_id.text, CLAIM_IAT: NOW, CLAIM_REVOKED: [cti(1)]},
            ErrorCode.MALFORMED,
        ),
        (
            {CLAIM_ISS: ROOT.agent_id.text, CLAIM_IAT: 1.5, CLAIM_REVOKED: [cti(1)]},
            ErrorCode.MALFORMED,
        ),
        (
            {CLAIM_ISS: ROOT.agent_id.text, CLAIM_IAT: NOW, CLAIM_REVOKED: [cti(1)], 2: "x"},
            ErrorCode.MALFORMED,
        ),
    ],
)
def test_bad_statements(claims: dict[int, object], code: ErrorCode) -> None:
    with pytest.raises(TokenError) as info:
        InMemoryRevocationStore().add(sign_claims(ROOT, claims))
    assert info.value.code == code


def test_statement_with_bad_signature_is_refused() -> None:
    st = bytearray(revoke(ROOT, [cti(1)], now=NOW))
    st[-1] ^= 1
    with pytest.raises(TokenError) as info:
        InMemoryRevocationStore().add(bytes(st))
    assert info.value.code == ErrorCode.BAD_SIGNATURE


def test_token_and_statement_cannot_be_confused() -> None:
    token, _, _ = three_links()
    with pytest.raises(TokenError):
        InMemoryRevocationStore().add(token)
    st = revoke(ROOT, [cti(1)], now=NOW)
    with pytest.raises(TokenError) as info:
        verify(st, trust_roots=ROOTS, now=NOW, holder=None)
    assert info.value.code == ErrorCode.MALFORMED


# ---------------------------------------------------------------- file store


def test_file_store_missing_and_empty_mean_nothing(tmp_path: Path) -> None:
    path = tmp_path / "revoked.cbor"
    store = FileRevocationStore(path)
    assert len(store) == 0
    path.write_bytes(b"")
    assert store.reload_if_changed()
    assert len(store) == 0
    _, _, leaf = three_links()
    verify_leaf(leaf, store)


def test_file_store_add_appends_and_keeps(tmp_path: Path) -> None:
    path = tmp_path / "revoked.cbor"
    first = revoke(ROOT, [cti(99)], now=NOW)
    path.write_bytes(first)
    store = FileRevocationStore(path)
    _, middle, leaf = three_links()
    store.add(revoke(ALICE, [middle], now=NOW))
    assert path.read_bytes().startswith(first)
    assert_revoked(leaf, store)
    reopened = FileRevocationStore(path)
    assert_revoked(leaf, reopened)
    assert reopened.is_revoked(cti(99), [ROOT.agent_id])
    assert not store.reload_if_changed()  # our own append is already known


def test_file_store_reloads_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "revoked.cbor"
    store = FileRevocationStore(path)
    _, _, leaf = three_links()
    verify_leaf(leaf, store)
    path.write_bytes(revoke(BOB, [leaf], now=NOW))  # another process wrote it
    verify_leaf(leaf, store)  # not reloaded yet: the caller decides when
    assert store.reload_if_changed()
    assert_revoked(leaf, store)
    assert not store.reload_if_changed()
    path.unlink()  # file removed: revocations are monotonic, nothing is dropped
    assert store.reload_if_changed()
    assert_revoked(leaf, store)


def test_file_store_corrupt_file_keeps_previous_state(tmp_path: Path) -> None:
    path = tmp_path / "revoked.cbor"
    _, _, leaf = three_links()
    path.write_bytes(revoke(BOB, [leaf], now=NOW))
    store = FileRevocationStore(path)
    assert_revoked(leaf, store)
    path.write_bytes(path.read_bytes() + b"\xff\x00garbage")
    with pytest.raises(TokenError) as info:
        store.reload_if_changed()
    assert info.value.code == ErrorCode.MALFORMED
    assert_revoked(leaf, store)
    bad_sig = bytearray(revoke(BOB, [leaf, cti(5)], now=NOW))  # another size: see the docstring
    bad_sig[-1] ^= 1
    path.write_bytes(bytes(bad_sig))
    with pytest.raises(TokenError) as info:
        store.reload_if_changed()
    assert info.value.code == ErrorCode.BAD_SIGNATURE
    assert_revoked(leaf, store)


def test_file_store_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "revoked.cbor"
    path.write_bytes(revoke(ROOT, [cti(1)], now=NOW) * 3)
    with pytest.raises(TokenError) as info:
        FileRevocationStore(path, max_file_size=300)
    assert info.value.code == ErrorCode.TOO_LARGE
    assert len(FileRevocationStore(path)) == 1


def test_file_store_accepts_only_tagged_items(tmp_path: Path) -> None:
    path = tmp_path / "revoked.cbor"
    path.write_bytes(cbor.encode([1, 2, 3]))
    with pytest.raises(TokenError) as info:
        FileRevocationStore(path)
    assert info.value.code == ErrorCode.MALFORMED
