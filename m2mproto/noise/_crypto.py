"""Noise DH, cipher and hash functions (Noise rev 34, sections 4 and 12) on ``cryptography``.

Hazmat level: these are the raw building blocks of the Noise engine. Nothing
here is home-made cryptography: X25519/X448, ML-KEM-768 (FIPS 203, for the
``hfs`` modifier of the Noise HFS extension), ChaCha20-Poly1305, AES-GCM, the
hash functions and HMAC all come from ``cryptography``; ``hkdf`` is the
HMAC-based construction that the Noise specification itself defines (§4.3).

No randomness is drawn here for keys: key generation takes an ``entropy``
callable (an ML-KEM key pair is derived from a 64-byte seed ``d || z`` drawn
from it). The one exception is ML-KEM encapsulation, whose 32-byte message
``m`` comes from OpenSSL's generator: ``cryptography`` has no deterministic
encapsulation.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x448 import X448PrivateKey, X448PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import AuthenticationError, DecodeError, ErrorCode, LocalProtocolError

__all__ = [
    "CIPHERS",
    "DH_FUNCTIONS",
    "HASHES",
    "KEM_FUNCTIONS",
    "CipherFunctions",
    "DHFunctions",
    "HashFunctions",
    "KEMFunctions",
    "KeyPair",
    "generate_x25519_private",
    "x25519_keypair",
    "x25519_public_key",
]

Entropy = Callable[[int], bytes]

_RAW = Encoding.Raw
_RAW_PUB = PublicFormat.Raw


class KeyPair:
    """A DH key pair: the ``cryptography`` private key object and the public key bytes."""

    __slots__ = ("private", "public")

    def __init__(self, private: X25519PrivateKey | X448PrivateKey, public: bytes) -> None:
        self.private = private
        self.public = public

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()})"


class DHFunctions:
    """One DH function of Noise §12.1/§12.2 (``25519`` or ``448``)."""

    __slots__ = ("_priv_cls", "_pub_cls", "dhlen", "name")

    def __init__(
        self,
        name: str,
        dhlen: int,
        priv_cls: type[X25519PrivateKey] | type[X448PrivateKey],
        pub_cls: type[X25519PublicKey] | type[X448PublicKey],
    ) -> None:
        self.name = name
        self.dhlen = dhlen
        self._priv_cls = priv_cls
        self._pub_cls = pub_cls

    def check_keypair(self, keypair: KeyPair) -> KeyPair:
        """Return *keypair* if it is a key pair of this DH function.

        Raises:
            LocalProtocolError: (INVALID_ARGUMENT) it belongs to another DH function.
        """
        if not isinstance(keypair.private, self._priv_cls) or len(keypair.public) != self.dhlen:
            raise LocalProtocolError(
                f"key pair is not a {self.name} key pair", ErrorCode.INVALID_ARGUMENT
            )
        return keypair

    def keypair_from_private(self, private: bytes) -> KeyPair:
        """Build a key pair from raw private key bytes.

        Raises:
            LocalProtocolError: (INVALID_ARGUMENT) the key is not ``dhlen`` bytes.
        """
        if not isinstance(private, bytes | bytearray) or len(private) != self.dhlen:
            raise LocalProtocolError(
                f"a {self.name} private key must be {self.dhlen} bytes",
                ErrorCode.INVALID_ARGUMENT,
            )
        key = self._priv_cls.from_private_bytes(bytes(private))
        return KeyPair(key, key.public_key().public_bytes(_RAW, _RAW_PUB))

    def generate_keypair(self, entropy: Entropy) -> KeyPair:
        """GENERATE_KEYPAIR() with the private key drawn from *entropy*.

        Raises:
            LocalProtocolError: (INVALID_ARGUMENT) *entropy* returned the wrong length.
        """
        raw = entropy(self.dhlen)
        if not isinstance(raw, bytes | bytearray) or len(raw) != self.dhlen:
            raise LocalProtocolError(
                f"entropy source must return {self.dhlen} bytes", ErrorCode.INVALID_ARGUMENT
            )
        return self.keypair_from_private(bytes(raw))

    def dh(self, keypair: KeyPair, public: bytes, parsed: dict[bytes, Any] | None = None) -> bytes:
        """DH(key_pair, public_key).

        *parsed* (optional) caches parsed public keys by their bytes, so a
        handshake parses each peer key once however many DH tokens use it.

        Raises:
            AuthenticationError: (AUTH_LOW_ORDER_KEY) *public* is a low-order or
                invalid point, so the shared secret would be all zeros.
        """
        try:
            peer = None if parsed is None else parsed.get(public)
            if peer is None:
                peer = self._pub_cls.from_public_bytes(public)
                if parsed is not None:
                    parsed[public] = peer
            return keypair.private.exchange(peer)  # type: ignore[arg-type]
        except ValueError:
            raise AuthenticationError(
                f"low-order or invalid {self.name} public key", ErrorCode.AUTH_LOW_ORDER_KEY
            ) from None

    def __repr__(self) -> str:
        return f"DHFunctions({self.name})"


#: ``encapsulate(public_key) -> (ciphertext, shared_secret)``.
Encapsulate = Callable[[bytes], tuple[bytes, bytes]]


class KEMFunctions:
    """A KEM for the Noise HFS tokens ``e1`` / ``ekem1`` (``ML-KEM-768``, FIPS 203).

    Key pairs are single-use: the HandshakeState drops the private key once
    it has decapsulated.
    """

    __slots__ = ("ciphertext_len", "name", "public_len", "seed_len", "shared_len")

    def __init__(self, name: str) -> None:
        self.name = name
        #: Encapsulation key, ciphertext, shared secret and seed (d || z) sizes.
        self.public_len = 1184
        self.ciphertext_len = 1088
        self.shared_len = 32
        self.seed_len = 64

    def keypair_from_seed(self, seed: bytes) -> tuple[MLKEM768PrivateKey, bytes]:
        """ML-KEM.KeyGen_internal(d, z) for the 64-byte seed ``d || z``.

        Raises:
            LocalProtocolError: (INVALID_ARGUMENT) the seed is not 64 bytes.
        """
        if not isinstance(seed, bytes | bytearray) or len(seed) != self.seed_len:
            raise LocalProtocolError(
                f"a {self.name} seed must be {self.seed_len} bytes", ErrorCode.INVALID_ARGUMENT
            )
        key = MLKEM768PrivateKey.from_seed_bytes(bytes(seed))
        return key, key.public_key().public_bytes_raw()

    def generate_keypair(self, entropy: Entropy) -> tuple[MLKEM768PrivateKey, bytes]:
        """A fresh key pair from a seed drawn from *entropy*."""
        return self.keypair_from_seed(entropy(self.seed_len))

    def parse_public(self, public: bytes) -> MLKEM768PublicKey:
        """Parse an encapsulation key (FIPS 203 §7.2 input check).

        Raises:
            DecodeError: wrong length, or a coefficient not reduced modulo q.
        """
        try:
            return MLKEM768PublicKey.from_public_bytes(public)
        except ValueError:
            raise DecodeError(f"invalid {self.name} encapsulation key") from None

    def encapsulate(
        self, public: bytes, parsed: MLKEM768PublicKey | None = None
    ) -> tuple[bytes, bytes]:
        """ML-KEM.Encaps(ek) -> ``(ciphertext, shared_secret)``; *parsed*: ek already parsed.

        Raises:
            DecodeError: *public* is not an encapsulation key.
        """
        key = parsed if parsed is not None else self.parse_public(public)
        shared, ciphertext = key.encapsulate()
        return ciphertext, shared

    def decapsulate(self, private: MLKEM768PrivateKey, ciphertext: bytes) -> bytes:
        """ML-KEM.Decaps(dk, c): the shared secret (implicit rejection: never fails on c)."""
        try:
            return private.decapsulate(ciphertext)
        except ValueError:  # pragma: no cover - only a wrong length, excluded by the reader
            raise DecodeError(f"invalid {self.name} ciphertext") from None

    def __repr__(self) -> str:
        return f"KEMFunctions({self.name})"


AeadFactory = Callable[[bytes], ChaCha20Poly1305 | AESGCM]


class CipherFunctions:
    """One cipher of Noise §12.3/§12.4: an AEAD class and its nonce encoding."""

    __slots__ = ("aead", "name", "pack_nonce")

    def __init__(self, name: str, aead: AeadFactory, nonce_format: str) -> None:
        self.name = name
        self.aead = aead
        #: n (int) -> 12-byte AEAD nonce: 32 zero bits then the 64-bit counter.
        self.pack_nonce: Callable[[int], bytes] = struct.Struct(nonce_format).pack

    def __repr__(self) -> str:
        return f"CipherFunctions({self.name})"


class HashFunctions:
    """One hash function of Noise §12.5-§12.8, with HMAC-HASH and HKDF (§4.3)."""

    __slots__ = ("_algorithm", "_template", "blocklen", "hashlen", "name")

    def __init__(self, name: str, algorithm: hashes.HashAlgorithm, blocklen: int) -> None:
        self.name = name
        self._algorithm = algorithm
        # Copying a fresh context is about twice as fast as building one.
        self._template = hashes.Hash(algorithm)
        self.hashlen: int = algorithm.digest_size
        self.blocklen = blocklen

    def hash(self, *parts: bytes) -> bytes:
        """HASH(concatenation of *parts*)."""
        h = self._template.copy()
        for part in parts:
            h.update(part)
        return h.finalize()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        """HMAC-HASH(key, data) per RFC 2104."""
        h = hmac.HMAC(key, self._algorithm)
        h.update(data)
        return h.finalize()

    def hkdf2(self, chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
        """HKDF(chaining_key, input_key_material, 2)."""
        h = hmac.HMAC(chaining_key, self._algorithm)
        h.update(ikm)
        keyed = hmac.HMAC(h.finalize(), self._algorithm)  # HMAC keyed with temp_key
        h = keyed.copy()
        h.update(b"\x01")
        out1 = h.finalize()
        keyed.update(out1 + b"\x02")
        return out1, keyed.finalize()

    def hkdf3(self, chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes, bytes]:
        """HKDF(chaining_key, input_key_material, 3)."""
        h = hmac.HMAC(chaining_key, self._algorithm)
        h.update(ikm)
        keyed = hmac.HMAC(h.finalize(), self._algorithm)
        h = keyed.copy()
        h.update(b"\x01")
        out1 = h.finalize()
        h = keyed.copy()
        h.update(out1 + b"\x02")
        out2 = h.finalize()
        keyed.update(out2 + b"\x03")
        return out1, out2, keyed.finalize()

    def __repr__(self) -> str:
        return f"HashFunctions({self.name})"


#: Noise DH names -> functions.
DH_FUNCTIONS: dict[str, DHFunctions] = {
    "25519": DHFunctions("25519", 32, X25519PrivateKey, X25519PublicKey),
    "448": DHFunctions("448", 56, X448PrivateKey, X448PublicKey),
}

#: KEM names (after ``+`` in the DH part of a protocol name) -> functions.
KEM_FUNCTIONS: dict[str, KEMFunctions] = {"ML-KEM-768": KEMFunctions("ML-KEM-768")}

#: Noise cipher names -> functions (ChaChaPoly: little-endian counter; AESGCM: big-endian).
CIPHERS: dict[str, CipherFunctions] = {
    "ChaChaPoly": CipherFunctions("ChaChaPoly", ChaCha20Poly1305, "<4xQ"),
    "AESGCM": CipherFunctions("AESGCM", AESGCM, ">4xQ"),
}

#: Noise hash names -> functions.
HASHES: dict[str, HashFunctions] = {
    "SHA256": HashFunctions("SHA256", hashes.SHA256(), 64),
    "SHA512": HashFunctions("SHA512", hashes.SHA512(), 128),
    "BLAKE2s": HashFunctions("BLAKE2s", hashes.BLAKE2s(32), 64),
    "BLAKE2b": HashFunctions("BLAKE2b", hashes.BLAKE2b(64), 128),
}

_X25519 = DH_FUNCTIONS["25519"]


def x25519_keypair(private: bytes) -> KeyPair:
    """Return the X25519 :class:`KeyPair` of a raw 32-byte private key.

    Parse a long-lived static key once and pass the key pair to every
    :class:`~m2mproto.noise.HandshakeState` (parsing costs as much as a DH).

    Raises:
        LocalProtocolError: (INVALID_ARGUMENT) *private* is not 32 bytes.
    """
    return _X25519.keypair_from_private(private)


def x25519_public_key(private: bytes) -> bytes:
    """Return the X25519 public key (32 bytes) of a raw 32-byte private key.

    Raises:
        LocalProtocolError: (INVALID_ARGUMENT) *private* is not 32 bytes.
    """
    return _X25519.keypair_from_private(private).public


def generate_x25519_private(entropy: Entropy) -> bytes:
    """Return a fresh raw X25519 private key (32 bytes) drawn from *entropy*.

    Raises:
        LocalProtocolError: (INVALID_ARGUMENT) *entropy* returned the wrong length.
    """
    raw = entropy(32)
    if not isinstance(raw, bytes | bytearray) or len(raw) != 32:
        raise LocalProtocolError("entropy source must return 32 bytes", ErrorCode.INVALID_ARGUMENT)
    return bytes(raw)
