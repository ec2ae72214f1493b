"""The HFS KEM tokens e1 / ekem1 (hfs modifier, ML-KEM-768) in the Noise engine."""

from __future__ import annotations

import pytest
from noise_helpers import make_pair, run_handshake, transports

from m2mproto.errors import ErrorCode, M2MError
from m2mproto.noise import DEFERRED_PATTERNS, FUNDAMENTAL_PATTERNS, HandshakeState, NoiseProtocol
from m2mproto.noise.patterns import ONE_WAY_PATTERNS

KEM = "25519+ML-KEM-768"
INTERACTIVE = [p for p in (*FUNDAMENTAL_PATTERNS, *DEFERRED_PATTERNS) if p not in ONE_WAY_PATTERNS]


def _name(pattern: str, mods: str = "hfs", dh: str = KEM) -> str:
    return f"Noise_{pattern}{mods}_{dh}_ChaChaPoly_SHA256"


def test_token_placement_xx_and_ik() -> None:
    xx = NoiseProtocol.from_name(_name("XX")).handshake_pattern
    assert xx.messages == (("e", "e1"), ("e", "ee", "ekem1", "s", "es"), ("s", "se"))
    ik = NoiseProtocol.from_name(_name("IK")).handshake_pattern
    assert ik.messages == (("e", "es", "e1", "s", "ss"), ("e", "ee", "ekem1", "se"))
    assert ik.responder_pre == ("s",) and xx.hfs and ik.hfs


@pytest.mark.parametrize("pattern", INTERACTIVE)
def test_every_interactive_pattern_takes_hfs(pattern: str) -> None:
    base = NoiseProtocol.from_name(_name(pattern, "", "25519")).handshake_pattern
    hfs = NoiseProtocol.from_name(_name(pattern)).handshake_pattern
    flat = [t for m in hfs.messages for t in m]
    assert flat.count("e1") == 1 and flat.count("ekem1") == 1
    e1_msg = next(i for i, m in enumerate(hfs.messages) if "e1" in m)
    kem_msg = next(i for i, m in enumerate(hfs.messages) if "ekem1" in m)
    assert e1_msg % 2 == 0 and kem_msg % 2 == 1 and e1_msg < kem_msg
    # removing the two tokens gives the base pattern back
    assert tuple(tuple(t for t in m if t not in ("e1", "ekem1")) for m in hfs.messages) == (
        base.messages
    )
    init, resp = make_pair(_name(pattern), seed=pattern)
    hfs_sizes = [len(m) for m in run_handshake(init, resp, lambda i: b"p%d" % i)]
    init_b, resp_b = make_pair(_name(pattern, "", "25519"), seed=pattern)
    base_sizes = [len(m) for m in run_handshake(init_b, resp_b, lambda i: b"p%d" % i)]
    extra = [a - b for a, b in zip(hfs_sizes, base_sizes, strict=True)]
    assert extra[e1_msg] in (1184, 1184 + 16) and extra[kem_msg] in (1088, 1088 + 16)
    assert sum(extra) == extra[e1_msg] + extra[kem_msg]
    i_send, i_recv, r_send, r_recv = transports(init, resp)
    assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"x")) == b"x"
    assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"y")) == b"y"


@pytest.mark.parametrize("mods", ["hfs+psk0", "hfs+psk3", "psk2+hfs"])
def test_hfs_with_psk(mods: str) -> None:
    init, resp = make_pair(_name("XX", mods))
    run_handshake(init, resp)
    assert init.handshake_hash == resp.handshake_hash


def test_kem_tokens_are_hashed_and_encrypted_as_specified() -> None:
    # XXhfs: e1 travels in clear (no key yet), ekem1 encrypted (after ee).
    init, resp = make_pair(_name("XX"))
    m1 = init.write_message(b"")
    assert len(m1) == 32 + 1184
    resp.read_message(m1)
    m2 = resp.write_message(b"")
    assert len(m2) == 32 + 1088 + 16 + 48 + 16
    # IKhfs: e1 is after es, so encrypted.
    init, resp = make_pair(_name("IK"))
    assert len(init.write_message(b"")) == 32 + 1184 + 16 + 48 + 16


def test_kem_keys_are_single_use() -> None:
    init, resp = make_pair(_name("XX"))
    resp.read_message(init.write_message(b""))
    assert init._e1 is not None and resp._re1 is not None
    init.read_message(resp.write_message(b""))
    assert init._e1 is None and resp._re1 is None  # dropped once used


def test_tampered_kem_ciphertext_fails_and_restores() -> None:
    init, resp = make_pair(_name("XX"))
    resp.read_message(init.write_message(b""))
    m2 = bytearray(resp.write_message(b""))
    m2[40] ^= 1  # inside the encrypted ekem1 ciphertext
    h = init.handshake_hash
    with pytest.raises(M2MError) as info:
        init.read_message(bytes(m2))
    assert info.value.code is ErrorCode.DECRYPT_ERROR
    assert init.failed and init.handshake_hash == h


def test_short_kem_token_is_a_decode_error() -> None:
    init, resp = make_pair(_name("XX"))
    with pytest.raises(M2MError) as info:
        resp.read_message(init.write_message(b"")[:-1])
    assert info.value.code is ErrorCode.DECODE_ERROR


def test_invalid_encapsulation_key_is_a_decode_error() -> None:
    init, resp = make_pair(_name("NN"))
    m1 = init.write_message(b"")
    with pytest.raises(M2MError) as info:
        resp.read_message(m1[:32] + b"\xff" * 1184)
    assert info.value.code is ErrorCode.DECODE_ERROR


@pytest.mark.parametrize(
    "name",
    [
        _name("XX", "hfs", "25519"),  # hfs without a KEM
        _name("XX", "", KEM),  # a KEM without hfs
        _name("N"),  # one-way: no ee for ekem1
        _name("XX", "hfs", "25519+ML-KEM-512"),
        _name("XX", "hfs+hfs"),
    ],
)
def test_unsupported_names(name: str) -> None:
    with pytest.raises(M2MError) as info:
        NoiseProtocol.from_name(name)
    assert info.value.code is ErrorCode.UNSUPPORTED


def test_kem_hooks_need_a_kem_and_a_valid_seed() -> None:
    with pytest.raises(M2MError) as info:
        HandshakeState(_name("NN", "", "25519"), True, fixed_kem_seed_for_testing_only=bytes(64))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(M2MError) as info:
        HandshakeState(_name("NN"), True, fixed_kem_seed_for_testing_only=bytes(63))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_fixed_kem_seed_gives_the_same_message_1() -> None:
    a = HandshakeState(
        _name("NN"), True, fixed_kem_seed_for_testing_only=bytes(64),
        fixed_ephemeral_key_for_testing_only=bytes(range(32)),
    )  # fmt: skip
    b = HandshakeState(
        _name("NN"), True, fixed_kem_seed_for_testing_only=bytes(64),
        fixed_ephemeral_key_for_testing_only=bytes(range(32)),
    )  # fmt: skip
    assert a.write_message(b"") == b.write_message(b"")
