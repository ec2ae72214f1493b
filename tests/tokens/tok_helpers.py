"""Shared fixtures for the token tests: fixed identities, fixed clock, counter entropy."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from m2mproto import cbor
from m2mproto.identity import Identity
from m2mproto.tokens.claims import build_claims, parse_link, sign_claims
from m2mproto.tokens.cose import COSE_SIGN1_TAG

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z, a fixed clock
ROOT = Identity.from_seed(b"\x01" * 32)
ALICE = Identity.from_seed(b"\x02" * 32)
BOB = Identity.from_seed(b"\x03" * 32)
CAROL = Identity.from_seed(b"\x04" * 32)
MALLORY = Identity.from_seed(b"\x05" * 32)
SERVER = Identity.from_seed(b"\x06" * 32)


def counter_entropy(start: int = 0) -> Callable[[int], bytes]:
    """A deterministic entropy source: successive counters, n bytes each."""
    counter = itertools.count(start)
    return lambda n: next(counter).to_bytes(n, "big")


def claims_of(token: bytes) -> dict[int, Any]:
    """The decoded claims map of *token* (no verification)."""
    claims = cbor.decode(parse_link(token).sign1.payload)
    assert isinstance(claims, dict)
    return claims


def resign(token: bytes, signer: Identity, changes: dict[int, Any]) -> bytes:
    """Re-sign *token*'s claims with *changes* applied (a value of None deletes)."""
    claims = claims_of(token)
    for label, value in changes.items():
        if value is None:
            claims.pop(label, None)
        else:
            claims[label] = value
    return sign_claims(signer, claims)


def raw_sign1(
    signer: Identity, protected: dict[Any, Any], unprotected: dict[Any, Any], payload: bytes
) -> bytes:
    """A COSE_Sign1 with arbitrary headers, properly signed (for header tests)."""
    prot = cbor.encode(protected) if protected else b""
    sig = signer.sign(cbor.encode(["Signature1", prot, b"", payload]))
    return cbor.encode(cbor.Tag(COSE_SIGN1_TAG, [prot, unprotected, payload, sig]))


def base_claims(**overrides: Any) -> dict[int, Any]:
    """Claims of a valid root token ROOT -> ALICE with ``orders/*=msg/*``."""
    from m2mproto.tokens import Capability

    claims = build_claims(
        issuer=ROOT.agent_id,
        holder=ALICE.agent_id,
        capabilities=[Capability("orders/*", "msg/*")],
        issued_at=NOW,
        not_before=NOW,
        expires=NOW + 3600,
        token_id=b"\x11" * 16,
    )
    claims.update(overrides)
    return claims
