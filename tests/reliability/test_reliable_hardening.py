"""Reliable delivery against hostile peers and hostile file systems (spec/reliability.md §4-§5).

Epoch squatting (epochs are scoped per identity), state files readable by others,
unbounded epochs per peer, and an outbox emptied by an impostor receiver.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from rel_util import AUTHORITY, CLIENT_ID, OTHER_ID, SERVER_ID, token

from m2mproto.errors import AuthenticationError, ErrorCode, LocalProtocolError
from m2mproto.identity import Identity
from m2mproto.reliable import (
    Delivery,
    Hello,
    MemoryDedup,
    MemoryOutbox,
    ReliableReceiver,
    ReliableSender,
    SqliteDedup,
    SqliteOutbox,
    Welcome,
    ensure_state_dir,
    parse,
)
from m2mproto.tokens import issue
from m2mproto.transport import ANY_PEER, Server, connect

pytestmark = pytest.mark.anyio

EPOCH = bytes(range(16))


class Collector:
    def __init__(self) -> None:
        self.items: list[tuple[Any, Delivery]] = []

    async def __call__(self, body: Any, delivery: Delivery) -> None:
        self.items.append((body, delivery))


@asynccontextmanager
async def reliable_server(
    receiver: ReliableReceiver, identity: Identity = SERVER_ID
) -> AsyncIterator[tuple[Server, tuple[str, int]]]:
    server = Server(identity, trust_roots=[AUTHORITY.agent_id])
    receiver.install(server, "log")
    async with anyio.create_task_group() as tg:
        address = await tg.start(server.serve_tcp, "127.0.0.1", 0)
        try:
            yield server, address
        finally:
            tg.cancel_scope.cancel()


async def hello(address: Any, identity: Identity, epoch: bytes, first: int = 0) -> int:
    """One raw ``hello`` as *identity*; return the ``welcome`` mark."""
    tok = token(identity.agent_id, ("log=*",))
    async with connect(address, identity=identity, tokens=[tok], peer=SERVER_ID.agent_id) as session:
        stream = await session.open_message_stream("log")
        await stream.send(Hello(epoch, first).to_wire())
        welcome = parse(await stream.receive())
        assert isinstance(welcome, Welcome)
        await stream.send_eof()
        return welcome.next_expected


# ------------------------------------------------------------------ (a) epoch squatting


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("squat_first", [0, 7, 2**53 - 1])
async def test_squatted_epoch_does_not_block_its_sender(
    anyio_backend: str, squat_first: int
) -> None:
    """A log-only peer says hello with the victim's epoch first: the victim still delivers."""
    got = Collector()
    receiver = ReliableReceiver(got)
    victim_box = MemoryOutbox(entropy=lambda n: EPOCH)
    async with reliable_server(receiver) as (_server, address):
        with anyio.fail_after(20):
            assert await hello(address, OTHER_ID, EPOCH, squat_first) == squat_first
            async with ReliableSender(
                address, identity=CLIENT_ID, tokens=[token()], resource="log", outbox=victim_box,
                peer=SERVER_ID.agent_id,
            ) as victim:
                assert await victim.send("mine") == 0
                await victim.send("also mine")
    assert [(b, d.peer, d.seq) for b, d in got.items] == [
        ("mine", CLIENT_ID.agent_id.text, 0),
        ("also mine", CLIENT_ID.agent_id.text, 1),
    ]


async def test_same_epoch_other_identity_learns_nothing() -> None:
    """The victim's mark is not revealed to another identity naming its epoch."""
    got = Collector()
    receiver = ReliableReceiver(got)
    victim_box = MemoryOutbox(entropy=lambda n: EPOCH)
    async with reliable_server(receiver) as (_server, address):
        with anyio.fail_after(20):
            async with ReliableSender(
                address, identity=CLIENT_ID, tokens=[token()], resource="log", outbox=victim_box,
                peer=SERVER_ID.agent_id,
            ) as victim:
                for i in range(5):
                    await victim.send(i)
            assert await hello(address, OTHER_ID, EPOCH) == 0  # its own, empty channel
            assert await hello(address, CLIENT_ID, EPOCH) == 5  # the victim's is intact
    assert [b for b, _ in got.items] == list(range(5))


def test_sqlite_dedup_scopes_epochs_per_peer(tmp_path: Path) -> None:
    path = tmp_path / "dedup.sqlite3"
    store = SqliteDedup(path)
    store.set("mallory", "log", EPOCH, 3)
    store.set("alice", "log", EPOCH, 9)
    store.close()
    again = SqliteDedup(path)
    assert again.get("alice", "log", EPOCH) == 9 and again.get("mallory", "log", EPOCH) == 3
    again.close()


