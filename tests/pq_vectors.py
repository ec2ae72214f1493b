"""Deterministic hybrid handshakes (XXhfs, IKhfs): ``interop/vectors/handshake_pq.json``.

Regenerate with ``.venv/bin/python tests/pq_vectors.py --write`` (``--check`` compares).
``tests/test_handshake_pq_vectors.py`` replays the file in both roles.

Every byte follows from fixed labels: identities, Noise static and ephemeral keys
(the same labels and derivation as ``handshake.json``), the initiator's ML-KEM-768
seed ``d || z`` (through ``fixed_kem_seed_for_testing_only``) and the responder's
encapsulation randomness ``m``. ``cryptography`` has no deterministic
encapsulation, so the responder's side is produced by handing the encapsulation
to the independent pure-Python ML-KEM (``kyber-py``, ``ML_KEM_768._encaps_internal(ek, m)``,
FIPS 203 Algorithm 17) through ``dangerous_kem_encapsulate_for_testing_only``.
Everything else (KEM key generation from the seed, decapsulation, X25519,
ChaCha20-Poly1305, SHA-256) runs on ``cryptography``. So the responder's
message 2 reproduces only through the oracle; the initiator's messages and its
decapsulation reproduce without it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from m2mproto.handshake import Handshake, HandshakeResult, binding_message
from m2mproto.identity import Identity
from m2mproto.noise import x25519_public_key

VECTORS = Path(__file__).resolve().parent.parent / "interop" / "vectors" / "handshake_pq.json"
FORMAT = "m2mproto-vectors/1"
PARAMS_I = {1: 100, 2: 262144, 3: 1048576, 4: 1048576}
PARAMS_R = {1: 50, 2: 65536, 3: 262144, 4: 65536}


def seed(label: str) -> bytes:
    """The 32-byte value of a label (the derivation handshake.json uses)."""
    return hashlib.sha256(b"m2mproto interop " + label.encode()).digest()


def entropy(label: str) -> Callable[[int], bytes]:
    """A deterministic entropy stream (SHA-256(label || counter) blocks)."""
    state = {"counter": 0}
    base = b"m2mproto interop entropy " + label.encode()

    def draw(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(base + state["counter"].to_bytes(8, "big")).digest()
            state["counter"] += 1
        return bytes(out[:n])

    return draw


def kem_seed() -> bytes:
    """The initiator's ML-KEM-768 seed ``d || z`` (64 bytes)."""
    return seed("initiator ml-kem-768 d") + seed("initiator ml-kem-768 z")


def encaps_m() -> bytes:
    """The responder's ML-KEM-768 encapsulation randomness ``m`` (32 bytes)."""
    return seed("responder ml-kem-768 m")


def oracle_encapsulate(m: bytes) -> Callable[[bytes], tuple[bytes, bytes]]:
    """ML-KEM.Encaps_internal(ek, m) from kyber-py -> ``(ciphertext, shared_secret)``."""
    from kyber_py.ml_kem import ML_KEM_768

    def encapsulate(ek: bytes) -> tuple[bytes, bytes]:
        shared, ciphertext = ML_KEM_768._encaps_internal(ek, m)
        return ciphertext, shared

    return encapsulate


def party(label: str) -> dict[str, Any]:
    return {
        "label": label,
        "identity": Identity.from_seed(seed(label)),
        "static": seed(label + " noise static"),
        "ephemeral": seed(label + " noise ephemeral"),
    }


def handshakes(
    pattern: str, encapsulate: Callable[[bytes], tuple[bytes, bytes]] | None
) -> tuple[Handshake, Handshake]:
    """The vector's initiator and responder (*encapsulate*: the responder's KEM hook)."""
    i, r = party("initiator"), party("responder")
    rs = x25519_public_key(r["static"]) if pattern == "IKhfs" else None
    init = Handshake(
        True,
        i["identity"],
        entropy=entropy("pq transcript initiator"),
        params=PARAMS_I,
        static_key=i["static"],
        remote_static=rs,
        post_quantum=True,
        fixed_ephemeral_key_for_testing_only=i["ephemeral"],
        fixed_kem_seed_for_testing_only=kem_seed(),
    )
    resp = Handshake(
        False,
        r["identity"],
        entropy=entropy("pq transcript responder"),
        params=PARAMS_R,
        static_key=r["static"],
        post_quantum=True,
        fixed_ephemeral_key_for_testing_only=r["ephemeral"],
        dangerous_kem_encapsulate_for_testing_only=encapsulate,
    )
    return init, resp


