"""Sender outboxes and receiver high-water marks, in memory or in SQLite (WAL).

Theory of operation
-------------------
An :class:`Outbox` is the sender's queue of unacknowledged messages of one
epoch: ``put`` assigns the next sequence number and stores the message (a
:class:`SqliteOutbox` commits before returning, so a queued message survives
a crash of the process); ``ack(next_expected)`` drops everything below it.
An outbox is also bound to the receiver's agent ID (``bind``, stored with a
persistent outbox): the sender refuses to deliver to, or take acks from, any
other authenticated peer.

A :class:`DedupStore` is the receiver's table of high-water marks keyed by
(authenticated peer, resource, epoch). Epochs are scoped per peer: the same
epoch bytes under two identities are two unrelated channels, so no identity
can claim, block or observe another's. Each peer keeps at most
``max_epochs_per_peer`` (resource, epoch) marks; using one more expires the
least recently used.

State files are created 0600 (the SQLite ``-wal`` and ``-shm`` side files
too) and never opened through a symbolic link; :func:`ensure_state_dir`
creates their directory 0700. SQLite connections are used from one thread (the
event loop's); each call is a short transaction. Schemas are in
spec/reliability.md §5.
"""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import cbor
from .._files import ensure_private_dir, open_private
from ..errors import ErrorCode, LocalProtocolError
from ._wire import EPOCH_SIZE, MAX_SEQ

__all__ = [
    "DEFAULT_MAX_EPOCHS_PER_PEER",
    "DedupStore",
    "MemoryDedup",
    "MemoryOutbox",
    "Outbox",
    "SqliteDedup",
    "SqliteOutbox",
    "ensure_state_dir",
]

#: Default number of (resource, epoch) high-water marks a receiver keeps per peer.
DEFAULT_MAX_EPOCHS_PER_PEER = 128


def ensure_state_dir(path: str | os.PathLike[str]) -> Path:
    """Create the state directory 0700 (parents as needed), or check an existing one.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) not a directory, owned by
            another user, or writable by group or others.
    """
    return ensure_private_dir(Path(path))


class Outbox:
    """The sender's unacknowledged messages for one channel (base: in memory)."""

    def __init__(self, epoch: bytes, next_seq: int = 0) -> None:
        if len(epoch) != EPOCH_SIZE:
            raise LocalProtocolError("epoch must be 16 bytes", ErrorCode.INVALID_ARGUMENT)
        self.epoch = epoch
        self.next_seq = next_seq
        #: The receiver's agent ID (text) this outbox delivers to, once bound.
        self.receiver: str | None = None
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

    def bind(self, receiver: str) -> None:
        """Bind the outbox to *receiver* (agent ID text); durable for persistent outboxes.

        Raises:
            LocalProtocolError: (``INVALID_STATE``) already bound to another receiver.
        """
        if self.receiver == receiver:
            return
        if self.receiver is not None:
            raise LocalProtocolError(
                f"outbox is bound to receiver {self.receiver}, not {receiver}",
                ErrorCode.INVALID_STATE,
            )
        self._bind(receiver)
        self.receiver = receiver

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

    def _bind(self, receiver: str) -> None:
        pass


