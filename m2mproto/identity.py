"""Agent identities: Ed25519 keys, key files and self-certifying agent IDs.

An agent's long-term identity is an Ed25519 key pair. Its *agent ID* is a
text encoding of the public key with a checksum (spec/identity.md)::

    agent-id = "m2m1" base32-lower-nopad( public-key(32) || checksum(4) )
    checksum = SHA-256( "m2mproto agent-id v1" || public-key )[0:4]

so an ID names a key without any PKI, and a mistyped ID is detected. The
*short form* (the first 12 characters) is for logs only.

Private keys are stored as unencrypted PKCS#8 PEM, written with mode 0600
atomically (a fresh temporary file, then a rename) and never through a
symbolic link at the destination. Loading a private key file that is not a
regular file, belongs to another user (root excepted) or that group or others
can access is refused; the checks apply to the file actually opened.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._files import check_private, write_atomic
from .errors import AuthenticationError, ErrorCode, LocalProtocolError

__all__ = ["AGENT_ID_PREFIX", "AgentId", "Identity", "verify_signature"]

#: Prefix of every text agent ID (names the encoding version).
AGENT_ID_PREFIX = "m2m1"
_CHECKSUM_DOMAIN = b"m2mproto agent-id v1"
_TEXT_LEN = len(AGENT_ID_PREFIX) + 58  # 36 bytes -> 58 base32 characters
SHORT_LEN = 12


def _checksum(public_key: bytes) -> bytes:
    return hashlib.sha256(_CHECKSUM_DOMAIN + public_key).digest()[:4]


@dataclass(frozen=True, slots=True)
class AgentId:
    """A self-certifying agent identifier: an Ed25519 public key (32 bytes)."""

    public_key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise LocalProtocolError(
                "an agent ID wraps a 32-byte Ed25519 public key", ErrorCode.AGENT_ID_INVALID
            )

    @classmethod
    def parse(cls, text: str) -> AgentId:
        """Parse the text form.

        Raises:
            LocalProtocolError: (``AGENT_ID_INVALID``) if the prefix, length,
                alphabet or checksum is wrong.
        """
        if not isinstance(text, str):
            raise LocalProtocolError("agent ID must be text", ErrorCode.AGENT_ID_INVALID)
        text = text.strip()
        if not text.startswith(AGENT_ID_PREFIX):
            raise LocalProtocolError(
                f"agent ID must start with {AGENT_ID_PREFIX!r}", ErrorCode.AGENT_ID_INVALID
            )
        if len(text) != _TEXT_LEN:
            raise LocalProtocolError(
                f"agent ID must be {_TEXT_LEN} characters, got {len(text)}",
                ErrorCode.AGENT_ID_INVALID,
            )
        body = text[len(AGENT_ID_PREFIX) :]
        if body != body.lower():
            raise LocalProtocolError("agent ID must be lower case", ErrorCode.AGENT_ID_INVALID)
        try:
            raw = base64.b32decode(body.upper() + "======", casefold=False)
        except ValueError:
            raise LocalProtocolError(
                "agent ID contains characters outside base32", ErrorCode.AGENT_ID_INVALID
            ) from None
        if len(raw) != 36 or base64.b32encode(raw).decode().lower().rstrip("=") != body:
            raise LocalProtocolError("agent ID is not canonical", ErrorCode.AGENT_ID_INVALID)
        public_key, check = raw[:32], raw[32:]
        if _checksum(public_key) != check:
            raise LocalProtocolError(
                "agent ID checksum mismatch (mistyped?)", ErrorCode.AGENT_ID_INVALID
            )
        return cls(public_key)

    @property
    def text(self) -> str:
        """The full text form, ``m2m1...`` (62 characters)."""
        raw = self.public_key + _checksum(self.public_key)
        return AGENT_ID_PREFIX + base64.b32encode(raw).decode("ascii").lower().rstrip("=")

    @property
    def short(self) -> str:
        """A short form for logs (not unique; never use it for decisions)."""
        return self.text[:SHORT_LEN]

    def verify(self, signature: bytes, data: bytes) -> None:
        """Verify an Ed25519 *signature* by this agent over *data*.

        Raises:
            AuthenticationError: (``AUTH_SIGNATURE``) if it does not verify.
        """
        verify_signature(self.public_key, signature, data)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"AgentId({self.text!r})"


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> None:
    """Verify an Ed25519 signature (RFC 8032, as implemented by `cryptography`).

    Raises:
        AuthenticationError: ``AUTH_IDENTITY_KEY`` for a malformed key,
            ``AUTH_SIGNATURE`` for a signature that does not verify.
    """
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise AuthenticationError(
            "identity key is not a valid Ed25519 public key", ErrorCode.AUTH_IDENTITY_KEY
        ) from None
    if len(signature) != 64:
        raise AuthenticationError("signature must be 64 bytes", ErrorCode.AUTH_SIGNATURE)
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise AuthenticationError("signature does not verify", ErrorCode.AUTH_SIGNATURE) from None


class Identity:
    """An agent's long-term Ed25519 key pair. The private key never appears in reprs."""

    __slots__ = ("_private", "agent_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.agent_id = AgentId(public)

    @classmethod
    def generate(cls) -> Identity:
        """Generate a fresh identity from the operating system's generator."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Derive an identity from a 32-byte RFC 8032 private key (seed).

        For test vectors and deterministic tooling; never derive a seed from
        anything guessable.
        """
        if len(seed) != 32:
            raise LocalProtocolError("seed must be 32 bytes", ErrorCode.INVALID_ARGUMENT)
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self.agent_id.public_key

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature over *data*."""
        return self._private.sign(data)

    def private_bytes_for_testing_only(self) -> bytes:
        """The raw 32-byte seed. Hazmat: for vector generation and tests only."""
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def to_pem(self) -> bytes:
        """PKCS#8 PEM of the private key (unencrypted)."""
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the private key to *path* with mode 0600, atomically.

        The key goes to a fresh ``O_EXCL`` temporary file in the same
        directory, then is renamed into place; a symbolic link at *path* is
        refused (never followed, never replaced).

        Raises:
            LocalProtocolError: (``KEY_FILE_INVALID``) if *path* is a symbolic
                link or not a regular file, exists and *overwrite* is false, or
                cannot be written.
        """
        write_atomic(
            path, self.to_pem(), mode=0o600, overwrite=overwrite,
            code=ErrorCode.KEY_FILE_INVALID, what="key",
        )  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Load a private key written by :meth:`save`.

        A symbolic link is followed (mounted secrets use them); the checks
        apply to the file actually opened.

        Raises:
            LocalProtocolError: ``KEY_FILE_PERMISSIONS`` if group or others can
                access the file or another user (not root) owns it;
                ``KEY_FILE_INVALID`` if it is missing, not a regular file or not
                an Ed25519 PKCS#8 PEM key.
        """
        target = Path(path)
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(target, flags)
        except OSError as exc:
            raise LocalProtocolError(
                f"{target}: cannot read key file ({exc.strerror})", ErrorCode.KEY_FILE_INVALID
            ) from None
        try:
            st = check_private(
                fd, target, ErrorCode.KEY_FILE_INVALID, mode_code=ErrorCode.KEY_FILE_PERMISSIONS
            )
            if st.st_size > 64 * 1024:
                raise LocalProtocolError(
                    f"{target}: too large for a key file", ErrorCode.KEY_FILE_INVALID
                )
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read(64 * 1024 + 1)
        except OSError as exc:
            raise LocalProtocolError(
                f"{target}: cannot read key file ({exc.strerror})", ErrorCode.KEY_FILE_INVALID
            ) from None
        finally:
            os.close(fd)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise LocalProtocolError(
                f"{target}: not a PEM private key", ErrorCode.KEY_FILE_INVALID
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise LocalProtocolError(f"{target}: not an Ed25519 key", ErrorCode.KEY_FILE_INVALID)
        return cls(key)

    def __repr__(self) -> str:
        return f"Identity(agent_id={self.agent_id.text!r})"
