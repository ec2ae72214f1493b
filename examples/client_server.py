"""Client and server: two agents authenticate, then call, send and get refused.

Run: python examples/client_server.py
An authority issues the client a token for "echo" and "orders/*" on this server;
the server's handlers run only for what the token grants.
"""

import tempfile
import time
from pathlib import Path

import anyio

from m2mproto import AuthorizationError, Identity, Server, connect
from m2mproto.tokens import issue


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # Keys: each agent's identity is an Ed25519 key file (written 0600).
        for name in ("authority", "server", "client"):
            Identity.generate().save(Path(tmp, f"{name}.key"))
        authority = Identity.load(Path(tmp, "authority.key"))
        server_identity = Identity.load(Path(tmp, "server.key"))
        client = Identity.load(Path(tmp, "client.key"))

        # The authority grants the client every ability ("*": stream/open and
        # msg/send) on two resources, for this server only.
        token = issue(authority, client.agent_id, ["echo=*", "orders/*=*"],
                      now=time.time(), ttl=3600, audience=server_identity.agent_id)

        # The server honours tokens rooted at the authority.
        server = Server(server_identity, trust_roots=[authority.agent_id])

        @server.request("echo")
        async def echo(msg, ctx):
            return {"echo": msg, "from": ctx.peer.agent_id.short}

        @server.message("orders/*")
        async def order(msg, ctx):
            print(f"server: order {msg} on {ctx.resource}")

        @server.request("admin")
        async def admin(msg, ctx):
            return "never reached: the token grants nothing on admin"

        async with anyio.create_task_group() as tg:
            # Port 0: the operating system picks a free port; start() returns it.
            address = await tg.start(server.serve_tcp, "127.0.0.1", 0)
            # peer=: the handshake fails unless the server proves this identity.
            async with await connect(address, identity=client, tokens=[token],
                                     peer=server_identity.agent_id) as session:
                print("client: connected to", session.peer.agent_id.short)
                print("client: echo ->", await session.request("echo", {"hi": 1}, timeout=5))
                await session.send("orders/eu", {"id": 7}, confirm=True)  # waits for the handler
                try:
                    await session.request("admin", "shutdown", timeout=5)
                except AuthorizationError as exc:
                    print("client: admin refused:", exc.code.name)
            tg.cancel_scope.cancel()  # stop the server
    print("done")


if __name__ == "__main__":
    anyio.run(main)
