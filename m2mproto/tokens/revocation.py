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
items. Appending keeps what is there (never through a symbolic link).
Revocations are monotonic: a reload only ever *adds* entries, so a file that
is truncated, rewritten in pieces, removed or replaced never un-revokes
anything. :meth:`FileRevocationStore.reload_if_changed` re-reads the file when
its size, mtime or inode changed -- the caller decides when to call it (no
threads, no timers). When the file only grew, only the new bytes are read;
when it was replaced, statements already verified (by digest) are skipped, so
a reload costs what changed. A statement cut short at the end of the file is
"not written yet" (:attr:`~FileRevocationStore.pending_bytes`) and read when
complete; a bad statement raises, naming the file, after the good ones before
it were recorded. The work is split for callers on an event loop:
:meth:`~FileRevocationStore.read_changes` (reads and verifies, records
nothing: run it in a worker thread) and :meth:`~FileRevocationStore.apply`.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from .. import cbor
from ..errors import DecodeError, ErrorCode, LocalProtocolError, TokenError
from ..identity import AgentId, Identity
from .claims import (
    CLAIM_IAT,
    CLAIM_ISS,
    CLAIM_REVOKED,
    MAX_CTI,
    MIN_CTI,
    parse_chain,
    parse_link,
    sign_claims,
)
from .cose import HDR_ALG, HDR_KID, MAX_DEPTH, decode_sign1, verify_sign1

