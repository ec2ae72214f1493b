"""IK at the sans-IO core: a 1-RTT handshake to a responder whose static key we know.

Run: python examples/ik_reconnect.py
XX (the default) learns the responder's Noise static key during the handshake;
IK sends the initiator's identity already in the first message, encrypted to a
static key the initiator knows in advance (Connection(remote_static=...)).
A stale key (the responder restarted with a new one) fails with DECRYPT_ERROR,
and the initiator falls back to XX once, on a new connection.
"""

import os
import time

from m2mproto import AuthenticationError, ErrorCode, Identity
from m2mproto.connection import NEED_DATA, Connection, Role
from m2mproto.events import ConnectionClosed, HandshakeCompleted
from m2mproto.handshake import StaticKey


def expect_peer(expected):
    def check(peer):
        if peer != expected:
            raise AuthenticationError("unexpected peer", ErrorCode.AUTH_UNEXPECTED_PEER)

    return check


def handshake(initiator, responder):
    """Shuttle bytes between two in-memory connections until both finished the handshake.

    Returns the initiator's outcome (HandshakeCompleted or ConnectionClosed) and
    the number of handshake flights that crossed.
    """
    now = time.monotonic()
    initiator.start(now)
    responder.start(now)
    outcome, flights = {}, 0
    for _ in range(10):  # bounded: a handshake is at most three flights
        for src, dst in ((initiator, responder), (responder, initiator)):
            if data := src.data_to_send():
                flights += 1
                dst.receive_data(data, now=now)
            while dst not in outcome and (event := dst.next_event()) is not NEED_DATA:
                if isinstance(event, (HandshakeCompleted, ConnectionClosed)):
                    outcome[dst] = event
        if len(outcome) == 2 or isinstance(outcome.get(initiator), ConnectionClosed):
            return outcome[initiator], flights
    raise RuntimeError("handshake did not finish")


def main():
    client, server = Identity.generate(), Identity.generate()
    # The responder keeps one static key for the life of its process (the anyio
    # transport does the same); IK needs a key that outlives one connection.
    server_static = StaticKey.generate(server, os.urandom)

    def server_connection(static):
        return Connection(Role.RESPONDER, server, static_key=static)

    def client_connection(remote_static=None):
        return Connection(Role.INITIATOR, client, remote_static=remote_static,
                          authenticate_peer=expect_peer(server.agent_id))

    # First contact: XX. (The responder's static key is what IK will need next time.)
    event, flights = handshake(client_connection(), server_connection(server_static))
    print(f"first contact: {event.pattern}, {flights} handshake messages")

    # Reconnect with IK to the key we know: the identity travels in message 1.
    known_key = server_static.public
    event, flights = handshake(client_connection(known_key), server_connection(server_static))
    print(f"reconnect: {event.pattern}, {flights} handshake messages, "
          f"peer is the server: {event.peer == server.agent_id}")

    # The responder restarted with a new static key: our key is stale.
    restarted = StaticKey.generate(server, os.urandom)
    event, _ = handshake(client_connection(known_key), server_connection(restarted))
    print("stale key:", ErrorCode(event.code).name)
    if isinstance(event, ConnectionClosed) and event.code == ErrorCode.DECRYPT_ERROR:
        known_key = None  # forget it; retry once with XX on a new connection
        event, _ = handshake(client_connection(), server_connection(restarted))
        print("fallback:", event.pattern, "authenticated", event.peer == server.agent_id)
    print("done")


if __name__ == "__main__":
    main()
