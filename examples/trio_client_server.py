"""The same API on trio: nurseries instead of task groups, trio.run instead of anyio.run.

Run: python examples/trio_client_server.py   (needs trio: pip install 'm2mproto[trio]')
m2mproto's transports are written with anyio, so they run unchanged under
trio; here the application itself is plain trio code.
"""

import tempfile
import time
from pathlib import Path

import trio

from m2mproto import Identity, Server, connect
from m2mproto.tokens import issue


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("authority", "server", "client"):
            Identity.generate().save(Path(tmp, f"{name}.key"))
        authority, server_identity, client = (
            Identity.load(Path(tmp, f"{name}.key")) for name in ("authority", "server", "client")
        )
        token = issue(authority, client.agent_id, ["echo=*", "jobs/*=*"], now=time.time(),
                      ttl=3600, audience=server_identity.agent_id)
        server = Server(server_identity, trust_roots=[authority.agent_id])

        @server.request("echo")
        async def echo(msg, ctx):
            await trio.sleep(0)  # handlers are ordinary trio code
            return {"echo": msg}

        @server.stream("jobs/*")
        async def job(stream, ctx):
            async for chunk in stream:
                await stream.send(chunk.upper())
            await stream.send_eof()

        async with trio.open_nursery() as nursery:
            address = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
            async with await connect(address, identity=client, tokens=[token],
                                     peer=server_identity.agent_id) as session:
                print("client: connected to", session.peer.agent_id.short, "under trio")
                print("client: echo ->", await session.request("echo", [1, 2, 3], timeout=5))
                # Three requests at once, multiplexed on one connection.
                results = {}

                async def call(n):
                    results[n] = await session.request("echo", n, timeout=5)

                async with trio.open_nursery() as calls:
                    for n in range(3):
                        calls.start_soon(call, n)
                print("client: concurrent ->", [results[n]["echo"] for n in range(3)])
                async with await session.open_stream("jobs/shout") as stream:
                    await stream.send(b"hello trio")
                    await stream.send_eof()
                    print("client: stream ->", b"".join([c async for c in stream]).decode())
            nursery.cancel_scope.cancel()
    print("done")


if __name__ == "__main__":
    trio.run(main)
