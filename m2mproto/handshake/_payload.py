"""Handshake payloads and the identity binding (spec/handshake.md 2.4-2.5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import cbor
from ..errors import AuthenticationError, DecodeError, ErrorCode, LocalProtocolError
from ..identity import Identity, verify_signature

__all__ = [
    "BINDING_PREFIX",
    "Payload",
    "assemble_payload",
    "binding_entries",
    "binding_message",
    "decode_payload",
    "encode_params",
    "encode_payload",
    "verify_binding",
]

#: Domain-separation prefix of the identity signature over the Noise static key.
BINDING_PREFIX = b"m2mproto-noise-static-key:"

_KEY_IDENTITY, _KEY_SIG, _KEY_PARAMS, _KEY_TOKENS, _KEY_VERSION = 1, 2, 3, 4, 5
_INITIATOR_KEYS = frozenset({_KEY_IDENTITY, _KEY_SIG, _KEY_PARAMS, _KEY_TOKENS})
_RESPONDER_KEYS = frozenset({_KEY_IDENTITY, _KEY_SIG, _KEY_PARAMS, _KEY_VERSION})
_EXT_MIN, _EXT_MAX = 256, 65535
_UINT64_MAX = 2**64 - 1


def binding_message(static_public: bytes) -> bytes:
    """``BINDING_PREFIX || static_public``: what the identity key signs."""
    return BINDING_PREFIX + static_public


@dataclass(frozen=True, slots=True, kw_only=True)
class Payload:
    """A decoded handshake payload. ``version`` is set only in responder payloads."""

    identity_key: bytes
    signature: bytes
    params: dict[int, Any]
    tokens: tuple[bytes, ...]
    version: int | None


def encode_params(params: Mapping[int, Any]) -> tuple[dict[int, Any], bytes]:
    """Validate transport parameters and return them with their deterministic CBOR.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) a key is not an unsigned
            integer, or a value is outside the CBOR profile.
    """
    out: dict[int, Any] = {}
    for key, value in params.items():
        if type(key) is not int or not 0 <= key <= _UINT64_MAX:
            raise LocalProtocolError(
                "transport parameter keys must be unsigned integers", ErrorCode.INVALID_ARGUMENT
            )
        out[key] = value
    return out, cbor.encode(out)  # raises LocalProtocolError for values outside the profile


def binding_entries(identity_key: bytes, signature: bytes) -> bytes:
    """The CBOR of payload entries 1 and 2 (identity key, binding signature), in order."""
    return b"\x01" + cbor.encode(identity_key) + b"\x02" + cbor.encode(signature)


def assemble_payload(
    binding: bytes, params_cbor: bytes, tokens: Sequence[bytes] | None, version: int | None
) -> bytes:
    """The same bytes as :func:`encode_payload`, from pieces encoded once.

    *binding* is :func:`binding_entries`, *params_cbor* the parameters' CBOR
    (:func:`encode_params`). A deterministic map of uint keys 1..5 is its
    entries in key order after a one-byte head, so the payload is a
    concatenation; keeping the pieces avoids re-encoding the identity key,
    signature and parameters in every handshake.
    """
    count = 3
    tail = b""
    if tokens is not None:
        count += 1
        tail += b"\x04" + cbor.encode([bytes(t) for t in tokens])
    if version is not None:
        count += 1
        tail += b"\x05" + cbor.encode(version)
    return bytes((0xA0 + count,)) + binding + b"\x03" + params_cbor + tail


def encode_payload(
    identity: Identity,
    signature: bytes,
    params: Mapping[int, Any],
    tokens: Sequence[bytes] | None,
    version: int | None,
) -> bytes:
    """Encode an initiator payload (``tokens`` set, ``version`` None) or a responder payload."""
    obj: dict[int, Any] = {
        _KEY_IDENTITY: identity.public_key,
        _KEY_SIG: signature,
        _KEY_PARAMS: dict(params),
    }
    if tokens is not None:
        obj[_KEY_TOKENS] = [bytes(t) for t in tokens]
    if version is not None:
        obj[_KEY_VERSION] = version
    return cbor.encode(obj)


def decode_payload(data: bytes, *, from_initiator: bool) -> Payload:
    """Decode and structurally check a payload sent by the initiator or the responder.

    Size of the identity key and signature are checked later (authentication codes).

    Raises:
        DecodeError: for anything that is not the CDDL of spec 2.4 in deterministic CBOR.
    """
    obj = cbor.decode(data)
    if not isinstance(obj, dict):
        raise DecodeError("handshake payload is not a CBOR map")
    required = _INITIATOR_KEYS if from_initiator else _RESPONDER_KEYS
    for key in obj:
        if type(key) is not int or key < 0:
            raise DecodeError(f"handshake payload key {key!r} is not an unsigned integer")
        if key in required or _EXT_MIN <= key <= _EXT_MAX:
            continue
        raise DecodeError(f"handshake payload key {key} is not allowed in this message")
    missing = sorted(key for key in required if key not in obj)
    if missing:
        raise DecodeError(f"handshake payload lacks required key(s) {missing}")
    identity_key = obj[_KEY_IDENTITY]
    signature = obj[_KEY_SIG]
    params = obj[_KEY_PARAMS]
    if not isinstance(identity_key, bytes):
        raise DecodeError("identity key (1) must be a byte string")
    if not isinstance(signature, bytes):
        raise DecodeError("identity signature (2) must be a byte string")
    if not isinstance(params, dict) or any(type(k) is not int or k < 0 for k in params):
        raise DecodeError("transport parameters (3) must be a map with unsigned integer keys")
    tokens: tuple[bytes, ...] = ()
    if from_initiator:
        raw_tokens = obj[_KEY_TOKENS]
        if not isinstance(raw_tokens, list) or not all(isinstance(t, bytes) for t in raw_tokens):
            raise DecodeError("tokens (4) must be an array of byte strings")
        tokens = tuple(raw_tokens)
    version: int | None = None
    if not from_initiator:
        raw_version = obj[_KEY_VERSION]  # untyped until checked (a typed name would check first)
        if type(raw_version) is not int or not 1 <= raw_version <= 0xFFFF:
            raise DecodeError("version (5) must be an integer 1..65535")
        version = raw_version
    return Payload(
        identity_key=identity_key,
        signature=signature,
        params=params,
        tokens=tokens,
        version=version,
    )


def verify_binding(payload: Payload, peer_static: bytes) -> None:
    """Check the identity key and its signature over the peer's Noise static key.

    Raises:
        AuthenticationError: ``AUTH_IDENTITY_KEY`` (not a 32-byte Ed25519 key) or
            ``AUTH_SIGNATURE`` (wrong length, or does not verify over *peer_static*).
    """
    if len(payload.identity_key) != 32:
        raise AuthenticationError(
            f"identity key is {len(payload.identity_key)} bytes, not 32",
            ErrorCode.AUTH_IDENTITY_KEY,
        )
    verify_signature(payload.identity_key, payload.signature, binding_message(peer_static))
