"""COSE_Sign1 (RFC 9052 section 4.2) with EdDSA over Ed25519, on the m2mproto CBOR profile.

Theory of operation
-------------------
This module knows COSE, not tokens. :func:`decode_sign1` parses the four-element
structure ``[protected: bstr, unprotected: map, payload: bstr, signature: bstr]``
(tag 18 required, deterministic CBOR, protected header decoded as a map) and
applies the header rules of RFC 9052 section 3 that every profile needs:

* the protected and unprotected buckets are disjoint;
* ``crit`` (label 2) is a non-empty array of int/text labels, only in the
  protected bucket, each naming a label present in that bucket; a listed label
  this implementation does not understand is ``UNKNOWN_CRITICAL``;
* ``alg`` (label 1) must be present and protected and must be EdDSA (-8),
  otherwise ``BAD_ALG``.

:func:`verify_sign1` builds the ``Sig_structure`` (``"Signature1"``, protected
bytes, external AAD, payload) and checks the Ed25519 signature. Nothing here
reads a clock or draws randomness (Ed25519 signing is deterministic).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import cbor
from ..errors import DecodeError, ErrorCode, TokenError
from ..identity import Identity

__all__ = [
    "ALG_EDDSA",
    "COSE_SIGN1_TAG",
    "HDR_ALG",
    "HDR_CONTENT_TYPE",
    "HDR_CRIT",
    "HDR_KID",
    "Sign1",
    "decode_sign1",
    "encode_sign1",
    "sig_structure",
    "signature_verifications",
    "verify_sign1",
]

#: CBOR tag of a COSE_Sign1 message (RFC 9052 section 2).
COSE_SIGN1_TAG = 18
#: Header parameter labels (RFC 9052 section 3.1).
HDR_ALG = 1
HDR_CRIT = 2
HDR_CONTENT_TYPE = 3
HDR_KID = 4
#: COSE algorithm identifier of EdDSA (RFC 9053 section 2.2).
ALG_EDDSA = -8

#: Header labels this implementation understands (for ``crit``).
_UNDERSTOOD = frozenset({HDR_ALG, HDR_CRIT, HDR_CONTENT_TYPE, HDR_KID})
_ALLOWED_TAGS = frozenset({COSE_SIGN1_TAG})
#: Nesting bound for token CBOR (spec/README.md: 32 in tokens).
MAX_DEPTH = 32

_verifications = 0


def signature_verifications() -> int:
    """Ed25519 verifications :func:`verify_sign1` has started in this process.

    An instrument for tests and benchmarks (the cost of verifying tokens is
    counted here, where it is spent); it never decides anything.
    """
    return _verifications


@dataclass(frozen=True, slots=True)
class Sign1:
    """A parsed (not yet verified) COSE_Sign1 message."""

    protected_bytes: bytes
    protected: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes


def _malformed(message: str) -> TokenError:
    return TokenError(message, ErrorCode.MALFORMED)


def _check_crit(protected: Mapping[Any, Any], unprotected: Mapping[Any, Any]) -> None:
    if HDR_CRIT in unprotected:
        raise _malformed("crit must be in the protected header")
    if HDR_CRIT not in protected:
        return
    crit = protected[HDR_CRIT]
    if not isinstance(crit, list) or not crit:
        raise _malformed("crit must be a non-empty array of labels")
    for label in crit:
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            raise _malformed("crit labels must be integers or text")
    if len(set(crit)) != len(crit):
        raise _malformed("crit lists a label twice")
    for label in crit:
        if label not in _UNDERSTOOD:
            raise TokenError(
                f"critical header {label!r} not understood", ErrorCode.UNKNOWN_CRITICAL
            )
        if label not in protected:
            raise _malformed(f"crit names label {label!r} absent from the protected header")


def _check_alg(protected: Mapping[Any, Any], unprotected: Mapping[Any, Any]) -> None:
    if HDR_ALG in unprotected:
        raise TokenError("alg must be in the protected header", ErrorCode.BAD_ALG)
    if HDR_ALG not in protected:
        raise TokenError("alg is missing", ErrorCode.BAD_ALG)
    alg = protected[HDR_ALG]
    if isinstance(alg, bool) or alg != ALG_EDDSA:
        raise TokenError(f"alg {alg!r} is not EdDSA (-8)", ErrorCode.BAD_ALG)


def decode_sign1(data: bytes) -> Sign1:
    """Parse a tagged COSE_Sign1 and check its headers (not its signature).

    Checks, in order: CBOR profile and tag 18 (``MALFORMED``), bucket
    disjointness and ``crit`` (``MALFORMED`` / ``UNKNOWN_CRITICAL``), then
    ``alg`` (``BAD_ALG``).

    Raises:
        TokenError: with the codes above.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _malformed("a COSE_Sign1 message must be bytes")
    try:
        item = cbor.decode(bytes(data), max_depth=MAX_DEPTH, allowed_tags=_ALLOWED_TAGS)
    except DecodeError as exc:
        raise _malformed(f"not deterministic CBOR: {exc.message}") from None
    if not isinstance(item, cbor.Tag) or item.tag != COSE_SIGN1_TAG:
        raise _malformed("not a tagged COSE_Sign1 (tag 18)")
    body = item.value
    if not isinstance(body, list) or len(body) != 4:
        raise _malformed("COSE_Sign1 must be an array of 4 elements")
    protected_bytes, unprotected, payload, signature = body
    if not isinstance(protected_bytes, bytes):
        raise _malformed("protected header must be a byte string")
    if not isinstance(unprotected, dict):
        raise _malformed("unprotected header must be a map")
    if not isinstance(payload, bytes):
        raise _malformed("payload must be a byte string (detached payloads are not supported)")
    if not isinstance(signature, bytes):
        raise _malformed("signature must be a byte string")
    if protected_bytes == b"":
        protected: dict[Any, Any] = {}
    else:
        try:
            decoded = cbor.decode(protected_bytes, max_depth=MAX_DEPTH)
        except DecodeError as exc:
            raise _malformed(f"protected header: {exc.message}") from None
        if not isinstance(decoded, dict):
            raise _malformed("protected header must encode a map")
        protected = decoded
        if not protected:
            raise _malformed("an empty protected header must be encoded as a zero-length bstr")
    for label in (*protected, *unprotected):
        if not isinstance(label, (int, str)):
            raise _malformed("header labels must be integers or text")
    if set(protected) & set(unprotected):
        raise _malformed("a header label appears in both buckets")
    _check_crit(protected, unprotected)
    _check_alg(protected, unprotected)
    return Sign1(protected_bytes, protected, unprotected, payload, signature)