def drive(init: Handshake, resp: Handshake) -> tuple[list[bytes], HandshakeResult, HandshakeResult]:
    """Run both sides to completion; every flight as sent (bounded: at most 6 steps)."""
    flights: list[bytes] = []
    results: dict[str, HandshakeResult] = {}
    sides = {"i": init, "r": resp}
    sender, receiver = "i", "r"
    for _ in range(6):
        data = sides[sender].data_to_send()
        if data:
            flights.append(data)
            sides[receiver].receive_data(data)
        for name, hs in sides.items():
            if name not in results and not hs.failed:
                res = hs.next_event()
                if res is not None:
                    results[name] = res
        if len(results) == 2:
            break
        sender, receiver = receiver, sender
    return flights, results["i"], results["r"]


def _party_json(p: dict[str, Any]) -> dict[str, Any]:
    ident: Identity = p["identity"]
    static_pub = x25519_public_key(p["static"])
    return {
        "identity_seed": seed(p["label"]).hex(),
        "identity_public_key": ident.public_key.hex(),
        "static_private": p["static"].hex(),
        "static_public": static_pub.hex(),
        "ephemeral_private": p["ephemeral"].hex(),
        "ephemeral_public": x25519_public_key(p["ephemeral"]).hex(),
        "identity_sig": ident.sign(binding_message(static_pub)).hex(),
    }


def transcript(pattern: str) -> dict[str, Any]:
    from kyber_py.ml_kem import ML_KEM_768

    init, resp = handshakes(pattern, oracle_encapsulate(encaps_m()))
    flights, ri, rr = drive(init, resp)
    assert ri.handshake_hash == rr.handshake_hash and ri.pattern == pattern
    ek, _dk = ML_KEM_768.key_derive(kem_seed())
    shared, ciphertext = ML_KEM_768._encaps_internal(ek, encaps_m())
    f1 = flights[0]
    offer_len = int.from_bytes(f1[8:10], "big")
    prologue = f1[: 10 + offer_len]
    noise_messages = [f1[12 + offer_len :], flights[1][10:]]
    if pattern == "XXhfs":
        noise_messages.append(flights[2][2:])
    return {
        "pattern": pattern,
        "protocol_name": ri.suite,
        "initiator": dict(
            _party_json(party("initiator")),
            ml_kem_768_seed=kem_seed().hex(),
            ml_kem_768_public=ek.hex(),
        ),
        "responder": dict(_party_json(party("responder")), ml_kem_768_encaps_m=encaps_m().hex()),
        "ml_kem_768_ciphertext": ciphertext.hex(),
        "ml_kem_768_shared_secret": shared.hex(),
        "prologue": prologue.hex(),
        "offer_cbor": f1[10 : 10 + offer_len].hex(),
        "flights": [f.hex() for f in flights],
        "noise_messages": [m.hex() for m in noise_messages],
        "noise_message_sizes": [len(m) for m in noise_messages],
        "flight_sizes": [len(f) for f in flights],
        "handshake_hash": ri.handshake_hash.hex(),
        "version": ri.version,
    }


def generate() -> dict[str, Any]:
    return {
        "format": FORMAT,
        "description": (
            "Deterministic hybrid post-quantum m2mproto handshakes (spec/handshake.md 2.13): "
            "Noise_XXhfs / Noise_IKhfs with 25519+ML-KEM-768. Fixed identities, Noise keys "
            "(as handshake.json), the initiator's ML-KEM-768 seed d||z and the responder's "
            "encapsulation randomness m; every flight, Noise message and the handshake hash. "
            "The responder's message 2 reproduces only with a deterministic ML-KEM "
            "encapsulation (FIPS 203 ML-KEM.Encaps_internal(ek, m))."
        ),
        "transcripts": [transcript("XXhfs"), transcript("IKhfs")],
    }


def dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=1) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    text = dump(generate())
    if args.write:
        VECTORS.write_text(text)
        print(f"wrote {VECTORS}")
        return 0
    same = VECTORS.exists() and VECTORS.read_text() == text
    print(f"{VECTORS}: {'up to date' if same else 'DIFFERS'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
