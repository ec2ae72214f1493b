"""Issuing and delegating tokens (the producer side of spec/tokens.md).

Local misuse (a delegation that would widen its parent, a bad TTL, a parent
not held by the delegating identity) raises :class:`LocalProtocolError` at
once, so this module never produces a token that verification would reject
for attenuation. Randomness comes from *entropy*.

These are edge APIs, called by applications and the CLI, not by the sans-IO
core: ``now`` defaults to the current time (``time.time()``) and stays an
argument so that tests and offline issuers can pin it. Agent IDs may be given
as :class:`AgentId` or as their text form, as ``connect(peer=...)`` accepts.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import ErrorCode, LocalProtocolError
from ..identity import AgentId, Identity
from .capabilities import Capability, Caveats, covers_all
from .claims import MAX_CAPABILITIES, build_claims, parse_link, sign_claims

__all__ = ["TOKEN_ID_LEN", "delegate", "issue"]

#: Length of the ``cti`` this implementation draws.
TOKEN_ID_LEN = 16

CapabilityLike = Capability | str


def _capabilities(items: Iterable[CapabilityLike]) -> tuple[Capability, ...]:
    if isinstance(items, (str, Capability)):
        items = [items]
    caps: list[Capability] = []
    for item in items:
        cap = Capability.parse(item) if isinstance(item, str) else item
        if not isinstance(cap, Capability):
            raise LocalProtocolError(
                "capabilities must be Capability or str", ErrorCode.INVALID_ARGUMENT
            )
        if cap not in caps:
            caps.append(cap)
    if not 1 <= len(caps) <= MAX_CAPABILITIES:
        raise LocalProtocolError(
            f"a token carries 1..{MAX_CAPABILITIES} capabilities", ErrorCode.INVALID_ARGUMENT
        )
    return tuple(caps)


def _token_id(entropy: Callable[[int], bytes]) -> bytes:
    cti = entropy(TOKEN_ID_LEN)
    if not isinstance(cti, bytes) or len(cti) != TOKEN_ID_LEN:
        raise LocalProtocolError(
            "entropy source returned the wrong length", ErrorCode.INVALID_ARGUMENT
        )
    return cti


def _agent(value: AgentId | str, what: str) -> AgentId:
    if isinstance(value, AgentId):
        return value
    if isinstance(value, str):
        return AgentId.parse(value)
    raise LocalProtocolError(
        f"{what} must be an AgentId or an agent ID string", ErrorCode.INVALID_ARGUMENT
    )


def _window(now: float | None, ttl: float, not_before: float | None) -> tuple[int, int, int]:
    if now is None:
        now = time.time()
    if not math.isfinite(now) or not math.isfinite(ttl) or ttl <= 0:
        raise LocalProtocolError("now must be finite and ttl positive", ErrorCode.INVALID_ARGUMENT)
    iat = math.floor(now)
    nbf = math.floor(not_before) if not_before is not None else iat
    exp = math.floor(now + ttl)
    if exp <= nbf:
        raise LocalProtocolError(
            "the token would expire before it is valid", ErrorCode.INVALID_ARGUMENT
        )
    return iat, nbf, exp


def issue(
    issuer: Identity,
    holder: AgentId | str,
    capabilities: Iterable[CapabilityLike],
    *,
    now: float | None = None,
    ttl: float,
    audience: AgentId | str | None = None,
    caveats: Mapping[str, Any] | Caveats | None = None,
    not_before: float | None = None,
    entropy: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Issue a root token from *issuer* to *holder*.

    Args:
        holder: the agent the token is for (an ``AgentId`` or its ``m2m1...`` text).
        capabilities: ``Capability`` values or ``"resource=ability"`` strings.
        now: Unix time of issue, default the current time (becomes ``iat``;
            ``nbf`` unless *not_before*).
        ttl: lifetime in seconds (``exp = floor(now + ttl)``).
        audience: the only verifier that may accept the token (``AgentId`` or text).
        caveats: e.g. ``{"max_message_size": 65536, "allowed_peers": [agent_id]}``.
        entropy: source of the 16-byte token ID.

    Returns:
        The token (a tagged COSE_Sign1).

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) for invalid arguments.
        LocalProtocolError: (``AGENT_ID_INVALID``) a malformed agent ID string.
    """
    holder = _agent(holder, "holder")
    audience = _agent(audience, "audience") if audience is not None else None
    caps = _capabilities(capabilities)
    iat, nbf, exp = _window(now, ttl, not_before)
    claims = build_claims(
        issuer=issuer.agent_id,
        holder=holder,
        capabilities=caps,
        issued_at=iat,
        not_before=nbf,
        expires=exp,
        token_id=_token_id(entropy),
        audience=audience,
        caveats=Caveats.from_mapping(caveats),
    )
    return sign_claims(issuer, claims)


def delegate(
    holder_identity: Identity,
    parent: bytes,
    to: AgentId | str,
    capabilities: Iterable[CapabilityLike],
    *,
    now: float | None = None,
    ttl: float,
    audience: AgentId | str | None = None,
    caveats: Mapping[str, Any] | Caveats | None = None,
    not_before: float | None = None,
    entropy: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Delegate (a subset of) *parent*'s rights to *to*, carrying *parent* as proof.

    The child's window is clipped to the parent's (``exp`` is at most the
    parent's, ``nbf`` at least the parent's; ``now`` defaults to the current
    time; *to* and *audience* may be agent ID strings), its caveats are the parent's
    narrowed by *caveats*, and its audience defaults to the parent's.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) if *holder_identity* does not
            hold *parent*, a capability is not covered by the parent, the
            audience differs from the parent's, or the window is empty.
        TokenError: (``MALFORMED`` ...) if *parent* is not a token.
    """
    to = _agent(to, "to")
    audience = _agent(audience, "audience") if audience is not None else None
    link = parse_link(parent)
    if link.holder != holder_identity.agent_id:
        raise LocalProtocolError(
            "the parent token is not held by this identity", ErrorCode.INVALID_ARGUMENT
        )
    caps = _capabilities(capabilities)
    if not covers_all(link.capabilities, caps):
        raise LocalProtocolError(
            "a capability is not covered by the parent", ErrorCode.INVALID_ARGUMENT
        )
    iat, nbf, exp = _window(now, ttl, not_before)
    nbf = max(nbf, link.not_before)
    exp = min(exp, link.expires)
    if exp <= nbf:
        raise LocalProtocolError(
            "the parent's window leaves nothing to delegate", ErrorCode.INVALID_ARGUMENT
        )
    if audience is None:
        audience = link.audience
    elif link.audience is not None and audience != link.audience:
        raise LocalProtocolError("the parent names another audience", ErrorCode.INVALID_ARGUMENT)
    merged = link.caveats.merge(Caveats.from_mapping(caveats))
    if merged.allowed_peers is not None and not merged.allowed_peers:
        raise LocalProtocolError("allowed_peers would become empty", ErrorCode.INVALID_ARGUMENT)
    claims = build_claims(
        issuer=holder_identity.agent_id,
        holder=to,
        capabilities=caps,
        issued_at=iat,
        not_before=nbf,
        expires=exp,
        token_id=_token_id(entropy),
        audience=audience,
        caveats=merged,
        parent=bytes(parent),
    )
    return sign_claims(holder_identity, claims)