class MemoryOutbox(Outbox):
    """An outbox that lives as long as the process (a fresh random epoch)."""

    def __init__(self, entropy: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__(entropy(EPOCH_SIZE))


_SIDE_FILES = ("", "-wal", "-shm")


def _secure_files(path: Path) -> None:
    """Create (or check) the database and its WAL side files: 0600, ours, no symlinks.

    SQLite creates ``-wal``/``-shm`` later with the database file's mode; making
    them first (and the database 0600) keeps queued plaintext private whatever
    the umask.
    """
    for suffix in _SIDE_FILES:
        os.close(open_private(Path(f"{path}{suffix}"), ErrorCode.INVALID_ARGUMENT))


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    _secure_files(path)
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
            bound = db.execute("SELECT value FROM meta WHERE key='receiver'").fetchone()
            db.execute("COMMIT")
        except (sqlite3.DatabaseError, TypeError, ValueError, UnicodeError) as exc:
            raise LocalProtocolError(
                f"{self.path}: not a usable outbox ({exc})", ErrorCode.INVALID_ARGUMENT
            ) from None
        self._db = db
        super().__init__(epoch, int(next_seq))
        self.receiver = None if bound is None else str(bound[0])
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

    def _bind(self, receiver: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES('receiver', ?)", (receiver,))

    def close(self) -> None:
        self._db.close()


Channel = tuple[str, bytes]  # (resource, epoch) within one peer


class DedupStore:
    """The receiver's high-water marks, scoped per peer (base: in memory).

    At most *max_epochs_per_peer* (resource, epoch) marks are kept per peer;
    storing one more expires that peer's least recently used mark (a sender
    resuming an expired epoch starts from its own ``first-unacked``).

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) a cap below 1.
    """

    def __init__(self, *, max_epochs_per_peer: int = DEFAULT_MAX_EPOCHS_PER_PEER) -> None:
        if max_epochs_per_peer < 1:
            raise LocalProtocolError("max_epochs_per_peer must be >= 1", ErrorCode.INVALID_ARGUMENT)
        self.max_epochs_per_peer = max_epochs_per_peer
        self._hwm: dict[str, OrderedDict[Channel, int]] = {}

    def get(self, peer: str, resource: str, epoch: bytes) -> int:
        """The next expected sequence number (0 if unknown)."""
        marks = self._hwm.get(peer)
        return 0 if marks is None else marks.get((resource, epoch), 0)

    def set(self, peer: str, resource: str, epoch: bytes, next_expected: int) -> None:
        """Store the high-water mark (durably, for persistent stores); expire the oldest."""
        marks = self._hwm.setdefault(peer, OrderedDict())
        marks[(resource, epoch)] = next_expected
        marks.move_to_end((resource, epoch))
        self._stored(peer, resource, epoch, next_expected)
        expired = []
        while len(marks) > self.max_epochs_per_peer:
            expired.append(marks.popitem(last=False)[0])
        if expired:
            self._expired(peer, expired)

    def count(self, peer: str) -> int:
        """How many (resource, epoch) marks are kept for *peer*."""
        return len(self._hwm.get(peer, ()))

    def close(self) -> None:
        """Release resources."""

    # hooks for persistent subclasses
    def _stored(self, peer: str, resource: str, epoch: bytes, next_expected: int) -> None:
        pass

    def _expired(self, peer: str, channels: list[Channel]) -> None:
        pass


class MemoryDedup(DedupStore):
    """High-water marks that live as long as the process."""


class SqliteDedup(DedupStore):
    """High-water marks in ``path`` (SQLite, WAL, ``synchronous=NORMAL``).

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) the file is not a dedup store.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_epochs_per_peer: int = DEFAULT_MAX_EPOCHS_PER_PEER,
    ) -> None:
        super().__init__(max_epochs_per_peer=max_epochs_per_peer)
        self.path = Path(path)
        self._clock = 0
        try:
            db = _connect(self.path, "NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS hwm(peer TEXT, resource TEXT, epoch BLOB,"
                " next INTEGER, used INTEGER NOT NULL DEFAULT 0,"
                " PRIMARY KEY(peer, resource, epoch))"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(hwm)")}
            if "used" not in columns:  # a file from before the per-peer cap
                db.execute("ALTER TABLE hwm ADD COLUMN used INTEGER NOT NULL DEFAULT 0")
            db.execute("DROP TABLE IF EXISTS owner")  # epochs are no longer owned globally
            rows = db.execute("SELECT peer, resource, epoch, next, used FROM hwm ORDER BY used")
            for peer, resource, epoch, nxt, used in rows.fetchall():
                marks = self._hwm.setdefault(str(peer), OrderedDict())
                marks[(str(resource), bytes(epoch))] = int(nxt)
                self._clock = max(self._clock, int(used))
        except (sqlite3.DatabaseError, TypeError, ValueError, UnicodeError) as exc:
            raise LocalProtocolError(
                f"{self.path}: not a usable dedup store ({exc})", ErrorCode.INVALID_ARGUMENT
            ) from None
        self._db = db
        for peer, marks in self._hwm.items():  # a smaller cap than the file was written with
            if len(marks) > self.max_epochs_per_peer:
                extra = len(marks) - self.max_epochs_per_peer
                self._expired(peer, [marks.popitem(last=False)[0] for _ in range(extra)])

    def _stored(self, peer: str, resource: str, epoch: bytes, next_expected: int) -> None:
        self._clock += 1
        self._db.execute(
            "INSERT OR REPLACE INTO hwm VALUES(?, ?, ?, ?, ?)",
            (peer, resource, epoch, next_expected, self._clock),
        )

    def _expired(self, peer: str, channels: list[Channel]) -> None:
        self._db.executemany(
            "DELETE FROM hwm WHERE peer=? AND resource=? AND epoch=?",
            [(peer, resource, epoch) for resource, epoch in channels],
        )

    def close(self) -> None:
        self._db.close()
