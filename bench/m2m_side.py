"""m2mproto's side of the loopback harness (plug-in for :mod:`bench.net`).

Provides what the harness needs from a protocol:

* ``make_material(dir)``: an authority identity (the trust root), a server
  identity, a client identity and a token issued by the authority to the
  client for the server (``bench/*`` with ``stream/open`` and ``msg/send``);
* ``make_client(dir)``: a client whose ``connect`` authenticates with the
  identity and the token (checking the server's agent ID) and returns a
  channel with ``oneway`` (messages on one ordered message stream),
  ``request`` (``session.request``), ``bulk`` (writes on one byte stream),
  ``flush`` and ``aclose``;
* ``serve(dir, ready)``: an m2mproto ``Server`` trusting the authority, with
  an echo request handler (``bench/echo``), a message sink (``bench/sink``)
  and a byte-stream sink (``bench/bulk``) that acknowledges end of stream.

The m2mproto transport is imported lazily; while it is missing from the
checkout every entry point raises :class:`bench.common.Unavailable`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio

from .common import Unavailable

__all__ = ["M2MClient", "make_client", "make_material", "serve"]

ECHO, SINK, BULK, FEED = "bench/echo", "bench/sink", "bench/bulk", "bench/feed"
#: Server admission limits: above the harness's concurrency (net._CONNECT_PARALLEL
#: handshakes in flight, up to 1000 idle connections, all from 127.0.0.1).
_MAX_CONNECTIONS = 5000
_MAX_PENDING = 256
_ACK = b"k"


def _require() -> Any:
    try:
        import m2mproto.transport as transport
    except ImportError as exc:
        raise Unavailable(f"m2mproto transport not importable: {exc}") from None
    if not hasattr(transport, "connect") or not hasattr(transport, "Server"):
        raise Unavailable("m2mproto transport lacks connect/Server")
    return transport


def make_material(directory: Path) -> None:
    """Write identities, the trust root and the client's token into ``directory``.

    Raises:
        Unavailable: while the m2mproto transport is missing.
    """
    _require()
    from m2mproto.identity import Identity
    from m2mproto.tokens.issue import issue

    authority, server, client = Identity.generate(), Identity.generate(), Identity.generate()
    authority.save(directory / "authority.pem")
    server.save(directory / "server.pem")
    client.save(directory / "client.pem")
    token = issue(
        authority,
        client.agent_id,
        ["bench/*=stream/open", "bench/*=msg/send"],
        now=time.time(),
        ttl=24 * 3600,
        audience=server.agent_id,
    )
    (directory / "client.token").write_bytes(token)


class M2MChannel:
    """One m2mproto session as a harness channel."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._bulk: Any = None
        self._feed: Any = None

    async def oneway(self, obj: Any) -> None:
        # One ordered message stream, as the TLS anchor sends its one-way
        # messages in order on its one connection. (session.send opens a
        # stream per message, so that the peer may handle them concurrently.)
        if self._feed is None:
            self._feed = await self._session.open_message_stream(FEED)
        await self._feed.send(obj)

    async def request(self, obj: Any) -> Any:
        return await self._session.request(ECHO, obj)

    async def bulk(self, chunk: bytes) -> None:
        if self._bulk is None:
            self._bulk = await self._session.open_stream(BULK)
        await self._bulk.send(chunk)

    async def flush(self) -> None:
        if self._feed is not None:
            feed, self._feed = self._feed, None
            await feed.send_eof()
            await feed.receive()  # the sink's count: every message was handled
            await feed.aclose()
        if self._bulk is not None:
            stream, self._bulk = self._bulk, None
            await stream.send_eof()
            if await stream.receive() != _ACK:
                raise anyio.BrokenResourceError("bulk sink did not acknowledge")
            await stream.aclose()
        await self._session.request(ECHO, 0)

    async def aclose(self) -> None:
        # Leaving the session's context closes it gracefully and leaves its task
        # group (the same as the end of ``async with session``).
        await self._session.__aexit__(None, None, None)


class M2MClient:
    """Connects authenticated m2mproto sessions (identity + token, expected server ID)."""

    name = "m2m"

    def __init__(self, directory: Path, *, ik: Any = False) -> None:
        transport = _require()
        from m2mproto.identity import Identity

        self._connect = transport.connect
        # XX unless told otherwise (the handshake figure is a full handshake, like
        # the TLS anchor's); bench.ik_bench passes a PeerStaticKeys for IK
        self._ik = ik
        # one static key for all of this client's connections (signed once)
        self._static_keys = transport.StaticKeys()
        self._identity = Identity.load(directory / "client.pem")
        self._token = (directory / "client.token").read_bytes()
        self._server_id = Identity.load(directory / "server.pem").agent_id

    async def connect(self, host: str, port: int) -> M2MChannel:
        session = await self._connect(
            (host, port),
            identity=self._identity,
            tokens=[self._token],
            peer=self._server_id,
            static_keys=self._static_keys,
            ik=self._ik,
        )
        return M2MChannel(session)


def make_client(directory: Path) -> M2MClient:
    """Return the harness client for m2mproto.

    Raises:
        Unavailable: while the m2mproto transport is missing.
    """
    return M2MClient(directory)


async def serve(directory: Path, ready: Any) -> None:
    """Serve m2mproto on 127.0.0.1 (ephemeral port); call ``ready(port)`` once listening.

    Raises:
        Unavailable: while the m2mproto transport is missing.
    """
    _require()
    from m2mproto.identity import Identity
    from m2mproto.transport import Server

    authority = Identity.load(directory / "authority.pem")
    # Every dialer is 127.0.0.1 and the harness keeps up to 64 handshakes in
    # flight (plus up to 1000 idle connections), so the admission limits must
    # sit above that, per source too: the defaults (16 pending per source)
    # would evict honest bench handshakes and show up as TRUNCATED; the idle
    # connections all come from one address too.
    server = Server(
        Identity.load(directory / "server.pem"),
        trust_roots=[authority.agent_id],
        max_connections=_MAX_CONNECTIONS,
        max_pending_handshakes=_MAX_PENDING,
        max_pending_per_source=_MAX_PENDING,
        max_sessions_per_source=_MAX_CONNECTIONS,
    )

    @server.request(ECHO)
    async def echo(value: Any, ctx: Any) -> Any:
        return value

    @server.message(SINK)
    async def sink(value: Any, ctx: Any) -> None:
        return None

    @server.message_stream(FEED)
    async def feed(stream: Any, ctx: Any) -> None:
        count = 0
        for _ in range(1 << 40):
            try:
                await stream.receive()
            except anyio.EndOfStream:
                break
            count += 1
        await stream.send(count)

    @server.stream(BULK)
    async def bulk(stream: Any, ctx: Any) -> None:
        for _ in range(1 << 40):
            try:
                await stream.receive()
            except anyio.EndOfStream:
                break
        await stream.send(_ACK)

    async with anyio.create_task_group() as tg:
        _host, port = await tg.start(server.serve_tcp, "127.0.0.1", 0)
        ready(port)
