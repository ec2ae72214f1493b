"""HandshakeState: every pattern and psk position, state machine, fail-closed, low-order keys."""

from __future__ import annotations

import pytest
from noise_helpers import det_entropy, make_pair, psk, run_handshake, static_key, transports

from m2mproto.errors import (
    AuthenticationError,
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
)
from m2mproto.noise import (
    DEFERRED_PATTERNS,
    FUNDAMENTAL_PATTERNS,
    PATTERNS,
    HandshakeState,
    NoiseProtocol,
    Phase,
    generate_x25519_private,
    x25519_public_key,
)

SUITE = "25519_ChaChaPoly_SHA256"


def _names() -> list[str]:
    names = []
    for pat in PATTERNS.values():
        names.append(f"Noise_{pat.name}_{SUITE}")
        for pos in range(len(pat.messages) + 1):
            names.append(f"Noise_{pat.name}psk{pos}_{SUITE}")
    names += [
        f"Noise_NNpsk0+psk2_{SUITE}",
        f"Noise_XXpsk0+psk1+psk2+psk3_{SUITE}",
        f"Noise_IKpsk1+psk2_{SUITE}",
        "Noise_XX_25519_AESGCM_SHA512",
        "Noise_IK_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXpsk3_448_AESGCM_BLAKE2s",
        "Noise_KK_448_ChaChaPoly_SHA256",
    ]
    return names


ALL_NAMES = _names()


def test_pattern_table_is_complete() -> None:
    assert len(FUNDAMENTAL_PATTERNS) == 15
    assert set(DEFERRED_PATTERNS) == {
        "NK1", "NX1", "X1N", "X1K", "XK1", "X1K1", "X1X", "XX1", "X1X1", "K1N", "K1K", "KK1",
        "K1K1", "K1X", "KX1", "K1X1", "I1N", "I1K", "IK1", "I1K1", "I1X", "IX1", "I1X1",
    }  # fmt: skip
    assert PATTERNS["XX"].messages == (("e",), ("e", "ee", "s", "es"), ("s", "se"))
    assert PATTERNS["IK"].responder_pre == ("s",)
    xxpsk3 = NoiseProtocol.from_name(f"Noise_XXpsk3_{SUITE}").handshake_pattern
    assert xxpsk3.messages[2] == ("s", "se", "psk")
    nnpsk0 = NoiseProtocol.from_name(f"Noise_NNpsk0_{SUITE}").handshake_pattern
    assert nnpsk0.messages[0] == ("psk", "e")


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_pattern_completes_with_working_transport(name: str) -> None:
    init, resp = make_pair(name)
    msgs = run_handshake(init, resp, payload=lambda i: f"payload {i}".encode())
    assert len(msgs) == init.message_count
    assert init.handshake_hash == resp.handshake_hash
    assert len(init.handshake_hash) == init.protocol.hash.hashlen
    # static keys learned or pre-known agree with the peer's
    if resp.local_static_public is not None:
        assert init.remote_static == resp.local_static_public
    if init.local_static_public is not None:
        assert resp.remote_static == init.local_static_public
    i_send, i_recv, r_send, r_recv = transports(init, resp)
    for k in range(3):
        assert (
            r_recv.decrypt_with_ad(b"ad", i_send.encrypt_with_ad(b"ad", b"i%d" % k)) == b"i%d" % k
        )
        if not init.protocol.one_way:
            assert (
                i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"r%d" % k)) == b"r%d" % k
            )
    # a different prologue gives a different transcript that does not complete
    other_i, _ = make_pair(name, prologue=b"other")
    with pytest.raises(RemoteProtocolError) as ei:
        run_handshake(other_i, make_pair(name)[1])
    assert ei.value.code is ErrorCode.DECRYPT_ERROR


def test_ephemeral_keys_come_from_entropy_only() -> None:
    a1, _ = make_pair(f"Noise_NN_{SUITE}", seed="same")
    a2, _ = make_pair(f"Noise_NN_{SUITE}", seed="same")
    a3, _ = make_pair(f"Noise_NN_{SUITE}", seed="other")
    m1, m2, m3 = a1.write_message(), a2.write_message(), a3.write_message()
    assert m1 == m2 != m3
    assert a1.local_ephemeral_public == m1[:32]


