"""The m2mproto token profile: CWT claims inside a COSE_Sign1 (spec/tokens.md).

Theory of operation
-------------------
:func:`parse_link` turns one token (bytes) into a :class:`Link` *without*
checking its signature: it applies the COSE header rules (``cose.decode_sign1``),
the token header profile (kid protected, 32 bytes, equal to the issuer's key;
unprotected bucket empty), and the claims schema (types, required claims,
capability and caveat syntax). :func:`parse_chain` unwraps the ``prf`` claim
link by link (each parent token is carried whole, as a byte string, inside
its child) and returns the chain *root first*, enforcing the chain-length
limit while unwrapping, before any signature is looked at.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import cbor
from ..errors import DecodeError, ErrorCode, LocalProtocolError, TokenError
from ..identity import AgentId, Identity
from .capabilities import Capability, Caveats
from .cose import ALG_EDDSA, HDR_ALG, HDR_KID, MAX_DEPTH, Sign1, decode_sign1, encode_sign1

__all__ = [
    "CLAIM_AUD",
    "CLAIM_CAPS",
    "CLAIM_CAVEATS",
    "CLAIM_CNF",
    "CLAIM_CTI",
    "CLAIM_EXP",
    "CLAIM_IAT",
    "CLAIM_ISS",
    "CLAIM_NBF",
    "CLAIM_PRF",
    "CLAIM_REVOKED",
    "CLAIM_SUB",
    "Link",
    "cnf_for",
    "parse_chain",
    "parse_link",
    "sign_claims",
]

# Registered CWT claim keys (RFC 8392 section 4, RFC 8747 section 3.1).
CLAIM_ISS = 1
CLAIM_SUB = 2
CLAIM_AUD = 3
CLAIM_EXP = 4
CLAIM_NBF = 5
CLAIM_IAT = 6
CLAIM_CTI = 7
CLAIM_CNF = 8
# Private-use claim keys (below -65536, RFC 8392 section 9.1).
CLAIM_CAPS = -65537
CLAIM_CAVEATS = -65538
CLAIM_PRF = -65539
CLAIM_REVOKED = -65540  # revocation statements only

_REQUIRED = (
    CLAIM_ISS,
    CLAIM_SUB,
    CLAIM_EXP,
    CLAIM_NBF,
    CLAIM_IAT,
    CLAIM_CTI,
    CLAIM_CNF,
    CLAIM_CAPS,
)
_KNOWN = frozenset({*_REQUIRED, CLAIM_AUD, CLAIM_CAVEATS, CLAIM_PRF})
_NAMES = {
    CLAIM_ISS: "iss",
    CLAIM_SUB: "sub",
    CLAIM_EXP: "exp",
    CLAIM_NBF: "nbf",
    CLAIM_IAT: "iat",
    CLAIM_CTI: "cti",
    CLAIM_CNF: "cnf",
    CLAIM_CAPS: "caps",
}
MAX_CAPABILITIES = 64
MIN_CTI, MAX_CTI = 8, 64
# COSE_Key labels (RFC 9052 section 7, RFC 9053 section 7.2).
_KTY, _KTY_OKP, _CRV, _CRV_ED25519, _X = 1, 1, -1, 6, -2
_CNF_COSE_KEY = 1
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _malformed(message: str) -> TokenError:
    return TokenError(message, ErrorCode.MALFORMED)


@dataclass(frozen=True, slots=True)
class Link:
    """One parsed token of a chain (signature not yet verified)."""

    raw: bytes
    sign1: Sign1
    issuer: AgentId
    holder: AgentId
    audience: AgentId | None
    expires: int
    not_before: int
    issued_at: int
    token_id: bytes
    capabilities: tuple[Capability, ...]
    caveats: Caveats
    parent: bytes | None


def cnf_for(holder: AgentId) -> dict[int, Any]:
    """The ``cnf`` claim value naming *holder*'s Ed25519 key (RFC 8747 section 3.2)."""
    return {_CNF_COSE_KEY: {_KTY: _KTY_OKP, _CRV: _CRV_ED25519, _X: holder.public_key}}


def _agent(value: object, what: str) -> AgentId:
    try:
        if not isinstance(value, str):
            raise LocalProtocolError("not text", ErrorCode.AGENT_ID_INVALID)
        return AgentId.parse(value)
    except LocalProtocolError:
        raise _malformed(f"{what} is not an agent ID") from None


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not _INT_MIN <= value <= _INT_MAX:
        raise _malformed(f"{what} must be an integer (NumericDate)")
    return value


def _cnf_key(value: object) -> bytes:
    if not isinstance(value, dict) or set(value) != {_CNF_COSE_KEY}:
        raise _malformed("cnf must be {1: COSE_Key}")
    key = value[_CNF_COSE_KEY]
    if not isinstance(key, dict) or set(key) != {_KTY, _CRV, _X}:
        raise _malformed("cnf COSE_Key must hold exactly kty, crv and x")
    kty, crv = key[_KTY], key[_CRV]
    if type(kty) is not int or kty != _KTY_OKP or type(crv) is not int or crv != _CRV_ED25519:
        raise _malformed("cnf COSE_Key must be OKP / Ed25519")
    x = key[_X]
    if not isinstance(x, bytes) or len(x) != 32:
        raise _malformed("cnf COSE_Key x must be 32 bytes")
    return x


