"""verify(): every failure class with its code, boundary pairs, and the happy paths."""

from __future__ import annotations

import json

import pytest
from tok_helpers import (
    ALICE,
    BOB,
    CAROL,
    MALLORY,
    NOW,
    ROOT,
    SERVER,
    base_claims,
    claims_of,
    counter_entropy,
    raw_sign1,
    resign,
)

from m2mproto import COMPILED, cbor
from m2mproto.errors import ErrorCode, LocalProtocolError, TokenError
from m2mproto.identity import Identity
from m2mproto.tokens import Capability, TokenLimits, delegate, inspect, issue, verify
from m2mproto.tokens.claims import (
    CLAIM_AUD,
    CLAIM_CAPS,
    CLAIM_CAVEATS,
    CLAIM_CNF,
    CLAIM_CTI,
    CLAIM_EXP,
    CLAIM_IAT,
    CLAIM_ISS,
    CLAIM_NBF,
    CLAIM_SUB,
    cnf_for,
    parse_link,
    sign_claims,
)

ROOTS = [ROOT.agent_id]


def root_token(**kwargs: object) -> bytes:
    args: dict[object, object] = {"now": NOW, "ttl": 3600, "entropy": counter_entropy(1)}
    args.update(kwargs)
    return issue(ROOT, ALICE.agent_id, ["orders/*=msg/*", "files/*=stream/open"], **args)  # type: ignore[arg-type]


def check(token: bytes, code: ErrorCode, **kwargs: object) -> TokenError:
    args: dict[object, object] = {"trust_roots": ROOTS, "now": NOW, "holder": ALICE.agent_id}
    args.update(kwargs)
    with pytest.raises(TokenError) as info:
        verify(token, **args)  # type: ignore[arg-type]
    assert info.value.code == code, info.value
    return info.value


def chain(links: int, *, now: int = NOW) -> tuple[bytes, Identity]:
    """A valid chain of *links* links; returns (leaf, leaf holder)."""
    holders = [ALICE, BOB]
    token = issue(
        ROOT, ALICE.agent_id, ["orders/*=msg/*"], now=now, ttl=3600, entropy=counter_entropy(100)
    )
    for i in range(1, links):
        issuer, holder = holders[(i - 1) % 2], holders[i % 2]
        token = delegate(
            issuer,
            token,
            holder.agent_id,
            ["orders/*=msg/*"],
            now=now,
            ttl=3600,
            entropy=counter_entropy(100 + i),
        )
    return token, holders[(links - 1) % 2]


# ---------------------------------------------------------------- happy paths


def test_root_token_verifies_with_expected_grant() -> None:
    token = root_token()
    grant = verify(token, trust_roots=ROOTS, now=NOW + 10, holder=ALICE.agent_id)
    assert grant.holder == ALICE.agent_id
    assert grant.root == ROOT.agent_id
    assert grant.expires == NOW + 3600 and grant.not_before == NOW
    assert grant.capabilities == (
        Capability("orders/*", "msg/*"),
        Capability("files/*", "stream/open"),
    )
    assert grant.token_id == (1).to_bytes(16, "big")
    assert grant.allows("orders/eu/1", "msg/send")
    assert not grant.allows("files/x", "msg/send")
    json.dumps(grant.to_json())


def test_delegated_chain_verifies_and_narrows() -> None:
    parent = root_token(caveats={"max_message_size": 4096})
    child = delegate(
        ALICE,
        parent,
        BOB.agent_id,
        ["orders/eu/*=msg/send"],
        now=NOW + 5,
        ttl=99999,
        caveats={"max_message_size": 1024},
        entropy=counter_entropy(50),
    )
    grant = verify(child, trust_roots=ROOTS, now=NOW + 10, holder=BOB.agent_id)
    assert [e.issuer for e in grant.chain] == [ROOT.agent_id, ALICE.agent_id]
    assert [e.holder for e in grant.chain] == [ALICE.agent_id, BOB.agent_id]
    assert grant.expires == NOW + 3600  # clipped to the parent by delegate()
    assert grant.not_before == NOW + 5
    assert grant.caveats.max_message_size == 1024
    assert grant.allows("orders/eu/7", "msg/send")
    assert not grant.allows("orders/us/7", "msg/send")