def test_entropy_of_wrong_length_is_rejected() -> None:
    hs = HandshakeState(f"Noise_NN_{SUITE}", True, entropy=lambda n: b"\x01" * (n - 1))
    with pytest.raises(LocalProtocolError) as ei:
        hs.write_message()
    assert ei.value.code is ErrorCode.INVALID_ARGUMENT
    assert hs.failed


def test_fixed_ephemeral_is_used() -> None:
    e = static_key("eph")
    hs = HandshakeState(f"Noise_NN_{SUITE}", True, fixed_ephemeral_key_for_testing_only=e)
    assert hs.write_message()[:32] == x25519_public_key(e)


@pytest.mark.parametrize(
    ("name", "kwargs", "needle"),
    [
        (f"Noise_XX_{SUITE}", {"initiator": True}, "needs a static private key"),
        (f"Noise_IK_{SUITE}", {"initiator": True, "s": bytes(32)}, "must know the peer"),
        (
            f"Noise_XX_{SUITE}",
            {"initiator": True, "s": bytes(32), "rs": bytes(32)},
            "do not pass rs",
        ),
        (f"Noise_NN_{SUITE}", {"initiator": True, "s": bytes(32)}, "do not pass s"),
        (f"Noise_XX_{SUITE}", {"initiator": False, "s": bytes(31)}, "32 bytes"),
        (f"Noise_NK_{SUITE}", {"initiator": True, "rs": bytes(33)}, "32-byte"),
        (f"Noise_XXpsk3_{SUITE}", {"initiator": True, "s": bytes(32)}, "needs 1 PSK"),
        (f"Noise_NNpsk0_{SUITE}", {"initiator": True, "psks": [bytes(16)]}, "32 bytes"),
        (f"Noise_NN_{SUITE}", {"initiator": True, "psks": [bytes(32)]}, "needs 0 PSK"),
    ],
)
def test_bad_arguments(name: str, kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(LocalProtocolError, match=needle) as ei:
        HandshakeState(name, **kwargs)  # type: ignore[arg-type]
    assert ei.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("Noise_ZZ_25519_ChaChaPoly_SHA256", "pattern 'ZZ'"),
        ("Noise_XX_25519_ChaChaPoly_MD5", "hash function 'MD5'"),
        ("Noise_XX_25519_Twofish_SHA256", "cipher 'Twofish'"),
        ("Noise_XX_P256_ChaChaPoly_SHA256", "DH function 'P256'"),
        ("Noise_XXfallback_25519_ChaChaPoly_SHA256", "modifier 'fallback'"),
        ("Noise_XXhfs_25519+Kyber1024_ChaChaPoly_SHA256", "is not supported"),
        ("Noise_NNpsk3_25519_ChaChaPoly_SHA256", "only 2 message"),
        ("Noise_NNpsk0+psk0_25519_ChaChaPoly_SHA256", "repeated"),
        ("Noise_XX_25519_ChaChaPoly", "not a Noise protocol name"),
        ("NoiseXX_25519_ChaChaPoly_SHA256_x", "not a Noise protocol name"),
        ("Noise_xx_25519_ChaChaPoly_SHA256", "malformed handshake pattern"),
    ],
)
def test_unsupported_names(name: str, needle: str) -> None:
    with pytest.raises(LocalProtocolError, match=needle) as ei:
        NoiseProtocol.from_name(name)
    assert ei.value.code is ErrorCode.UNSUPPORTED


def test_protocol_attributes() -> None:
    p = NoiseProtocol.from_name("Noise_XXpsk3_25519_ChaChaPoly_SHA256")
    assert (p.name, p.pattern, p.modifiers, p.psk_count) == (
        "Noise_XXpsk3_25519_ChaChaPoly_SHA256", "XX", ("psk3",), 1,
    )  # fmt: skip
    assert NoiseProtocol.from_name("Noise_NNpsk0+psk2_25519_AESGCM_BLAKE2b").modifiers == (
        "psk0", "psk2",
    )  # fmt: skip
    assert NoiseProtocol.from_name("Noise_N_25519_ChaChaPoly_SHA256").one_way


