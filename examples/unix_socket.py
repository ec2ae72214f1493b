"""Unix domain sockets: the same server and client, addressed by a path.

Run: python examples/unix_socket.py
connect() takes a path (str or pathlib.Path) instead of (host, port);
Server.serve_unix(path) listens there and removes the socket file afterwards.
The socket file is created with the process umask: put it in a directory only
the intended users can enter. Agents still authenticate each other.
"""

import tempfile
import time
from pathlib import Path

import anyio

from m2mproto import Identity, Server, connect
from m2mproto.tokens import issue


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:  # a fresh directory only we can enter
        for name in ("authority", "server", "client"):
            Identity.generate().save(Path(tmp, f"{name}.key"))
        authority, server_identity, client = (
            Identity.load(Path(tmp, f"{name}.key")) for name in ("authority", "server", "client")
        )
        token = issue(authority, client.agent_id, ["status=*"], now=time.time(), ttl=3600,
                      audience=server_identity.agent_id)
        server = Server(server_identity, trust_roots=[authority.agent_id])

        @server.request("status")
        async def status(msg, ctx):
            return {"ok": True, "peer": ctx.peer.agent_id.short}

        path = Path(tmp, "agent.sock")
        async with anyio.create_task_group() as tg:
            bound = await tg.start(server.serve_unix, path)
            print("server: listening on", Path(bound).name)
            async with await connect(path, identity=client, tokens=[token],
                                     peer=server_identity.agent_id) as session:
                reply = await session.request("status", None, timeout=5)
                print("client: status ->", reply["ok"], "as seen by the server:",
                      reply["peer"] == client.agent_id.short)
            tg.cancel_scope.cancel()
        print("socket file removed:", not path.exists())
    print("done")


if __name__ == "__main__":
    anyio.run(main)