def test_holder_none_skips_binding_only() -> None:
    grant = verify(root_token(), trust_roots=ROOTS, now=NOW, holder=None)
    assert grant.holder == ALICE.agent_id


# ---------------------------------------------------------------- signature


def test_tampered_payload_is_bad_signature() -> None:
    token = bytearray(root_token())
    cti = (1).to_bytes(16, "big")
    at = bytes(token).index(cti)
    token[at + 15] ^= 0x01
    check(bytes(token), ErrorCode.BAD_SIGNATURE)


@pytest.mark.parametrize("how", ["flip", "truncate", "s_plus_l", "trailing", "other_key"])
def test_bad_signatures(how: str) -> None:
    token = root_token()
    link = parse_link(token)
    sig = link.sign1.signature
    if how == "flip":
        sig = sig[:10] + bytes([sig[10] ^ 0x80]) + sig[11:]
    elif how == "truncate":
        sig = sig[:63]
    elif how == "s_plus_l":
        ell = 2**252 + 27742317777372353535851937790883648493
        s = int.from_bytes(sig[32:], "little") + ell
        sig = sig[:32] + s.to_bytes(32, "little")
    elif how == "trailing":
        sig = sig + b"\x00"
    else:
        sig = MALLORY.sign(b"whatever")
    body = [link.sign1.protected_bytes, {}, link.sign1.payload, sig]
    check(cbor.encode(cbor.Tag(18, body)), ErrorCode.BAD_SIGNATURE)


# ---------------------------------------------------------------- headers


def _with_headers(protected: dict[object, object], unprotected: dict[object, object]) -> bytes:
    return raw_sign1(ROOT, protected, unprotected, cbor.encode(base_claims()))


KID = ROOT.public_key


@pytest.mark.parametrize(
    ("protected", "unprotected", "code"),
    [
        ({4: KID}, {1: -8}, ErrorCode.BAD_ALG),  # alg only unprotected
        ({4: KID}, {}, ErrorCode.BAD_ALG),  # alg absent
        ({1: -7, 4: KID}, {}, ErrorCode.BAD_ALG),  # ES256
        ({1: 0, 4: KID}, {}, ErrorCode.BAD_ALG),  # none-like
        ({1: "EdDSA", 4: KID}, {}, ErrorCode.BAD_ALG),
        ({1: -8, 2: [99], 4: KID, 99: 1}, {}, ErrorCode.UNKNOWN_CRITICAL),
        ({1: -8, 2: [99], 4: KID}, {}, ErrorCode.UNKNOWN_CRITICAL),
        ({1: -8, 2: ["x-ext"], 4: KID, "x-ext": 1}, {}, ErrorCode.UNKNOWN_CRITICAL),
        ({1: -8, 2: [{1: 2}], 4: KID}, {}, ErrorCode.MALFORMED),  # go-cose #78
        ({1: -8, 2: [], 4: KID}, {}, ErrorCode.MALFORMED),  # empty crit
        ({1: -8, 2: 4, 4: KID}, {}, ErrorCode.MALFORMED),  # crit not an array
        ({1: -8, 2: [4, 4], 4: KID}, {}, ErrorCode.MALFORMED),
        ({1: -8, 2: [3], 4: KID}, {}, ErrorCode.MALFORMED),  # understood but absent
        ({1: -8, 4: KID}, {2: [99]}, ErrorCode.MALFORMED),  # crit unprotected
        ({1: -8, 2: [4], 4: KID}, {}, ErrorCode.MALFORMED),  # valid crit, but not in the profile
        ({1: -8}, {4: KID}, ErrorCode.MALFORMED),  # kid unprotected
        ({1: -8, 4: KID}, {4: KID}, ErrorCode.MALFORMED),  # label in both buckets
        ({1: -8, 4: KID}, {5: b"iv"}, ErrorCode.MALFORMED),  # unprotected must be empty
        ({1: -8, 4: KID[:31]}, {}, ErrorCode.MALFORMED),
        ({1: -8, 4: MALLORY.public_key}, {}, ErrorCode.MALFORMED),  # kid != iss
        ({1: -8, 3: 0, 4: KID}, {}, ErrorCode.MALFORMED),  # extra protected label
        ({}, {}, ErrorCode.BAD_ALG),  # empty protected
    ],
)
def test_header_rules(
    protected: dict[object, object], unprotected: dict[object, object], code: ErrorCode
) -> None:
    check(_with_headers(protected, unprotected), code)


