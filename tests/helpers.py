"""Test harness: fixed-key ciphers, a fake clock, and two Connections over an in-memory link."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from m2mproto.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

_MAX_NONCE = 2**64 - 1


class FixedKeyCipher:
    """A Noise CipherState (ChaChaPoly) built from a 32-byte key, for record-layer tests.

    Used until/unless m2mproto.noise exposes a constructor with the same shape; it follows
    the Noise spec: 96-bit nonce = 4 zero bytes || 64-bit little-endian counter, and
    REKEY(k) = first 32 bytes of ENCRYPT(k, 2^64-1, "", 32 zero bytes).
    """

    def __init__(self, key: bytes, nonce: int = 0) -> None:
        self._key = key
        self._aead = ChaCha20Poly1305(key)
        self.nonce = nonce

    def _n(self, n: int) -> bytes:
        return b"\x00" * 4 + n.to_bytes(8, "little")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.nonce >= _MAX_NONCE:
            raise LocalProtocolError("nonce exhausted", ErrorCode.NONCE_EXHAUSTED)
        out = self._aead.encrypt(self._n(self.nonce), plaintext, ad)
        self.nonce += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.nonce >= _MAX_NONCE:
            raise LocalProtocolError("nonce exhausted", ErrorCode.NONCE_EXHAUSTED)
        try:
            out = self._aead.decrypt(self._n(self.nonce), ciphertext, ad)
        except InvalidTag:
            raise RemoteProtocolError("decrypt failed", ErrorCode.DECRYPT_ERROR) from None
        self.nonce += 1
        return out

    def rekey(self) -> None:
        self._key = self._aead.encrypt(self._n(_MAX_NONCE), b"\x00" * 32, b"")[:32]
        self._aead = ChaCha20Poly1305(self._key)


def cipher_pair(seed: int = 1) -> tuple[FixedKeyCipher, FixedKeyCipher]:
    """Two CipherStates with the same key: (sender, receiver)."""
    key = bytes([seed]) * 32
    return FixedKeyCipher(key), FixedKeyCipher(key)


class FakeClock:
    """A monotonic clock driven by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
