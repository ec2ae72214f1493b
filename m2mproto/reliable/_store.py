"""Sender outboxes and receiver high-water marks, in memory or in SQLite (WAL).

Theory of operation
-------------------
An :class:`Outbox` is the sender's queue of unacknowledged messages of one
epoch: ``put`` assigns the next sequence number and stores the message (a
:class:`SqliteOutbox` commits before returning, so a queued message survives
a crash of the process); ``ack(next_expected)`` drops everything below it.
A :class:`DedupStore` is the receiver's table of high-water marks keyed by
(authenticated peer, resource, epoch) plus the owner of each epoch, which is
what binds resumption state to the identity that created it.

SQLite connections are used from one thread (the event loop's); each call is
a short transaction. Schemas are in spec/reliability.md §5.
"""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import cbor
from ..errors import ErrorCode, LocalProtocolError
from ._wire import EPOCH_SIZE, MAX_SEQ

__all__ = [
    "DedupStore",
    "MemoryDedup",
    "MemoryOutbox",
    "Outbox",
    "SqliteDedup",
    "SqliteOutbox",
]


class Outbox:
    """The sender's unacknowledged messages for one channel (base: in memory)."""

    def __init__(self, epoch: bytes, next_seq: int = 0) -> None:
        if len(epoch) != EPOCH_SIZE:
            raise LocalProtocolError("epoch must be 16 bytes", ErrorCode.INVALID_ARGUMENT)
        self.epoch = epoch
        self.next_seq = next_seq
        self._items: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def first_unacked(self) -> int:
        """The lowest sequence number still held (``next_seq`` if empty)."""
        return next(iter(self._items), self.next_seq)

    def put(self, body: Any) -> int:
        """Store *body* under the next sequence number and return it.

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) *body* is not encodable
                CBOR; (``INVALID_STATE``) the sequence space is exhausted.
        """
        cbor.encode(body)  # refuse what could never be sent, now
        if self.next_seq > MAX_SEQ:
            raise LocalProtocolError("sequence numbers exhausted", ErrorCode.INVALID_STATE)
        seq = self.next_seq
        self._store(seq, body)
        self._items[seq] = body
        self.next_seq = seq + 1
        return seq

    def ack(self, next_expected: int) -> list[int]:
        """Drop every message below *next_expected*; return their sequence numbers."""
        done = [s for s in self._items if s < next_expected]
        if done:
            self._drop(next_expected)
            for s in done:
                del self._items[s]
        return done

    def items_from(self, seq: int) -> Iterator[tuple[int, Any]]:
        """The held messages with sequence number >= *seq*, in order (a snapshot)."""
        return iter([(s, b) for s, b in self._items.items() if s >= seq])

    def close(self) -> None:
        """Release resources (persistent outboxes close their database)."""

    # hooks for persistent subclasses
    def _store(self, seq: int, body: Any) -> None:
        pass

    def _drop(self, below: int) -> None:
        pass


class MemoryOutbox(Outbox):
    """An outbox that lives as long as the process (a fresh random epoch)."""

    def __init__(self, entropy: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__(entropy(EPOCH_SIZE))


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


class SqliteOutbox(Outbox):
    """A durable outbox in ``path`` (SQLite, WAL, ``synchronous=FULL``).

    Reopening the same file continues the same epoch and resends what is left.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) the file is not an outbox.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        channel: str = "",
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.path = Path(path)
        self.channel = channel
        try:
            db = _connect(self.path, "FULL")
            db.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox(channel TEXT, seq INTEGER, body BLOB,"
                " PRIMARY KEY(channel, seq))"
            )
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            if row is None:
                epoch = entropy(EPOCH_SIZE)
                db.execute("INSERT INTO meta VALUES('epoch', ?)", (epoch,))
            else:
                epoch = bytes(row[0])
            self._seq_key = f"next_seq/{channel}"
            db.execute("INSERT OR IGNORE INTO meta VALUES(?, 0)", (self._seq_key,))
            (next_seq,) = db.execute(
                "SELECT value FROM meta WHERE key=?", (self._seq_key,)
            ).fetchone()
            rows = db.execute(
                "SELECT seq, body FROM outbox WHERE channel=? ORDER BY seq", (channel,)
            ).fetchall()
            db.execute("COMMIT")
        except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
            raise LocalProtocolError(
                f"{self.path}: not a usable outbox ({exc})", ErrorCode.INVALID_ARGUMENT
            ) from None
        self._db = db
        super().__init__(epoch, int(next_seq))
        for seq, body in rows:
            self._items[int(seq)] = cbor.decode(bytes(body))

    def _store(self, seq: int, body: Any) -> None:
        with self._db:  # one transaction: the message and the counter
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO outbox VALUES(?, ?, ?)", (self.channel, seq, cbor.encode(body))
            )
            self._db.execute("UPDATE meta SET value=? WHERE key=?", (seq + 1, self._seq_key))
            self._db.execute("COMMIT")

    def _drop(self, below: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE channel=? AND seq<?", (self.channel, below))

    def close(self) -> None:
        self._db.close()


class DedupStore:
    """The receiver's high-water marks and epoch owners (base: in memory)."""

    def __init__(self) -> None:
        self._hwm: dict[tuple[str, str, bytes], int] = {}
        self._owner: dict[bytes, str] = {}

    def owner(self, epoch: bytes) -> str | None:
        """The agent ID (text) that first used *epoch*, or None."""
        return self._owner.get(epoch)

    def claim(self, epoch: bytes, peer: str) -> None:
        """Record *peer* as the owner of *epoch* (first use)."""
        self._owner.setdefault(epoch, peer)

    def get(self, peer: str, resource: str, epoch: bytes) -> int:
        """The next expected sequence number (0 if unknown)."""
        return self._hwm.get((peer, resource, epoch), 0)

    def set(self, peer: str, resource: str, epoch: bytes, next_expected: int) -> None:
        """Store the high-water mark (durably, for persistent stores)."""
        self._hwm[(peer, resource, epoch)] = next_expected

    def close(self) -> None:
        """Release resources."""


class MemoryDedup(DedupStore):
    """High-water marks that live as long as the process."""


class SqliteDedup(DedupStore):
    """High-water marks in ``path`` (SQLite, WAL, ``synchronous=NORMAL``).

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) the file is not a dedup store.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        try:
            db = _connect(self.path, "NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS hwm(peer TEXT, resource TEXT, epoch BLOB,"
                " next INTEGER, PRIMARY KEY(peer, resource, epoch))"
            )
            db.execute("CREATE TABLE IF NOT EXISTS owner(epoch BLOB PRIMARY KEY, peer TEXT)")
            for peer, resource, epoch, nxt in db.execute("SELECT * FROM hwm"):
                self._hwm[(str(peer), str(resource), bytes(epoch))] = int(nxt)
            for epoch, peer in db.execute("SELECT * FROM owner"):
                self._owner[bytes(epoch)] = str(peer)
        except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
            raise LocalProtocolError(
                f"{self.path}: not a usable dedup store ({exc})", ErrorCode.INVALID_ARGUMENT
            ) from None
        self._db = db

    def claim(self, epoch: bytes, peer: str) -> None:
        if epoch not in self._owner:
            self._db.execute("INSERT OR IGNORE INTO owner VALUES(?, ?)", (epoch, peer))
        super().claim(epoch, peer)

    def set(self, peer: str, resource: str, epoch: bytes, next_expected: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO hwm VALUES(?, ?, ?, ?)", (peer, resource, epoch, next_expected)
        )
        super().set(peer, resource, epoch, next_expected)

    def close(self) -> None:
        self._db.close()