def test_alg_checked_even_when_kid_fine_and_signature_valid() -> None:
    token = _with_headers({1: -8, 4: KID}, {})
    assert verify(token, trust_roots=ROOTS, now=NOW, holder=ALICE.agent_id).holder == ALICE.agent_id


def test_non_empty_protected_map_must_not_be_empty_map() -> None:
    token = raw_sign1(ROOT, {}, {}, cbor.encode(base_claims()))
    bad = token.replace(b"\x84\x40", b"\x84\x41\xa0", 1)  # protected = h'a0' (empty map)
    check(bad, ErrorCode.MALFORMED)


# ---------------------------------------------------------------- encoding and claims


def _replace_payload(payload: bytes) -> bytes:
    return raw_sign1(ROOT, {1: -8, 4: KID}, {}, payload)


def test_duplicate_map_keys_in_claims_are_malformed() -> None:
    good = cbor.encode(base_claims())
    # The map header a8 (8 pairs) -> a9 and append a second "iat" (key 6) at the end: the pair
    # repeats key 6; the strict decoder sees it out of order / duplicated.
    dup = bytes([good[0] + 1]) + good[1:] + cbor.encode(6) + cbor.encode(NOW)
    check(_replace_payload(dup), ErrorCode.MALFORMED)
    # An exact duplicate adjacent key: {1: iss, 1: iss, ...}
    claims = base_claims()
    iss = cbor.encode(1) + cbor.encode(claims[CLAIM_ISS])
    body = cbor.encode(claims)
    dup2 = bytes([body[0] + 1]) + iss + body[1:]
    check(_replace_payload(dup2), ErrorCode.MALFORMED)


def test_duplicate_keys_in_protected_header_are_malformed() -> None:
    prot = b"\xa3\x01\x27\x01\x27\x04\x58\x20" + KID
    payload = cbor.encode(base_claims())
    sig = ROOT.sign(cbor.encode(["Signature1", prot, b"", payload]))
    check(cbor.encode(cbor.Tag(18, [prot, {}, payload, sig])), ErrorCode.MALFORMED)


def test_non_deterministic_encoding_is_malformed() -> None:
    good = cbor.encode(base_claims())
    # exp encoded as a 4-byte integer is shortest; re-encode iat (6) with an 8-byte head.
    at = good.index(b"\x06\x1a")
    long_form = good[: at + 1] + b"\x1b" + (0).to_bytes(4, "big") + good[at + 2 :]
    check(_replace_payload(long_form), ErrorCode.MALFORMED)
    # Same token, outer array written with a 1-byte length argument (non-shortest).
    token = _replace_payload(good)
    check(b"\xd2\x98\x04" + token[2:], ErrorCode.MALFORMED)
    # Indefinite-length outer array.
    check(b"\xd2\x9f" + token[2:] + b"\xff", ErrorCode.MALFORMED)


