"""Interop: the independent `cwt` package and the third-party COSE WG examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cwt
import pytest
from cwt import COSEKey
from tok_helpers import ALICE, ROOT, counter_entropy

from m2mproto import cbor
from m2mproto.errors import ErrorCode, TokenError
from m2mproto.identity import Identity
from m2mproto.tokens import delegate, issue, verify
from m2mproto.tokens.claims import CLAIM_CAPS, CLAIM_CNF, CLAIM_PRF, parse_link
from m2mproto.tokens.cose import decode_sign1, encode_sign1, sig_structure, verify_sign1

VECTORS = Path(__file__).resolve().parents[2] / "interop" / "vectors" / "third_party" / "cose"
# cwt.decode checks exp/nbf against the wall clock, so these tokens use a fixed issue time and a
# lifetime that reaches far beyond any test run (no wall clock is read here).
FIXED_NOW = 1_700_000_000
LONG_TTL = 2**31


def cwt_public_key(identity: Identity) -> Any:
    return COSEKey.new({1: 1, 3: -8, -1: 6, -2: identity.public_key, 2: identity.public_key})


def cwt_private_key(identity: Identity) -> Any:
    return COSEKey.new(
        {
            1: 1,
            3: -8,
            -1: 6,
            -2: identity.public_key,
            -4: identity.private_bytes_for_testing_only(),
            2: identity.public_key,
        }
    )


def our_token() -> bytes:
    return issue(
        ROOT,
        ALICE.agent_id,
        ["orders/eu/*=msg/send"],
        now=FIXED_NOW,
        ttl=LONG_TTL,
        entropy=counter_entropy(3),
    )


def test_our_token_verifies_with_cwt() -> None:
    claims = cwt.decode(our_token(), cwt_public_key(ROOT))
    assert claims[1] == ROOT.agent_id.text
    assert claims[2] == ALICE.agent_id.text
    assert claims[4] == FIXED_NOW + LONG_TTL
    assert claims[7] == (3).to_bytes(16, "big")
    assert claims[CLAIM_CNF] == {1: {1: 1, -1: 6, -2: ALICE.public_key}}
    assert claims[CLAIM_CAPS] == [["orders/eu/*", "msg/send"]]
    c = cwt.Claims.new(claims)
    assert c.cnf == {1: 1, -1: 6, -2: ALICE.public_key}


def test_our_delegated_token_and_its_parent_verify_with_cwt() -> None:
    child = delegate(
        ALICE,
        our_token(),
        ROOT.agent_id,
        ["orders/eu/1=msg/send"],
        now=FIXED_NOW,
        ttl=60,
        entropy=counter_entropy(4),
    )
    claims = cwt.decode(child, cwt_public_key(ALICE), no_verify=True)  # its exp is in the past
    assert claims[1] == ALICE.agent_id.text
    parent_claims = cwt.decode(claims[CLAIM_PRF], cwt_public_key(ROOT))
    assert parent_claims[2] == ALICE.agent_id.text


def test_cwt_rejects_our_token_under_another_key() -> None:
    with pytest.raises(Exception):  # noqa: B017 - any cwt error
        cwt.decode(our_token(), cwt_public_key(ALICE))
    tampered = bytearray(our_token())
    tampered[-1] ^= 1
    with pytest.raises(cwt.VerifyError):
        cwt.decode(bytes(tampered), cwt_public_key(ROOT))


def test_cwt_made_sign1_with_our_claims_verifies_here() -> None:
    ours = our_token()
    payload = parse_link(ours).sign1.payload
    ctx = cwt.COSE.new(
        alg_auto_inclusion=False, kid_auto_inclusion=False, deterministic_header=True
    )
    theirs = ctx.encode_and_sign(
        payload, cwt_private_key(ROOT), protected={1: -8, 4: ROOT.public_key}, unprotected={}
    )
    assert theirs == ours  # Ed25519 is deterministic and both encoders are canonical
    grant = verify(theirs, trust_roots=[ROOT.agent_id], now=FIXED_NOW, holder=ALICE.agent_id)
    assert grant.allows("orders/eu/9", "msg/send")


def test_cwt_made_claims_encode_verifies_here() -> None:
    """A claims set built and encoded by cwt itself (its own CBOR encoder)."""
    claims = {
        1: ROOT.agent_id.text,
        2: ALICE.agent_id.text,
        4: FIXED_NOW + 100,
        5: FIXED_NOW,
        6: FIXED_NOW,
        7: b"\x42" * 16,
        8: {1: {1: 1, -1: 6, -2: ALICE.public_key}},
        CLAIM_CAPS: [["orders/*", "msg/send"]],
    }
    ctx = cwt.COSE.new(
        alg_auto_inclusion=False, kid_auto_inclusion=False, deterministic_header=True
    )
    payload = cwt.Claims.new(claims).to_dict()
    import cbor2

    token = ctx.encode_and_sign(
        cbor2.dumps(payload, canonical=True),
        cwt_private_key(ROOT),
        protected={1: -8, 4: ROOT.public_key},
        unprotected={},
    )
    grant = verify(token, trust_roots=[ROOT.agent_id], now=FIXED_NOW + 1, holder=ALICE.agent_id)
    assert grant.token_id == b"\x42" * 16


def test_cwt_default_encode_puts_kid_unprotected_which_we_reject() -> None:
    claims = cwt.decode(our_token(), cwt_public_key(ROOT))
    token = cwt.encode(dict(claims), cwt_private_key(ROOT))
    assert cwt.decode(token, cwt_public_key(ROOT))[2] == ALICE.agent_id.text
    with pytest.raises(TokenError) as info:
        verify(token, trust_roots=[ROOT.agent_id], now=FIXED_NOW, holder=ALICE.agent_id)
    assert info.value.code == ErrorCode.MALFORMED


# ---------------------------------------------------------------- COSE WG examples


def load(name: str) -> dict[str, Any]:
    data = json.loads((VECTORS / name).read_text())
    assert "Unlicense" in data["license"]
    return data["example"]


def test_eddsa_sig_01_verifies_with_our_cose_sign1() -> None:
    ex = load("eddsa-sig-01.json")
    raw = bytes.fromhex(ex["output"]["cbor"])
    msg = decode_sign1(raw)
    assert msg.protected == {1: -8, 3: 0}
    assert msg.unprotected == {4: b"11"}
    assert msg.payload == ex["input"]["plaintext"].encode()
    assert sig_structure(msg.protected_bytes, msg.payload) == bytes.fromhex(
        ex["intermediates"]["ToBeSign_hex"]
    )
    key = bytes.fromhex(ex["input"]["sign0"]["key"]["x_hex"])
    verify_sign1(msg, key)
    flipped = bytearray(raw)
    flipped[-5] ^= 0x10
    with pytest.raises(TokenError) as info:
        verify_sign1(decode_sign1(bytes(flipped)), key)
    assert info.value.code == ErrorCode.BAD_SIGNATURE


def test_eddsa_sig_01_resigning_reproduces_bytes() -> None:
    ex = load("eddsa-sig-01.json")
    signer = Identity.from_seed(bytes.fromhex(ex["input"]["sign0"]["key"]["d_hex"]))
    assert signer.public_key.hex() == ex["input"]["sign0"]["key"]["x_hex"]
    out = encode_sign1(signer, {1: -8, 3: 0}, ex["input"]["plaintext"].encode(), {4: b"11"})
    assert out == bytes.fromhex(ex["output"]["cbor"])


def test_eddsa_sig_01_is_not_a_token() -> None:
    raw = bytes.fromhex(load("eddsa-sig-01.json")["output"]["cbor"])
    signer_id = Identity.from_seed(
        bytes.fromhex(load("eddsa-sig-01.json")["input"]["sign0"]["key"]["d_hex"])
    )
    with pytest.raises(TokenError) as info:
        verify(raw, trust_roots=[signer_id.agent_id], now=FIXED_NOW, holder=None)
    assert info.value.code == ErrorCode.MALFORMED


def test_rfc8392_a3_claims_decode_and_es256_is_bad_alg() -> None:
    ex = load("cwt-A_3.json")
    raw = bytes.fromhex(ex["output"]["cbor"])
    with pytest.raises(TokenError) as info:
        decode_sign1(raw)
    assert info.value.code == ErrorCode.BAD_ALG
    claims = cbor.decode(bytes.fromhex(ex["input"]["plaintext_hex"]))
    assert claims == {
        1: "coap://as.example.com",
        2: "erikw",
        3: "coap://light.example.com",
        4: 1444064944,
        5: 1443944944,
        6: 1443944944,
        7: bytes.fromhex("0b71"),
    }