__all__ = [
    "MAX_REVOKED_PER_STATEMENT",
    "FileRevocationStore",
    "InMemoryRevocationStore",
    "RevocationStatement",
    "RevocationStore",
    "RevocationUpdate",
    "parse_statement",
    "revocation_authorities",
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


def revocation_authorities(token: bytes, *, max_links: int = 8) -> tuple[AgentId, ...]:
    """The agents whose statement revokes *token*: the issuer of each link of its chain.

    That is the root issuer and every delegator above the holder (each
    ancestor's holder); never the token's own holder. The chain's signatures
    and linkage are verified, so a forged token is not evidence of authority
    (nor a way to get a real token's ID revoked); trust roots, time and
    attenuation are not checked.

    Raises:
        TokenError: ``MALFORMED``, ``TOO_DEEP``, ``CHAIN_INVALID``,
            ``BAD_SIGNATURE`` (and the other parse codes).
    """
    chain = parse_chain(bytes(token), max_links=max_links)
    for parent, child in itertools.pairwise(chain):
        if child.issuer != parent.holder:
            raise TokenError("a link is not issued by its parent's holder", ErrorCode.CHAIN_INVALID)
    for link in chain:
        verify_sign1(link.sign1, link.issuer.public_key)
    return tuple(dict.fromkeys(link.issuer for link in chain))


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


_TAGS = frozenset({18})
_TAIL = 64  # bytes before the read offset remembered to detect an in-place rewrite


def _incomplete(data: bytes, offset: int) -> bool:
    """True if ``data[offset:]`` is the beginning of one item that is not complete yet."""
    rest = len(data) - offset
    if rest >= MAX_STATEMENT_SIZE:
        return False
    padded = data[offset:] + bytes(MAX_STATEMENT_SIZE)
    try:
        _, end = cbor.decode_prefix(padded, 0, max_depth=MAX_DEPTH, allowed_tags=_TAGS)
    except DecodeError:
        return False
    return end > rest


@dataclass(slots=True)
class RevocationUpdate:
    """What :meth:`FileRevocationStore.read_changes` found (apply it with ``apply``)."""

    stamp: tuple[int, int, int] | None
    offset: int
    tail: bytes
    pending: int
    statements: list[RevocationStatement] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    bytes_read: int = 0
    error: TokenError | None = None


class FileRevocationStore(InMemoryRevocationStore):
    """A revocation store backed by a file of concatenated statements.

    With *must_exist*, a missing or unreadable file is an error
    (``LocalProtocolError``, ``INVALID_ARGUMENT``, naming the file) instead of
    "nothing revoked": use it when the file was named by an operator.

    Raises:
        LocalProtocolError: see *must_exist*.
        TokenError: the file holds a bad statement (see :meth:`reload_if_changed`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_file_size: int = 16 * 1024 * 1024,
        must_exist: bool = False,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.max_file_size = max_file_size
        self._stamp: tuple[int, int, int] | None = None
        self._offset = 0  # bytes of the current file already parsed
        self._tail = b""  # the _TAIL bytes before _offset, to detect a rewrite
        self._digests: set[bytes] = set()  # SHA-256 of every statement verified
        #: Trailing bytes of the file that are not a complete statement yet.
        self.pending_bytes = 0
        #: Statements whose signature was verified (each distinct statement once).
        self.verified = 0
        #: Bytes read from the file so far (all reloads).
        self.bytes_read = 0
        if must_exist:
            try:
                with self.path.open("rb"):
                    pass
            except OSError as exc:
                raise LocalProtocolError(
                    f"{self.path}: cannot read revocation file ({exc.strerror})",
                    ErrorCode.INVALID_ARGUMENT,
                ) from None
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
        """Read what changed in the file and record it; return True if it changed.

        "Changed" means a different inode, size or modification time. Entries
        are only ever added: a shrunk, emptied or removed file keeps what was
        recorded. A rewrite of the same size within the file system's
        timestamp granularity is not seen; writers should append (as
        :meth:`add` does) or replace the file by renaming a new one over it.

        Raises:
            TokenError: (``MALFORMED`` / ``TOO_LARGE`` / ``BAD_SIGNATURE``) if the
                file cannot be read or holds a bad statement; the message names
                the file. What was recorded stays, plus the good statements
                before the bad one.
        """
        update = self.read_changes()
        if update is None:
            return False
        self.apply(update)
        return True

    def read_changes(self) -> RevocationUpdate | None:
        """Read and verify what changed since the last read, recording nothing.

        Safe to run in a worker thread while the store serves lookups. Returns
        None when the file did not change. Errors are carried in the update
        (raised by :meth:`apply`), except a file that cannot even be stat'ed.
        """
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return None
        if stamp is None:  # removed: keep everything, start afresh if it comes back
            return RevocationUpdate(None, 0, b"", 0)
        offset, tail = 0, b""
        same_file = self._stamp is not None and stamp[0] == self._stamp[0]
        if same_file and stamp[1] > self._offset:  # grew: read only the new bytes
            offset, tail = self._offset, self._tail
        update = RevocationUpdate(stamp, offset, tail, 0)
        if stamp[1] > self.max_file_size:
            update.error = TokenError(
                f"{self.path}: revocation file too large", ErrorCode.TOO_LARGE
            )
            return update
        try:
            with self.path.open("rb") as fh:
                start = offset - len(tail)
                fh.seek(start)
                data = fh.read(self.max_file_size + 1 - start)
        except OSError as exc:
            update.error = TokenError(
                f"{self.path}: cannot read ({exc.strerror})", ErrorCode.MALFORMED
            )
            return update
        update.bytes_read = len(data)
        if data[: len(tail)] != tail:  # the bytes already read were rewritten: read it all
            return self._parse_all(stamp)
        self._parse(data, len(tail), update)
        update.offset = start + update.offset
        return update

    def _parse_all(self, stamp: tuple[int, int, int]) -> RevocationUpdate:
        update = RevocationUpdate(stamp, 0, b"", 0)
        try:
            data = self.path.read_bytes()[: self.max_file_size + 1]
        except OSError as exc:
            update.error = TokenError(
                f"{self.path}: cannot read ({exc.strerror})", ErrorCode.MALFORMED
            )
            return update
        update.bytes_read = len(data)
        self._parse(data, 0, update)
        return update

    def _parse(self, data: bytes, offset: int, update: RevocationUpdate) -> None:
        """Parse statements from *offset*; leave update.offset relative to *data*."""
        seen = self._digests
        while offset < len(data):
            try:
                _, end = cbor.decode_prefix(data, offset, max_depth=MAX_DEPTH, allowed_tags=_TAGS)
            except DecodeError as exc:
                if _incomplete(data, offset):
                    update.pending = len(data) - offset
                    break
                update.error = _malformed(f"{self.path}: offset {offset}: {exc.message}")
                break
            item = data[offset:end]
            digest = hashlib.sha256(item).digest()
            if digest not in seen:
                try:
                    parsed = parse_statement(item)
                except TokenError as exc:
                    update.error = TokenError(
                        f"{self.path}: offset {offset}: {exc.message}", exc.code
                    )
                    break
                update.statements.append(parsed)
                update.digests.append(digest)
            offset = end
        update.offset = offset
        update.tail = data[max(0, offset - _TAIL) : offset]

    def apply(self, update: RevocationUpdate) -> None:
        """Record what :meth:`read_changes` found (only ever adds entries).

        Raises:
            TokenError: the error the read found, after recording the good part.
        """
        for parsed, digest in zip(update.statements, update.digests, strict=True):
            if digest not in self._digests:
                self._digests.add(digest)
                self.verified += 1
                self._record(parsed)
        self.bytes_read += update.bytes_read
        self._stamp = update.stamp
        self._offset, self._tail = update.offset, update.tail
        self.pending_bytes = update.pending
        if update.error is not None:
            raise update.error

    def add(self, statement: bytes) -> RevocationStatement:
        """Verify *statement*, append it to the file and record it.

        The file is opened without following a symbolic link.

        Raises:
            TokenError: see :func:`parse_statement`; ``MALFORMED`` if the file
                cannot be written or is a symbolic link.
        """
        parsed = parse_statement(statement)
        self.reload_if_changed()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP or self.path.is_symlink():
                raise TokenError(
                    f"{self.path}: is a symbolic link (refusing to append through it)",
                    ErrorCode.MALFORMED,
                ) from None
            raise TokenError(
                f"{self.path}: cannot append ({exc.strerror})", ErrorCode.MALFORMED
            ) from None
        try:
            with os.fdopen(fd, "ab") as fh:
                fh.write(bytes(statement))
        except OSError as exc:
            raise TokenError(
                f"{self.path}: cannot append ({exc.strerror})", ErrorCode.MALFORMED
            ) from None
        self._record(parsed)
        digest = hashlib.sha256(bytes(statement)).digest()
        if digest not in self._digests:
            self._digests.add(digest)
            self.verified += 1
        self.reload_if_changed()  # our own append: already known, only the offset moves
        return parsed
