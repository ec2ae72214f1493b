"""Reliable delivery (spec/reliability.md): wire checks, stores, sender and receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rel_util import AUTHORITY, CLIENT_ID, OTHER_ID, SERVER_ID, token

from m2mproto import cbor
from m2mproto.errors import DecodeError, ErrorCode, LocalProtocolError
from m2mproto.reliable import (
    Ack,
    Data,
    Delivery,
    Hello,
    MemoryOutbox,
    Outbox,
    ReliableReceiver,
    ReliableSender,
    SqliteDedup,
    SqliteOutbox,
    Welcome,
    parse,
)
from m2mproto.transport import Server, StreamResetError, connect

pytestmark = pytest.mark.anyio

EPOCH = bytes(range(16))


# ------------------------------------------------------------------ wire


def test_spec_examples_hex() -> None:
    assert cbor.encode(Hello(EPOCH, 5).to_wire()).hex() == "830150" + EPOCH.hex() + "05"
    assert cbor.encode(Ack(7).to_wire()).hex() == "820407"


@given(
    st.one_of(
        st.builds(Hello, st.binary(min_size=16, max_size=16), st.integers(0, 2**53 - 1)),
        st.builds(Welcome, st.integers(0, 2**53 - 1)),
        st.builds(Data, st.integers(0, 2**53 - 1), st.integers(-(2**63), 2**63) | st.binary()),
        st.builds(Ack, st.integers(0, 2**53 - 1)),
    )
)
@settings(max_examples=200)
def test_round_trip(msg: Any) -> None:
    assert parse(cbor.decode(cbor.encode(msg.to_wire()))) == msg


@pytest.mark.parametrize(
    "value",
    [None, [], [9], [3, -1, 0], [3, 2**53, 0], [1, b"short", 0], [4], [4, 1, 2], ["x", 1],
     [2, 1.5], {"a": 1}, [1, EPOCH, True]],
)  # fmt: skip
def test_malformed_messages_are_decode_errors(value: Any) -> None:
    with pytest.raises(DecodeError) as info:
        parse(value)
    assert info.value.code == ErrorCode.DECODE_ERROR


# ------------------------------------------------------------------ stores


def test_sqlite_outbox_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = SqliteOutbox(path)
    epoch = box.epoch
    assert [box.put({"n": i}) for i in range(5)] == [0, 1, 2, 3, 4]
    assert box.ack(2) == [0, 1]
    box.close()
    again = SqliteOutbox(path)
    assert again.epoch == epoch and again.next_seq == 5 and again.first_unacked == 2
    assert list(again.items_from(0)) == [(2, {"n": 2}), (3, {"n": 3}), (4, {"n": 4})]
    mode = again._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    again.close()


def test_outbox_refuses_unencodable_body_without_consuming_a_seq() -> None:
    box = MemoryOutbox()
    with pytest.raises(LocalProtocolError):
        box.put({1.5j})
    assert box.next_seq == 0 and len(box) == 0


def test_corrupt_store_file_is_a_local_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(LocalProtocolError):
        SqliteOutbox(bad)
    with pytest.raises(LocalProtocolError):
        SqliteDedup(bad)


def test_sqlite_dedup_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "dedup.sqlite3"
    store = SqliteDedup(path)
    store.set("alice", "log", EPOCH, 42)
    store.close()
    again = SqliteDedup(path)
    assert again.get("alice", "log", EPOCH) == 42
    assert again.get("bob", "log", EPOCH) == 0  # epochs are scoped per peer
    again.close()


# ------------------------------------------------------------------ end to end


class Collector:
    def __init__(self) -> None:
        self.items: list[tuple[Any, Delivery]] = []

    async def __call__(self, body: Any, delivery: Delivery) -> None:
        self.items.append((body, delivery))


@asynccontextmanager
async def reliable_server(
    receiver: ReliableReceiver, resource: str = "log"
) -> AsyncIterator[tuple[Server, tuple[str, int]]]:
    server = Server(SERVER_ID, trust_roots=[AUTHORITY.agent_id])
    receiver.install(server, resource)
    async with anyio.create_task_group() as tg:
        address = await tg.start(server.serve_tcp, "127.0.0.1", 0)
        try:
            yield server, address
        finally:
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_send_is_delivered_once_in_order(anyio_backend: str) -> None:
    got = Collector()
    receiver = ReliableReceiver(got)
    with anyio.fail_after(20):
        async with (
            reliable_server(receiver) as (_server, address),
            ReliableSender(
                address,
                identity=CLIENT_ID,
                tokens=[token()],
                resource="log",
                peer=SERVER_ID.agent_id,
            ) as s,
        ):
            for i in range(50):
                s.queue({"i": i})
            assert await s.send({"i": 50}) == 50
            await s.flush()
            assert len(s.outbox) == 0 and s.delivered_below == 51
    assert [b["i"] for b, _ in got.items] == list(range(51))
    assert [d.seq for _, d in got.items] == list(range(51))
    assert {d.peer for _, d in got.items} == {CLIENT_ID.agent_id.text}
    assert receiver.duplicates == 0


async def test_reconnect_resends_and_receiver_drops_duplicates() -> None:
    """Acks lost with the connection: the resend is acknowledged, not redelivered."""
    got = Collector()
    receiver = ReliableReceiver(got)
    async with reliable_server(receiver) as (server, address):
        with anyio.fail_after(20):
            sender = ReliableSender(
                address,
                identity=CLIENT_ID,
                tokens=[token()],
                resource="log",
                peer=SERVER_ID.agent_id,
            )
            # pretend the first 10 were sent but their acks were lost: drive by hand
            for i in range(10):
                sender.queue(i)
            async with sender:
                await sender.flush()
                first_conns = sender.connections
                for session in list(server.sessions):
                    await session.abort()  # cut: the sender must reconnect
                for i in range(10, 20):
                    sender.queue(i)
                await sender.flush()
            assert sender.connections >= first_conns + 1
    assert [b for b, _ in got.items] == list(range(20))


async def test_resend_after_lost_acks_is_deduplicated() -> None:
    got = Collector()
    receiver = ReliableReceiver(got)
    async with reliable_server(receiver) as (_server, address):
        with anyio.fail_after(20):
            async with connect(
                address, identity=CLIENT_ID, tokens=[token()], peer=SERVER_ID.agent_id
            ) as session:
                stream = await session.open_message_stream("log")
                await stream.send(Hello(EPOCH, 0).to_wire())
                assert parse(await stream.receive()) == Welcome(0)
                for seq in range(3):
                    await stream.send(Data(seq, seq).to_wire())
                    assert parse(await stream.receive()) == Ack(seq + 1)
            # a new connection resends 1 and 2 (say the acks were lost), then 3
            async with connect(
                address, identity=CLIENT_ID, tokens=[token()], peer=SERVER_ID.agent_id
            ) as session:
                stream = await session.open_message_stream("log")
                await stream.send(Hello(EPOCH, 1).to_wire())
                assert parse(await stream.receive()) == Welcome(3)
                for seq in (1, 2, 3):
                    await stream.send(Data(seq, seq).to_wire())
                    assert parse(await stream.receive()) == Ack(max(3, seq + 1))
    assert [b for b, _ in got.items] == [0, 1, 2, 3]
    assert receiver.duplicates == 2


async def test_other_identity_with_the_same_epoch_gets_its_own_channel() -> None:
    """Epochs are scoped per identity: a copied epoch neither blocks nor reveals anything."""
    got = Collector()
    receiver = ReliableReceiver(got)
    async with reliable_server(receiver) as (_server, address):
        with anyio.fail_after(20):
            async with ReliableSender(
                address,
                identity=CLIENT_ID,
                tokens=[token()],
                resource="log",
                peer=SERVER_ID.agent_id,
            ) as owner:
                await owner.send("mine")
                await owner.send("mine too")
                epoch = owner.outbox.epoch
            thief_box = MemoryOutbox(entropy=lambda n: epoch)
            async with ReliableSender(
                address,
                identity=OTHER_ID,
                tokens=[token(OTHER_ID.agent_id)],
                resource="log",
                outbox=thief_box,
                peer=SERVER_ID.agent_id,
            ) as thief:
                assert await thief.send("its own") == 0  # welcome 0: not the owner's mark
    assert [(b, d.peer, d.seq) for b, d in got.items] == [
        ("mine", CLIENT_ID.agent_id.text, 0),
        ("mine too", CLIENT_ID.agent_id.text, 1),
        ("its own", OTHER_ID.agent_id.text, 0),
    ]


@pytest.mark.parametrize(
    ("first", "then", "code"),
    [
        ([3, 0, "x"], None, ErrorCode.PROTOCOL_ERROR),  # data before hello
        ([1, EPOCH, 0], [1, EPOCH, 0], ErrorCode.PROTOCOL_ERROR),  # second hello
        ([1, EPOCH, 0], [3, 5, "gap"], ErrorCode.PROTOCOL_ERROR),  # seq above the mark
        ([9], None, ErrorCode.DECODE_ERROR),
        ([1, EPOCH, 0], [3, -1, 0], ErrorCode.DECODE_ERROR),
    ],
)
async def test_receiver_protocol_violations_reset_the_stream(
    first: Any, then: Any, code: ErrorCode
) -> None:
    got = Collector()
    async with reliable_server(ReliableReceiver(got)) as (_server, address):
        with anyio.fail_after(10):
            async with connect(
                address, identity=CLIENT_ID, tokens=[token()], peer=SERVER_ID.agent_id
            ) as session:
                stream = await session.open_message_stream("log")
                await stream.send(first)
                if then is not None:
                    assert parse(await stream.receive()) == Welcome(0)
                    await stream.send(then)
                with pytest.raises(StreamResetError) as info:
                    await stream.receive()
                assert info.value.reset_code == code
    assert got.items == []


async def test_durable_receiver_dedups_across_restart(tmp_path: Path) -> None:
    """A sender that lost its acks resends everything to a restarted receiver: the
    persisted mark answers, nothing is delivered twice."""
    path = tmp_path / "dedup.sqlite3"
    got = Collector()
    for round_ in range(2):
        box = Outbox(EPOCH)  # the same epoch, all five messages held again
        for i in range(5):
            box.put(i)
        store = SqliteDedup(path)
        async with reliable_server(ReliableReceiver(got, store)) as (_s, address):
            with anyio.fail_after(20):
                async with ReliableSender(
                    address,
                    identity=CLIENT_ID,
                    tokens=[token()],
                    resource="log",
                    outbox=box,
                    peer=SERVER_ID.agent_id,
                ) as s:
                    await s.flush()
                    assert s.resent == 0 if round_ else True
        store.close()
    assert [b for b, _ in got.items] == list(range(5))
