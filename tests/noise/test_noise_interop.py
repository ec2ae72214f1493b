"""Interop with the independent `noiseprotocol` package, both roles, byte for byte."""

from __future__ import annotations

import pytest
from noise.connection import Keypair, NoiseConnection
from noise_helpers import det_entropy, psk, static_key

from m2mproto.noise import FUNDAMENTAL_PATTERNS, HandshakeState, NoiseProtocol

pytestmark = pytest.mark.filterwarnings("ignore:One of ephemeral keypairs")


def _names() -> list[str]:
    names = [f"Noise_{p}_25519_ChaChaPoly_SHA256" for p in FUNDAMENTAL_PATTERNS]
    for p in FUNDAMENTAL_PATTERNS:
        n = len(
            NoiseProtocol.from_name(f"Noise_{p}_25519_ChaChaPoly_SHA256").handshake_pattern.messages
        )
        names.append(f"Noise_{p}psk0_25519_ChaChaPoly_SHA256")
        names.append(f"Noise_{p}psk{n}_25519_AESGCM_BLAKE2s")
    names += [
        "Noise_NNpsk0+psk2_25519_ChaChaPoly_SHA256",
        "Noise_XXpsk1+psk3_25519_ChaChaPoly_BLAKE2b",
        "Noise_XX_25519_AESGCM_SHA512",
        "Noise_IK_448_ChaChaPoly_SHA256",
        "Noise_XX_448_AESGCM_BLAKE2s",
    ]
    return names


class _Keys:
    def __init__(self, proto: NoiseProtocol) -> None:
        dhlen = proto.dh.dhlen
        self.s = {r: static_key(f"interop-{r}", dhlen) for r in (True, False)}
        self.e = {r: det_entropy(f"interop-e-{r}")(dhlen) for r in (True, False)}
        self.pub = {r: proto.dh.keypair_from_private(k).public for r, k in self.s.items()}
        self.psks = [psk(i) for i in range(proto.psk_count)]


def _ours(proto: NoiseProtocol, keys: _Keys, initiator: bool) -> HandshakeState:
    hp = proto.handshake_pattern
    return HandshakeState(
        proto,
        initiator,
        prologue=b"interop",
        s=keys.s[initiator] if hp.needs_local_static(initiator) else None,
        rs=keys.pub[not initiator] if hp.knows_remote_static(initiator) else None,
        psks=keys.psks,
        fixed_ephemeral_key_for_testing_only=keys.e[initiator],
    )


def _theirs(proto: NoiseProtocol, keys: _Keys, initiator: bool) -> NoiseConnection:
    hp = proto.handshake_pattern
    conn = NoiseConnection.from_name(proto.name.encode())
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.set_prologue(b"interop")
    if hp.needs_local_static(initiator):
        conn.set_keypair_from_private_bytes(Keypair.STATIC, keys.s[initiator])
    if hp.knows_remote_static(initiator):
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, keys.pub[not initiator])
    if keys.psks:
        conn.set_psks(psks=list(keys.psks))
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, keys.e[initiator])
    conn.start_handshake()
    return conn


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiator", "ours-responder"])
@pytest.mark.parametrize("name", _names())
def test_against_noiseprotocol(name: str, we_initiate: bool) -> None:
    proto = NoiseProtocol.from_name(name)
    keys = _Keys(proto)
    ours = _ours(proto, keys, we_initiate)
    theirs = _theirs(proto, keys, not we_initiate)
    # reference transcript: two of our own states with the same keys
    ref_i, ref_r = _ours(proto, keys, True), _ours(proto, keys, False)
    for i in range(ours.message_count):
        payload = b"hs-%d" % i
        ref = (ref_i if i % 2 == 0 else ref_r).write_message(payload)
        (ref_r if i % 2 == 0 else ref_i).read_message(ref)
        if (i % 2 == 0) == we_initiate:
            msg = ours.write_message(payload)
            assert bytes(theirs.read_message(msg)) == payload
        else:
            msg = bytes(theirs.write_message(payload))
            assert ours.read_message(msg) == payload
        assert msg == ref, f"message {i} differs from our own transcript"
    assert ours.is_complete and theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash() == ref_i.handshake_hash
    i2r, r2i = ours.split()
    send, recv = (i2r, r2i) if we_initiate else (r2i, i2r)
    for k in range(4):
        data = b"transport %d" % k * (k + 1)
        if we_initiate or not proto.one_way:
            assert theirs.decrypt(send.encrypt_with_ad(b"", data)) == data
        if not we_initiate or not proto.one_way:
            assert recv.decrypt_with_ad(b"", theirs.encrypt(data)) == data


@pytest.mark.parametrize(
    "name", ["Noise_XX_25519_ChaChaPoly_SHA256", "Noise_IK_25519_ChaChaPoly_SHA256"]
)
def test_random_ephemerals_and_rekey_against_noiseprotocol(name: str) -> None:
    # entropy-driven ephemerals (no fixed keys on our side), then a rekey both ways
    proto = NoiseProtocol.from_name(name)
    keys = _Keys(proto)
    hp = proto.handshake_pattern
    ours = HandshakeState(
        proto,
        True,
        prologue=b"interop",
        s=keys.s[True],
        rs=keys.pub[False] if hp.knows_remote_static(True) else None,
        entropy=det_entropy(name),
    )
    theirs = NoiseConnection.from_name(name.encode())
    theirs.set_as_responder()
    theirs.set_prologue(b"interop")
    theirs.set_keypair_from_private_bytes(Keypair.STATIC, keys.s[False])
    theirs.start_handshake()
    while not ours.is_complete:
        if ours.is_my_turn:
            theirs.read_message(ours.write_message(b""))
        else:
            ours.read_message(bytes(theirs.write_message(b"")))
    assert theirs.handshake_finished and ours.remote_static == keys.pub[False]
    send, recv = ours.split()
    for k in range(6):
        if k == 3:
            send.rekey()
            recv.rekey()
            theirs.rekey_inbound_cipher()
            theirs.rekey_outbound_cipher()
        assert theirs.decrypt(send.encrypt_with_ad(b"", b"up %d" % k)) == b"up %d" % k
        assert recv.decrypt_with_ad(b"", theirs.encrypt(b"down %d" % k)) == b"down %d" % k
