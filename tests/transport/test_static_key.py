"""The transport signs a Noise static key once per identity and reuses it (spec 2.3)."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest
from transport_util import CLIENT_ID, SERVER_ID

from m2mproto.config import Configuration
from m2mproto.noise import x25519_public_key
from m2mproto.transport import memory_pair
from m2mproto.transport.session import Session, process_static_key

pytestmark = pytest.mark.anyio


def _local_static(session: Session) -> bytes:
    hs = session.connection._hs
    assert hs is not None
    return hs.local_static_public


async def test_process_static_key_is_made_once_per_identity() -> None:
    cfg = Configuration()
    a1 = process_static_key(CLIENT_ID, cfg)
    a2 = process_static_key(CLIENT_ID, cfg)
    b = process_static_key(SERVER_ID, cfg)
    assert a1 is a2 and a1.public != b.public
    assert a1.identity_key == CLIENT_ID.public_key and b.identity_key == SERVER_ID.public_key


async def test_sessions_share_the_static_key_unless_configured() -> None:
    shared = process_static_key(CLIENT_ID, Configuration()).public
    sessions = [Session.create(_Null(), identity=CLIENT_ID) for _ in range(2)]
    assert [_local_static(s) for s in sessions] == [shared, shared]
    raw = bytes(range(32))
    own = Session.create(_Null(), identity=CLIENT_ID, config=Configuration(static_key=raw))
    assert _local_static(own) == x25519_public_key(raw) != shared


async def test_reused_static_key_still_authenticates_both_sides() -> None:
    for _ in range(2):
        async with memory_pair(client_identity=CLIENT_ID, server_identity=SERVER_ID) as (c, s):
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
