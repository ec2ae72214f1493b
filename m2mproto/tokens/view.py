"""inspect(): a JSON-friendly view of a token that need not verify."""

from __future__ import annotations

from typing import Any

from .. import cbor
from ..errors import DecodeError, ErrorCode, TokenError
from .claims import (
    CLAIM_AUD,
    CLAIM_CAPS,
    CLAIM_CAVEATS,
    CLAIM_CNF,
    CLAIM_CTI,
    CLAIM_EXP,
    CLAIM_IAT,
    CLAIM_ISS,
    CLAIM_NBF,
    CLAIM_PRF,
    CLAIM_REVOKED,
    CLAIM_SUB,
)
from .cose import COSE_SIGN1_TAG, MAX_DEPTH

__all__ = ["inspect"]

_CLAIM_NAMES = {
    CLAIM_ISS: "iss",
    CLAIM_SUB: "sub",
    CLAIM_AUD: "aud",
    CLAIM_EXP: "exp",
    CLAIM_NBF: "nbf",
    CLAIM_IAT: "iat",
    CLAIM_CTI: "cti",
    CLAIM_CNF: "cnf",
    CLAIM_CAPS: "caps",
    CLAIM_CAVEATS: "caveats",
    CLAIM_PRF: "prf",
    CLAIM_REVOKED: "revoked",
}
_HEADER_NAMES = {1: "alg", 2: "crit", 3: "content_type", 4: "kid"}
_MAX_NESTED = 16


def _decode_loose(data: bytes) -> Any:
    try:
        return cbor.decode(data, max_depth=MAX_DEPTH, allowed_tags=frozenset({COSE_SIGN1_TAG}))
    except DecodeError:
        return None


def _view(token: bytes, depth: int) -> dict[str, Any]:
    item = _decode_loose(token)
    if not isinstance(item, cbor.Tag) or item.tag != COSE_SIGN1_TAG:
        raise TokenError("not a tagged COSE_Sign1 in deterministic CBOR", ErrorCode.MALFORMED)
    body = item.value
    if not isinstance(body, list) or len(body) != 4 or not isinstance(body[2], bytes):
        raise TokenError("not a COSE_Sign1 with an attached payload", ErrorCode.MALFORMED)
    protected_raw, unprotected, payload, signature = body
    protected = _decode_loose(protected_raw) if isinstance(protected_raw, bytes) else None
    claims = _decode_loose(payload)
    if not isinstance(claims, dict):
        raise TokenError("payload is not a claims map", ErrorCode.MALFORMED)
    out_claims: dict[str, Any] = {}
    parent: dict[str, Any] | str | None = None
    for label, value in claims.items():
        name = _CLAIM_NAMES.get(label, str(label)) if isinstance(label, int) else str(label)
        if label == CLAIM_PRF and isinstance(value, bytes):
            if depth >= _MAX_NESTED:
                parent = "(nested too deeply to show)"
            else:
                try:
                    parent = _view(value, depth + 1)
                except TokenError as exc:
                    parent = f"(not a token: {exc.message})"
            continue
        if label == CLAIM_CAPS and isinstance(value, list):
            out_claims[name] = [
                f"{c[0]}={c[1]}" if isinstance(c, list) and len(c) == 2 else cbor.to_json(c)
                for c in value
            ]
            continue
        out_claims[name] = cbor.to_json(value)
    headers = (
        {
            _HEADER_NAMES.get(k, str(k)) if isinstance(k, int) else str(k): cbor.to_json(v)
            for k, v in protected.items()
        }
        if isinstance(protected, dict)
        else cbor.to_json(protected_raw)
    )
    view: dict[str, Any] = {
        "protected": headers,
        "unprotected": cbor.to_json(unprotected),
        "claims": out_claims,
        "signature": cbor.to_json(signature),
        "size": len(token),
    }
    if parent is not None:
        view["parent"] = parent
    return view


def inspect(token: bytes) -> dict[str, Any]:
    """Return a JSON-friendly view of *token* without verifying it.

    Byte strings are shown in hex, claim and header labels by name, the
    parent chain nested under ``"parent"``.

    Raises:
        TokenError: (``MALFORMED``) only, if *token* is not a COSE_Sign1 of a
            claims map.
    """
    if not isinstance(token, (bytes, bytearray, memoryview)):
        raise TokenError("a token must be bytes", ErrorCode.MALFORMED)
    return _view(bytes(token), 0)
