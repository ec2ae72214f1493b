"""The floor: raw primitive costs in ``cryptography``.

No Python implementation of m2mproto can be faster than the primitives it
calls, so these figures are the anchors for the in-memory measurements:

* ChaCha20-Poly1305 with a reused AEAD object and a Noise-format nonce
  (4 zero bytes || 64-bit little-endian counter) at 64 KiB and at 256 B:
  ``seal`` (encrypt only), ``open`` (decrypt only) and ``seal+open`` (one
  message through both ends, which is what an in-memory transport does);
* X25519: key generation (``generate()`` plus the raw public key, since a
  Noise ``e`` token sends it) and DH (parse the peer's public key plus
  ``exchange``);
* Ed25519: sign over the 58-byte identity binding message, and verify
  (parse the public key plus ``verify``).

The handshake floor (spec/handshake.md, XX with the identity binding of
section 2.5) counts, per side:

================  ===============  ===============
operation         initiator        responder
================  ===============  ===============
X25519 keygen     1 (``e``)        1 (``e``)
X25519 DH         3 (ee, es, se)   3 (ee, es, se)
Ed25519 verify    1 (msg 2 sig)    1 (msg 3 sig)
Ed25519 sign      0 or 1           0 or 1
================  ===============  ===============

so one complete handshake (both sides, as an in-memory pair runs it) is
2 keygen + 6 DH + 2 verify, plus 2 signs when the binding signature is made
per handshake. The static X25519 key and its signature MAY be made once per
process (spec 2.5: "a process can sign a fresh static key once at start-up"),
so the required per-handshake floor excludes them; ``floor_with_sign``
includes the two signs. Hashing, HKDF and the handshake AEAD calls are not
counted: they are an order of magnitude cheaper and not public-key work.
"""

from __future__ import annotations

import struct
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .common import Settings, rate

__all__ = ["BINDING_PREFIX", "HANDSHAKE_OPS", "SIZES", "aead_rates", "measure"]

#: Plaintext sizes of the transport figures (bytes).
SIZES: dict[str, int] = {"64k": 64 * 1024, "256": 256}

#: The identity binding prefix of spec/handshake.md section 2.5.
BINDING_PREFIX = b"m2mproto-noise-static-key:"

#: Public-key operations in one complete XX handshake (both sides).
HANDSHAKE_OPS: dict[str, int] = {
    "x25519_keygen": 2,
    "x25519_dh": 6,
    "ed25519_verify": 2,
    "ed25519_sign": 0,
}
#: The signs added when the binding signature is made per handshake.
SIGNS_PER_HANDSHAKE = 2


_PACK_U64_LE = struct.Struct("<Q").pack


def _nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + _PACK_U64_LE(n)


def aead_rates(size: int, duration: float, max_iters: int) -> dict[str, float]:
    """Messages per second for ChaCha20-Poly1305 seal, open and seal+open of ``size`` bytes."""
    key = bytes(range(32))
    aead = ChaCha20Poly1305(key)
    plaintext = bytes(size)
    counter = [0]
    sealed = aead.encrypt(_nonce(0), plaintext, None)

    def seal() -> None:
        counter[0] += 1
        aead.encrypt(_nonce(counter[0]), plaintext, None)

    def open_() -> None:
        aead.decrypt(_nonce(0), sealed, None)

    def seal_open() -> None:
        counter[0] += 1
        nonce = _nonce(counter[0])
        aead.decrypt(nonce, aead.encrypt(nonce, plaintext, None), None)

    return {
        "seal_msgs_s": rate(seal, duration, max_iters=max_iters),
        "open_msgs_s": rate(open_, duration, max_iters=max_iters),
        "seal_open_msgs_s": rate(seal_open, duration, max_iters=max_iters),
    }


def measure(settings: Settings) -> dict[str, Any]:
    """Measure every primitive figure and the handshake floor.

    Returns a JSON-ready dict: ``aead`` per size (msgs/s and MB/s, MB = 10^6
    bytes of plaintext), ``ops_s`` per public-key operation, ``handshake_ops``
    (the counts above) and ``floor`` (handshakes/s).
    """
    d = max(settings.duration / 2, 0.01)
    it = settings.max_iters
    out: dict[str, Any] = {"aead": {}, "ops_s": {}}
    for name, size in SIZES.items():
        r = aead_rates(size, d, it)
        out["aead"][name] = {
            "size": size,
            **r,
            "seal_mb_s": r["seal_msgs_s"] * size / 1e6,
            "open_mb_s": r["open_msgs_s"] * size / 1e6,
            "seal_open_mb_s": r["seal_open_msgs_s"] * size / 1e6,
        }

    peer_x = X25519PrivateKey.generate().public_key().public_bytes_raw()
    own_x = X25519PrivateKey.generate()
    ident = Ed25519PrivateKey.generate()
    ident_pub = ident.public_key().public_bytes_raw()
    message = BINDING_PREFIX + peer_x
    signature = ident.sign(message)

    def keygen() -> None:
        X25519PrivateKey.generate().public_key().public_bytes_raw()

    def dh() -> None:
        own_x.exchange(X25519PublicKey.from_public_bytes(peer_x))

    def sign() -> None:
        ident.sign(message)

    def verify() -> None:
        Ed25519PublicKey.from_public_bytes(ident_pub).verify(signature, message)

    ops = out["ops_s"]
    ops["x25519_keygen"] = rate(keygen, d, max_iters=it)
    ops["x25519_dh"] = rate(dh, d, max_iters=it)
    ops["ed25519_sign"] = rate(sign, d, max_iters=it)
    ops["ed25519_verify"] = rate(verify, d, max_iters=it)

    seconds = sum(n / ops[op] for op, n in HANDSHAKE_OPS.items())
    with_sign = seconds + SIGNS_PER_HANDSHAKE / ops["ed25519_sign"]
    out["handshake_ops"] = dict(HANDSHAKE_OPS)
    out["floor"] = {
        "handshakes_s": 1.0 / seconds,
        "handshakes_s_with_sign": 1.0 / with_sign,
        "note": "2 X25519 keygen + 6 X25519 DH + 2 Ed25519 verify per XX handshake "
        "(both sides); with_sign adds 2 Ed25519 signs",
    }
    return out
