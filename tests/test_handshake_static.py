"""StaticKey: a static key and its binding signature made once and shared by handshakes."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_handshake_helpers import PREFIX, drbg, ident, run_pair

from m2mproto import COMPILED
from m2mproto.errors import ErrorCode, LocalProtocolError
from m2mproto.handshake import Handshake, StaticKey
from m2mproto.handshake._payload import assemble_payload, encode_params, encode_payload
from m2mproto.noise import x25519_public_key

ALICE, BOB = ident("alice"), ident("bob")
STATIC_R = hashlib.sha256(b"responder static").digest()
STATIC_I = hashlib.sha256(b"initiator static").digest()


def _pair(static_i: StaticKey | bytes, static_r: StaticKey | bytes, seed: bytes) -> tuple:
    r = Handshake(False, BOB, entropy=drbg(seed + b"r"), static_key=static_r)
    i = Handshake(True, ALICE, entropy=drbg(seed + b"i"), static_key=static_i)
    return run_pair(i, r)


def test_static_key_fields() -> None:
    sk = StaticKey(ALICE, STATIC_I)
    assert sk.public == x25519_public_key(STATIC_I)
    assert sk.identity_key == ALICE.public_key
    ALICE.agent_id.verify(sk.signature, PREFIX + sk.public)  # raises if wrong
    assert STATIC_I.hex() not in repr(sk) and sk.public.hex() in repr(sk)


def test_static_key_generate_draws_from_entropy() -> None:
    sk = StaticKey.generate(ALICE, drbg(b"k"))
    assert sk.public == x25519_public_key(drbg(b"k")(32))


@pytest.mark.parametrize("bad", [b"", b"x" * 31, b"x" * 33, bytearray(32), "k" * 32])
def test_static_key_rejects_bad_private(bad: object) -> None:
    if COMPILED and not isinstance(bad, bytes):  # compiled: the annotation refuses it first
        with pytest.raises(TypeError):
            StaticKey(ALICE, bad)  # type: ignore[arg-type]
        return
    with pytest.raises(LocalProtocolError) as ei:
        StaticKey(ALICE, bad)  # type: ignore[arg-type]
    assert ei.value.code is ErrorCode.INVALID_ARGUMENT


def test_shared_static_key_gives_same_bytes_as_raw_key() -> None:
    """Passing a StaticKey or the raw key produces byte-identical handshakes."""
    raw_i, raw_r = _pair(STATIC_I, STATIC_R, b"s")
    obj_i, obj_r = _pair(StaticKey(ALICE, STATIC_I), StaticKey(BOB, STATIC_R), b"s")
    assert raw_i.sent == obj_i.sent and raw_r.sent == obj_r.sent
    assert raw_i.result is not None and obj_i.result is not None
    assert raw_i.result.handshake_hash == obj_i.result.handshake_hash


def test_one_static_key_serves_many_handshakes() -> None:
    ski, skr = StaticKey(ALICE, STATIC_I), StaticKey(BOB, STATIC_R)
    hashes = set()
    for n in range(3):
        i, r = _pair(ski, skr, b"run%d" % n)
        assert i.result is not None and r.result is not None
        assert i.result.local_static == ski.public == r.result.peer_static
        assert r.result.peer == ALICE.agent_id and i.result.peer == BOB.agent_id
        hashes.add(i.result.handshake_hash)
    assert len(hashes) == 3  # fresh ephemeral keys each time


def test_static_key_of_another_identity_refused() -> None:
    with pytest.raises(LocalProtocolError) as ei:
        Handshake(True, ALICE, entropy=drbg(b"x"), static_key=StaticKey(BOB, STATIC_I))
    assert ei.value.code is ErrorCode.INVALID_ARGUMENT


@settings(max_examples=60)
@given(
    params=st.dictionaries(
        st.integers(0, 2**64 - 1), st.one_of(st.integers(-(2**63), 2**63), st.binary(), st.text())
    ),
    tokens=st.one_of(st.none(), st.lists(st.binary(max_size=300), max_size=4)),
    version=st.one_of(st.none(), st.integers(1, 0xFFFF)),
)
def test_assembled_payload_equals_encoded_payload(
    params: dict[int, object], tokens: list[bytes] | None, version: int | None
) -> None:
    sk = StaticKey(ALICE, STATIC_I)
    checked, params_cbor = encode_params(params)
    assert checked == params
    expected = encode_payload(ALICE, sk.signature, params, tokens, version)
    assert assemble_payload(sk.binding_cbor, params_cbor, tokens, version) == expected