@pytest.mark.parametrize(
    "label",
    [CLAIM_ISS, CLAIM_SUB, CLAIM_EXP, CLAIM_NBF, CLAIM_IAT, CLAIM_CTI, CLAIM_CNF, CLAIM_CAPS],
)
def test_missing_required_claim_is_malformed(label: int) -> None:
    claims = base_claims()
    del claims[label]
    err = check(sign_claims(ROOT, claims), ErrorCode.MALFORMED)
    assert "missing required claim" in err.message


@pytest.mark.parametrize(
    ("label", "value"),
    [
        (CLAIM_EXP, float(NOW + 100)),
        (CLAIM_EXP, str(NOW)),
        (CLAIM_EXP, NOW),  # exp == nbf
        (CLAIM_ISS, "root"),
        (CLAIM_SUB, BOB.agent_id.text),  # cnf no longer matches sub
        (CLAIM_AUD, 7),
        (CLAIM_CTI, b"short"),
        (CLAIM_CTI, "text-cti-1234567"),
        (CLAIM_CNF, {1: {1: 1, -1: 6, -2: b"\x00" * 31}}),
        (CLAIM_CNF, {1: {1: 2, -1: 1, -2: ALICE.public_key}}),
        (CLAIM_CNF, {3: b"kid"}),
        (CLAIM_CAPS, []),
        (CLAIM_CAPS, [["a"]]),
        (CLAIM_CAPS, [["a/*/b", "m"]]),
        (CLAIM_CAPS, [["a", "m"], ["a", "m"]]),
        (CLAIM_CAPS, [["a", "m"]] * 65),
        (CLAIM_CAVEATS, {}),
        (CLAIM_CAVEATS, {"max_message_size": -5}),
        (-65539, "not-bytes"),
        (-70000, 1),  # unknown private claim
        (99, "x"),  # unknown registered-range claim
    ],
)
def test_bad_claim_values_are_malformed(label: int, value: object) -> None:
    check(sign_claims(ROOT, base_claims() | {label: value}), ErrorCode.MALFORMED)


def test_cnf_for_other_key_is_malformed() -> None:
    check(
        sign_claims(ROOT, base_claims() | {CLAIM_CNF: cnf_for(BOB.agent_id)}), ErrorCode.MALFORMED
    )


def test_unknown_caveat_fails_closed() -> None:
    check(
        sign_claims(ROOT, base_claims() | {CLAIM_CAVEATS: {"max_rate": 3}}),
        ErrorCode.UNKNOWN_CAVEAT,
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\xa0",
        cbor.encode([b"", {}, b"", b""]),
        cbor.encode(cbor.Tag(18, [b"", {}, b""])),
        b"\xd8\x3d" + b"\xd2\x84\x40\xa0\x40\x40",
    ],
)
def test_not_a_cose_sign1_is_malformed(data: bytes) -> None:
    check(data, ErrorCode.MALFORMED)


def test_tag_61_wrapper_is_rejected() -> None:
    token = root_token()
    check(b"\xd8\x3d" + token, ErrorCode.MALFORMED)


def test_payload_not_a_map_is_malformed() -> None:
    check(_replace_payload(cbor.encode([1, 2])), ErrorCode.MALFORMED)
    check(_replace_payload(b"\xff"), ErrorCode.MALFORMED)


def test_non_bytes_input_is_malformed() -> None:
    if COMPILED:  # local misuse: the compiled annotation refuses a str before the check
        with pytest.raises(TypeError):
            verify("token", trust_roots=ROOTS, now=NOW, holder=ALICE.agent_id)  # type: ignore[arg-type]
        return
    check("token", ErrorCode.MALFORMED)  # type: ignore[arg-type]


# ---------------------------------------------------------------- time


