"""Reliable delivery across restarts: every message arrives exactly once, in order.

Run: python examples/reliable_delivery.py
The sender keeps messages in a durable outbox (SQLite) until the receiver
acknowledges them and resends after reconnecting; the receiver deduplicates
with a durable high-water mark. Here the receiver restarts while messages are
queued, then the sender itself "crashes" and a new process resumes its outbox.
"""

import tempfile
import time
from pathlib import Path

import anyio

from m2mproto import Identity, Server
from m2mproto.reliable import ReliableReceiver, ReliableSender, SqliteDedup, SqliteOutbox
from m2mproto.tokens import issue


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("authority", "server", "client"):
            Identity.generate().save(Path(tmp, f"{name}.key"))
        authority, server_identity, client = (
            Identity.load(Path(tmp, f"{name}.key")) for name in ("authority", "server", "client")
        )
        server_id = server_identity.agent_id
        token = issue(authority, client.agent_id, ["events=*"], now=time.time(), ttl=3600,
                      audience=server_id)
        received = []

        async def deliver(body, delivery):
            received.append(body["n"])
            print(f"receiver: got n={body['n']} (seq {delivery.seq})")

        async def receiver(port, *, task_status=anyio.TASK_STATUS_IGNORED):
            """One run of the receiving server, until cancelled (a crash or a restart)."""
            store = SqliteDedup(Path(tmp, "dedup.sqlite3"))  # survives the restart
            server = Server(server_identity, trust_roots=[authority.agent_id])
            ReliableReceiver(deliver, store).install(server, "events")
            try:
                await server.serve_tcp("127.0.0.1", port, task_status=task_status)
            finally:
                store.close()

        def new_sender(port):
            # The outbox file is the sender's memory: reopening it resumes its epoch.
            outbox = SqliteOutbox(Path(tmp, "outbox.sqlite3"))
            return ReliableSender(("127.0.0.1", port), identity=client, tokens=[token],
                                  resource="events", outbox=outbox, peer=server_id)

        async with anyio.create_task_group() as tg:

            async def start_receiver(port):
                """Start the receiver in its own cancel scope; return (scope, port)."""
                scope = anyio.CancelScope()

                async def run(*, task_status=anyio.TASK_STATUS_IGNORED):
                    with scope:
                        await receiver(port, task_status=task_status)

                _host, bound = await tg.start(run)
                return scope, bound

            receiver_scope, port = await start_receiver(0)  # port 0: any free port
            async with new_sender(port) as sender:
                for n in (1, 2, 3):
                    await sender.send({"n": n})  # returns once acknowledged

                receiver_scope.cancel()  # the receiver goes down ...
                for n in (4, 5, 6):
                    sender.queue({"n": n})  # ... messages are stored in the outbox ...
                print("sender: queued 4-6 while the receiver is down")
                await anyio.sleep(0.5)
                receiver_scope, _ = await start_receiver(port)  # ... it comes back
                await sender.flush()  # the sender reconnected and resent what was held
                print(f"sender: all delivered after {sender.connections} connections")

                receiver_scope.cancel()
                sender.queue({"n": 7})
            print("sender: stopped with message 7 still in its outbox")

            receiver_scope, _ = await start_receiver(port)
            async with new_sender(port) as sender:  # a new sender process would do the same
                await sender.flush()
                print("sender: resumed from its outbox; nothing left to send")
            tg.cancel_scope.cancel()
        print("delivered exactly once, in order:", received == [1, 2, 3, 4, 5, 6, 7])
    print("done")


if __name__ == "__main__":
    anyio.run(main)
