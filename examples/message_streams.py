"""Message streams: an ordered conversation of CBOR messages on one stream.

Run: python examples/message_streams.py
session.send() opens one stream per message (the server may handle them
concurrently); a message stream keeps many messages in order, both ways.
"""

import tempfile
import time
from pathlib import Path

import anyio

from m2mproto import Identity, Server, connect
from m2mproto.tokens import issue


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("authority", "server", "client"):
            Identity.generate().save(Path(tmp, f"{name}.key"))
        authority, server_identity, client = (
            Identity.load(Path(tmp, f"{name}.key")) for name in ("authority", "server", "client")
        )
        token = issue(authority, client.agent_id, ["prices=*"], now=time.time(), ttl=3600,
                      audience=server_identity.agent_id)
        server = Server(server_identity, trust_roots=[authority.agent_id])

        @server.message_stream("prices")
        async def running_total(stream, ctx):
            # Each message in, one reply out, in order; the client's end of
            # stream ends the loop (MessageStream is an anyio ObjectStream).
            total = 0
            async for price in stream:
                total += price["amount"]
                await stream.send({"item": price["item"], "total": total})
            await stream.send({"done": True, "total": total})
            await stream.send_eof()

        async with anyio.create_task_group() as tg:
            address = await tg.start(server.serve_tcp, "127.0.0.1", 0)
            async with await connect(address, identity=client, tokens=[token],
                                     peer=server_identity.agent_id) as session:
                stream = await session.open_message_stream("prices")
                async with stream:
                    for item, amount in [("apple", 3), ("pear", 5), ("plum", 2)]:
                        await stream.send({"item": item, "amount": amount})
                        print("client: reply", await stream.receive())
                    await stream.send_eof()  # our half is done; the server sums up
                    async for reply in stream:  # until the server ends its half
                        print("client: final", reply)
            tg.cancel_scope.cancel()
    print("done")


if __name__ == "__main__":
    anyio.run(main)
