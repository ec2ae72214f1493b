"""Capability tokens: COSE_Sign1 / CWT, delegation, attenuation, revocation (spec/tokens.md).

Sans-IO: time is an argument (``now``, Unix seconds) and randomness is
injected (``entropy``). The only I/O is in :class:`FileRevocationStore`.
"""

from __future__ import annotations

from .authorizer import TokenAuthorizer
from .cache import VerificationBudget, VerificationCache
from .capabilities import Capability, Caveats
from .issue import delegate, issue
from .revocation import (
    FileRevocationStore,
    InMemoryRevocationStore,
    RevocationStatement,
    RevocationStore,
    revoke,
)
from .verify import ChainEntry, Grant, TokenLimits, verify
from .view import inspect

__all__ = [
    "Capability",
    "Caveats",
    "ChainEntry",
    "FileRevocationStore",
    "Grant",
    "InMemoryRevocationStore",
    "RevocationStatement",
    "RevocationStore",
    "TokenAuthorizer",
    "TokenLimits",
    "VerificationBudget",
    "VerificationCache",
    "delegate",
    "inspect",
    "issue",
    "revoke",
    "verify",
]