def test_state_machine_and_turns() -> None:
    init, resp = make_pair(f"Noise_XX_{SUITE}")
    assert init.is_my_turn and not resp.is_my_turn
    assert (init.phase, resp.phase) == (Phase.WRITE, Phase.READ)
    with pytest.raises(LocalProtocolError) as ei:
        init.split()
    assert ei.value.code is ErrorCode.INVALID_STATE
    assert not init.failed  # split() too early is refused without killing the state
    m0 = init.write_message(b"")
    assert init.message_index == 1 and not init.is_my_turn
    resp.read_message(m0)
    m1 = resp.write_message(b"")
    init.read_message(m1)
    m2 = init.write_message(b"")
    assert init.is_complete and not resp.is_complete
    resp.read_message(m2)
    assert resp.is_complete and resp.phase is Phase.COMPLETE
    init.split()
    assert init.phase is Phase.SPLIT
    with pytest.raises(LocalProtocolError, match="split"):
        init.split()
    with pytest.raises(LocalProtocolError, match="write_message"):
        init.write_message(b"")


@pytest.mark.parametrize("op", ["write", "read"])
def test_out_of_turn_fails_closed(op: str) -> None:
    init, resp = make_pair(f"Noise_XX_{SUITE}")
    victim = resp if op == "write" else init
    with pytest.raises(LocalProtocolError) as ei:
        if op == "write":
            victim.write_message(b"")
        else:
            victim.read_message(b"x" * 32)
    assert ei.value.code is ErrorCode.INVALID_STATE
    assert "phase" in ei.value.message and victim.failed
    with pytest.raises(LocalProtocolError, match="phase failed"):
        victim.write_message(b"") if op == "read" else victim.read_message(init.write_message())


def test_failed_read_changes_nothing_then_refuses() -> None:
    init, resp = make_pair(f"Noise_XX_{SUITE}")
    resp.read_message(init.write_message(b""))
    m1 = bytearray(resp.write_message(b"hello"))
    before = (init.handshake_hash, init.remote_static, init.remote_ephemeral, init.message_index)
    m1[-1] ^= 1
    with pytest.raises(RemoteProtocolError) as ei:
        init.read_message(bytes(m1))
    assert ei.value.code is ErrorCode.DECRYPT_ERROR
    assert (init.handshake_hash, init.remote_static, init.remote_ephemeral,
            init.message_index) == before  # fmt: skip
    assert init.failed
    m1[-1] ^= 1
    with pytest.raises(LocalProtocolError):  # even the genuine message is refused now
        init.read_message(bytes(m1))


@pytest.mark.parametrize("cut", [0, 1, 31, 32, 33, 47, 48, 79, 80, 90, 95])
def test_short_messages_are_decode_errors(cut: int) -> None:
    init, resp = make_pair(f"Noise_XX_{SUITE}")
    resp.read_message(init.write_message(b""))
    m1 = resp.write_message(b"")  # e(32) + encrypted s(32+16) + payload tag(16) = 96 bytes
    assert len(m1) == 96
    with pytest.raises(DecodeError) as ei:
        init.read_message(m1[:cut])
    assert ei.value.code is ErrorCode.DECODE_ERROR
    assert init.failed and init.remote_ephemeral is None


def test_truncated_payload_is_decrypt_error() -> None:
    init, resp = make_pair(f"Noise_XX_{SUITE}")
    resp.read_message(init.write_message(b""))
    m1 = resp.write_message(b"some payload")
    with pytest.raises(RemoteProtocolError) as ei:
        init.read_message(m1[:-1])
    assert ei.value.code is ErrorCode.DECRYPT_ERROR


