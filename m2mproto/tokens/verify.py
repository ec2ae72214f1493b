"""Token verification: limits, chain, holder, signatures, time, audience, attenuation, revocation.

Theory of operation
-------------------
:func:`verify` runs the steps of spec/tokens.md "Verification" in a fixed
order and raises at the first failure, so the reason code is deterministic.
Everything that can be decided from the parsed, unverified structure comes
before the first public-key operation (cheap first, spec/tokens.md
"Verification cost"):

1. size (``TOO_LARGE``); structure of the leaf (``MALFORMED``, ``BAD_ALG``,
   ``UNKNOWN_CRITICAL``, ``UNKNOWN_CAVEAT``) and its holder against the
   authenticated peer (``CNF_MISMATCH``) before any ancestor is unwrapped;
   then structure and chain length of the ``prf`` ancestors (same codes,
   ``TOO_DEEP``);
2. trust root (``UNTRUSTED_ROOT``) and linkage (``CHAIN_INVALID``);
3. one Ed25519 signature per link not already verified, root first
   (``BAD_SIGNATURE``); an optional ``charge`` callback is told how many are
   about to run and may refuse (the authorizer's budget);
4. time window of every link with the clock skew (``NOT_YET_VALID``,
   ``EXPIRED``), audience and ``allowed_peers`` (``WRONG_AUDIENCE``);
5. attenuation of every child against its parent (``ATTENUATION_VIOLATION``);
6. revocation of every link (``REVOKED``).

With a :class:`~m2mproto.tokens.cache.VerificationCache`, unwrapping stops at the
first link already verified (its chain comes from the cache) and only the new
links are parsed and verified; steps 2 and 4-6 always run on the whole chain.

Nothing here reads a clock: ``now`` is an argument.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import AuthorizationError, ErrorCode, LocalProtocolError, TokenError
from ..identity import AgentId
from .cache import DEFAULT_CACHE_ENTRIES, VerificationCache, digest
from .capabilities import (
    MAX_ABILITY_LEN,
    MAX_RESOURCE_LEN,
    Capability,
    Caveats,
    concrete_name_ok,
    covers_all,
)
from .claims import Link, parse_link
from .cose import verify_sign1

if TYPE_CHECKING:
    from .revocation import RevocationStore

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "ChainEntry",
    "Grant",
    "TokenLimits",
    "check_live",
    "verify",
]

#: Default tolerance (seconds) applied to exp and nbf.
DEFAULT_CLOCK_SKEW = 60.0


def _invalid(message: str) -> LocalProtocolError:
    return LocalProtocolError(message, ErrorCode.INVALID_ARGUMENT)


@dataclass(frozen=True, slots=True)
class TokenLimits:
    """Limits on what verifying tokens may cost.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) for an out-of-range value.
    """

    #: Largest accepted token (bytes, the whole chain included).
    max_token_size: int = 8192
    #: Most links in a delegation chain (the root token counts as one).
    max_chain_length: int = 8
    #: Most grants a :class:`TokenAuthorizer` keeps per peer (oldest evicted).
    max_grants_per_peer: int = 32
    #: Verified links a :class:`TokenAuthorizer`'s own cache keeps (LRU).
    verification_cache_entries: int = DEFAULT_CACHE_ENTRIES
    #: Signature verifications a peer may cause at once (burst of its budget).
    verification_burst: int = 64
    #: Signature verifications a peer's budget regains per second of ``now``.
    verification_rate: float = 16.0

    def __post_init__(self) -> None:
        for name in (
            "max_token_size",
            "max_chain_length",
            "max_grants_per_peer",
            "verification_cache_entries",
            "verification_burst",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise _invalid(f"{name} must be a positive integer")
        if self.verification_burst < self.max_chain_length:
            raise _invalid("verification_burst must be at least max_chain_length")
        rate = self.verification_rate
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < math.inf:
            raise _invalid("verification_rate must be a finite number >= 0")


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """One link of a verified chain (root first)."""

    token_id: bytes
    issuer: AgentId
    holder: AgentId
    expires: int


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows: the leaf's capabilities, narrowed by the chain."""

    #: The effective capabilities (the leaf's; each is covered by every ancestor).
    capabilities: tuple[Capability, ...]
    #: The agent the token is bound to (its ``cnf`` key).
    holder: AgentId
    #: The trust root that issued the first link.
    root: AgentId
    #: The chain, root first; ``chain[-1]`` is the presented token.
    chain: tuple[ChainEntry, ...]
    #: Effective validity window (the intersection over the chain), Unix seconds.
    not_before: int
    expires: int
    #: Effective caveats (the strictest value of each over the chain).
    caveats: Caveats
    #: The audience the token names, if any.
    audience: AgentId | None

    @property
    def token_id(self) -> bytes:
        """The ``cti`` of the presented (leaf) token."""
        return self.chain[-1].token_id

    def allows(self, resource: str, ability: str) -> bool:
        """True if a capability of this grant matches *ability* on *resource*.

        Invalid or wildcard names never match. Each name is validated once
        (:func:`~m2mproto.tokens.capabilities.concrete_name_ok` remembers names
        already found valid) and split once for all capabilities.
        """
        if not concrete_name_ok(resource, MAX_RESOURCE_LEN):
            return False
        if not concrete_name_ok(ability, MAX_ABILITY_LEN):
            return False
        res, abl = resource.split("/"), ability.split("/")
        return any(cap.matches_split(res, abl) for cap in self.capabilities)

    @property
    def max_message_size(self) -> int | None:
        """The effective ``max_message_size`` caveat (the connection enforces it, §6.4)."""
        return self.caveats.max_message_size

    def check_message(self, size: int) -> None:
        """Refuse a message of *size* bytes above the ``max_message_size`` caveat.

        Raises:
            AuthorizationError: (``MESSAGE_TOO_LARGE``).
        """
        limit = self.caveats.max_message_size
        if limit is not None and size > limit:
            raise AuthorizationError(
                f"message of {size} bytes exceeds the grant's max_message_size {limit}",
                ErrorCode.MESSAGE_TOO_LARGE,
            )

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly view."""
        return {
            "capabilities": [str(cap) for cap in self.capabilities],
            "holder": self.holder.text,
            "root": self.root.text,
            "chain": [
                {
                    "cti": e.token_id.hex(),
                    "iss": e.issuer.text,
                    "sub": e.holder.text,
                    "exp": e.expires,
                }
                for e in self.chain
            ],
            "nbf": self.not_before,
            "exp": self.expires,
            "caveats": self.caveats.to_json(),
            "aud": self.audience.text if self.audience else None,
        }


def _check_clock(now: float, skew: float) -> None:
    if not math.isfinite(now) or not math.isfinite(skew) or skew < 0:
        raise LocalProtocolError(
            "now must be finite and clock_skew finite and >= 0", ErrorCode.INVALID_ARGUMENT
        )


def _check_window(link: Link, now: float, skew: float) -> None:
    if now < link.not_before - skew:
        raise TokenError("token is not yet valid", ErrorCode.NOT_YET_VALID)
    if now > link.expires + skew:
        raise TokenError("token has expired", ErrorCode.EXPIRED)


def check_live(
    grant: Grant,
    now: float,
    *,
    revocations: RevocationStore | None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> None:
    """Re-check a verified grant at *now*: validity window and revocation.

    Raises:
        TokenError: ``NOT_YET_VALID``, ``EXPIRED`` or ``REVOKED``.
        LocalProtocolError: (``INVALID_ARGUMENT``) for a non-finite *now*.
    """
    _check_clock(now, clock_skew)
    if now < grant.not_before - clock_skew:
        raise TokenError("grant is not yet valid", ErrorCode.NOT_YET_VALID)
    if now > grant.expires + clock_skew:
        raise TokenError("grant has expired", ErrorCode.EXPIRED)
    if revocations is not None:
        _check_revocation(grant.chain, revocations)


def _check_revocation(chain: Sequence[ChainEntry], revocations: RevocationStore) -> None:
    authorities: list[AgentId] = []
    for entry in chain:
        authorities.append(entry.issuer)
        if revocations.is_revoked(entry.token_id, authorities):
            raise TokenError(f"token {entry.token_id.hex()} is revoked", ErrorCode.REVOKED)


def _check_holder(leaf: Link, holder: AgentId | None) -> None:
    if holder is not None and leaf.holder != holder:
        raise TokenError("token is bound to another key", ErrorCode.CNF_MISMATCH)


def _unwrap(
    token: bytes, max_links: int, cache: VerificationCache | None, holder: AgentId | None
) -> tuple[tuple[Link, ...], list[tuple[bytes, Link]]]:
    """Parse *token*, check its holder, then parse its ``prf`` ancestors up to a cached link.

    Returns the verified chain from the cache (root first, possibly empty) and
    the parsed, unverified links below it with their digests (root first).

    Raises:
        TokenError: any code of :func:`~m2mproto.tokens.claims.parse_link`,
            ``CNF_MISMATCH`` (as soon as the leaf is parsed, before any
            ancestor is), ``TOO_DEEP`` (more than *max_links* links in all).
    """
    fresh: list[tuple[bytes, Link]] = []
    known: tuple[Link, ...] = ()
    current: bytes | None = token
    while current is not None:
        key = b""
        if cache is not None:
            key = digest(current)
            hit = cache.get(key)
            if hit is not None:
                if not fresh:
                    _check_holder(hit[-1], holder)
                if len(fresh) + len(hit) > max_links:
                    raise TokenError(
                        f"delegation chain longer than {max_links} links", ErrorCode.TOO_DEEP
                    )
                known = hit
                break
        if len(fresh) >= max_links:
            raise TokenError(f"delegation chain longer than {max_links} links", ErrorCode.TOO_DEEP)
        link = parse_link(current)
        if not fresh:
            _check_holder(link, holder)
        fresh.append((key, link))
        current = link.parent
    fresh.reverse()
    return known, fresh


def verify(
    token: bytes,
    *,
    trust_roots: Iterable[AgentId],
    now: float,
    holder: AgentId | None,
    audience: AgentId | None = None,
    revocations: RevocationStore | None = None,
    limits: TokenLimits | None = None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
    cache: VerificationCache | None = None,
    charge: Callable[[int], None] | None = None,
) -> Grant:
    """Verify *token* (and its delegation chain) and return what it grants.

    Args:
        token: the presented token (a tagged COSE_Sign1).
        trust_roots: agents whose root tokens are accepted.
        now: the current Unix time in seconds.
        holder: the authenticated peer presenting the token; ``None`` skips
            the holder binding (only for offline inspection tools).
        audience: the verifier's own agent ID; a token naming an audience (or
            ``allowed_peers``) is rejected when this is ``None`` or differs.
        revocations: a store of verified revocation statements.
        limits: size and depth limits (defaults: 8 KiB, 8 links).
        clock_skew: seconds of tolerance on exp and nbf.
        cache: verified links to reuse and to add to (its trust roots must
            be *trust_roots*).
        charge: called with the number of signatures about to be verified,
            after every cheap check passed; it may raise to refuse.

    Returns:
        The verified :class:`Grant`.

    Raises:
        TokenError: with the precise reason code (see the module docstring).
        LocalProtocolError: (``INVALID_ARGUMENT``) for a non-finite *now*, a
            negative *clock_skew* or a cache of other trust roots (caller
            misuse, not bad input).
        Exception: whatever *charge* raises.
    """
    _check_clock(now, clock_skew)
    limits = limits or TokenLimits()
    if not isinstance(token, (bytes, bytearray, memoryview)):
        raise TokenError("a token must be bytes", ErrorCode.MALFORMED)
    if len(token) > limits.max_token_size:
        raise TokenError(
            f"token of {len(token)} bytes exceeds {limits.max_token_size}", ErrorCode.TOO_LARGE
        )
    roots = frozenset(trust_roots)
    if cache is not None:
        cache.check_roots(roots)
    known, fresh = _unwrap(bytes(token), limits.max_chain_length, cache, holder)
    chain = known + tuple(link for _, link in fresh)
    leaf = chain[-1]
    if chain[0].issuer not in roots:
        raise TokenError("root issuer is not a trust root", ErrorCode.UNTRUSTED_ROOT)
    for parent, child in itertools.pairwise(chain):
        if child.issuer != parent.holder:
            raise TokenError("link not issued by its parent's holder", ErrorCode.CHAIN_INVALID)
    if fresh and charge is not None:
        charge(len(fresh))
    above = known
    for key, link in fresh:  # root first
        verify_sign1(link.sign1, link.issuer.public_key)
        if cache is not None:
            above = cache.put(key, above, link)
    for link in chain:
        _check_window(link, now, clock_skew)
    caveats = Caveats()
    for link in chain:
        caveats = caveats.merge(link.caveats)
    for link in chain:
        if link.audience is not None and link.audience != audience:
            raise TokenError("token is for another audience", ErrorCode.WRONG_AUDIENCE)
    if caveats.allowed_peers is not None and (
        audience is None or audience not in caveats.allowed_peers
    ):
        raise TokenError("verifier is not in allowed_peers", ErrorCode.WRONG_AUDIENCE)
    for parent, child in itertools.pairwise(chain):
        if not covers_all(parent.capabilities, child.capabilities):
            raise TokenError("child grants more than its parent", ErrorCode.ATTENUATION_VIOLATION)
        if child.expires > parent.expires or child.not_before < parent.not_before:
            raise TokenError("child outlives its parent", ErrorCode.ATTENUATION_VIOLATION)
        if not child.caveats.narrows(parent.caveats):
            raise TokenError(
                "child caveats are looser than its parent's", ErrorCode.ATTENUATION_VIOLATION
            )
    entries = tuple(
        ChainEntry(link.token_id, link.issuer, link.holder, link.expires) for link in chain
    )
    if revocations is not None:
        _check_revocation(entries, revocations)
    return Grant(
        capabilities=leaf.capabilities,
        holder=leaf.holder,
        root=chain[0].issuer,
        chain=entries,
        not_before=max(link.not_before for link in chain),
        expires=min(link.expires for link in chain),
        caveats=caveats,
        audience=leaf.audience,
    )
