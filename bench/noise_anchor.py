"""Anchor: the ``noiseprotocol`` package doing the same handshake work, in memory.

One handshake is ``Noise_XX_25519_ChaChaPoly_SHA256`` between two in-memory
``NoiseConnection`` objects, with the m2mproto prologue shape (magic plus a
framed CBOR offer) and the identity binding of spec/handshake.md 2.4-2.5 in
the encrypted payloads of messages 2 and 3: a CBOR map with the Ed25519
identity key and its signature over ``"m2mproto-noise-static-key:" || s``;
the receiver decodes the map, parses the key and verifies the signature over
the static key that Noise authenticated (``rs``).

Two variants are timed: ``sign`` signs the binding in every handshake (two
signs per handshake, as the issue describes the work), ``cached`` signs once
per process (what spec 2.5 allows). The static X25519 key pair object is built
once and reused (``noiseprotocol``'s ``set_keypair_from_private_bytes`` would
re-derive the public key on every connection: a cost of its API, not of Noise,
so we do not charge it).
"""

from __future__ import annotations

from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .common import Settings, rate
from .primitives import BINDING_PREFIX

__all__ = ["PROTOCOL_NAME", "handshake_once", "measure"]

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
_MAGIC = bytes.fromhex("8b4d324d0d0a1a0a")


def _prologue() -> bytes:
    offer = cbor2.dumps({1: [1], 2: "XX"})
    return _MAGIC + len(offer).to_bytes(2, "big") + offer


class _Side:
    """One agent: identity key, static X25519 key pair (noiseprotocol object), cached sig."""

    def __init__(self) -> None:
        from noise.backends.default.keypairs import KeyPair25519  # type: ignore[import-untyped,unused-ignore]

        self.identity = Ed25519PrivateKey.generate()
        self.identity_pub = self.identity.public_key().public_bytes_raw()
        static = X25519PrivateKey.generate().private_bytes_raw()
        self.static = KeyPair25519.from_private_bytes(static)
        self.cached_sig = self.identity.sign(BINDING_PREFIX + self.static.public_bytes)

    def payload(self, per_handshake_sign: bool, extra: dict[int, Any]) -> bytes:
        sig = (
            self.identity.sign(BINDING_PREFIX + self.static.public_bytes)
            if per_handshake_sign
            else self.cached_sig
        )
        return cbor2.dumps({1: self.identity_pub, 2: sig, 3: {}, **extra})


def _check(payload: bytes, remote_static: bytes) -> None:
    fields = cbor2.loads(payload)
    key = Ed25519PublicKey.from_public_bytes(fields[1])
    key.verify(fields[2], BINDING_PREFIX + remote_static)


def handshake_once(initiator: _Side, responder: _Side, prologue: bytes, sign: bool) -> bytes:
    """Run one full XX handshake in memory; return the handshake hash.

    Raises:
        cryptography.exceptions.InvalidSignature, noise.exceptions.NoiseError:
            if the anchor itself is broken (never in a correct run).
    """
    from noise.connection import NoiseConnection  # type: ignore[import-untyped,unused-ignore]

    ini = NoiseConnection.from_name(PROTOCOL_NAME)
    ini.set_as_initiator()
    ini.set_prologue(prologue)
    ini.noise_protocol.keypairs["s"] = initiator.static
    res = NoiseConnection.from_name(PROTOCOL_NAME)
    res.set_as_responder()
    res.set_prologue(prologue)
    res.noise_protocol.keypairs["s"] = responder.static
    ini.start_handshake()
    res.start_handshake()

    res.read_message(ini.write_message(b""))
    m2 = res.write_message(responder.payload(sign, {5: 1}))
    p2 = ini.read_message(m2)
    _check(bytes(p2), ini.noise_protocol.handshake_state.rs.public_bytes)
    m3 = ini.write_message(initiator.payload(sign, {4: []}))
    res_state = res.noise_protocol.handshake_state  # noiseprotocol drops it on completion
    p3 = res.read_message(m3)
    _check(bytes(p3), res_state.rs.public_bytes)
    if not (ini.handshake_finished and res.handshake_finished):
        raise RuntimeError("noiseprotocol anchor did not finish the handshake")
    hh = ini.get_handshake_hash()
    if hh != res.get_handshake_hash():
        raise RuntimeError("noiseprotocol anchor: handshake hashes differ")
    return bytes(hh)


def measure(settings: Settings) -> dict[str, Any]:
    """Handshakes/s (both variants) and 256-byte transport messages/s of ``noiseprotocol``."""
    from noise.connection import NoiseConnection  # type: ignore[import-untyped,unused-ignore]

    d = max(settings.duration / 2, 0.01)
    a, b = _Side(), _Side()
    prologue = _prologue()
    out: dict[str, Any] = {
        "handshakes_s_sign": rate(
            lambda: handshake_once(a, b, prologue, True), d, max_iters=settings.max_iters
        ),
        "handshakes_s_cached": rate(
            lambda: handshake_once(a, b, prologue, False), d, max_iters=settings.max_iters
        ),
    }
    # Transport: one 256-byte message through both ends (encrypt + decrypt).
    ini = NoiseConnection.from_name(PROTOCOL_NAME)
    res = NoiseConnection.from_name(PROTOCOL_NAME)
    ini.set_as_initiator()
    res.set_as_responder()
    ini.noise_protocol.keypairs["s"] = a.static
    res.noise_protocol.keypairs["s"] = b.static
    ini.start_handshake()
    res.start_handshake()
    res.read_message(ini.write_message())
    ini.read_message(res.write_message())
    res.read_message(ini.write_message())
    msg = bytes(256)
    out["transport256_msgs_s"] = rate(
        lambda: res.decrypt(ini.encrypt(msg)), d, max_iters=settings.max_iters
    )
    return out
