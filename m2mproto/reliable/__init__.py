"""Reliable delivery over m2mproto streams: exactly once, in order, across reconnects.

Opt-in and application-level (spec/reliability.md): a :class:`ReliableSender`
keeps unacknowledged messages in an outbox (:class:`MemoryOutbox`, or
:class:`SqliteOutbox` to survive a crash of the sender process) and resends
them after reconnecting with a fresh handshake; a :class:`ReliableReceiver`
installed on a server deduplicates by the authenticated peer's high-water
mark (:class:`MemoryDedup`, or :class:`SqliteDedup` to survive restarts),
scoped per peer identity and capped per peer.
"""

from ._receiver import Delivery, ReliableReceiver
from ._sender import DEFAULT_CONFIG, ReliableSender
from ._store import (
    DEFAULT_MAX_EPOCHS_PER_PEER,
    DedupStore,
    MemoryDedup,
    MemoryOutbox,
    Outbox,
    SqliteDedup,
    SqliteOutbox,
    ensure_state_dir,
)
from ._wire import EPOCH_SIZE, MAX_SEQ, Ack, Data, Hello, Welcome, parse

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_MAX_EPOCHS_PER_PEER",
    "EPOCH_SIZE",
    "MAX_SEQ",
    "Ack",
    "Data",
    "DedupStore",
    "Delivery",
    "Hello",
    "MemoryDedup",
    "MemoryOutbox",
    "Outbox",
    "ReliableReceiver",
    "ReliableSender",
    "SqliteDedup",
    "SqliteOutbox",
    "Welcome",
    "ensure_state_dir",
    "parse",
]
