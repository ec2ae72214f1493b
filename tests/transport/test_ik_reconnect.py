"""connect() reconnects with IK to a remembered server key, and falls back to XX once
when the key is stale (spec/handshake.md 2.11), over real loopback sockets."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import anyio
import pytest
from transport_util import AUTHORITY, CLIENT_ID, SERVER_ID, make_server, token

from m2mproto.config import Configuration
from m2mproto.errors import ErrorCode, LocalProtocolError, TokenError
from m2mproto.events import HandshakeCompleted
from m2mproto.identity import Identity
from m2mproto.tokens import issue
from m2mproto.transport import (
    ANY_PEER,
    Context,
    PeerStaticKeys,
    Server,
    connect,
)

pytestmark = pytest.mark.anyio

CAPS = token(["echo=*"])


def _server(**kwargs: Any) -> Server:
    server = make_server(**kwargs)

    @server.request("echo")
    async def echo(msg: Any, ctx: Context) -> Any:
        return {"echo": msg, "pattern": ctx.peer.pattern}

    return server


class _Serving:
    """A server on a fixed loopback port that can be stopped and restarted there."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self.tg = tg
        self.server: Server | None = None
        self.scope: anyio.CancelScope | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def start(self, **kwargs: Any) -> Server:
        self.server = _server(**kwargs)
        server = self.server

        async def run(*, task_status: Any) -> None:
            with anyio.CancelScope() as scope:
                self.scope = scope
                await server.serve_tcp(*self.address, task_status=task_status)

        self.address = await self.tg.start(run)
        return server

    async def stop(self) -> None:
        assert self.server is not None and self.scope is not None
        await self.server.aclose()
        self.scope.cancel()
        await anyio.sleep(0)


async def _echo(memory: PeerStaticKeys | bool, address: tuple[str, int], value: Any) -> Any:
    async with connect(
        address, identity=CLIENT_ID, tokens=[CAPS], peer=SERVER_ID.agent_id, ik=memory
    ) as session:
        reply = await session.request("echo", value)
        return session.peer.pattern, session.peer.static_key, reply


async def test_reconnect_uses_ik_to_the_remembered_key() -> None:
    memory = PeerStaticKeys()
    async with anyio.create_task_group() as tg:
        serving = _Serving(tg)
        server = await serving.start()
        pattern, first_key, reply = await _echo(memory, serving.address, 1)
        assert pattern == "XX" and reply == {"echo": 1, "pattern": "XX"}
        assert first_key is not None and len(first_key) == 32
        assert memory.get(SERVER_ID.agent_id, serving.address) == first_key
        # the key is the server's one static key for its identity
        assert first_key == server.static_keys.get(SERVER_ID, Configuration()).public
        for i in range(3):  # every reconnect is IK, on both sides
            pattern, key, reply = await _echo(memory, serving.address, i)
            assert (pattern, key) == ("IK", first_key)
            assert reply == {"echo": i, "pattern": "IK"}
        assert server.stats.established == 4 and server.stats.failed == 0
        await serving.stop()


async def test_server_restart_makes_the_key_stale_and_falls_back_once_to_xx() -> None:
    memory = PeerStaticKeys()
    async with anyio.create_task_group() as tg:
        serving = _Serving(tg)
        await serving.start()
        _, old_key, _ = await _echo(memory, serving.address, 0)
        assert (await _echo(memory, serving.address, 1))[0] == "IK"
        await serving.stop()
        restarted = await serving.start()  # same port, new process state: new static key
        new_key = restarted.static_keys.get(SERVER_ID, Configuration()).public
        assert new_key != old_key
        pattern, key, reply = await _echo(memory, serving.address, 2)
        assert (pattern, key, reply) == ("XX", new_key, {"echo": 2, "pattern": "XX"})
        # the server saw one failed IK handshake (DECRYPT_ERROR) and one XX handshake
        assert restarted.stats.failed == 1 and restarted.stats.established == 1
        assert memory.get(SERVER_ID.agent_id, serving.address) == new_key  # refreshed
        assert (await _echo(memory, serving.address, 3))[0] == "IK"
        assert restarted.stats.failed == 1 and restarted.stats.established == 2
        await serving.stop()


