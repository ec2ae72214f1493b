"""TokenAuthorizer: the object the connection asks "may this peer do that, now?".

Theory of operation
-------------------
``accept_tokens`` verifies each presented token with ``holder`` = the peer
the handshake authenticated and remembers the resulting grants per peer
(at most ``limits.max_grants_per_peer``; the oldest is evicted, and a token
presented again replaces its earlier grant). ``authorize`` looks for a
remembered grant that is still live at ``now`` (validity window and
revocation re-checked on every call, so a grant that expires or is revoked
mid-connection stops covering new operations at once) and whose
capabilities match the resource and ability. All state is in memory and
changes only through these calls; nothing here reads a clock.

Verification cost (spec/tokens.md "Verification cost"): tokens are verified
through a :class:`~m2mproto.tokens.cache.VerificationCache` (the authorizer's
own, ``limits.verification_cache_entries`` links, unless one is passed in to
share, e.g. per server), so a link whose signature verified once is not
verified again; and each peer has a :class:`~m2mproto.tokens.cache.VerificationBudget`
of ``limits.verification_burst`` signature verifications refilled at
``limits.verification_rate`` per second of ``now``. A token that needs more
than is left raises :class:`~m2mproto.errors.TokenBudgetExceeded` before any
signature is verified (the connection closes with ``ENHANCE_YOUR_CALM``).
Duplicates and tokens rejected by the cheap checks cost no budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import AuthorizationError, ErrorCode, TokenError
from ..identity import AgentId
from .cache import VerificationBudget, VerificationCache
from .revocation import RevocationStore
from .verify import DEFAULT_CLOCK_SKEW, Grant, TokenLimits, check_live, verify

__all__ = ["TokenAuthorizer"]


class TokenAuthorizer:
    """Verifies presented tokens and answers authorization questions per peer."""

    def __init__(
        self,
        *,
        trust_roots: Iterable[AgentId],
        audience: AgentId | None = None,
        revocations: RevocationStore | None = None,
        limits: TokenLimits | None = None,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        cache: VerificationCache | None = None,
    ) -> None:
        """Args as :func:`~m2mproto.tokens.verify`; *cache* shares verified links.

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) if *cache* serves other
                trust roots.
        """
        self.trust_roots = frozenset(trust_roots)
        self.audience = audience
        self.revocations = revocations
        self.limits = limits or TokenLimits()
        self.clock_skew = clock_skew
        if cache is None:
            cache = VerificationCache(
                trust_roots=self.trust_roots, max_entries=self.limits.verification_cache_entries
            )
        cache.check_roots(self.trust_roots)
        self.cache = cache
        self._grants: dict[AgentId, list[Grant]] = {}
        self._budgets: dict[AgentId, VerificationBudget] = {}

    def _budget(self, peer: AgentId) -> VerificationBudget:
        budget = self._budgets.get(peer)
        if budget is None:
            limits = self.limits
            budget = VerificationBudget(limits.verification_burst, limits.verification_rate)
            self._budgets[peer] = budget
        return budget

    def accept_tokens(self, peer: AgentId, tokens: Sequence[bytes], now: float) -> list[Grant]:
        """Verify *tokens* presented by *peer* and remember the grants.

        All tokens are verified before any is remembered, so one bad token
        changes nothing.

        Returns:
            The new grants, in the order of *tokens*.

        Raises:
            TokenError: with the precise code of the first invalid token.
            TokenBudgetExceeded: (``ENHANCE_YOUR_CALM``) when a token needs more
                signature verifications than *peer*'s budget has left.
        """
        budget = self._budget(peer)

        def charge(count: int) -> None:
            budget.charge(count, now)

        grants = [
            verify(
                token,
                trust_roots=self.trust_roots,
                now=now,
                holder=peer,
                audience=self.audience,
                revocations=self.revocations,
                limits=self.limits,
                clock_skew=self.clock_skew,
                cache=self.cache,
                charge=charge,
            )
            for token in tokens
        ]
        held = self._grants.setdefault(peer, [])
        for grant in grants:
            held[:] = [g for g in held if g.token_id != grant.token_id]
            held.append(grant)
        del held[: max(0, len(held) - self.limits.max_grants_per_peer)]
        return grants

    def authorize(self, peer: AgentId, resource: str, ability: str, now: float) -> Grant:
        """Return a live grant of *peer* allowing *ability* on *resource* at *now*.

        Raises:
            AuthorizationError: (``UNAUTHORIZED``) when no live grant covers it.
        """
        for grant in reversed(self._grants.get(peer, ())):
            if not grant.allows(resource, ability):
                continue
            try:
                check_live(grant, now, revocations=self.revocations, clock_skew=self.clock_skew)
            except TokenError:
                continue
            return grant
        raise AuthorizationError(
            f"no capability for {ability!r} on {resource!r}", ErrorCode.UNAUTHORIZED
        )

    def grants(self, peer: AgentId) -> tuple[Grant, ...]:
        """The grants remembered for *peer* (live or not), oldest first."""
        return tuple(self._grants.get(peer, ()))

    def prune(self, peer: AgentId, now: float) -> list[Grant]:
        """Forget *peer*'s grants that expired or were revoked; return them.

        The connection can use the result to reset streams that depended on them.
        """
        kept: list[Grant] = []
        dropped: list[Grant] = []
        for grant in self._grants.get(peer, ()):
            try:
                check_live(grant, now, revocations=self.revocations, clock_skew=self.clock_skew)
            except TokenError:
                dropped.append(grant)
            else:
                kept.append(grant)
        if peer in self._grants:
            self._grants[peer] = kept
        return dropped

    def forget(self, peer: AgentId) -> None:
        """Drop all state about *peer* (call when its connection closes)."""
        self._grants.pop(peer, None)
        self._budgets.pop(peer, None)
