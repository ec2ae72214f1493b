"""Reconnect with the 1-RTT IK handshake, and fall back to XX when the server restarted.

Run: python examples/ik_reconnect.py
The first connection runs XX and remembers the server's Noise static key (it
was authenticated by the handshake). Later connections to the same server and
address run IK with it. A restarted server has a new static key: IK to the old
one fails with DECRYPT_ERROR, connect() forgets it and retries once with XX on
a new connection, then remembers the new key.
"""

import stat
import tempfile
import time
from pathlib import Path

import anyio

from m2mproto import Identity
from m2mproto.tokens import issue
from m2mproto.transport import PeerStaticKeys, Server, connect


async def main() -> None:
    authority, server_identity, client = (Identity.generate() for _ in range(3))
    token = issue(authority, client.agent_id, ["echo=*"], now=time.time(), ttl=3600,
                  audience=server_identity.agent_id)

    def make_server():
        server = Server(server_identity, trust_roots=[authority.agent_id])

        @server.request("echo")
        async def echo(msg, ctx):
            return {"echo": msg, "pattern": ctx.peer.pattern}

        return server

    async def call(address, memory, value):
        async with connect(address, identity=client, tokens=[token],
                           peer=server_identity.agent_id, ik=memory) as session:
            reply = await session.request("echo", value, timeout=5)
            return session.peer.pattern, reply["pattern"]

    with tempfile.TemporaryDirectory() as tmp:
        # The key memory, kept in a private file (0600) so later runs can use IK too.
        # Without ik=..., connect() uses one in-memory PeerStaticKeys per process.
        memory = PeerStaticKeys(Path(tmp, "peer-keys.json"))
        async with anyio.create_task_group() as tg:
            server = make_server()
            address = await tg.start(server.serve_tcp, "127.0.0.1", 0)
            client_saw, server_saw = await call(address, memory, 1)
            print(f"first contact: {client_saw} (server saw {server_saw})")
            client_saw, server_saw = await call(address, memory, 2)
            print(f"reconnect: {client_saw} (server saw {server_saw})")
            mode = stat.S_IMODE(Path(tmp, "peer-keys.json").stat().st_mode)
            print(f"key memory: {len(memory)} key, file mode {mode:04o}")
            await server.aclose()
            tg.cancel_scope.cancel()

        # The server restarts on the same port: a new process state, a new static key.
        async with anyio.create_task_group() as tg:
            server = make_server()
            await tg.start(server.serve_tcp, *address)
            client_saw, _ = await call(address, memory, 3)
            print(f"after the restart: {client_saw}, after {server.stats.failed} failed IK "
                  f"handshake (DECRYPT_ERROR)")
            client_saw, _ = await call(address, memory, 4)
            print(f"next reconnect: {client_saw}")
            await server.aclose()
            tg.cancel_scope.cancel()
    print("done")


if __name__ == "__main__":
    anyio.run(main)