# ------------------------------------------------------------------ (b) file modes


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.usefixtures("loose_umask")
@pytest.mark.parametrize("kind", ["outbox", "dedup"])
def test_state_dir_0700_and_files_0600_including_wal_and_shm(tmp_path: Path, kind: str) -> None:
    state = ensure_state_dir(tmp_path / "deep" / "state")
    assert mode(state) == 0o700
    path = state / f"{kind}.sqlite3"
    if kind == "outbox":
        store: Any = SqliteOutbox(path)
        store.put({"secret": "plaintext"})
    else:
        store = SqliteDedup(path)
        store.set(CLIENT_ID.agent_id.text, "log", EPOCH, 1)
    try:
        files = sorted(p.name for p in state.iterdir())
        assert files == [f"{kind}.sqlite3", f"{kind}.sqlite3-shm", f"{kind}.sqlite3-wal"]
        assert {p.name: mode(p) for p in state.iterdir()} == dict.fromkeys(files, 0o600)
    finally:
        store.close()
    for p in state.iterdir():  # what sqlite leaves after close, if anything
        assert mode(p) == 0o600, p


@pytest.mark.usefixtures("loose_umask")
def test_existing_loose_state_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    SqliteOutbox(path).close()
    path.chmod(0o644)
    box = SqliteOutbox(path)
    box.put(1)
    box.close()
    assert mode(path) == 0o600