def test_expiry_boundary_pair() -> None:
    token = root_token()
    exp = NOW + 3600
    verify(token, trust_roots=ROOTS, now=exp + 60, holder=ALICE.agent_id)  # exp = now - skew
    check(token, ErrorCode.EXPIRED, now=exp + 61)  # exp = now - skew - 1
    check(token, ErrorCode.EXPIRED, now=exp + 11, clock_skew=10)
    verify(token, trust_roots=ROOTS, now=exp, holder=ALICE.agent_id, clock_skew=0)
    check(token, ErrorCode.EXPIRED, now=exp + 0.5, clock_skew=0)


def test_not_yet_valid_boundary_pair() -> None:
    token = root_token(not_before=NOW + 1000)
    verify(token, trust_roots=ROOTS, now=NOW + 1000 - 60, holder=ALICE.agent_id)
    check(token, ErrorCode.NOT_YET_VALID, now=NOW + 1000 - 61)


def test_expired_ancestor_is_expired() -> None:
    parent = root_token()
    # A child that claims a longer life (violating attenuation) still fails EXPIRED first.
    child = sign_claims(
        ALICE,
        claims_of(delegate(ALICE, parent, BOB.agent_id, ["orders/*=msg/*"], now=NOW, ttl=60))
        | {CLAIM_EXP: NOW + 99999},
    )
    check(child, ErrorCode.EXPIRED, now=NOW + 5000, holder=BOB.agent_id)


# ---------------------------------------------------------------- audience, holder


def test_wrong_audience() -> None:
    token = root_token(audience=SERVER.agent_id)
    verify(token, trust_roots=ROOTS, now=NOW, holder=ALICE.agent_id, audience=SERVER.agent_id)
    check(token, ErrorCode.WRONG_AUDIENCE, audience=CAROL.agent_id)
    check(token, ErrorCode.WRONG_AUDIENCE)  # the verifier did not say who it is


def test_allowed_peers_caveat_is_audience_like() -> None:
    token = root_token(caveats={"allowed_peers": [SERVER.agent_id, CAROL.agent_id]})
    verify(token, trust_roots=ROOTS, now=NOW, holder=ALICE.agent_id, audience=CAROL.agent_id)
    check(token, ErrorCode.WRONG_AUDIENCE, audience=BOB.agent_id)
    check(token, ErrorCode.WRONG_AUDIENCE)


def test_ancestor_audience_applies_to_child() -> None:
    parent = root_token(audience=SERVER.agent_id)
    child_claims = claims_of(
        delegate(ALICE, parent, BOB.agent_id, ["orders/*=msg/*"], now=NOW, ttl=60)
    )
    assert child_claims[CLAIM_AUD] == SERVER.agent_id.text  # inherited by delegate()
    child = sign_claims(ALICE, _drop(child_claims, CLAIM_AUD))
    check(child, ErrorCode.WRONG_AUDIENCE, holder=BOB.agent_id, audience=CAROL.agent_id)
    verify(child, trust_roots=ROOTS, now=NOW, holder=BOB.agent_id, audience=SERVER.agent_id)


def _drop(claims: dict[int, object], label: int) -> dict[int, object]:
    claims = dict(claims)
    claims.pop(label, None)
    return claims


def test_cnf_mismatch_stolen_token() -> None:
    check(root_token(), ErrorCode.CNF_MISMATCH, holder=MALLORY.agent_id)


# ---------------------------------------------------------------- chain


def test_untrusted_root() -> None:
    check(root_token(), ErrorCode.UNTRUSTED_ROOT, trust_roots=[MALLORY.agent_id])
    check(root_token(), ErrorCode.UNTRUSTED_ROOT, trust_roots=[])


def test_untrusted_root_checked_before_signature() -> None:
    token = bytearray(issue(MALLORY, ALICE.agent_id, ["*=*"], now=NOW, ttl=60))
    token[-1] ^= 1
    check(bytes(token), ErrorCode.UNTRUSTED_ROOT)


def test_self_issued_child_is_untrusted_or_broken() -> None:
    # Alice presents a token she issued herself: not from a trust root.
    check(issue(ALICE, ALICE.agent_id, ["*=*"], now=NOW, ttl=60), ErrorCode.UNTRUSTED_ROOT)


