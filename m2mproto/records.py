"""Record layer: 2-byte length + Noise transport ciphertext (spec/records.md).

Theory of operation
-------------------
After the handshake both directions are a sequence of *records*::

    record = length(2, big-endian) || ciphertext(length)     16 <= length <= 65535

``ciphertext`` is the Noise ``EncryptWithAd(ad="", plaintext)`` of one
record plaintext (whole frames, spec/frames.md), so the plaintext is at most
65519 bytes. Nonces are the implicit Noise counters: a dropped, replayed or
reordered record fails authentication (``DECRYPT_ERROR``) and the connection
closes. A length below 16 (shorter than the tag) is ``FRAME_SIZE_ERROR``,
detected as soon as the two length bytes arrive, with one exception: a reader
built with ``accept_abort=True`` treats a length of exactly 2 as the peer's
cleartext handshake ABORT (``00 02 || code``, spec/handshake.md §2.7) when it
is the *first* thing after the handshake, and raises :class:`AbortReceived`.
The peer that finishes the handshake first (XX initiator, IK responder) can
receive the other side's ABORT there.

Key update is a one-way ratchet per direction, like TLS 1.3 KeyUpdate: the
sender puts a KEY_UPDATE frame last in a record, then calls Noise ``Rekey()``
on its sending CipherState; the receiver calls ``Rekey()`` on its receiving
CipherState after it has processed that record. Noise ``Rekey()`` does not
reset the nonce counter, so nonces stay unique over the whole connection.

Limits: a writer asks for an automatic key update after
``key_update_after_records`` records under one key, and refuses to seal a
record past ``max_records_per_key`` (``KEY_UPDATE_ERROR``); a reader closes
with ``KEY_UPDATE_ERROR`` before decrypting record ``max_records_per_key + 1``
under one key. Nonce 2^64-1 is never used (the CipherState refuses it).

The reader buffers at most what the caller fed it; it scans each byte once
(a read offset into one buffer, compacted when half is consumed).
"""

from __future__ import annotations

import struct
from typing import Protocol

from .errors import ErrorCode, LocalProtocolError, M2MError, RemoteProtocolError

__all__ = [
    "MAX_RECORD_LENGTH",
    "MAX_RECORD_PLAINTEXT",
    "TAG_LENGTH",
    "AbortReceived",
    "CipherLike",
    "RecordReader",
    "RecordWriter",
]

#: Largest ciphertext length a record may carry.
MAX_RECORD_LENGTH = 65535
#: AEAD tag length (ChaCha20-Poly1305).
TAG_LENGTH = 16
#: Largest record plaintext.
MAX_RECORD_PLAINTEXT = MAX_RECORD_LENGTH - TAG_LENGTH
_EMPTY_AD = b""
_LENGTH = struct.Struct(">H")
#: Length field of a cleartext handshake ABORT (spec/handshake.md §2.7).
ABORT_BODY_LENGTH = 2


class AbortReceived(RemoteProtocolError):
    """The peer's first post-handshake bytes are a cleartext ABORT.

    ``raw_code`` is the 16-bit code it carried, unmapped (the handshake layer's
    ``decode_abort_code`` maps it); ``code`` is ``HANDSHAKE_FAILURE``.
    """

    def __init__(self, raw_code: int) -> None:
        super().__init__(
            f"peer aborted after the handshake (code {raw_code})", ErrorCode.HANDSHAKE_FAILURE
        )
        self.raw_code = raw_code


class CipherLike(Protocol):
    """The part of a Noise ``CipherState`` the record layer uses (hazmat)."""

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes | bytearray | memoryview) -> bytes: ...
    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes | bytearray | memoryview) -> bytes: ...
    def rekey(self) -> None: ...


