"""The sans-IO core over plain sockets: no anyio, no asyncio, one selectors loop.

Run: python examples/sans_io_sockets.py
m2mproto.connection.Connection does no I/O: feed it bytes with receive_data(),
take events from next_event(), write what data_to_send() returns, and call
handle_timer() when get_timer() says so. This loop drives a server and a
client connection in one thread over real TCP sockets on 127.0.0.1.
"""

import contextlib
import selectors
import socket
import tempfile
import time
from pathlib import Path

from m2mproto import AuthenticationError, ErrorCode, Identity
from m2mproto.config import Configuration
from m2mproto.connection import NEED_DATA, Connection, Role
from m2mproto.events import (
    ConnectionClosed,
    HandshakeCompleted,
    MessageReceived,
    StreamEnded,
    StreamOpened,
)
from m2mproto.tokens import TokenAuthorizer, issue

selector = selectors.DefaultSelector()


class Endpoint:
    """One socket and the Connection that speaks m2mproto over it."""

    def __init__(self, name, sock, conn, on_event):
        self.name, self.sock, self.conn, self.on_event = name, sock, conn, on_event
        self.outgoing = bytearray()
        self.closed = False
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, self)
        conn.start(time.monotonic())  # arms the handshake deadline

    def readable(self):
        try:
            data = self.sock.recv(65536)  # b"" is end of stream: the core wants to know
        except ConnectionResetError:
            data = b""
        self.conn.receive_data(data, now=time.monotonic())
        if not data:
            selector.unregister(self.sock)

    def process(self):
        """Timers, then every event the buffered input yields, then write."""
        if self.closed:
            return
        now = time.monotonic()
        timer = self.conn.get_timer()
        if timer is not None and timer <= now:
            self.conn.handle_timer(now)
        while (event := self.conn.next_event()) is not NEED_DATA:
            self.on_event(self, event)
            if isinstance(event, ConnectionClosed):  # terminal: no more events
                self.closed = True
                break
        self.flush()

    def flush(self):
        self.outgoing += self.conn.data_to_send()
        if self.outgoing:
            # A full socket buffer sends less (EVENT_WRITE brings us back); a
            # vanished peer is reported by the core once it sees end of stream.
            with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                del self.outgoing[: self.sock.send(self.outgoing)]
        if self.sock in selector.get_map():
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outgoing else 0)
            selector.modify(self.sock, mask, self)


def server_event(ep, event):
    """The server's application: answer each message on "echo" and end the stream."""
    if isinstance(event, HandshakeCompleted):
        print("server: authenticated", event.peer.short, "with", event.pattern)
    elif isinstance(event, StreamOpened):
        print(f"server: stream {event.stream_id} opened on {event.resource!r}")
    elif isinstance(event, MessageReceived):
        ep.conn.send_message(event.stream_id, {"echo": event.value}, end_stream=True)
    elif isinstance(event, ConnectionClosed):
        print("server: closed,", ErrorCode(event.code).name)


def client_event(ep, event):
    """The client's application: one request, then a graceful close."""
    if isinstance(event, HandshakeCompleted):
        print("client: authenticated", event.peer.short, "with", event.pattern)
        stream_id = ep.conn.open_stream("echo")
        ep.conn.send_message(stream_id, {"hello": "sans-io"}, end_stream=True)
    elif isinstance(event, MessageReceived):
        print("client: reply", event.value)
    elif isinstance(event, StreamEnded):
        ep.conn.close()  # NO_ERROR: CLOSE follows everything queued
    elif isinstance(event, ConnectionClosed):
        print("client: closed,", ErrorCode(event.code).name)


def expect_peer(expected):
    """authenticate_peer hook: refuse any responder but *expected* during the handshake."""

    def check(peer):
        if peer != expected:
            raise AuthenticationError("unexpected peer", ErrorCode.AUTH_UNEXPECTED_PEER)

    return check


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("authority", "server", "client"):
            Identity.generate().save(Path(tmp, f"{name}.key"))
        authority, server_identity, client = (
            Identity.load(Path(tmp, f"{name}.key")) for name in ("authority", "server", "client")
        )
        token = issue(authority, client.agent_id, ["echo=*"], now=time.time(), ttl=3600,
                      audience=server_identity.agent_id)

        listener = socket.create_server(("127.0.0.1", 0))
        client_sock = socket.create_connection(listener.getsockname())
        server_sock, _ = listener.accept()
        listener.close()

        # Tokens are checked by an authorizer; its clock is Unix time, while the
        # Connection's `now` is monotonic: Configuration.clock_offset bridges them.
        config = Configuration(clock_offset=time.time() - time.monotonic())
        authorizer = TokenAuthorizer(trust_roots=[authority.agent_id],
                                     audience=server_identity.agent_id)
        endpoints = [
            Endpoint("server", server_sock,
                     Connection(Role.RESPONDER, server_identity, config, authorizer=authorizer),
                     server_event),
            Endpoint("client", client_sock,
                     Connection(Role.INITIATOR, client, config, tokens=[token],
                                authenticate_peer=expect_peer(server_identity.agent_id)),
                     client_event),
        ]
        for ep in endpoints:
            ep.flush()  # the initiator's first handshake flight is ready at once

        deadline = time.monotonic() + 10  # a bounded loop: no example runs forever
        while not all(ep.closed for ep in endpoints) and time.monotonic() < deadline:
            timers = [t for ep in endpoints if (t := ep.conn.get_timer()) is not None]
            wait = max(0.0, min(timers, default=1.0) - time.monotonic())
            for key, mask in selector.select(timeout=min(wait, 1.0)):
                if mask & selectors.EVENT_READ:
                    key.data.readable()
            for ep in endpoints:
                ep.process()
        for ep in endpoints:
            if ep.sock in selector.get_map():
                selector.unregister(ep.sock)
            ep.sock.close()
        if not all(ep.closed for ep in endpoints):
            raise SystemExit("timed out")
        print("done")


if __name__ == "__main__":
    main()
