"""Anchor: Python's ``ssl`` TLS 1.3 with client certificates, driven by anyio on loopback.

This is what a user would pick instead of m2mproto: mutual TLS 1.3 (both
sides present certificates from a private CA made with ``trustme``, ECDSA
P-256 keys, OpenSSL's default X25519 key exchange and cipher choice, server
default of two session tickets; no resumption) and a length-prefixed framing
for messages on top:

    frame = length(4, big-endian) || kind(1) || body(length)

with kinds ONEWAY (body: a CBOR message, decoded by the server and dropped),
REQUEST (body: a CBOR message; the server decodes it and answers with a
REPLY frame carrying the re-encoded value) and BULK (body: raw bytes,
dropped). A REQUEST after a run of ONEWAY or BULK frames is therefore a
barrier: its reply proves the server processed everything before it.

The framer reads the socket in 64 KiB chunks and parses every complete frame
from one buffer (no per-field ``receive_exactly`` calls), so the anchor is
the fast, careful version of this design, not a strawman. CBOR uses ``cbor2``
(its C extension).
"""

from __future__ import annotations

import ssl
import struct
from pathlib import Path
from typing import Any

import anyio
import cbor2
from anyio.abc import ByteStream
from anyio.streams.tls import TLSListener, TLSStream

__all__ = ["TLSClient", "make_material", "serve"]

ONEWAY, REQUEST, REPLY, BULK = 0, 1, 2, 3
_HEADER = struct.Struct(">IB")
_MAX_FRAME = 1 << 20
_CHUNK = 65536
_TLS_CLOSE_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    ssl.SSLError,
    OSError,
)


def make_material(directory: Path) -> None:
    """Write a CA, a server certificate (127.0.0.1) and a client certificate into ``directory``."""
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
    client = ca.issue_cert("client@bench.invalid")
    client.private_key_and_cert_chain_pem.write_to_path(str(directory / "client.pem"))


def server_context(directory: Path) -> ssl.SSLContext:
    """TLS 1.3 server context that requires a client certificate from the bench CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(directory / "server.pem"))
    ctx.load_verify_locations(str(directory / "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(directory: Path) -> ssl.SSLContext:
    """TLS 1.3 client context presenting the bench client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(str(directory / "ca.pem"))
    ctx.load_cert_chain(str(directory / "client.pem"))
    return ctx


class _Framer:
    """Reads frames from a byte stream: 64 KiB reads, one buffer, parse all complete frames."""

    __slots__ = ("_buf", "_stream")

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    def _pop(self) -> tuple[int, bytes] | None:
        buf = self._buf
        if len(buf) < 5:
            return None
        n, kind = _HEADER.unpack_from(buf)
        if n > _MAX_FRAME:
            raise anyio.BrokenResourceError(f"frame of {n} bytes exceeds the bench limit")
        if len(buf) < 5 + n:
            return None
        body = bytes(buf[5 : 5 + n])
        del buf[: 5 + n]
        return kind, body

    async def next_frame(self) -> tuple[int, bytes]:
        """Return the next (kind, body).

        Raises:
            anyio.EndOfStream: if the peer closed between or inside frames.
        """
        for _ in range(1 << 30):
            frame = self._pop()
            if frame is not None:
                return frame
            self._buf += await self._stream.receive(_CHUNK)
        raise anyio.BrokenResourceError("framer loop bound reached")


def frame(kind: int, body: bytes) -> bytes:
    """Encode one frame."""
    return _HEADER.pack(len(body), kind) + body


async def _handle(stream: ByteStream) -> None:
    framer = _Framer(stream)
    loads, dumps = cbor2.loads, cbor2.dumps
    try:
        while True:
            kind, body = await framer.next_frame()
            if kind == ONEWAY:
                loads(body)
            elif kind == REQUEST:
                reply = dumps(loads(body))
                await stream.send(_HEADER.pack(len(reply), REPLY) + reply)
            elif kind != BULK:
                return
    except _TLS_CLOSE_ERRORS:
        pass
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def serve(directory: Path, ready: Any) -> None:
    """Serve the TLS anchor on 127.0.0.1 (ephemeral port); call ``ready(port)`` once listening."""
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0, backlog=4096)
    port = tcp.extra(anyio.abc.SocketAttribute.local_port)
    listener = TLSListener(tcp, server_context(directory), standard_compatible=False)
    ready(port)
    await listener.serve(_handle)


class TLSChannel:
    """One client connection of the TLS anchor."""

    def __init__(self, stream: TLSStream) -> None:
        self._stream = stream
        self._framer = _Framer(stream)

    async def oneway(self, obj: Any) -> None:
        body = cbor2.dumps(obj)
        await self._stream.send(_HEADER.pack(len(body), ONEWAY) + body)

    async def request(self, obj: Any) -> Any:
        body = cbor2.dumps(obj)
        await self._stream.send(_HEADER.pack(len(body), REQUEST) + body)
        kind, reply = await self._framer.next_frame()
        if kind != REPLY:
            raise anyio.BrokenResourceError(f"expected a reply frame, got kind {kind}")
        return cbor2.loads(reply)

    async def bulk(self, chunk: bytes) -> None:
        await self._stream.send(_HEADER.pack(len(chunk), BULK) + chunk)

    async def flush(self) -> None:
        await self.request(0)

    async def aclose(self) -> None:
        await self._stream.aclose()


class TLSClient:
    """Connects TLS anchor channels (mutual TLS 1.3) to a server."""

    name = "tls"

    def __init__(self, directory: Path) -> None:
        self._ctx = client_context(directory)

    async def connect(self, host: str, port: int) -> TLSChannel:
        stream = await anyio.connect_tcp(
            host,
            port,
            ssl_context=self._ctx,
            tls_hostname="localhost",
            tls_standard_compatible=False,
        )
        return TLSChannel(stream)