def test_state_dir_refuses_group_writable_and_files(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(LocalProtocolError) as info:
        ensure_state_dir(shared)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT and "shared" in info.value.message
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(LocalProtocolError):
        ensure_state_dir(afile)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    assert ensure_state_dir(mine) == mine  # an existing private-enough directory is kept


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
@pytest.mark.parametrize("kind", ["outbox", "dedup"])
def test_state_files_refuse_symlinks(tmp_path: Path, suffix: str, kind: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    path = tmp_path / f"{kind}.sqlite3"
    (tmp_path / f"{kind}.sqlite3{suffix}").symlink_to(victim)
    with pytest.raises(LocalProtocolError) as info:
        (SqliteOutbox if kind == "outbox" else SqliteDedup)(path)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    assert "symbolic link" in info.value.message
    assert victim.read_bytes() == b"precious"


# ------------------------------------------------------------------ (c) epochs per peer


@pytest.mark.parametrize("cap", [1, 4, 64])
def test_memory_dedup_caps_epochs_per_peer(cap: int) -> None:
    store = MemoryDedup(max_epochs_per_peer=cap)
    for i in range(5000):
        store.set("mallory", "log", i.to_bytes(16, "big"), 1)
    store.set("alice", "log", EPOCH, 7)
    assert store.count("mallory") == cap and store.count("alice") == 1
    newest = (4999).to_bytes(16, "big")
    assert store.get("mallory", "log", newest) == 1  # the newest kept
    assert store.get("mallory", "log", (0).to_bytes(16, "big")) == 0  # the oldest expired
    assert store.get("alice", "log", EPOCH) == 7  # other peers untouched


def test_dedup_expires_least_recently_used(tmp_path: Path) -> None:
    for store in (
        MemoryDedup(max_epochs_per_peer=2),
        SqliteDedup(tmp_path / "d", max_epochs_per_peer=2),
    ):
        a, b, c = (bytes([n]) * 16 for n in (1, 2, 3))
        store.set("p", "log", a, 1)
        store.set("p", "log", b, 1)
        store.set("p", "log", a, 2)  # a used again: b is now the oldest
        store.set("p", "log", c, 1)
        assert (store.get("p", "log", a), store.get("p", "log", b)) == (2, 0)
        store.close()


def test_sqlite_dedup_rows_bounded_after_5000_hellos(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "dedup.sqlite3"
    store = SqliteDedup(path, max_epochs_per_peer=64)
    for i in range(5000):
        store.set("mallory", "log", i.to_bytes(16, "big"), 0)
    store.close()
    db = sqlite3.connect(path)
    (rows,) = db.execute("SELECT count(*) FROM hwm").fetchone()
    db.close()
    assert rows == 64
    again = SqliteDedup(path, max_epochs_per_peer=8)  # a smaller cap applies on reopen
    assert again.count("mallory") == 8
    assert again.get("mallory", "log", (4999).to_bytes(16, "big")) == 0
    again.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM hwm").fetchone()[0] == 8
    db.close()


def test_dedup_cap_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError):
        MemoryDedup(max_epochs_per_peer=0)


async def test_fresh_epoch_flood_over_the_wire_is_bounded() -> None:
    store = MemoryDedup(max_epochs_per_peer=16)
    receiver = ReliableReceiver(Collector(), store)
    async with reliable_server(receiver) as (_server, address):
        with anyio.fail_after(30):
            tok = token(OTHER_ID.agent_id, ("log=*",))
            async with connect(
                address, identity=OTHER_ID, tokens=[tok], peer=SERVER_ID.agent_id
            ) as session:
                for i in range(200):
                    stream = await session.open_message_stream("log")
                    await stream.send(Hello(i.to_bytes(16, "big"), 0).to_wire())
                    assert parse(await stream.receive()) == Welcome(0)
                    await stream.send_eof()
    assert store.count(OTHER_ID.agent_id.text) == 16


# ------------------------------------------------------------------ (d) outbox bound to receiver


def open_token() -> bytes:
    """A token without an audience: any server trusting the authority accepts it."""
    return issue(AUTHORITY, CLIENT_ID.agent_id, ["log=*"], now=time.time(), ttl=3600)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_impostor_receiver_cannot_empty_the_outbox(
    anyio_backend: str, tmp_path: Path
) -> None:
    impostor = Identity.from_seed(bytes(range(44, 76)))
    path = tmp_path / "outbox.sqlite3"
    real_got, fake_got = Collector(), Collector()
    with anyio.fail_after(30):
        async with reliable_server(ReliableReceiver(real_got)) as (_s, address):
            box = SqliteOutbox(path)
            async with ReliableSender(
                address, identity=CLIENT_ID, tokens=[open_token()], resource="log", outbox=box,
                peer=ANY_PEER,
            ) as sender:
                await sender.send("first")  # binds the outbox to SERVER_ID
            box.close()
        box = SqliteOutbox(path)
        assert box.receiver == SERVER_ID.agent_id.text
        box.put("queued while the server moved")
        async with reliable_server(ReliableReceiver(fake_got), impostor) as (_s, address):
            async with ReliableSender(
                address, identity=CLIENT_ID, tokens=[open_token()], resource="log", outbox=box
            ) as sender:
                with pytest.raises(AuthenticationError) as info:
                    await sender.flush()
                assert info.value.code == ErrorCode.AUTH_UNEXPECTED_PEER
                assert SERVER_ID.agent_id.text in info.value.message
        assert len(box) == 1 and box.first_unacked == 1  # nothing dropped
        box.close()
    assert [b for b, _ in real_got.items] == ["first"]
    assert fake_got.items == []


async def test_memory_outbox_binds_to_first_receiver_and_refuses_a_switch() -> None:
    impostor = Identity.from_seed(bytes(range(44, 76)))
    box = MemoryOutbox()
    with anyio.fail_after(30):
        async with reliable_server(ReliableReceiver(Collector())) as (_s, address):
            async with ReliableSender(
                address, identity=CLIENT_ID, tokens=[open_token()], resource="log", outbox=box,
                peer=ANY_PEER,
            ) as sender:
                await sender.send(1)
        fake = Collector()
        async with reliable_server(ReliableReceiver(fake), impostor) as (_s, address):
            async with ReliableSender(
                address, identity=CLIENT_ID, tokens=[open_token()], resource="log", outbox=box
            ) as sender:
                sender.queue(2)
                with pytest.raises(AuthenticationError) as info:
                    await sender.flush()
                assert info.value.code == ErrorCode.AUTH_UNEXPECTED_PEER
        assert len(box) == 1 and fake.items == []


def test_explicit_peer_must_match_the_bound_outbox(tmp_path: Path) -> None:
    box = MemoryOutbox()
    box.bind(SERVER_ID.agent_id.text)
    with pytest.raises(LocalProtocolError) as info:
        ReliableSender(("127.0.0.1", 1), identity=CLIENT_ID, resource="log", outbox=box,
                       peer=OTHER_ID.agent_id)  # fmt: skip
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    sender = ReliableSender(("127.0.0.1", 1), identity=CLIENT_ID, resource="log",
                            outbox=MemoryOutbox(), peer=SERVER_ID.agent_id)  # fmt: skip
    assert sender.outbox.receiver == SERVER_ID.agent_id.text  # bound before the first connection
