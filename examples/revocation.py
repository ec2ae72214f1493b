"""Revocation: Alice revokes the token she delegated to Bob; the server refuses it.

Run: python examples/revocation.py
Any issuer in a token's chain may revoke it with a signed statement. The
server adds the statement to its revocation store; from then on the token is
refused at the handshake, and reauthorize() resets streams it had opened.
"""

import tempfile
import time
from pathlib import Path

import anyio

from m2mproto import (
    AuthorizationError,
    Identity,
    Server,
    TokenError,
    connect,
)
from m2mproto.tokens import InMemoryRevocationStore, delegate, issue, revoke, verify


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("authority", "server", "alice", "bob"):
            Identity.generate().save(Path(tmp, f"{name}.key"))
        authority, server_identity, alice, bob = (
            Identity.load(Path(tmp, f"{name}.key"))
            for name in ("authority", "server", "alice", "bob")
        )
        server_id, now = server_identity.agent_id, time.time()
        alice_token = issue(authority, alice.agent_id, ["telemetry/*=*"], now=now, ttl=3600,
                            audience=server_id)
        bob_token = delegate(alice, alice_token, bob.agent_id, ["telemetry/bob=*"], now=now,
                             ttl=3600, audience=server_id)

        # The server consults this store for every token it verifies. (A
        # FileRevocationStore reads statements from a file, e.g. one written by
        # `m2m token revoke`; `m2m serve --revocations FILE` re-reads it.)
        revocations = InMemoryRevocationStore()
        server = Server(server_identity, trust_roots=[authority.agent_id],
                        revocations=revocations)

        # When a stream is reset (below: by the revocation), its handler is cancelled.
        @server.message_stream("telemetry/*")
        async def telemetry(stream, ctx):
            async for reading in stream:
                await stream.send({"ack": reading["n"]})

        async with anyio.create_task_group() as tg:
            address = await tg.start(server.serve_tcp, "127.0.0.1", 0)
            async with await connect(address, identity=bob, tokens=[bob_token],
                                     peer=server_id) as session:
                stream = await session.open_message_stream("telemetry/bob")
                await stream.send({"n": 1})
                print("bob: reading 1 ->", await stream.receive())

                # Alice (an issuer in the chain) signs a revocation of Bob's token.
                statement = revoke(alice, [bob_token], now=time.time())
                revocations.add(statement)  # verifies the statement's signature
                for live in list(server.sessions):  # re-check streams already open
                    live.reauthorize()
                try:
                    await stream.send({"n": 2})
                    await stream.receive()
                except AuthorizationError as exc:
                    print("bob: reading 2 refused:", exc.code.name)

            # A new connection with the revoked token: connect() raises the server's verdict.
            try:
                async with await connect(address, identity=bob, tokens=[bob_token],
                                         peer=server_id) as session:
                    await session.send("telemetry/bob", {"n": 3}, confirm=True)
            except TokenError as exc:
                print("bob: reconnect refused:", exc.code.name)

            # The precise reason, as the server sees it (TOKEN_INVALID on the wire).
            try:
                verify(bob_token, trust_roots=[authority.agent_id], now=time.time(),
                       holder=bob.agent_id, audience=server_id, revocations=revocations)
            except TokenError as exc:
                print("server-side check:", exc.code.name)

            # Alice's own token was not revoked: she still gets through.
            async with await connect(address, identity=alice, tokens=[alice_token],
                                     peer=server_id) as session:
                stream = await session.open_message_stream("telemetry/alice")
                await stream.send({"n": 1})
                print("alice: reading 1 ->", await stream.receive())
            tg.cancel_scope.cancel()
    print("done")


if __name__ == "__main__":
    anyio.run(main)
