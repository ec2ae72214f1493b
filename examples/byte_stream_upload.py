"""Byte stream upload: send a file in chunks under flow control, get a digest back.

Run: python examples/byte_stream_upload.py
A DataStream is an anyio ByteStream: send() waits while the peer has not
granted credit, so a slow reader slows the writer instead of filling memory.
"""

import hashlib
import os
import tempfile
import time
from pathlib import Path

import anyio

from m2mproto import Identity, Server, connect
from m2mproto.tokens import issue

SIZE = 3 * 1024 * 1024  # larger than the default windows (256 KiB per stream, 1 MiB total)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("authority", "server", "client"):
            Identity.generate().save(Path(tmp, f"{name}.key"))
        authority, server_identity, client = (
            Identity.load(Path(tmp, f"{name}.key")) for name in ("authority", "server", "client")
        )
        token = issue(authority, client.agent_id, ["files/*=*"], now=time.time(), ttl=3600,
                      audience=server_identity.agent_id)
        upload = Path(tmp, "upload.bin")
        upload.write_bytes(os.urandom(SIZE))

        server = Server(server_identity, trust_roots=[authority.agent_id])

        @server.stream("files/*")
        async def store(stream, ctx):
            digest, size = hashlib.sha256(), 0
            async for chunk in stream:  # ends at the client's send_eof()
                digest.update(chunk)
                size += len(chunk)
            print(f"server: {ctx.resource}: {size} bytes")
            await stream.send(digest.hexdigest().encode())
            await stream.send_eof()

        async with anyio.create_task_group() as tg:
            address = await tg.start(server.serve_tcp, "127.0.0.1", 0)
            async with await connect(address, identity=client, tokens=[token],
                                     peer=server_identity.agent_id) as session:
                async with await session.open_stream("files/upload.bin") as stream:
                    with upload.open("rb") as f:
                        while chunk := f.read(64 * 1024):
                            await stream.send(chunk)
                    await stream.send_eof()
                    answer = b"".join([chunk async for chunk in stream]).decode()
                expected = hashlib.sha256(upload.read_bytes()).hexdigest()
                print("client: uploaded", SIZE, "bytes; digest matches:", answer == expected)
            tg.cancel_scope.cancel()
    print("done")


if __name__ == "__main__":
    anyio.run(main)
