"""Transport: a fuzzer-driven byte stream against a listening Server on 127.0.0.1.

Each input runs one short anyio program (asyncio backend): a real
``m2mproto.transport.Server`` on 127.0.0.1 (ephemeral port) with an echo
handler; a raw TCP client writes the input in pieces of fuzzer-chosen sizes
(first byte: piece size; bit 0x80: half-close after writing), reads until
the server closes or a short deadline passes, and disconnects. Then a benign
client (real identity and token) must still complete a request on the same
server. Invariant: the server survives (``serve_tcp`` never raises), and the
benign request succeeds; the whole input is bounded by ``anyio.fail_after``.

Atheris and anyio mix without trouble here (the event loop runs inside the
callback), so this is an ordinary atheris target; it is slow (tens of
inputs per second) because every input starts a server and two handshakes.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
from _common import fuzz_main, identity, instrumented

with instrumented(__name__):
    from m2mproto.config import Configuration
    from m2mproto.tokens import issue
    from m2mproto.transport import Server, connect

DEADLINE = 10.0


def _token() -> bytes:
    return issue(
        identity("authority"),
        identity("alice").agent_id,
        ["echo=msg/send", "echo=stream/open"],
        now=time.time(),
        ttl=600,
        audience=identity("bob").agent_id,
    )


async def _session(data: bytes) -> None:
    server = Server(
        identity("bob"),
        trust_roots=[identity("authority").agent_id],
        config=Configuration(handshake_timeout=1.0),
    )

    @server.request("echo")
    async def echo(message: Any, ctx: Any) -> Any:
        return message

    piece = 1 + (data[0] & 0x7F) if data else 1
    half_close = bool(data[0] & 0x80) if data else False
    body = data[1:]
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            host, port = await tg.start(server.serve_tcp, "127.0.0.1", 0)
            async with await anyio.connect_tcp(host, port) as raw:
                try:
                    for pos in range(0, len(body), piece):
                        await raw.send(body[pos : pos + piece])
                    if half_close:
                        await raw.send_eof()
                    with anyio.move_on_after(0.05 if not half_close else 1.5):
                        while await raw.receive(65536):
                            pass
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    pass  # the server hung up on us: allowed
            async with connect(
                (host, port),
                identity=identity("alice"),
                tokens=[_token()],
                peer=identity("bob").agent_id,
            ) as session:
                reply = await session.request("echo", {"n": len(body)})
                assert reply == {"n": len(body)}, reply
            tg.cancel_scope.cancel()


def check_transport(data: bytes) -> None:
    """Throw *data* at a live server, then require a benign request to succeed."""
    anyio.run(_session, data)


if __name__ == "__main__":
    fuzz_main(check_transport)
