"""Fixed identities, deterministic entropy and token crafting for vectors and the runner.

Theory of operation
-------------------
Everything the interop suite needs to be reproducible comes from labels: an
identity is ``Identity.from_seed(SHA-256("m2mproto interop " || label))``, and
an entropy source is SHA-256 in counter mode over its label. Tokens are
crafted here *without* the checks of ``m2mproto.tokens.issue``/``delegate``
(hazmat): the conformance suite needs tokens that break each rule of
spec/tokens.md on purpose. :func:`token_catalog` lists them, each with the
reason code a verifier must report (Wycheproof style: ``result`` and ``flags``),
and is shared by the token vectors and the section 6 conformance cases.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from m2mproto import cbor
from m2mproto.errors import ErrorCode
from m2mproto.identity import AgentId, Identity
from m2mproto.tokens.claims import (
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
    CLAIM_SUB,
    cnf_for,
)
from m2mproto.tokens.cose import COSE_SIGN1_TAG, sig_structure
from m2mproto.tokens.revocation import revoke

__all__ = [
    "HOLDER",
    "NOW",
    "OTHER",
    "ROOT",
    "SKEW",
    "STRANGER",
    "VERIFIER",
    "TokenCase",
    "claims_for",
    "craft_token",
    "entropy",
    "identity",
    "seed",
    "set_root",
    "token_catalog",
    "token_named",
]

#: Unix time every vector and in-process case is evaluated at (2026-01-01T00:00:00Z).
NOW = 1767225600
#: Clock skew verifiers apply (spec/tokens.md §6.9).
SKEW = 60


def seed(label: str) -> bytes:
    """The 32-byte seed of a labelled fixed identity or key."""
    return hashlib.sha256(b"m2mproto interop " + label.encode()).digest()


def identity(label: str) -> Identity:
    """The fixed Ed25519 identity named *label*."""
    return Identity.from_seed(seed(label))


def entropy(label: str) -> Callable[[int], bytes]:
    """A deterministic entropy source: SHA-256(label || counter) blocks."""
    state = {"counter": 0}
    base = b"m2mproto interop entropy " + label.encode()

    def draw(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(base + state["counter"].to_bytes(8, "big")).digest()
            state["counter"] += 1
        return bytes(out[:n])

    return draw


#: The trust root the runner mints tokens under.
ROOT = identity("root")
#: The agent the runner's tokens are issued to (the hostile peer's identity).
HOLDER = identity("holder")
#: The implementation under test (its identity in-process).
VERIFIER = identity("verifier")
#: Another agent (wrong audience, broken chains, foreign holders).
OTHER = identity("other")
#: An identity nobody trusts.
STRANGER = identity("stranger")


def claims_for(
    issuer: Identity | AgentId,
    holder: Identity | AgentId,
    caps: Sequence[Sequence[str]] = (("*", "*"),),
    *,
    cti: bytes,
    nbf: int | None = None,
    exp: int | None = None,
    iat: int | None = None,
    aud: AgentId | None = None,
    caveats: Mapping[str, Any] | None = None,
    parent: bytes | None = None,
) -> dict[int, Any]:
    """A claims map (wire values), unchecked: callers may break any rule afterwards."""
    nbf = NOW - 3600 if nbf is None else nbf
    exp = NOW + 3600 if exp is None else exp
    iss = issuer.agent_id if isinstance(issuer, Identity) else issuer
    sub = holder.agent_id if isinstance(holder, Identity) else holder
    claims: dict[int, Any] = {
        CLAIM_ISS: iss.text,
        CLAIM_SUB: sub.text,
        CLAIM_EXP: exp,
        CLAIM_NBF: nbf,
        CLAIM_IAT: nbf if iat is None else iat,
        CLAIM_CTI: cti,
        CLAIM_CNF: cnf_for(sub),
        CLAIM_CAPS: [list(c) for c in caps],
    }
    if aud is not None:
        claims[CLAIM_AUD] = aud.text
    if caveats:
        claims[CLAIM_CAVEATS] = dict(caveats)
    if parent is not None:
        claims[CLAIM_PRF] = parent
    return claims


def craft_token(
    signer: Identity,
    claims: Mapping[Any, Any] | bytes,
    *,
    protected: Mapping[Any, Any] | None = None,
    unprotected: Mapping[Any, Any] | None = None,
    tag: int | None = COSE_SIGN1_TAG,
    signature: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """Sign *claims* as a COSE_Sign1 with any headers (hazmat: nothing is checked).

    ``protected`` defaults to ``{1: -8, 4: signer's key}``; ``signature`` may
    rewrite the 64-byte signature (truncate, flip, S + L ...).
    """
    prot = {1: -8, 4: signer.public_key} if protected is None else dict(protected)
    protected_bytes = cbor.encode(prot) if prot else b""
    payload = claims if isinstance(claims, bytes) else cbor.encode(dict(claims))
    sig = signer.sign(sig_structure(protected_bytes, payload))
    if signature is not None:
        sig = signature(sig)
    body = [protected_bytes, dict(unprotected or {}), payload, sig]
    return cbor.encode(cbor.Tag(tag, body) if tag is not None else body)


_L = 2**252 + 27742317777372353535851937790883648493


def _s_plus_l(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:], "little") + _L
    return sig[:32] + s.to_bytes(32, "little")


def _flip(sig: bytes) -> bytes:
    return sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]


@dataclass(frozen=True, slots=True)
class TokenCase:
    """One token vector: what to present and what a verifier must conclude."""

    #: Stable name (also the conformance case name suffix).
    name: str
    #: What rule the token exercises.
    comment: str
    #: The token bytes.
    token: bytes
    #: ``"valid"`` or ``"invalid"`` (Wycheproof ``result``).
    result: str
    #: The reason code for invalid tokens.
    code: ErrorCode | None = None
    #: Wycheproof-style flags naming the rule broken.
    flags: tuple[str, ...] = ()
    #: Effective capabilities (``"resource=ability"``) of a valid token.
    capabilities: tuple[str, ...] = ()
    #: Chain length of a valid token.
    depth: int = 1
    #: Holder the verifier authenticates (default HOLDER).
    holder: AgentId = field(default_factory=lambda: HOLDER.agent_id)


def _cti(n: int) -> bytes:
    return hashlib.sha256(b"cti" + n.to_bytes(4, "big")).digest()[:16]


def _chain(
    length: int, caps: Sequence[Sequence[str]] = (("*", "*"),), *, malformed_link: int = -1
) -> bytes:
    """A valid chain ROOT -> a1 -> ... -> HOLDER of *length* links (link *malformed_link*,
    counted from the root, gets an unknown claim key)."""
    holders = [identity(f"link{i}") for i in range(1, length)] + [HOLDER]
    signer: Identity = ROOT
    token: bytes | None = None
    for i, holder in enumerate(holders):
        claims = claims_for(signer, holder, caps, cti=_cti(100 + i), parent=token)
        if i == malformed_link:
            claims[99] = 1
        token = craft_token(signer, claims)
        signer = holder
    assert token is not None
    return token


def _padded(total: int) -> bytes:
    """A valid root token of exactly *total* bytes (capabilities used as padding)."""
    caps: list[tuple[str, str]] = [("echo", "*")]

    def make(extra: int) -> bytes:
        tail = [("pad/" + "x" * extra, "*")] if extra > 0 else []
        return craft_token(ROOT, claims_for(ROOT, HOLDER, caps + tail, cti=_cti(7)))

    while len(make(0)) + 1100 < total:
        caps.append((f"p{len(caps)}/" + "x" * 900, "*"))
    extra = 1
    for _ in range(16):  # converges in a few steps (CBOR length heads grow by 1-2 bytes)
        size = len(make(extra))
        if size == total:
            return make(extra)
        extra += total - size
    raise AssertionError(f"cannot pad a token to {total} bytes")  # pragma: no cover


def revocation_statement() -> bytes:
    """The statement (by ROOT, at NOW - 60) the token vectors' verifier holds."""
    return revoke(ROOT, [_cti(66)], now=NOW - 60)


def set_root(root: Identity, now: int | None = None) -> None:
    """Mint every later token under *root* (the runner's ``--root-key``), valid around *now*."""
    global ROOT, NOW
    ROOT = root
    if now is not None:
        NOW = now
    _CATALOG.clear()


_CATALOG: dict[tuple[bytes, int], dict[str, TokenCase]] = {}


def token_named(name: str) -> TokenCase:
    """The catalog entry *name*, minted under the current root and time (cached)."""
    key = (ROOT.public_key, NOW)
    if key not in _CATALOG:
        _CATALOG[key] = {tc.name: tc for tc in token_catalog()}
    return _CATALOG[key][name]


def token_catalog() -> list[TokenCase]:
    """Valid and invalid tokens for HOLDER under ROOT, verified by VERIFIER at NOW.

    Verifier context: trust roots ``[ROOT]``, ``now = NOW``, skew 60 s,
    holder HOLDER, audience VERIFIER, the revocation statement of
    :func:`revocation_statement`, default limits (8192 bytes, 8 links).
    """
    r, h, v, o = ROOT, HOLDER, VERIFIER, OTHER
    out: list[TokenCase] = []

    def good(name: str, comment: str, token: bytes, caps: Sequence[str], depth: int = 1) -> None:
        out.append(TokenCase(name, comment, token, "valid", capabilities=tuple(caps), depth=depth))

    def bad(name: str, comment: str, token: bytes, code: ErrorCode, *flags: str) -> None:
        out.append(TokenCase(name, comment, token, "invalid", code, tuple(flags)))

    root_caps = (("echo", "*"), ("log/*", "msg/send"), ("data", "*"))
    good(
        "Root",
        "a root token",
        craft_token(r, claims_for(r, h, root_caps, cti=_cti(1))),
        ("echo=*", "log/*=msg/send", "data=*"),
    )
    good(
        "RootWithAudience",
        "aud names the verifier",
        craft_token(r, claims_for(r, h, (("echo", "*"),), cti=_cti(2), aud=v.agent_id)),
        ("echo=*",),
    )
    parent = craft_token(r, claims_for(r, o, (("*", "*"),), cti=_cti(3)))
    child = craft_token(
        o, claims_for(o, h, (("echo", "*"), ("log/eu", "msg/send")), cti=_cti(4), parent=parent)
    )
    good("Delegated2", "a two-link chain, attenuated", child, ("echo=*", "log/eu=msg/send"), 2)
    good("Chain8", "eight links: the depth limit", _chain(8), ("*=*",), 8)
    good("Size8192", "exactly max_token_size bytes", _padded(8192), ("echo=*",))
    out[-1] = TokenCase(
        out[-1].name,
        out[-1].comment,
        out[-1].token,
        "valid",
        capabilities=tuple(
            f"{c[0]}={c[1]}" for c in cbor.decode(_payload_of(out[-1].token))[CLAIM_CAPS]
        ),
    )
    good(
        "ExpiredWithinSkew",
        "exp = now - skew is still accepted",
        craft_token(r, claims_for(r, h, (("echo", "*"),), cti=_cti(5), exp=NOW - SKEW)),
        ("echo=*",),
    )
    good(
        "NotBeforeWithinSkew",
        "nbf = now + skew is already accepted",
        craft_token(r, claims_for(r, h, (("echo", "*"),), cti=_cti(6), nbf=NOW + SKEW)),
        ("echo=*",),
    )

    base = claims_for(r, h, (("echo", "*"),), cti=_cti(10))
    bad("TooLarge", "8193 bytes", _padded(8193), ErrorCode.TOO_LARGE, "SizeLimit")
    bad("TooDeep", "nine links", _chain(9), ErrorCode.TOO_DEEP, "DepthLimit")
    bad(
        "Untagged",
        "COSE_Sign1 without tag 18",
        craft_token(r, base, tag=None),
        ErrorCode.MALFORMED,
        "Encoding",
    )
    bad("Tag61", "CWT tag 61", craft_token(r, base, tag=61), ErrorCode.MALFORMED, "Encoding")
    bad(
        "KidUnprotected",
        "kid in the unprotected bucket",
        craft_token(r, base, protected={1: -8}, unprotected={4: r.public_key}),
        ErrorCode.MALFORMED,
        "HeaderProfile",
    )
    bad(
        "CritUnknown",
        "crit names label 99",
        craft_token(r, base, protected={1: -8, 2: [99], 4: r.public_key}),
        ErrorCode.UNKNOWN_CRITICAL,
        "Crit",
    )
    bad(
        "CritMap",
        "crit holds a map (go-cose #78)",
        craft_token(r, base, protected={1: -8, 2: [{1: 2}], 4: r.public_key}),
        ErrorCode.MALFORMED,
        "Crit",
    )
    bad(
        "CritEmpty",
        "crit is an empty array",
        craft_token(r, base, protected={1: -8, 2: [], 4: r.public_key}),
        ErrorCode.MALFORMED,
        "Crit",
    )
    bad(
        "AlgES256",
        "alg -7 (ES256)",
        craft_token(r, base, protected={1: -7, 4: r.public_key}),
        ErrorCode.BAD_ALG,
        "Alg",
    )
    bad(
        "AlgMissing",
        "no alg",
        craft_token(r, base, protected={4: r.public_key}),
        ErrorCode.BAD_ALG,
        "Alg",
    )
    bad(
        "AlgUnprotected",
        "alg only in the unprotected bucket",
        craft_token(r, base, protected={4: r.public_key}, unprotected={1: -8}),
        ErrorCode.BAD_ALG,
        "Alg",
    )
    bad(
        "UnknownClaim",
        "claim key 99",
        craft_token(r, {**base, 99: 1}),
        ErrorCode.MALFORMED,
        "Claims",
    )
    bad(
        "MissingCnf",
        "no cnf",
        craft_token(r, {k: x for k, x in base.items() if k != CLAIM_CNF}),
        ErrorCode.MALFORMED,
        "Claims",
    )
    bad(
        "FloatExp",
        "exp as a float",
        craft_token(r, {**base, CLAIM_EXP: float(NOW + 3600.5)}),
        ErrorCode.MALFORMED,
        "Claims",
    )
    bad(
        "WildcardInside",
        "resource orders/*/x",
        craft_token(r, {**base, CLAIM_CAPS: [["orders/*/x", "*"]]}),
        ErrorCode.MALFORMED,
        "Capability",
    )
    bad(
        "UnknownCaveat",
        "caveat 'geo'",
        craft_token(r, {**base, CLAIM_CAVEATS: {"geo": "eu"}}),
        ErrorCode.UNKNOWN_CAVEAT,
        "Caveat",
    )
    bad(
        "UntrustedRoot",
        "root issued by an untrusted agent",
        craft_token(o, claims_for(o, h, (("echo", "*"),), cti=_cti(11))),
        ErrorCode.UNTRUSTED_ROOT,
        "TrustRoot",
    )
    stranger = identity("stranger")
    bad(
        "ChainInvalid",
        "child issued by someone other than the parent's holder",
        craft_token(
            stranger,
            claims_for(stranger, h, (("echo", "*"),), cti=_cti(12), parent=parent),
        ),
        ErrorCode.CHAIN_INVALID,
        "Linkage",
    )
    bad(
        "SignatureFlipped",
        "one bit of the signature flipped",
        craft_token(r, base, signature=_flip),
        ErrorCode.BAD_SIGNATURE,
        "Signature",
    )
    bad(
        "SignatureSPlusL",
        "S + L (Wycheproof SignatureMalleability)",
        craft_token(r, base, signature=_s_plus_l),
        ErrorCode.BAD_SIGNATURE,
        "SignatureMalleability",
    )
    bad(
        "SignatureTruncated",
        "63-byte signature",
        craft_token(r, base, signature=lambda s: s[:63]),
        ErrorCode.BAD_SIGNATURE,
        "Signature",
    )
    bad(
        "Expired",
        "exp = now - skew - 1",
        craft_token(r, claims_for(r, h, (("echo", "*"),), cti=_cti(13), exp=NOW - SKEW - 1)),
        ErrorCode.EXPIRED,
        "Time",
    )
    bad(
        "NotYetValid",
        "nbf = now + skew + 1",
        craft_token(r, claims_for(r, h, (("echo", "*"),), cti=_cti(14), nbf=NOW + SKEW + 1)),
        ErrorCode.NOT_YET_VALID,
        "Time",
    )
    bad(
        "WrongAudience",
        "aud names another agent",
        craft_token(r, claims_for(r, h, (("echo", "*"),), cti=_cti(15), aud=o.agent_id)),
        ErrorCode.WRONG_AUDIENCE,
        "Audience",
    )
    bad(
        "AllowedPeersOther",
        "allowed_peers excludes the verifier",
        craft_token(
            r,
            claims_for(
                r, h, (("echo", "*"),), cti=_cti(16), caveats={"allowed_peers": [o.agent_id.text]}
            ),
        ),
        ErrorCode.WRONG_AUDIENCE,
        "Audience",
    )
    bad(
        "CnfMismatch",
        "token held by another agent",
        craft_token(r, claims_for(r, o, (("echo", "*"),), cti=_cti(17))),
        ErrorCode.CNF_MISMATCH,
        "HolderBinding",
    )
    narrow = craft_token(r, claims_for(r, o, (("echo", "msg/send"),), cti=_cti(18)))
    bad(
        "AttenuationWiderAbility",
        "child adds an ability",
        craft_token(o, claims_for(o, h, (("echo", "*"),), cti=_cti(19), parent=narrow)),
        ErrorCode.ATTENUATION_VIOLATION,
        "Attenuation",
    )
    bad(
        "AttenuationOutlives",
        "child expires after its parent",
        craft_token(
            o,
            claims_for(o, h, (("echo", "msg/send"),), cti=_cti(20), exp=NOW + 7200, parent=narrow),
        ),
        ErrorCode.ATTENUATION_VIOLATION,
        "Attenuation",
    )
    bad(
        "Revoked",
        "root token ID revoked by ROOT",
        craft_token(r, claims_for(r, h, (("echo", "*"),), cti=_cti(66))),
        ErrorCode.REVOKED,
        "Revocation",
    )
    _order_cases(bad)
    return out


def _order_cases(bad: Callable[..., None]) -> None:
    """Tokens that break several rules at once: the code is the first step of
    spec/tokens.md §6.6 that fails (times far from the skew boundaries)."""
    r, h, o = ROOT, HOLDER, OTHER
    past, future = NOW - 7200, NOW + 7200
    caps = (("echo", "*"),)
    bad(
        "OrderTimeBeforeAudience",
        "exp long past and aud naming another agent: time before audience",
        craft_token(r, claims_for(r, h, caps, cti=_cti(30), exp=past, nbf=past - 3600,
                                  aud=o.agent_id)),
        ErrorCode.EXPIRED,
        "CheckOrder",
    )  # fmt: skip
    bad(
        "OrderHolderBeforeTime",
        "exp long past and bound to another agent: holder before time",
        craft_token(r, claims_for(r, o, caps, cti=_cti(31), exp=past, nbf=past - 3600)),
        ErrorCode.CNF_MISMATCH,
        "CheckOrder",
    )
    bad(
        "OrderHolderBeforeAudience",
        "aud naming another agent and bound to another agent: holder before audience",
        craft_token(r, claims_for(r, o, caps, cti=_cti(32), aud=o.agent_id)),
        ErrorCode.CNF_MISMATCH,
        "CheckOrder",
    )
    bad(
        "OrderHolderBeforeAllowedPeers",
        "allowed_peers excluding the verifier and bound to another agent: holder before "
        "allowed_peers",
        craft_token(
            r,
            claims_for(r, o, caps, cti=_cti(33), caveats={"allowed_peers": [o.agent_id.text]}),
        ),
        ErrorCode.CNF_MISMATCH,
        "CheckOrder",
    )
    parent = craft_token(r, claims_for(r, o, caps, cti=_cti(34), nbf=future, exp=future + 3600))
    bad(
        "OrderTimeRootFirst",
        "root not yet valid, leaf expired: links are checked root first",
        craft_token(o, claims_for(o, h, caps, cti=_cti(35), nbf=past - 3600, exp=past,
                                  parent=parent)),
        ErrorCode.NOT_YET_VALID,
        "CheckOrder",
    )  # fmt: skip
    stranger = identity("stranger")
    untrusted = craft_token(o, claims_for(o, h, caps, cti=_cti(36)))
    bad(
        "OrderRootBeforeLinkage",
        "root issued by an untrusted agent and a child not issued by its parent's holder",
        craft_token(stranger, claims_for(stranger, h, caps, cti=_cti(37), parent=untrusted)),
        ErrorCode.UNTRUSTED_ROOT,
        "CheckOrder",
    )
    trusted = craft_token(r, claims_for(r, o, caps, cti=_cti(38)))
    bad(
        "OrderLinkageBeforeTime",
        "a child not issued by its parent's holder, and expired: linkage before time",
        craft_token(stranger, claims_for(stranger, h, caps, cti=_cti(39), exp=past,
                                         nbf=past - 3600, parent=trusted)),
        ErrorCode.CHAIN_INVALID,
        "CheckOrder",
    )  # fmt: skip
    bad(
        "OrderTooDeepBeforeParsing",
        "nine links whose root (the ninth from the leaf) is malformed: the link past the "
        "limit is not parsed",
        _chain(9, malformed_link=0),
        ErrorCode.TOO_DEEP,
        "CheckOrder",
    )
    bad(
        "OrderParsedWithinLimit",
        "nine links whose second link (the eighth from the leaf) is malformed: links are "
        "parsed from the leaf, so the error comes before the depth limit is reached",
        _chain(9, malformed_link=1),
        ErrorCode.MALFORMED,
        "CheckOrder",
    )


def _payload_of(token: bytes) -> bytes:
    item = cbor.decode(token, max_depth=32, allowed_tags=frozenset({COSE_SIGN1_TAG}))
    assert isinstance(item, cbor.Tag)
    payload = item.value[2]
    assert isinstance(payload, bytes)
    return payload