def sig_structure(protected_bytes: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """Return the ``Sig_structure`` for COSE_Sign1 (RFC 9052 section 4.4)."""
    return cbor.encode(["Signature1", protected_bytes, external_aad, payload])


def verify_sign1(message: Sign1, public_key: bytes, external_aad: bytes = b"") -> None:
    """Verify the Ed25519 signature of *message* under *public_key*.

    Raises:
        TokenError: ``BAD_SIGNATURE`` if the key is invalid or the signature
            does not verify (wrong length, S >= L, any other bit).
    """
    global _verifications
    if len(message.signature) != 64:
        raise TokenError("signature must be 64 bytes", ErrorCode.BAD_SIGNATURE)
    _verifications += 1
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(
            message.signature,
            sig_structure(message.protected_bytes, message.payload, external_aad),
        )
    except (InvalidSignature, ValueError):
        raise TokenError("signature does not verify", ErrorCode.BAD_SIGNATURE) from None


def encode_sign1(
    signer: Identity,
    protected: Mapping[int, Any],
    payload: bytes,
    unprotected: Mapping[int, Any] | None = None,
    external_aad: bytes = b"",
) -> bytes:
    """Sign *payload* and return a tagged COSE_Sign1 in deterministic CBOR.

    Hazmat: the headers are written as given; use :func:`m2mproto.tokens.issue`.
    """
    protected_bytes = cbor.encode(dict(protected)) if protected else b""
    signature = signer.sign(sig_structure(protected_bytes, payload, external_aad))
    body = [protected_bytes, dict(unprotected or {}), payload, signature]
    return cbor.encode(cbor.Tag(COSE_SIGN1_TAG, body))
