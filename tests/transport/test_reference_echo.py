"""The reference peer's ``echo`` (spec/interop.md §3) through a real session on TCP.

Messages come back as sent, stream bytes come back XOR 0xff, our end follows
the peer's; both on asyncio and trio.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from transport_util import AUTHORITY, CLIENT_ID, SERVER_ID

from m2mproto.cli import build_parser
from m2mproto.cli.peer import ReferencePeer
from m2mproto.errors import ErrorCode
from m2mproto.tokens import issue
from m2mproto.transport import StreamResetError, connect

pytestmark = pytest.mark.anyio


def _peer(tmp_path: Path) -> ReferencePeer:
    key = tmp_path / "srv.key"
    SERVER_ID.save(key)
    args = build_parser().parse_args(
        ["serve", "--key", str(key), "--listen", "127.0.0.1:0", "--root", AUTHORITY.agent_id.text]
    )
    return ReferencePeer(args)


def _token() -> bytes:
    return issue(
        AUTHORITY, CLIENT_ID.agent_id, ["echo=*"], now=time.time(), ttl=600,
        audience=SERVER_ID.agent_id,
    )  # fmt: skip


async def test_echo_bytes_xor_messages_as_sent(tmp_path: Path) -> None:
    peer = _peer(tmp_path)
    payload = bytes(range(256)) * 600  # 150 KiB: several records and window updates
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(peer.server.serve_tcp, "127.0.0.1", 0)
        with anyio.fail_after(30):
            async with connect(
                (host, port), identity=CLIENT_ID, tokens=[_token()], peer=SERVER_ID.agent_id
            ) as session:
                # a byte stream: every byte back XOR 0xff, then our end ends theirs
                stream = await session.open_stream("echo")

                async def write() -> None:
                    await stream.send(payload)
                    await stream.send_eof()

                tg.start_soon(write)
                got = bytearray()
                async for chunk in stream:
                    got += chunk
                assert len(got) == len(payload)
                assert bytes(got) == bytes(b ^ 0xFF for b in payload)

                # a request still gets its message back as the reply
                assert await session.request("echo", {"n": [1, 2, 3]}) == {"n": [1, 2, 3]}

                # a message stream: each message back, in order, then the end
                messages = await session.open_message_stream("echo")
                for i in range(3):
                    await messages.send({"i": i})
                    assert await messages.receive() == {"i": i}
                await messages.send_eof()
                with pytest.raises(anyio.EndOfStream):
                    await messages.receive()

                # an empty stream: our end is answered by theirs, nothing else
                empty = await session.open_stream("echo")
                await empty.send_eof()
                with pytest.raises(anyio.EndOfStream):
                    await empty.receive()
        tg.cancel_scope.cancel()


async def test_echo_mixing_kinds_is_reset_with_protocol_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A byte stream that then carries a message is reset with PROTOCOL_ERROR
    (spec/application.md: one kind per stream)."""
    peer = _peer(tmp_path)
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(peer.server.serve_tcp, "127.0.0.1", 0)
        with anyio.fail_after(30):
            async with connect(
                (host, port), identity=CLIENT_ID, tokens=[_token()], peer=SERVER_ID.agent_id
            ) as session:
                stream = await session.open_stream("echo")
                await stream.send(b"\x00\x01")
                assert await stream.receive() == b"\xff\xfe"
                as_messages = stream.as_message_stream()
                await as_messages.send({"now": "a message"})
                with pytest.raises(StreamResetError) as info:
                    await stream.receive()
                assert info.value.reset_code == ErrorCode.PROTOCOL_ERROR and info.value.remote
                # the session stays usable
                assert await session.request("echo", "still here") == "still here"
        tg.cancel_scope.cancel()
    # the peer's fault is not logged as a failing handler
    assert not [r for r in caplog.records if "handler" in r.getMessage()]
