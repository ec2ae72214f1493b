"""Reliable delivery over m2mproto streams: exactly once, in order, across reconnects.

Opt-in and application-level (spec/reliability.md): a :class:`ReliableSender`
keeps unacknowledged messages in an outbox (:class:`MemoryOutbox`, or
:class:`SqliteOutbox` to survive a crash of the sender process) and resends
them after reconnecting with a fresh handshake; a :class:`ReliableReceiver`
installed on a server deduplicates by the authenticated peer's high-water
mark (:class:`MemoryDedup`, or :class:`SqliteDedup` to survive restarts).
"""

from ._receiver import Delivery, ReliableReceiver
from ._sender import DEFAULT_CONFIG, ReliableSender
from ._store import DedupStore, MemoryDedup, MemoryOutbox, Outbox, SqliteDedup, SqliteOutbox
from ._wire import EPOCH_SIZE, MAX_SEQ, Ack, Data, Hello, Welcome, parse

__all__ = [
    "DEFAULT_CONFIG",
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
    "parse",
]
