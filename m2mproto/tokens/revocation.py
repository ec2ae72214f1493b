"""Revocation statements and stores (spec/tokens.md, "Revocation").

Theory of operation
-------------------
A revocation statement is a COSE_Sign1 signed like a token (protected
``{1: -8, 4: kid}``) whose claims are ``{1: iss, 6: iat, -65540: [cti, ...]}``.
A store accepts any statement whose signature verifies and records the pairs
(token ID, revoker). Whether a pair *counts* is decided at verification time:
a link's ID is revoked when the revoker is the link's issuer or the issuer of
any link above it in the same chain (so an authority can revoke anything
delegated under it, and nobody else can). Because every link of a chain is
checked, revoking a link revokes everything delegated from it.

:class:`FileRevocationStore` keeps statements in a file of concatenated CBOR
items. Appending keeps what is there; a missing or empty file means nothing is
revoked; :meth:`FileRevocationStore.reload_if_changed` re-reads the file when
its size, mtime or inode changed -- the caller decides when to call it (no
threads, no timers). A corrupt file raises and leaves the previous state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from .. import cbor
from ..errors import DecodeError, ErrorCode, LocalProtocolError, TokenError
from ..identity import AgentId, Identity
from .claims import CLAIM_IAT, CLAIM_ISS, CLAIM_REVOKED, MAX_CTI, MIN_CTI, parse_link, sign_claims
from .cose import HDR_ALG, HDR_KID, MAX_DEPTH, decode_sign1, verify_sign1

__all__ = [
    "MAX_REVOKED_PER_STATEMENT",
    "FileRevocationStore",
    "InMemoryRevocationStore",
    "RevocationStatement",
    "RevocationStore",
    "parse_statement",
    "revoke",
]

MAX_REVOKED_PER_STATEMENT = 1024
MAX_STATEMENT_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class RevocationStatement:
    """A verified revocation statement."""

    revoker: AgentId
    issued_at: int
    token_ids: tuple[bytes, ...]


@runtime_checkable
class RevocationStore(Protocol):
    """What :func:`verify` needs from a revocation store."""

    def is_revoked(self, token_id: bytes, authorities: Sequence[AgentId]) -> bool:
        """True if *token_id* is revoked by one of *authorities* (or locally)."""
        ...

    def add(self, statement: bytes) -> RevocationStatement:
        """Verify and record a statement.

        Raises:
            TokenError: if the statement is malformed or its signature fails.
        """
        ...


def revoke(issuer: Identity, token_ids_or_tokens: Iterable[bytes], *, now: float) -> bytes:
    """Sign a statement revoking the given token IDs (or the IDs of given tokens).

    An item of at most 64 bytes is a token ID (``cti``); a longer item is
    parsed as a token and its ``cti`` is used.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) for an empty or oversized
            list or a bad ID; TokenError: (``MALFORMED``) for a bad token.
    """
    ids: list[bytes] = []
    for item in token_ids_or_tokens:
        if not isinstance(item, (bytes, bytearray)):
            raise LocalProtocolError("token IDs and tokens are bytes", ErrorCode.INVALID_ARGUMENT)
        cti = bytes(item) if len(item) <= MAX_CTI else parse_link(bytes(item)).token_id
        if len(cti) < MIN_CTI:
            raise LocalProtocolError(
                f"a token ID has at least {MIN_CTI} bytes", ErrorCode.INVALID_ARGUMENT
            )
        if cti not in ids:
            ids.append(cti)
    if not 1 <= len(ids) <= MAX_REVOKED_PER_STATEMENT:
        raise LocalProtocolError(
            f"a statement names 1..{MAX_REVOKED_PER_STATEMENT} token IDs",
            ErrorCode.INVALID_ARGUMENT,
        )
    if not math.isfinite(now):
        raise LocalProtocolError("now must be finite", ErrorCode.INVALID_ARGUMENT)
    claims = {CLAIM_ISS: issuer.agent_id.text, CLAIM_IAT: math.floor(now), CLAIM_REVOKED: ids}
    return sign_claims(issuer, claims)


def _malformed(message: str) -> TokenError:
    return TokenError(message, ErrorCode.MALFORMED)


def parse_statement(data: bytes) -> RevocationStatement:
    """Parse and verify a revocation statement (its signature, not its authority).

    Raises:
        TokenError: ``TOO_LARGE``, ``MALFORMED``, ``BAD_ALG``,
            ``UNKNOWN_CRITICAL`` or ``BAD_SIGNATURE``.
    """
    if len(data) > MAX_STATEMENT_SIZE:
        raise TokenError("revocation statement too large", ErrorCode.TOO_LARGE)
    sign1 = decode_sign1(data)
    if sign1.unprotected or set(sign1.protected) != {HDR_ALG, HDR_KID}:
        raise _malformed("a statement's headers are exactly protected alg and kid")
    kid = sign1.protected[HDR_KID]
    try:
        claims = cbor.decode(sign1.payload, max_depth=MAX_DEPTH)
    except DecodeError as exc:
        raise _malformed(f"statement claims: {exc.message}") from None
    if not isinstance(claims, dict) or set(claims) != {CLAIM_ISS, CLAIM_IAT, CLAIM_REVOKED}:
        raise _malformed("a statement's claims are exactly iss, iat and revoked")
    iss, iat, ids = claims[CLAIM_ISS], claims[CLAIM_IAT], claims[CLAIM_REVOKED]
    try:
        if not isinstance(iss, str):
            raise LocalProtocolError("not text", ErrorCode.AGENT_ID_INVALID)
        revoker = AgentId.parse(iss)
    except LocalProtocolError:
        raise _malformed("statement iss is not an agent ID") from None
    if kid != revoker.public_key:
        raise _malformed("statement kid does not match iss")
    if isinstance(iat, bool) or not isinstance(iat, int) or not -(2**63) <= iat < 2**63:
        raise _malformed("statement iat must be an integer")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_REVOKED_PER_STATEMENT
        or not all(isinstance(i, bytes) and MIN_CTI <= len(i) <= MAX_CTI for i in ids)
    ):
        raise _malformed("revoked must be an array of token IDs")
    verify_sign1(sign1, revoker.public_key)
    return RevocationStatement(revoker, iat, tuple(ids))


class InMemoryRevocationStore:
    """A revocation store held in memory."""

    def __init__(self, statements: Iterable[bytes] = ()) -> None:
        self._revoked: dict[bytes, set[AgentId]] = {}
        self._local: set[bytes] = set()
        for statement in statements:
            self.add(statement)

    def _record(self, statement: RevocationStatement) -> None:
        for cti in statement.token_ids:
            self._revoked.setdefault(cti, set()).add(statement.revoker)

    def add(self, statement: bytes) -> RevocationStatement:
        """Verify and record *statement*.

        Raises:
            TokenError: see :func:`parse_statement`.
        """
        parsed = parse_statement(statement)
        self._record(parsed)
        return parsed

    def revoke_locally(self, token_id: bytes) -> None:
        """Revoke *token_id* by local policy, whatever its chain (operator override)."""
        self._local.add(bytes(token_id))

    def is_revoked(self, token_id: bytes, authorities: Sequence[AgentId]) -> bool:
        """True if *token_id* is revoked locally or by one of *authorities*."""
        if token_id in self._local:
            return True
        revokers = self._revoked.get(token_id)
        return revokers is not None and any(a in revokers for a in authorities)

    def __len__(self) -> int:
        return len(self._revoked) + len(self._local)


class FileRevocationStore(InMemoryRevocationStore):
    """A revocation store backed by a file of concatenated statements."""

    def __init__(
        self, path: str | os.PathLike[str], *, max_file_size: int = 16 * 1024 * 1024
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.max_file_size = max_file_size
        self._stamp: tuple[int, int, int] | None = None
        self.reload_if_changed()

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TokenError(
                f"{self.path}: cannot stat ({exc.strerror})", ErrorCode.MALFORMED
            ) from None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed since the last read; return True if it did.

        "Changed" means a different inode, size or modification time. A rewrite
        of the same size within the file system's timestamp granularity is not
        seen; writers should append (as :meth:`add` does) or replace the file
        by renaming a new one over it.

        Raises:
            TokenError: (``MALFORMED`` / ``TOO_LARGE`` / ``BAD_SIGNATURE``) if the
                file cannot be read or holds a bad statement; the previous
                state is kept.
        """
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return False
        data = b""
        if stamp is not None:
            if stamp[1] > self.max_file_size:
                raise TokenError(f"{self.path}: revocation file too large", ErrorCode.TOO_LARGE)
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                raise TokenError(
                    f"{self.path}: cannot read ({exc.strerror})", ErrorCode.MALFORMED
                ) from None
        fresh: dict[bytes, set[AgentId]] = {}
        offset = 0
        while offset < len(data):
            try:
                _, end = cbor.decode_prefix(
                    data, offset, max_depth=MAX_DEPTH, allowed_tags=frozenset({18})
                )
            except DecodeError as exc:
                raise _malformed(f"{self.path}: offset {offset}: {exc.message}") from None
            parsed = parse_statement(data[offset:end])
            for cti in parsed.token_ids:
                fresh.setdefault(cti, set()).add(parsed.revoker)
            offset = end
        self._revoked = fresh
        self._stamp = stamp
        return True

    def add(self, statement: bytes) -> RevocationStatement:
        """Verify *statement*, append it to the file and record it.

        Raises:
            TokenError: see :func:`parse_statement`; ``MALFORMED`` if the file
                cannot be written.
        """
        parsed = parse_statement(statement)
        self.reload_if_changed()
        try:
            with self.path.open("ab") as fh:
                fh.write(bytes(statement))
        except OSError as exc:
            raise TokenError(
                f"{self.path}: cannot append ({exc.strerror})", ErrorCode.MALFORMED
            ) from None
        self._record(parsed)
        self._stamp = self._current_stamp()
        return parsed