async def test_detached_form_falls_back_too() -> None:
    memory = PeerStaticKeys()
    async with anyio.create_task_group() as tg:
        serving = _Serving(tg)
        await serving.start()
        stale = bytes(range(32))  # a key nobody holds: IK fails like a restart
        await _echo(memory, serving.address, 0)
        memory.remember(SERVER_ID.agent_id, stale, serving.address)
        with anyio.fail_after(30):
            session = await connect(
                serving.address, identity=CLIENT_ID, tokens=[CAPS],
                peer=SERVER_ID.agent_id, ik=memory,
            )  # fmt: skip
        async with session:
            assert session.peer.pattern == "XX"
            assert await session.request("echo", 5) == {"echo": 5, "pattern": "XX"}
        assert memory.get(SERVER_ID.agent_id, serving.address) == session.peer.static_key
        await serving.stop()


async def test_no_fallback_on_other_failures_and_none_twice() -> None:
    """A stale key whose XX retry also fails is not retried again; other codes never."""
    memory = PeerStaticKeys()
    stranger = Identity.generate()
    async with anyio.create_task_group() as tg:
        serving = _Serving(tg)
        server = await serving.start()
        await _echo(memory, serving.address, 0)
        known = memory.get(SERVER_ID.agent_id, serving.address)
        # a client the server refuses (its token comes from a root the server does not
        # trust, which the client cannot see): XX and IK both fail with TOKEN_INVALID;
        # never retried, the key is kept
        bad = issue(stranger, CLIENT_ID.agent_id, ["echo=*"], ttl=3600,
                    audience=SERVER_ID.agent_id)  # fmt: skip
        for _ in range(2):
            with pytest.raises(TokenError) as info:
                async with connect(
                    serving.address, identity=CLIENT_ID, tokens=[bad],
                    peer=SERVER_ID.agent_id, ik=memory,
                ) as session:  # fmt: skip
                    await session.request("echo", 1)
            assert info.value.code == ErrorCode.TOKEN_INVALID
        assert memory.get(SERVER_ID.agent_id, serving.address) == known
        before = server.stats.accepted
        # stale key, then the server refuses the client on the XX retry: one retry only
        memory.remember(SERVER_ID.agent_id, bytes(range(32)), serving.address)
        with pytest.raises(TokenError):
            async with connect(
                serving.address, identity=CLIENT_ID, tokens=[bad],
                peer=SERVER_ID.agent_id, ik=memory,
            ) as session:  # fmt: skip
                await session.request("echo", 1)
        assert server.stats.accepted == before + 2  # the IK attempt and one XX retry
        # the stale key is forgotten; a refused session teaches nothing new
        assert memory.get(SERVER_ID.agent_id, serving.address) is None
        await serving.stop()


async def test_ik_only_with_a_named_peer_and_off_on_request() -> None:
    memory = PeerStaticKeys()
    async with anyio.create_task_group() as tg:
        serving = _Serving(tg)
        await serving.start()
        await _echo(memory, serving.address, 0)
        assert (await _echo(False, serving.address, 1))[0] == "XX"  # ik=False: always XX
        async with connect(
            serving.address, identity=CLIENT_ID, tokens=[CAPS], peer=SERVER_ID.agent_id
        ) as session:
            assert session.peer.pattern == "XX"  # the default: XX, whatever is remembered
        # ik=True: the process-wide memory (XX first, then IK)
        assert [(await _echo(True, serving.address, i))[0] for i in range(2)] == ["XX", "IK"]
        default = PeerStaticKeys.process_default()
        assert default.get(SERVER_ID.agent_id, serving.address) == memory.get(
            SERVER_ID.agent_id, serving.address
        )
        async with connect(
            serving.address, identity=CLIENT_ID, tokens=[CAPS], peer=ANY_PEER, ik=memory
        ) as session:
            assert session.peer.pattern == "XX"  # never IK without the expected server
        with pytest.raises(LocalProtocolError) as info:
            connect(serving.address, identity=CLIENT_ID, peer=SERVER_ID.agent_id, ik="yes")  # type: ignore[arg-type]
        assert info.value.code is ErrorCode.INVALID_ARGUMENT
        await serving.stop()


