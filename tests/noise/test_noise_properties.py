"""Property tests: any bit flip or truncation is caught; rekeys keep both sides in step."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise_helpers import make_pair, run_handshake, transports

from m2mproto.errors import ErrorCode, M2MError, RemoteProtocolError

NAMES = [
    "Noise_XX_25519_ChaChaPoly_SHA256",
    "Noise_IK_25519_ChaChaPoly_SHA256",
    "Noise_NN_25519_ChaChaPoly_BLAKE2s",
    "Noise_XXpsk3_25519_AESGCM_SHA512",
    "Noise_N_25519_ChaChaPoly_SHA256",
    "Noise_X1K1_25519_ChaChaPoly_BLAKE2b",
]
# A failure anywhere must be one of these, never success and never another error.
EXPECTED = {ErrorCode.DECRYPT_ERROR, ErrorCode.DECODE_ERROR, ErrorCode.AUTH_LOW_ORDER_KEY}


def _drive_with_tamper(name: str, target: int, mutate: object) -> None:
    """Run handshake + 2 transport messages each way, mutating message *target* in flight."""
    init, resp = make_pair(name, seed=f"{name}/{target}")
    step = 0
    for i in range(init.message_count):
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        msg = sender.write_message(b"hs payload %d" % i)
        if step == target:
            msg = mutate(msg)  # type: ignore[operator]
        receiver.read_message(msg)
        step += 1
    i_send, i_recv, r_send, r_recv = transports(init, resp)
    directions = (
        [(i_send, r_recv)] if init.protocol.one_way else [(i_send, r_recv), (r_send, i_recv)]
    )
    for k in range(2):
        for enc, dec in directions:
            msg = enc.encrypt_with_ad(b"", b"transport %d" % k)
            if step == target:
                msg = mutate(msg)  # type: ignore[operator]
            assert dec.decrypt_with_ad(b"", msg) == b"transport %d" % k
            step += 1


@settings(max_examples=150)
@given(name=st.sampled_from(NAMES), target=st.integers(0, 7), bit=st.integers(0, 10_000))
def test_any_bit_flip_is_detected(name: str, target: int, bit: int) -> None:
    def flip(msg: bytes) -> bytes:
        b = bytearray(msg)
        b[bit // 8 % len(b)] ^= 1 << (bit % 8)
        return bytes(b)

    total = _count_messages(name)
    target %= total
    with pytest.raises(M2MError) as ei:
        _drive_with_tamper(name, target, flip)
    assert ei.value.code in EXPECTED, ei.value


@settings(max_examples=100)
@given(name=st.sampled_from(NAMES), target=st.integers(0, 7), cut=st.integers(1, 200))
def test_truncation_is_detected(name: str, target: int, cut: int) -> None:
    target %= _count_messages(name)
    with pytest.raises(M2MError) as ei:
        _drive_with_tamper(name, target, lambda m: m[: max(0, len(m) - cut)])
    assert ei.value.code in EXPECTED, ei.value


def _count_messages(name: str) -> int:
    init, _ = make_pair(name)
    transport = 2 if init.protocol.one_way else 4
    return init.message_count + transport


def test_untampered_run_succeeds() -> None:
    # the control for the two properties above
    for name in NAMES:
        _drive_with_tamper(name, -1, lambda m: m)


@settings(max_examples=60)
@given(ops=st.lists(st.sampled_from(["i", "r", "rekey_i", "rekey_r"]), max_size=40))
def test_rekey_in_step(ops: list[str]) -> None:
    init, resp = make_pair("Noise_XX_25519_ChaChaPoly_SHA256")
    run_handshake(init, resp)
    i_send, i_recv, r_send, r_recv = transports(init, resp)
    for n, op in enumerate(ops):
        if op == "rekey_i":
            i_send.rekey()
            r_recv.rekey()
        elif op == "rekey_r":
            r_send.rekey()
            i_recv.rekey()
        else:
            enc, dec = (i_send, r_recv) if op == "i" else (r_send, i_recv)
            msg = b"%d" % n
            assert dec.decrypt_with_ad(b"ad", enc.encrypt_with_ad(b"ad", msg)) == msg
            assert enc.nonce == dec.nonce


@settings(max_examples=50)
@given(payload=st.binary(max_size=2000), ad=st.binary(max_size=64), bit=st.integers(0, 20_000))
def test_transport_flip_keeps_nonce(payload: bytes, ad: bytes, bit: int) -> None:
    init, resp = make_pair("Noise_NN_25519_ChaChaPoly_SHA256")
    run_handshake(init, resp)
    i_send, _, _, r_recv = transports(init, resp)
    ct = i_send.encrypt_with_ad(ad, payload)
    bad = bytearray(ct)
    bad[bit // 8 % len(bad)] ^= 1 << (bit % 8)
    with pytest.raises(RemoteProtocolError) as ei:
        r_recv.decrypt_with_ad(ad, bytes(bad))
    assert ei.value.code is ErrorCode.DECRYPT_ERROR
    assert r_recv.nonce == 0
    assert r_recv.decrypt_with_ad(ad, ct) == payload
