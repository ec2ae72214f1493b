"""Delegation: an agent hands a narrower slice of its token to another agent.

Run: python examples/delegation_chain.py
The authority gives Alice "orders/*"; Alice delegates "orders/eu/*" to Bob,
for a shorter time. Bob presents the chain (his token carries Alice's as
proof); the server checks every link back to the authority.
"""

import tempfile
import time
from pathlib import Path

import anyio

from m2mproto import (
    AuthorizationError,
    Identity,
    LocalProtocolError,
    Server,
    TokenError,
    connect,
)
from m2mproto.tokens import delegate, issue, verify


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("authority", "server", "alice", "bob"):
            Identity.generate().save(Path(tmp, f"{name}.key"))
        authority, server_identity, alice, bob = (
            Identity.load(Path(tmp, f"{name}.key"))
            for name in ("authority", "server", "alice", "bob")
        )
        now = time.time()
        server_id = server_identity.agent_id

        # Root token: the authority grants Alice every ability on orders/*.
        alice_token = issue(authority, alice.agent_id, ["orders/*=*"], now=now, ttl=3600,
                            audience=server_id)
        # Alice (the holder) attenuates it for Bob: one region, 10 minutes.
        bob_token = delegate(alice, alice_token, bob.agent_id, ["orders/eu/*=*"], now=now,
                             ttl=600, audience=server_id)
        # Delegation can only narrow: a capability Alice does not hold is refused.
        try:
            delegate(alice, alice_token, bob.agent_id, ["admin=*"], now=now, ttl=600,
                     audience=server_id)
        except LocalProtocolError as exc:
            print("widening refused:", exc.code.name)

        # What the server will see: verify the chain offline.
        grant = verify(bob_token, trust_roots=[authority.agent_id], now=now,
                       holder=bob.agent_id, audience=server_id)
        print("chain:", " -> ".join(link.issuer.short for link in grant.chain), "->",
              grant.holder.short, "grants", [str(c) for c in grant.capabilities])

        server = Server(server_identity, trust_roots=[authority.agent_id])

        @server.message("orders/*")
        async def order(msg, ctx):
            print(f"server: {ctx.resource} from {ctx.peer.agent_id.short}:", msg)

        async with anyio.create_task_group() as tg:
            address = await tg.start(server.serve_tcp, "127.0.0.1", 0)
            async with await connect(address, identity=bob, tokens=[bob_token],
                                     peer=server_id) as session:
                await session.send("orders/eu/42", {"qty": 1}, confirm=True)
                try:
                    await session.send("orders/us/42", {"qty": 1}, confirm=True)
                except AuthorizationError as exc:
                    print("bob: orders/us/42 refused:", exc.code.name)
            # A stolen token is useless: Alice's token is bound to Alice's key. connect()
            # checks the tokens it is given before dialing (CNF_MISMATCH), and a server
            # would refuse them anyway (TOKEN_INVALID).
            try:
                async with await connect(address, identity=bob, tokens=[alice_token],
                                         peer=server_id) as session:
                    await session.send("orders/us/42", {"qty": 1}, confirm=True)
            except TokenError as exc:
                print("bob with alice's token: refused:", exc.code.name)
            tg.cancel_scope.cancel()
    print("done")


if __name__ == "__main__":
    anyio.run(main)