class RecordWriter:
    """Seals record plaintexts with the sending CipherState."""

    __slots__ = ("_cipher", "key_update_after", "max_records_per_key", "records", "updates")

    def __init__(
        self, cipher: CipherLike, *, key_update_after: int, max_records_per_key: int
    ) -> None:
        self._cipher = cipher
        self.key_update_after = key_update_after
        self.max_records_per_key = max_records_per_key
        #: Records sealed under the current key.
        self.records = 0
        #: Key updates applied so far.
        self.updates = 0

    @property
    def update_due(self) -> bool:
        """True once the automatic key-update volume is reached."""
        return self.records >= self.key_update_after

    def seal(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Return one record (length prefix + ciphertext).

        Raises:
            LocalProtocolError: ``INVALID_ARGUMENT`` if *plaintext* exceeds
                65519 bytes; ``KEY_UPDATE_ERROR`` if the key has sealed
                ``max_records_per_key`` records (or its nonces are exhausted).
        """
        parts: list[bytes] = []
        self.seal_to(plaintext, parts)
        return parts[0] + parts[1]

    def seal_to(self, plaintext: bytes | bytearray | memoryview, parts: list[bytes]) -> None:
        """Seal one record and append its length prefix and ciphertext to *parts*.

        The hot path: the caller joins *parts* once, so the ciphertext is
        copied exactly once on its way to the transport.

        Raises:
            LocalProtocolError: as :meth:`seal`.
        """
        if len(plaintext) > MAX_RECORD_PLAINTEXT:
            raise LocalProtocolError(
                f"record plaintext of {len(plaintext)} bytes exceeds {MAX_RECORD_PLAINTEXT}",
                ErrorCode.INVALID_ARGUMENT,
            )
        if self.records >= self.max_records_per_key:
            raise LocalProtocolError(
                "record limit for the sending key reached without a key update",
                ErrorCode.KEY_UPDATE_ERROR,
            )
        try:
            ciphertext = self._cipher.encrypt_with_ad(_EMPTY_AD, plaintext)
        except M2MError as exc:
            raise LocalProtocolError(
                f"cannot seal record: {exc.message}", ErrorCode.KEY_UPDATE_ERROR
            ) from None
        self.records += 1
        parts.append(_LENGTH.pack(len(ciphertext)))
        parts.append(ciphertext)

    def rekey(self) -> None:
        """Ratchet the sending key (after sealing the record with KEY_UPDATE)."""
        self._cipher.rekey()
        self.records = 0
        self.updates += 1


class RecordReader:
    """Buffers received bytes and opens one record at a time."""

    __slots__ = (
        "_accept_abort",
        "_buf",
        "_cipher",
        "_pos",
        "max_records_per_key",
        "records",
        "updates",
    )

    def __init__(
        self, cipher: CipherLike, *, max_records_per_key: int, accept_abort: bool = False
    ) -> None:
        self._cipher = cipher
        self._accept_abort = accept_abort
        #: Received bytes from ``_pos`` on: the caller's ``bytes`` while records
        #: arrive whole, a private ``bytearray`` once one is split across feeds.
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self.max_records_per_key = max_records_per_key
        #: Records opened under the current key.
        self.records = 0
        #: Key updates applied so far.
        self.updates = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer received bytes (an immutable ``bytes`` is kept without a copy)."""
        buf = self._buf
        if self._pos >= len(buf):  # nothing pending: adopt the caller's bytes
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
            return
        if isinstance(buf, bytes):  # a record split across feeds: take a private copy
            buf = self._buf = bytearray(memoryview(buf)[self._pos :])
            self._pos = 0
        elif self._pos * 2 >= len(buf):
            del buf[: self._pos]
            self._pos = 0
        buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed as records."""
        return len(self._buf) - self._pos

    def next_record(self) -> bytes | None:
        """Open the next complete record; None if more bytes are needed.

        Raises:
            AbortReceived: (``accept_abort`` only) the first bytes are an ABORT.
            RemoteProtocolError: ``FRAME_SIZE_ERROR`` for a length below 16,
                ``DECRYPT_ERROR`` if authentication fails, ``KEY_UPDATE_ERROR``
                if the peer passed ``max_records_per_key`` under one key. The
                buffer is unchanged when an error is raised.
        """
        avail = len(self._buf) - self._pos
        if avail < 2:
            return None
        length = (self._buf[self._pos] << 8) | self._buf[self._pos + 1]
        if length < TAG_LENGTH:
            if length == ABORT_BODY_LENGTH and self._accept_abort and self._first:
                if avail < 4:
                    return None
                p = self._pos + 2
                raise AbortReceived((self._buf[p] << 8) | self._buf[p + 1])
            raise RemoteProtocolError(
                f"record length {length} is shorter than the tag", ErrorCode.FRAME_SIZE_ERROR
            )
        if avail < 2 + length:
            return None
        if self.records >= self.max_records_per_key:
            raise RemoteProtocolError(
                "peer exceeded the record limit for one key", ErrorCode.KEY_UPDATE_ERROR
            )
        start = self._pos + 2
        try:
            # Decrypt straight out of the receive buffer; the views are released
            # before the buffer can be resized.
            with memoryview(self._buf) as view, view[start : start + length] as ciphertext:
                plaintext = self._cipher.decrypt_with_ad(_EMPTY_AD, ciphertext)
        except M2MError as exc:
            if exc.code is ErrorCode.DECRYPT_ERROR:
                raise RemoteProtocolError(
                    "record failed authentication", ErrorCode.DECRYPT_ERROR
                ) from None
            raise RemoteProtocolError(
                f"cannot open record: {exc.message}", ErrorCode.KEY_UPDATE_ERROR
            ) from None
        self._pos = start + length
        self.records += 1
        return plaintext

    @property
    def _first(self) -> bool:
        return self.records == 0 and self.updates == 0

    def rekey(self) -> None:
        """Ratchet the receiving key (after the record with KEY_UPDATE)."""
        self._cipher.rekey()
        self.records = 0
        self.updates += 1

    @property
    def at_boundary(self) -> bool:
        """True when no partial record is buffered (EOF here is a clean cut)."""
        return self.buffered == 0
