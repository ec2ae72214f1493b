"""What verifying tokens may cost: a cache of verified links and a verification budget.

Theory of operation
-------------------
An Ed25519 verification is the expensive step of token verification (spec/tokens.md
§6.6 step 7); everything before it is parsing and comparisons.
:class:`VerificationCache` remembers links whose signature verified, keyed by the
SHA-256 of the link's bytes, with the chain above each link (root first), so a
token presented again -- or a new leaf under known ancestors -- costs hashing and
the cheap checks only. It holds the *parsed, signature-verified structure* and
nothing else: the verdicts that depend on the moment or the verifier (time window,
audience, holder, attenuation, revocation) are computed again at every use. Entries
keep no token bytes (a few hundred bytes each plus their capabilities); at most
``max_entries`` are kept, the least recently used is evicted first. A cache belongs
to one set of trust roots and refuses to serve another.

:class:`VerificationBudget` is a token bucket counted in signature verifications:
``burst`` at most, refilled at ``rate`` per second of the caller's clock (``now`` is
an argument; nothing here reads a clock). Charging more than is left raises
:class:`~m2mproto.errors.TokenBudgetExceeded` and takes nothing.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace

from ..errors import ErrorCode, LocalProtocolError, TokenBudgetExceeded
from ..identity import AgentId
from .claims import Link
from .cose import Sign1

__all__ = ["DEFAULT_CACHE_ENTRIES", "VerificationBudget", "VerificationCache", "digest"]

#: Default number of verified links a cache keeps (eight full chains of eight links).
DEFAULT_CACHE_ENTRIES = 64

_NO_SIGN1 = Sign1(b"", {}, {}, b"", b"")


def digest(token: bytes) -> bytes:
    """The cache key of a token: SHA-256 of its bytes."""
    return hashlib.sha256(token).digest()


def _slim(link: Link) -> Link:
    """*link* without its bytes (raw token, COSE structure, parent): what checks need."""
    return replace(link, raw=b"", sign1=_NO_SIGN1, parent=None)


class VerificationCache:
    """Signature-verified links by SHA-256 of their bytes, bounded, least recently used out.

    Not thread-safe: share one between the connections of one event loop.
    """

    def __init__(
        self, *, trust_roots: Iterable[AgentId], max_entries: int = DEFAULT_CACHE_ENTRIES
    ) -> None:
        if type(max_entries) is not int or max_entries < 1:
            raise LocalProtocolError(
                "max_entries must be a positive integer", ErrorCode.INVALID_ARGUMENT
            )
        self.trust_roots = frozenset(trust_roots)
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[Link, ...]] = OrderedDict()
        #: Lookups that found a verified link / that did not (for tests and benchmarks).
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def check_roots(self, trust_roots: frozenset[AgentId]) -> None:
        """Refuse to serve a verifier with other trust roots.

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) if the sets differ.
        """
        if trust_roots != self.trust_roots:
            raise LocalProtocolError(
                "a verification cache serves one set of trust roots", ErrorCode.INVALID_ARGUMENT
            )

    def get(self, key: bytes) -> tuple[Link, ...] | None:
        """The verified chain ending with the link whose digest is *key* (root first)."""
        chain = self._entries.get(key)
        if chain is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return chain

    def put(self, key: bytes, above: tuple[Link, ...], link: Link) -> tuple[Link, ...]:
        """Remember *link* (its signature verified) under *key*, below the verified *above*.

        Returns the stored chain, root first, ending with *link*.
        """
        chain = (*above, _slim(link))
        self._entries[key] = chain
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return chain

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()


class VerificationBudget:
    """A token bucket counted in signature verifications (``now`` from the caller)."""

    __slots__ = ("_at", "_left", "burst", "rate")

    def __init__(self, burst: int, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self._left = float(burst)
        self._at: float | None = None

    def available(self, now: float) -> float:
        """Verifications that may run at *now* (refills; never above ``burst``)."""
        if self._at is None:
            self._at = now
        elif now > self._at:
            self._left = min(float(self.burst), self._left + (now - self._at) * self.rate)
            self._at = now
        return self._left

    def charge(self, count: int, now: float) -> None:
        """Take *count* verifications, or none.

        Raises:
            TokenBudgetExceeded: (``ENHANCE_YOUR_CALM``) if fewer than *count* are left.
        """
        if count > self.available(now):
            raise TokenBudgetExceeded(
                f"token verification budget exhausted ({count} signatures needed)",
                ErrorCode.ENHANCE_YOUR_CALM,
            )
        self._left -= count
