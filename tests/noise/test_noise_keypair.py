"""A static key parsed once (KeyPair) drives HandshakeState exactly like raw key bytes."""

from __future__ import annotations

import pytest
from noise_helpers import det_entropy, static_key

from m2mproto.errors import ErrorCode, LocalProtocolError
from m2mproto.noise import HandshakeState, NoiseProtocol, x25519_keypair, x25519_public_key

XX = "Noise_XX_25519_ChaChaPoly_SHA256"


def _run(s_i: object, s_r: object) -> tuple[list[bytes], bytes]:
    i = HandshakeState(XX, True, b"p", s=s_i, entropy=det_entropy("i"))  # type: ignore[arg-type]
    r = HandshakeState(XX, False, b"p", s=s_r, entropy=det_entropy("r"))  # type: ignore[arg-type]
    msgs = [i.write_message(b"a")]
    r.read_message(msgs[-1])
    msgs.append(r.write_message(b"b"))
    i.read_message(msgs[-1])
    msgs.append(i.write_message(b"c"))
    r.read_message(msgs[-1])
    assert i.handshake_hash == r.handshake_hash
    return msgs, i.handshake_hash


def test_keypair_and_raw_key_give_identical_messages() -> None:
    ki, kr = static_key("i"), static_key("r")
    assert _run(ki, kr) == _run(x25519_keypair(ki), x25519_keypair(kr))


def test_keypair_is_reusable_across_handshakes() -> None:
    kp = x25519_keypair(static_key("i"))
    assert kp.public == x25519_public_key(static_key("i"))
    first = _run(kp, static_key("r"))
    second = _run(kp, static_key("r"))
    assert first == second  # the key pair object carries no per-handshake state


def test_keypair_of_another_dh_is_refused() -> None:
    x448 = NoiseProtocol.from_name("Noise_XX_448_ChaChaPoly_SHA256").dh
    kp = x448.keypair_from_private(static_key("i", 56))
    with pytest.raises(LocalProtocolError) as ei:
        HandshakeState(XX, True, s=kp)
    assert ei.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("bad", [b"", b"\x01" * 31])
def test_x25519_keypair_rejects_bad_length(bad: bytes) -> None:
    with pytest.raises(LocalProtocolError) as ei:
        x25519_keypair(bad)
    assert ei.value.code is ErrorCode.INVALID_ARGUMENT