async def test_the_handshake_reports_the_responders_static_key() -> None:
    """The core event carries the key the transport remembers (both roles)."""
    from m2mproto.transport import memory_pair

    async with memory_pair(client_identity=CLIENT_ID, server_identity=SERVER_ID) as (c, s):
        assert c.peer.static_key is not None and s.peer.static_key is not None
        assert c.peer.static_key != s.peer.static_key
        assert c.peer.pattern == s.peer.pattern == "XX"
    event = HandshakeCompleted(
        peer=SERVER_ID.agent_id, identity_key=SERVER_ID.public_key, handshake_hash=bytes(32),
        peer_params={}, pattern="XX", version=1,
    )  # fmt: skip
    assert event.remote_static is None
    with pytest.raises(LocalProtocolError):
        HandshakeCompleted(
            peer=SERVER_ID.agent_id, identity_key=SERVER_ID.public_key,
            handshake_hash=bytes(32), peer_params={}, pattern="XX", version=1,
            remote_static=b"short",
        )  # fmt: skip


# -- the memory itself ------------------------------------------------------------


def test_memory_is_keyed_by_agent_and_address_and_bounded() -> None:
    a, b = SERVER_ID.agent_id, AUTHORITY.agent_id
    memory = PeerStaticKeys(limit=2)
    memory.remember(a, bytes([1]) * 32, ("h", 1))
    memory.remember(a, bytes([2]) * 32, ("h", 2))
    assert memory.get(a, ("h", 1)) == bytes([1]) * 32  # now the most recently used
    assert memory.get(b, ("h", 1)) is None and memory.get(a, "/sock") is None
    memory.remember(b, bytes([3]) * 32, "/sock")
    assert len(memory) == 2 and memory.get(a, ("h", 2)) is None  # LRU entry dropped
    assert memory.forget(b, "/sock") and not memory.forget(b, "/sock")
    for bad in (b"", bytes(31), bytearray(32)):
        with pytest.raises(LocalProtocolError):
            memory.remember(a, bad)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        PeerStaticKeys(limit=0)
    assert PeerStaticKeys.process_default() is PeerStaticKeys.process_default()


def test_memory_file_is_private_atomic_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "peer-keys.json"
    memory = PeerStaticKeys(path)
    assert not path.exists()
    memory.remember(SERVER_ID.agent_id, bytes([7]) * 32, ("127.0.0.1", 7000))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = PeerStaticKeys(path)
    assert again.get(SERVER_ID.agent_id, ("127.0.0.1", 7000)) == bytes([7]) * 32
    assert [p.name for p in tmp_path.iterdir()] == ["peer-keys.json"]  # no temp file left
    again.forget(SERVER_ID.agent_id, ("127.0.0.1", 7000))
    assert len(PeerStaticKeys(path)) == 0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"format": "other", "entries": []}',
        b'{"format": "m2mproto-peer-static-keys/1", "entries": {}}',
        b'{"format": "m2mproto-peer-static-keys/1", "entries": [1]}',
        b'{"format": "m2mproto-peer-static-keys/1", "entries": [{"peer": "x", '
        b'"address": "", "static_key": "00"}]}',
        b'{"format": "m2mproto-peer-static-keys/1", "entries": [{"peer": "m2m1zz", '
        b'"address": "", "static_key": "' + b"00" * 32 + b'"}]}',
    ],
)
def test_a_bad_memory_file_is_a_key_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "peer-keys.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(LocalProtocolError) as info:
        PeerStaticKeys(path)
    assert info.value.code is ErrorCode.KEY_FILE_INVALID


def test_a_memory_file_others_could_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "peer-keys.json"
    PeerStaticKeys(path).remember(SERVER_ID.agent_id, bytes(32))
    path.chmod(0o666)
    with pytest.raises(LocalProtocolError) as info:
        PeerStaticKeys(path)
    assert info.value.code is ErrorCode.KEY_FILE_PERMISSIONS
    link = tmp_path / "link.json"
    path.chmod(0o600)
    os.symlink(path, link)
    with pytest.raises(LocalProtocolError) as info:
        PeerStaticKeys(link)
    assert info.value.code is ErrorCode.KEY_FILE_INVALID
    big = tmp_path / "big.json"
    big.write_bytes(b" " * ((1 << 20) + 1))
    big.chmod(0o600)
    with pytest.raises(LocalProtocolError) as info:
        PeerStaticKeys(big)
    assert info.value.code is ErrorCode.KEY_FILE_INVALID