def test_message_size_limits() -> None:
    init, resp = make_pair(f"Noise_NN_{SUITE}")
    # the first NN message is e (32 bytes) + plaintext payload: 65503 bytes of payload fit
    big = init.write_message(b"\x00" * (65535 - 32))
    assert len(big) == 65535
    resp.read_message(big)
    init2, resp2 = make_pair(f"Noise_NN_{SUITE}")
    with pytest.raises(LocalProtocolError) as ei:
        init2.write_message(b"\x00" * (65535 - 31))
    assert ei.value.code is ErrorCode.MESSAGE_TOO_LONG and init2.failed
    with pytest.raises(RemoteProtocolError) as er:
        resp2.read_message(b"\x00" * 65536)
    assert er.value.code is ErrorCode.FRAME_SIZE_ERROR and resp2.failed
    # with a key, the tag counts: responder message = 32 + payload + 16
    init3, resp3 = make_pair(f"Noise_NN_{SUITE}")
    resp3.read_message(init3.write_message())
    with pytest.raises(LocalProtocolError) as ei:
        resp3.write_message(b"\x00" * (65535 - 48 + 1))
    assert ei.value.code is ErrorCode.MESSAGE_TOO_LONG


# RFC 7748 / Wycheproof X25519 low-order (and non-canonical low-order) u-coordinates.
LOW_ORDER = [
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
    # the same with the top bit set (X25519 ignores bit 255, RFC 7748 §5)
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
    "ec" + "ff" * 31,
    "00" * 31 + "80",
]


@pytest.mark.parametrize("point", LOW_ORDER)
def test_low_order_ephemeral_rejected_on_read(point: str) -> None:
    # IK responder: the first message's "es" token computes DH(s, re) while reading.
    init, resp = make_pair(f"Noise_IK_{SUITE}")
    genuine = init.write_message(b"")
    forged = bytes.fromhex(point) + genuine[32:]
    with pytest.raises(AuthenticationError) as ei:
        resp.read_message(forged)
    assert ei.value.code is ErrorCode.AUTH_LOW_ORDER_KEY
    assert resp.failed and resp.remote_ephemeral is None


@pytest.mark.parametrize("point", LOW_ORDER[:4])
def test_low_order_keys_rejected_on_write(point: str) -> None:
    low = bytes.fromhex(point)
    # a pre-known low-order static key: the initiator's "es" fails while writing
    hs = HandshakeState(f"Noise_IK_{SUITE}", True, s=static_key("a"), rs=low)
    with pytest.raises(AuthenticationError) as ei:
        hs.write_message(b"")
    assert ei.value.code is ErrorCode.AUTH_LOW_ORDER_KEY and hs.failed
    # a low-order ephemeral read in NN (no DH while reading) is caught at the next "ee"
    resp = HandshakeState(f"Noise_NN_{SUITE}", False, entropy=det_entropy(1))
    resp.read_message(low)
    with pytest.raises(AuthenticationError):
        resp.write_message(b"")
    # a low-order static sent in clear (IX message 0) is caught at the responder's "se"
    init_ix, resp_ix = make_pair(f"Noise_IX_{SUITE}")
    m0 = init_ix.write_message(b"")
    resp_ix.read_message(m0[:32] + low + m0[64:])
    assert resp_ix.remote_static == low
    with pytest.raises(AuthenticationError):
        resp_ix.write_message(b"")


def test_reprs_hold_no_secrets() -> None:
    s = static_key("secret")
    init, resp = make_pair(f"Noise_XXpsk3_{SUITE}")
    run_handshake(init, resp)
    cs = init.split()[0]
    for text in (repr(init), repr(resp), repr(cs), repr(init.protocol)):
        assert s.hex() not in text and psk(0).hex() not in text
        assert init.handshake_hash.hex() not in text
    assert repr(cs) == f"CipherState(Noise_XXpsk3_{SUITE}, nonce=0)"


def test_key_helpers() -> None:
    priv = generate_x25519_private(det_entropy("k"))
    assert len(priv) == 32 and len(x25519_public_key(priv)) == 32
    with pytest.raises(LocalProtocolError):
        x25519_public_key(b"short")
    with pytest.raises(LocalProtocolError):
        generate_x25519_private(lambda n: b"")
