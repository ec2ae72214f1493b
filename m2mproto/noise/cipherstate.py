"""Noise CipherState and SymmetricState (Noise rev 34, §5.1 and §5.2).

Theory of operation
-------------------
A :class:`CipherState` holds a key ``k`` (or none) and a 64-bit nonce ``n``.
The AEAD object is built once per key, and nonces are packed with a
precompiled ``struct``, because the record layer calls ``encrypt_with_ad`` /
``decrypt_with_ad`` for every record. The nonce 2^64-1 is reserved: it is
never used to encrypt or decrypt (``NONCE_EXHAUSTED``), only by ``rekey()``.
A failed decryption leaves the nonce unchanged (§5.1).

A :class:`SymmetricState` holds the chaining key ``ck``, the handshake hash
``h`` and a CipherState; it implements MixKey, MixHash, MixKeyAndHash,
EncryptAndHash, DecryptAndHash and Split. ``checkpoint``/``restore`` let the
HandshakeState undo a failed message so that a failure changes nothing.

Hazmat: these are raw Noise objects. Use a completed HandshakeState's
``split()`` to obtain transport CipherStates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ..errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._crypto import CipherFunctions

if TYPE_CHECKING:
    from .protocol import NoiseProtocol

__all__ = ["MAX_MESSAGE_LEN", "MAX_NONCE", "TAG_LEN", "CipherState", "SymmetricState"]

#: Largest Noise message, handshake or transport (§3).
MAX_MESSAGE_LEN = 65535
#: The reserved nonce value 2^64-1 (§5.1).
MAX_NONCE = 2**64 - 1
#: AEAD authentication tag length.
TAG_LEN = 16
_MAX_PLAINTEXT = MAX_MESSAGE_LEN - TAG_LEN
_ZEROS32 = bytes(32)


class CipherState:
    """Noise CipherState: key ``k`` (optional) and nonce ``n``.

    ``CipherState(cipher, key=None, protocol_name="")``: *cipher* is a
    :class:`NoiseProtocol` or its ``cipher`` functions; *key* is 32 bytes.
    """

    __slots__ = ("_aead", "_cipher", "_k", "_n", "_pack", "protocol_name")

    def __init__(
        self,
        cipher: CipherFunctions | NoiseProtocol,
        key: bytes | None = None,
        *,
        protocol_name: str = "",
    ) -> None:
        if not isinstance(cipher, CipherFunctions):
            protocol_name = protocol_name or cipher.name
            cipher = cipher.cipher
        self._cipher = cipher
        self._pack = cipher.pack_nonce
        self.protocol_name = protocol_name or cipher.name
        self._k: bytes | None = None
        self._aead: ChaCha20Poly1305 | AESGCM | None = None
        self._n = 0
        if key is not None:
            self.initialize_key(key)

    def __copy__(self) -> CipherState:
        """An independent state with the same key and nonce (``copy.copy``; hazmat)."""
        twin = CipherState(self._cipher, protocol_name=self.protocol_name)
        twin.initialize_key(self._k)
        twin._n = self._n
        return twin

    def initialize_key(self, key: bytes | None) -> None:
        """InitializeKey(key): set ``k`` (32 bytes, or None for empty) and ``n = 0``.

        Raises:
            LocalProtocolError: (INVALID_ARGUMENT) *key* is not 32 bytes.
        """
        if key is None:
            self._k = None
            self._aead = None
        else:
            if not isinstance(key, bytes | bytearray) or len(key) != 32:
                raise LocalProtocolError("cipher key must be 32 bytes", ErrorCode.INVALID_ARGUMENT)
            self._k = bytes(key)
            self._aead = self._cipher.aead(self._k)
        self._n = 0

    def has_key(self) -> bool:
        """HasKey(): True if ``k`` is non-empty."""
        return self._aead is not None

    @property
    def nonce(self) -> int:
        """The next nonce ``n``."""
        return self._n

    def set_nonce(self, nonce: int) -> None:
        """SetNonce(nonce).

        Raises:
            LocalProtocolError: (INVALID_ARGUMENT) *nonce* is outside 0..2^64-1.
        """
        if not isinstance(nonce, int) or not 0 <= nonce <= MAX_NONCE:
            raise LocalProtocolError("nonce must be in 0..2^64-1", ErrorCode.INVALID_ARGUMENT)
        self._n = nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
        """EncryptWithAd(ad, plaintext); returns *plaintext* unchanged if there is no key.

        *plaintext* may be any bytes-like object (the record layer passes its
        record buffer without copying it).

        Raises:
            LocalProtocolError: NONCE_EXHAUSTED when ``n`` is 2^64-1;
                MESSAGE_TOO_LONG when the ciphertext would exceed 65535 bytes.
        """
        aead = self._aead
        if aead is None:
            return plaintext if type(plaintext) is bytes else bytes(plaintext)
        n = self._n
        if n >= MAX_NONCE:
            raise LocalProtocolError(
                "nonce 2^64-1 reached; rekey is not enough, start a new session",
                ErrorCode.NONCE_EXHAUSTED,
            )
        if len(plaintext) > _MAX_PLAINTEXT:
            raise LocalProtocolError(
                f"plaintext of {len(plaintext)} bytes exceeds the Noise message limit",
                ErrorCode.MESSAGE_TOO_LONG,
            )
        ciphertext = aead.encrypt(self._pack(n), plaintext, ad)
        self._n = n + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes | bytearray | memoryview) -> bytes:
        """DecryptWithAd(ad, ciphertext); returns *ciphertext* unchanged if there is no key.

        *ciphertext* may be any bytes-like object (e.g. a view into a receive buffer).

        On failure the nonce is not incremented.

        Raises:
            RemoteProtocolError: DECRYPT_ERROR if authentication fails;
                FRAME_SIZE_ERROR if *ciphertext* exceeds 65535 bytes.
            LocalProtocolError: NONCE_EXHAUSTED when ``n`` is 2^64-1.
        """
        aead = self._aead
        if aead is None:
            return ciphertext if type(ciphertext) is bytes else bytes(ciphertext)
        n = self._n
        if n >= MAX_NONCE:
            raise LocalProtocolError(
                "nonce 2^64-1 reached; start a new session", ErrorCode.NONCE_EXHAUSTED
            )
        if len(ciphertext) > MAX_MESSAGE_LEN:
            raise RemoteProtocolError(
                f"ciphertext of {len(ciphertext)} bytes exceeds the Noise message limit",
                ErrorCode.FRAME_SIZE_ERROR,
            )
        try:
            plaintext = aead.decrypt(self._pack(n), ciphertext, ad)
        except InvalidTag:
            raise RemoteProtocolError(
                "message authentication failed", ErrorCode.DECRYPT_ERROR
            ) from None
        self._n = n + 1
        return plaintext

    def rekey(self) -> None:
        """Rekey(): ``k = first 32 bytes of ENCRYPT(k, 2^64-1, zerolen, zeros)``; n unchanged.

        Raises:
            LocalProtocolError: (INVALID_STATE) there is no key.
        """
        aead = self._aead
        if aead is None:
            raise LocalProtocolError("rekey() on a CipherState without a key")
        self._k = aead.encrypt(self._pack(MAX_NONCE), _ZEROS32, b"")[:32]
        self._aead = self._cipher.aead(self._k)

    def __repr__(self) -> str:
        return f"CipherState({self.protocol_name}, nonce={self._n})"


class SymmetricState:
    """Noise SymmetricState: chaining key, handshake hash and a CipherState.

    ``SymmetricState(protocol)`` performs InitializeSymmetric(protocol.name).
    """

    __slots__ = ("_hash", "_protocol", "cipher_state", "ck", "h")

    def __init__(self, protocol: NoiseProtocol) -> None:
        self._protocol = protocol
        self._hash = protocol.hash
        self.h: bytes = protocol.initial_h
        self.ck: bytes = protocol.initial_h
        self.cipher_state = CipherState(protocol)

    def mix_key(self, input_key_material: bytes) -> None:
        """MixKey(ikm): ``ck, temp_k = HKDF(ck, ikm, 2)``; InitializeKey(temp_k[:32])."""
        self.ck, temp_k = self._hash.hkdf2(self.ck, input_key_material)
        self.cipher_state.initialize_key(temp_k[:32])

    def mix_hash(self, data: bytes) -> None:
        """MixHash(data): ``h = HASH(h || data)``."""
        self.h = self._hash.hash(self.h, data)

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        """MixKeyAndHash(ikm), used for ``psk`` tokens."""
        self.ck, temp_h, temp_k = self._hash.hkdf3(self.ck, input_key_material)
        self.mix_hash(temp_h)
        self.cipher_state.initialize_key(temp_k[:32])

    @property
    def handshake_hash(self) -> bytes:
        """GetHandshakeHash(): the current ``h``."""
        return self.h

    def get_handshake_hash(self) -> bytes:
        """GetHandshakeHash() under the specification's name."""
        return self.h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """EncryptAndHash(plaintext): encrypt with ``ad = h``, then MixHash(ciphertext).

        Raises:
            LocalProtocolError: as :meth:`CipherState.encrypt_with_ad`.
        """
        ciphertext = self.cipher_state.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """DecryptAndHash(ciphertext): decrypt with ``ad = h``, then MixHash(ciphertext).

        Raises:
            RemoteProtocolError: (DECRYPT_ERROR) authentication failed.
        """
        plaintext = self.cipher_state.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Split(): the two transport CipherStates (initiator->responder, responder->initiator)."""
        temp_k1, temp_k2 = self._hash.hkdf2(self.ck, b"")
        p = self._protocol
        return CipherState(p, temp_k1[:32]), CipherState(p, temp_k2[:32])

    def checkpoint(self) -> tuple[bytes, bytes, bytes | None, int]:
        """Capture ``(ck, h, k, n)`` for :meth:`restore`."""
        cs = self.cipher_state
        return self.ck, self.h, cs._k, cs._n

    def restore(self, saved: tuple[bytes, bytes, bytes | None, int]) -> None:
        """Return to a state captured by :meth:`checkpoint`."""
        self.ck, self.h, k, n = saved
        cs = self.cipher_state
        if k != cs._k:
            cs.initialize_key(k)
        cs._n = n

    def __repr__(self) -> str:
        return f"SymmetricState({self._protocol.name})"
