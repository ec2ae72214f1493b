"""CipherState: nonces, the reserved nonce, rekey, size limits, failures that change nothing."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from noise_helpers import make_pair, run_handshake, transports

from m2mproto import COMPILED
from m2mproto.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from m2mproto.noise import MAX_NONCE, CipherState, NoiseProtocol

KEY = bytes(range(32))
CHACHA = NoiseProtocol.from_name("Noise_NN_25519_ChaChaPoly_SHA256")
AES = NoiseProtocol.from_name("Noise_NN_25519_AESGCM_SHA256")


def _pair(proto: NoiseProtocol = CHACHA) -> tuple[CipherState, CipherState]:
    return CipherState(proto, KEY), CipherState(proto, KEY)


def test_nonce_encoding_matches_the_spec() -> None:
    # ChaChaPoly: 4 zero bytes + little-endian 64-bit n; AESGCM: 4 zero bytes + big-endian n.
    for proto, aead, fmt in ((CHACHA, ChaCha20Poly1305, "<4xQ"), (AES, AESGCM, ">4xQ")):
        cs = CipherState(proto, KEY)
        cs.set_nonce(0x0102030405)
        ct = cs.encrypt_with_ad(b"ad", b"hello")
        assert ct == aead(KEY).encrypt(struct.pack(fmt, 0x0102030405), b"hello", b"ad")
        assert cs.nonce == 0x0102030406


def test_round_trip_and_counting() -> None:
    a, b = _pair()
    for i in range(5):
        assert b.decrypt_with_ad(b"x", a.encrypt_with_ad(b"x", b"m%d" % i)) == b"m%d" % i
    assert a.nonce == b.nonce == 5


def test_decrypt_failure_keeps_nonce() -> None:
    a, b = _pair()
    ct = bytearray(a.encrypt_with_ad(b"", b"payload"))
    ct[0] ^= 0x80
    with pytest.raises(RemoteProtocolError) as ei:
        b.decrypt_with_ad(b"", bytes(ct))
    assert ei.value.code is ErrorCode.DECRYPT_ERROR
    assert b.nonce == 0
    ct[0] ^= 0x80
    assert b.decrypt_with_ad(b"", bytes(ct)) == b"payload"
    with pytest.raises(RemoteProtocolError):  # wrong associated data
        b.decrypt_with_ad(b"other", a.encrypt_with_ad(b"", b"x"))


def test_replay_and_reorder_fail() -> None:
    a, b = _pair()
    c0, c1 = a.encrypt_with_ad(b"", b"0"), a.encrypt_with_ad(b"", b"1")
    with pytest.raises(RemoteProtocolError):
        b.decrypt_with_ad(b"", c1)
    assert b.decrypt_with_ad(b"", c0) == b"0"
    with pytest.raises(RemoteProtocolError):
        b.decrypt_with_ad(b"", c0)


def test_nonce_limit() -> None:
    a, b = _pair()
    a.set_nonce(2**64 - 2)
    b.set_nonce(2**64 - 2)
    assert b.decrypt_with_ad(b"", a.encrypt_with_ad(b"", b"last")) == b"last"
    assert a.nonce == b.nonce == MAX_NONCE
    with pytest.raises(LocalProtocolError) as ei:
        a.encrypt_with_ad(b"", b"one too many")
    assert ei.value.code is ErrorCode.NONCE_EXHAUSTED
    with pytest.raises(LocalProtocolError) as ei:
        b.decrypt_with_ad(b"", b"\x00" * 32)
    assert ei.value.code is ErrorCode.NONCE_EXHAUSTED
    assert a.nonce == MAX_NONCE
    # rekey() is still allowed: it uses the reserved nonce by definition
    a.rekey()
    for bad in (-1, 2**64, "1"):
        if COMPILED and isinstance(bad, str):  # compiled: the annotation refuses it first
            with pytest.raises(TypeError):
                a.set_nonce(bad)  # type: ignore[arg-type]
            continue
        with pytest.raises(LocalProtocolError) as ei:
            a.set_nonce(bad)  # type: ignore[arg-type]
        assert ei.value.code is ErrorCode.INVALID_ARGUMENT


def test_rekey_follows_the_spec() -> None:
    a, _ = _pair()
    a.encrypt_with_ad(b"", b"advance")
    a.rekey()
    assert a.nonce == 1  # rekey does not reset n
    new_key = ChaCha20Poly1305(KEY).encrypt(struct.pack("<4xQ", MAX_NONCE), bytes(32), b"")[:32]
    ref = CipherState(CHACHA, new_key)
    ref.set_nonce(1)
    assert a.encrypt_with_ad(b"ad", b"after") == ref.encrypt_with_ad(b"ad", b"after")
    with pytest.raises(LocalProtocolError) as ei:
        CipherState(CHACHA).rekey()
    assert ei.value.code is ErrorCode.INVALID_STATE


def test_rekey_both_sides_stays_in_sync_and_one_side_breaks() -> None:
    init, resp = make_pair("Noise_XX_25519_ChaChaPoly_SHA256")
    run_handshake(init, resp)
    i_send, _, _, r_recv = transports(init, resp)
    for round_ in range(4):
        i_send.rekey()
        r_recv.rekey()
        msg = b"round %d" % round_
        assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", msg)) == msg
    i_send.rekey()
    with pytest.raises(RemoteProtocolError):
        r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"desync"))


def test_message_size_limits() -> None:
    a, b = _pair()
    ct = a.encrypt_with_ad(b"", bytes(65535 - 16))
    assert len(ct) == 65535
    assert b.decrypt_with_ad(b"", ct) == bytes(65519)
    with pytest.raises(LocalProtocolError) as ei:
        a.encrypt_with_ad(b"", bytes(65535 - 15))
    assert ei.value.code is ErrorCode.MESSAGE_TOO_LONG
    assert a.nonce == 1
    with pytest.raises(RemoteProtocolError) as er:
        b.decrypt_with_ad(b"", bytes(65536))
    assert er.value.code is ErrorCode.FRAME_SIZE_ERROR
    assert b.nonce == 1


def test_short_ciphertext_is_decrypt_error() -> None:
    _, b = _pair()
    for n in (0, 1, 15):
        with pytest.raises(RemoteProtocolError) as ei:
            b.decrypt_with_ad(b"", bytes(n))
        assert ei.value.code is ErrorCode.DECRYPT_ERROR


def test_without_key_is_identity() -> None:
    cs = CipherState(CHACHA)
    assert not cs.has_key()
    assert cs.encrypt_with_ad(b"ad", b"clear") == b"clear"
    assert cs.decrypt_with_ad(b"ad", b"clear") == b"clear"
    cs.initialize_key(KEY)
    assert cs.has_key() and cs.encrypt_with_ad(b"", b"x") != b"x"
    with pytest.raises(LocalProtocolError):
        cs.initialize_key(b"short")


def test_repr_shows_name_and_nonce_only() -> None:
    cs = CipherState(CHACHA, KEY)
    cs.set_nonce(7)
    assert repr(cs) == "CipherState(Noise_NN_25519_ChaChaPoly_SHA256, nonce=7)"
    assert KEY.hex() not in repr(cs)
