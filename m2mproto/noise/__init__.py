"""The Noise Protocol Framework (revision 34) on ``cryptography`` primitives.

Hazmat level: these are raw Noise objects. The m2mproto handshake
(``m2mproto.handshake``) builds the protocol on top of them.

Patterns are data (:mod:`m2mproto.noise.patterns`): all fundamental one-way and
interactive patterns, the deferred patterns, ``pskN`` modifiers at every
position, and the ``hfs`` modifier of the Noise HFS extension (KEM tokens
``e1`` / ``ekem1``) on every interactive pattern. DH: 25519 (and 448), with
``25519+ML-KEM-768`` for ``hfs``; ciphers: ChaChaPoly, AESGCM; hashes: SHA256,
SHA512, BLAKE2s, BLAKE2b.
"""

from ._crypto import KeyPair, generate_x25519_private, x25519_keypair, x25519_public_key
from .cipherstate import MAX_MESSAGE_LEN, MAX_NONCE, CipherState, SymmetricState
from .handshake import HandshakeState, Phase
from .patterns import DEFERRED_PATTERNS, FUNDAMENTAL_PATTERNS, PATTERNS, HandshakePattern
from .protocol import NoiseProtocol

__all__ = [
    "DEFERRED_PATTERNS",
    "FUNDAMENTAL_PATTERNS",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "PATTERNS",
    "CipherState",
    "HandshakePattern",
    "HandshakeState",
    "KeyPair",
    "NoiseProtocol",
    "Phase",
    "SymmetricState",
    "generate_x25519_private",
    "x25519_keypair",
    "x25519_public_key",
]