def test_broken_chain_link_not_issued_by_parent_holder() -> None:
    parent = root_token()  # held by Alice
    forged = sign_claims(
        MALLORY,
        claims_of(delegate(ALICE, parent, BOB.agent_id, ["orders/*=msg/*"], now=NOW, ttl=60))
        | {CLAIM_ISS: MALLORY.agent_id.text},
    )
    check(forged, ErrorCode.CHAIN_INVALID, holder=BOB.agent_id)


@pytest.mark.parametrize(
    ("caps", "changes"),
    [
        (["orders/*=msg/*", "admin/*=msg/*"], {}),  # adds a capability
        (["orders/*=*"], {}),  # widens the ability
        (["*=msg/*"], {}),  # widens the resource wildcard
        (["orders/*=msg/*"], {CLAIM_EXP: NOW + 3601}),  # outlives the parent
        (["orders/*=msg/*"], {CLAIM_NBF: NOW - 1}),  # starts before the parent
        (["orders/*=msg/*"], {CLAIM_CAVEATS: None}),  # drops the parent's caveat
        (["orders/*=msg/*"], {CLAIM_CAVEATS: {"max_message_size": 2048}}),  # loosens it
    ],
)
def test_attenuation_violations(caps: list[str], changes: dict[int, object]) -> None:
    parent = root_token(caveats={"max_message_size": 1024})
    good = delegate(ALICE, parent, BOB.agent_id, ["orders/eu/*=msg/send"], now=NOW, ttl=60)
    claims = claims_of(good)
    claims[CLAIM_CAPS] = [Capability.parse(c).to_wire() for c in caps]
    for label, value in changes.items():
        if value is None:
            claims.pop(label)
        else:
            claims[label] = value
    check(sign_claims(ALICE, claims), ErrorCode.ATTENUATION_VIOLATION, holder=BOB.agent_id)


def test_chain_depth_boundary_pair() -> None:
    leaf, holder = chain(8)
    grant = verify(leaf, trust_roots=ROOTS, now=NOW, holder=holder.agent_id)
    assert len(grant.chain) == 8
    leaf9, holder9 = chain(9)
    assert len(leaf9) <= 8192
    check(leaf9, ErrorCode.TOO_DEEP, holder=holder9.agent_id)
    check(leaf, ErrorCode.TOO_DEEP, holder=holder.agent_id, limits=TokenLimits(max_chain_length=7))


def test_depth_checked_before_any_signature() -> None:
    leaf9, holder9 = chain(9)
    corrupted = bytearray(leaf9)
    corrupted[-1] ^= 1  # the leaf's signature is now wrong
    check(bytes(corrupted), ErrorCode.TOO_DEEP, holder=holder9.agent_id)


def _sized_token(size: int) -> bytes:
    """A valid root token of exactly *size* bytes (padding in long resource names)."""
    pad = size - 400
    for _ in range(20):
        caps, left, i = [], pad, 0
        while left > 0:
            take = min(left, 1000)
            caps.append(f"r{i}/" + "x" * max(1, take))
            left -= take
            i += 1
        token = issue(
            ROOT,
            ALICE.agent_id,
            [f"{c}=msg/send" for c in caps],
            now=NOW,
            ttl=60,
            entropy=counter_entropy(7),
        )
        if len(token) == size:
            return token
        pad += size - len(token)
    raise AssertionError("could not hit the size")


def test_token_size_boundary_pair() -> None:
    exact = _sized_token(8192)
    assert len(exact) == 8192
    verify(exact, trust_roots=ROOTS, now=NOW, holder=ALICE.agent_id)
    over = _sized_token(8193)
    assert len(over) == 8193
    check(over, ErrorCode.TOO_LARGE)


def test_size_checked_before_anything_else() -> None:
    check(b"\xff" * 8193, ErrorCode.TOO_LARGE)
    check(b"\x00" * 9 * 1024, ErrorCode.TOO_LARGE)


