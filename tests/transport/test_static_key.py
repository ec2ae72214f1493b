"""An owner of many sessions signs a Noise static key once per identity (spec 2.3)."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest
from transport_util import CLIENT_ID, SERVER_ID

from m2mproto.config import Configuration
from m2mproto.connection import Connection, Role
from m2mproto.errors import ErrorCode, LocalProtocolError
from m2mproto.handshake import StaticKey
from m2mproto.noise import x25519_public_key
from m2mproto.transport import MemoryPair, StaticKeys, memory_pair
from m2mproto.transport.session import Session

pytestmark = pytest.mark.anyio


def _local_static(session: Session) -> bytes:
    hs = session.connection._hs
    assert hs is not None
    return hs.local_static_public


async def test_static_keys_make_one_key_per_identity_and_stay_bounded() -> None:
    cfg = Configuration()
    keys = StaticKeys()
    a1 = keys.get(CLIENT_ID, cfg)
    a2 = keys.get(CLIENT_ID, cfg)
    b = keys.get(SERVER_ID, cfg)
    assert a1 is a2 and a1.public != b.public and len(keys) == 2
    assert a1.identity_key == CLIENT_ID.public_key and b.identity_key == SERVER_ID.public_key
    assert StaticKeys().get(CLIENT_ID, cfg).public != a1.public  # no hidden process-wide cache
    one = StaticKeys(limit=1)
    first = one.get(CLIENT_ID, cfg)
    one.get(SERVER_ID, cfg)
    assert len(one) == 1 and one.get(CLIENT_ID, cfg) is not first  # oldest dropped


async def test_sessions_share_a_cache_unless_configured() -> None:
    keys = StaticKeys()
    shared = keys.get(CLIENT_ID, Configuration()).public
    sessions = [Session.create(_Null(), identity=CLIENT_ID, static_keys=keys) for _ in range(2)]
    assert [_local_static(s) for s in sessions] == [shared, shared]
    alone = [_local_static(Session.create(_Null(), identity=CLIENT_ID)) for _ in range(2)]
    assert len({*alone, shared}) == 3  # no cache: a fresh key per session
    raw = bytes(range(32))
    own = Session.create(
        _Null(), identity=CLIENT_ID, config=Configuration(static_key=raw), static_keys=keys
    )
    assert _local_static(own) == x25519_public_key(raw) != shared


async def test_reused_static_key_still_authenticates_both_sides() -> None:
    for _ in range(2):
        async with memory_pair(client_identity=CLIENT_ID, server_identity=SERVER_ID) as (c, s):
            assert c.peer.agent_id == SERVER_ID.agent_id
            assert s.peer.agent_id == CLIENT_ID.agent_id
            assert c.handshake_hash == s.handshake_hash


def test_configuration_accepts_a_static_key_object_or_32_bytes() -> None:
    raw = bytes(range(32))
    key = StaticKey(CLIENT_ID, raw)
    assert Configuration(static_key=key).static_key is key
    assert Configuration(static_key=raw).static_key == raw
    for bad in (b"short", bytes(33), bytearray(32), "k" * 32, 7):
        with pytest.raises(LocalProtocolError) as info:
            Configuration(static_key=bad)  # type: ignore[arg-type]
        assert info.value.code is ErrorCode.INVALID_ARGUMENT


async def test_a_configured_static_key_object_is_used_as_is() -> None:
    key = StaticKey(CLIENT_ID, bytes(range(32)))
    cfg = Configuration(static_key=key)
    for _ in range(2):  # shared: no new binding signature per connection
        conn = Connection(Role.INITIATOR, CLIENT_ID, cfg)
        assert conn._hs is not None and conn._hs.local_static_public == key.public
    session = Session.create(_Null(), identity=CLIENT_ID, config=cfg, static_keys=StaticKeys())
    assert _local_static(session) == key.public
    with pytest.raises(LocalProtocolError) as info:  # bound to another identity
        Connection(Role.INITIATOR, SERVER_ID, cfg)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


async def test_sessions_handshake_with_configured_static_key_objects() -> None:
    ckey = StaticKey(CLIENT_ID, bytes(range(1, 33)))
    skey = StaticKey(SERVER_ID, bytes(range(2, 34)))
    side = {"accept_incoming": True, "tokens": ()}
    pair = MemoryPair(
        {
            "client": {"identity": CLIENT_ID, "config": Configuration(static_key=ckey), **side},
            "server": {"identity": SERVER_ID, "config": Configuration(static_key=skey), **side},
            "max_buffer_chunks": 16,
            "timeout": 10.0,
        }
    )
    with anyio.fail_after(10):
        async with pair as (c, s):
            assert c.peer.agent_id == SERVER_ID.agent_id
            assert s.peer.agent_id == CLIENT_ID.agent_id
            assert c.handshake_hash == s.handshake_hash


class _Null(anyio.abc.ByteStream):
    """A byte stream that is never used (the sessions above are not started)."""

    async def receive(self, max_bytes: int = 65536) -> bytes:  # pragma: no cover
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:  # pragma: no cover
        raise anyio.BrokenResourceError

    async def send_eof(self) -> None:  # pragma: no cover
        return None

    async def aclose(self) -> None:  # pragma: no cover
        return None


async def test_flag_is_lazy_and_rearmable() -> None:
    from m2mproto.transport._pump import Flag, Signal

    flag = Flag()
    assert not flag.is_set() and flag._event is None
    woke: list[int] = []

    async def waiter() -> None:
        await flag.wait()
        woke.append(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        assert flag._event is not None and not woke
        flag.set()
    assert woke == [1] and flag.is_set() and flag._event is None
    await flag.wait()  # already set: returns at once
    flag.clear()
    assert not flag.is_set()
    with anyio.move_on_after(0.01) as scope:
        await flag.wait()
    assert scope.cancelled_caught
    signal = Signal()
    signal.notify()  # no waiter: no event is made
    assert signal._event is None