def _check_token_headers(sign1: Sign1) -> bytes:
    if sign1.unprotected:
        raise _malformed("the unprotected header of a token must be empty")
    if set(sign1.protected) - {HDR_ALG, HDR_KID}:
        raise _malformed("the protected header of a token holds only alg and kid")
    kid = sign1.protected.get(HDR_KID)
    if not isinstance(kid, bytes) or len(kid) != 32:
        raise _malformed("kid must be the issuer's 32-byte Ed25519 public key")
    return kid


def _claims_map(sign1: Sign1) -> dict[Any, Any]:
    try:
        claims = cbor.decode(sign1.payload, max_depth=MAX_DEPTH)
    except DecodeError as exc:
        raise _malformed(f"claims: {exc.message}") from None
    if not isinstance(claims, dict):
        raise _malformed("claims must be a map")
    return claims


def parse_link(raw: bytes) -> Link:
    """Parse one token without verifying its signature.

    Raises:
        TokenError: ``MALFORMED``, ``BAD_ALG``, ``UNKNOWN_CRITICAL`` or
            ``UNKNOWN_CAVEAT``.
    """
    sign1 = decode_sign1(raw)
    kid = _check_token_headers(sign1)
    claims = _claims_map(sign1)
    for label in claims:
        if label not in _KNOWN:
            raise _malformed(f"unknown claim {label!r}")
    for label in _REQUIRED:
        if label not in claims:
            raise _malformed(f"missing required claim {_NAMES[label]}")
    issuer = _agent(claims[CLAIM_ISS], "iss")
    holder = _agent(claims[CLAIM_SUB], "sub")
    if issuer.public_key != kid:
        raise _malformed("kid does not match iss")
    if _cnf_key(claims[CLAIM_CNF]) != holder.public_key:
        raise _malformed("cnf key does not match sub")
    audience = _agent(claims[CLAIM_AUD], "aud") if CLAIM_AUD in claims else None
    expires = _int(claims[CLAIM_EXP], "exp")
    not_before = _int(claims[CLAIM_NBF], "nbf")
    issued_at = _int(claims[CLAIM_IAT], "iat")
    if expires <= not_before:
        raise _malformed("exp must be after nbf")
    cti = claims[CLAIM_CTI]
    if not isinstance(cti, bytes) or not MIN_CTI <= len(cti) <= MAX_CTI:
        raise _malformed(f"cti must be {MIN_CTI}..{MAX_CTI} bytes")
    caps = claims[CLAIM_CAPS]
    if not isinstance(caps, list) or not 1 <= len(caps) <= MAX_CAPABILITIES:
        raise _malformed(f"caps must be an array of 1..{MAX_CAPABILITIES} capabilities")
    capabilities = tuple(Capability.from_wire(item) for item in caps)
    if len(set(capabilities)) != len(capabilities):
        raise _malformed("caps lists a capability twice")
    caveats = Caveats.from_wire(claims.get(CLAIM_CAVEATS, {}))
    if CLAIM_CAVEATS in claims and not claims[CLAIM_CAVEATS]:
        raise _malformed("an empty caveats map must be omitted")
    parent = claims.get(CLAIM_PRF)
    if parent is not None and not isinstance(parent, bytes):
        raise _malformed("prf must be a byte string (the parent token)")
    return Link(
        raw=bytes(raw),
        sign1=sign1,
        issuer=issuer,
        holder=holder,
        audience=audience,
        expires=expires,
        not_before=not_before,
        issued_at=issued_at,
        token_id=cti,
        capabilities=capabilities,
        caveats=caveats,
        parent=parent,
    )


def parse_chain(token: bytes, *, max_links: int) -> tuple[Link, ...]:
    """Parse *token* and every ancestor in its ``prf`` claims; return root first.

    Raises:
        TokenError: ``TOO_DEEP`` if there are more than *max_links* links, or
            any code of :func:`parse_link`.
    """
    links: list[Link] = []
    current: bytes | None = token
    while current is not None:
        if len(links) >= max_links:
            raise TokenError(f"delegation chain longer than {max_links} links", ErrorCode.TOO_DEEP)
        link = parse_link(current)
        links.append(link)
        current = link.parent
    links.reverse()
    return tuple(links)


def build_claims(
    *,
    issuer: AgentId,
    holder: AgentId,
    capabilities: Iterable[Capability],
    issued_at: int,
    not_before: int,
    expires: int,
    token_id: bytes,
    audience: AgentId | None = None,
    caveats: Caveats | None = None,
    parent: bytes | None = None,
) -> dict[int, Any]:
    """The claims map of a token (API values in, wire values out)."""
    claims: dict[int, Any] = {
        CLAIM_ISS: issuer.text,
        CLAIM_SUB: holder.text,
        CLAIM_EXP: expires,
        CLAIM_NBF: not_before,
        CLAIM_IAT: issued_at,
        CLAIM_CTI: token_id,
        CLAIM_CNF: cnf_for(holder),
        CLAIM_CAPS: [cap.to_wire() for cap in capabilities],
    }
    if audience is not None:
        claims[CLAIM_AUD] = audience.text
    if caveats is not None and caveats.to_wire():
        claims[CLAIM_CAVEATS] = caveats.to_wire()
    if parent is not None:
        claims[CLAIM_PRF] = parent
    return claims


def sign_claims(issuer: Identity, claims: Mapping[int, Any]) -> bytes:
    """Sign *claims* as a token of this profile (protected ``{1: -8, 4: kid}``).

    Hazmat: the claims are not checked. For vectors and tests; use
    :func:`m2mproto.tokens.issue` / :func:`m2mproto.tokens.delegate`.
    """
    protected = {HDR_ALG: ALG_EDDSA, HDR_KID: issuer.public_key}
    return encode_sign1(issuer, protected, cbor.encode(dict(claims)))