# ---------------------------------------------------------------- producing


def test_delegate_refuses_local_misuse() -> None:
    parent = root_token(audience=SERVER.agent_id)
    with pytest.raises(LocalProtocolError) as info:
        delegate(BOB, parent, CAROL.agent_id, ["orders/*=msg/*"], now=NOW, ttl=60)  # not the holder
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(LocalProtocolError):
        delegate(ALICE, parent, BOB.agent_id, ["admin=msg/send"], now=NOW, ttl=60)
    with pytest.raises(LocalProtocolError):
        delegate(
            ALICE,
            parent,
            BOB.agent_id,
            ["orders/*=msg/*"],
            now=NOW,
            ttl=60,
            audience=CAROL.agent_id,
        )
    with pytest.raises(LocalProtocolError):
        delegate(ALICE, parent, BOB.agent_id, ["orders/*=msg/*"], now=NOW + 7200, ttl=60)
    with pytest.raises(TokenError):
        delegate(ALICE, b"junk", BOB.agent_id, ["orders/*=msg/*"], now=NOW, ttl=60)


def test_issue_refuses_bad_arguments() -> None:
    for kwargs in ({"ttl": 0}, {"ttl": -5}, {"ttl": float("nan")}, {"not_before": NOW + 10**6}):
        args: dict[str, object] = {"now": NOW, "ttl": 60} | kwargs
        with pytest.raises(LocalProtocolError):
            issue(ROOT, ALICE.agent_id, ["a=b"], **args)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        issue(ROOT, ALICE.agent_id, [], now=NOW, ttl=60)
    with pytest.raises(LocalProtocolError):
        issue(ROOT, ALICE.agent_id, ["a=b"], now=NOW, ttl=60, entropy=lambda n: b"\x00")


def test_issue_is_deterministic_given_entropy() -> None:
    assert root_token() == root_token()
    assert root_token() != root_token(entropy=counter_entropy(2))


# ---------------------------------------------------------------- inspect


def test_inspect_shows_a_chain_even_when_invalid() -> None:
    parent = root_token()
    child = delegate(ALICE, parent, BOB.agent_id, ["orders/eu/*=msg/send"], now=NOW, ttl=60)
    view = inspect(child)
    json.dumps(view)
    assert view["claims"]["iss"] == ALICE.agent_id.text
    assert view["claims"]["caps"] == ["orders/eu/*=msg/send"]
    assert view["protected"] == {"alg": -8, "kid": ALICE.public_key.hex()}
    assert view["parent"]["claims"]["sub"] == ALICE.agent_id.text
    tampered = bytearray(child)
    tampered[-1] ^= 1
    assert inspect(bytes(tampered))["claims"]["iss"] == ALICE.agent_id.text
    odd = _with_headers({4: KID}, {1: -8})  # fails verification with BAD_ALG
    assert inspect(odd)["unprotected"] == {"1": -8}


@pytest.mark.parametrize(
    "data", [b"", b"garbage", cbor.encode(cbor.Tag(18, [b"", {}, b"\x01", b""]))]
)
def test_inspect_raises_only_malformed(data: bytes) -> None:
    with pytest.raises(TokenError) as info:
        inspect(data)
    assert info.value.code == ErrorCode.MALFORMED


def test_resign_helper_changes_only_what_is_asked() -> None:
    token = root_token()
    again = resign(token, ROOT, {})
    assert again == token


@pytest.mark.parametrize(
    ("now", "skew"), [(float("nan"), 60), (float("inf"), 60), (NOW, -1), (NOW, float("nan"))]
)
def test_bad_clock_is_local_misuse(now: float, skew: float) -> None:
    with pytest.raises(LocalProtocolError) as info:
        verify(root_token(), trust_roots=ROOTS, now=now, holder=ALICE.agent_id, clock_skew=skew)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
