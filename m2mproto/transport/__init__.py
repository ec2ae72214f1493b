"""anyio transports and the high-level agent API (asyncio and trio).

``connect`` opens a :class:`Session` to a peer (TCP, Unix socket, or any
anyio byte stream); :class:`Server` authenticates connections and dispatches
their streams to handlers; :func:`memory_pair` connects two sessions in
memory. See ``README.md`` for a complete client and server.
"""

from ._keys import StaticKeys
from ._peer_keys import PeerStaticKeys
from .attributes import M2MAttribute
from .client import connect, parse_hostport
from .memory import MemoryByteStream, MemoryPair, memory_pair, memory_stream_pair
from .routing import Route, Router
from .server import Server, ServerStats
from .session import (
    ANY_PEER,
    AnyPeer,
    ConnectionClosedError,
    Context,
    DataStream,
    EventHook,
    Incoming,
    MessageStream,
    Peer,
    RequestTimeout,
    Session,
    SessionOpener,
    StreamResetError,
)

__all__ = [
    "ANY_PEER",
    "AnyPeer",
    "ConnectionClosedError",
    "Context",
    "DataStream",
    "EventHook",
    "Incoming",
    "M2MAttribute",
    "MemoryByteStream",
    "MemoryPair",
    "MessageStream",
    "Peer",
    "PeerStaticKeys",
    "RequestTimeout",
    "Route",
    "Router",
    "Server",
    "ServerStats",
    "Session",
    "SessionOpener",
    "StaticKeys",
    "StreamResetError",
    "connect",
    "memory_pair",
    "memory_stream_pair",
    "parse_hostport",
]
