"""Connection-level flow control seen through the public accessor, and the dribble rule."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import Pair, seeded_entropy

from m2mproto.config import Configuration
from m2mproto.events import DataReceived
from m2mproto.streams import ConnectionWindows


def cfg(seed: int, **kw: object) -> Configuration:
    return Configuration(entropy=seeded_entropy(seed), **kw)  # type: ignore[arg-type]


def test_connection_windows_track_both_directions() -> None:
    p = Pair(cfg(1), cfg(2, initial_connection_window=4096, auto_window_update=False))
    before = p.a.connection_windows()
    assert before.send_limit == 0 and before.send_available == 0  # peer window not known yet
    p.handshake()
    a0, b0 = p.a.connection_windows(), p.b.connection_windows()
    assert a0 == ConnectionWindows(
        recv_received=0, recv_consumed=0, recv_limit=a0.recv_limit, send_sent=0, send_limit=4096
    )
    assert b0.recv_limit == 4096 and b0.recv_available == 4096
    sid = p.a.open_stream("r")
    p.a.send(sid, b"x" * 2500)
    p.run()
    a1, b1 = p.a.connection_windows(), p.b.connection_windows()
    assert (a1.send_sent, a1.send_available) == (2500, 1596)
    assert (b1.recv_received, b1.recv_consumed, b1.recv_available) == (2500, 0, 1596)
    got = sum(len(e.data) for e in p.events[p.b] if isinstance(e, DataReceived))
    assert got == 2500
    p.b.acknowledge_data(sid, 2000)  # under half the window: no update yet
    p.run()
    assert p.a.connection_windows().send_limit == 4096
    p.b.acknowledge_data(sid, 500)  # over half: an update is due
    p.run()
    a2, b2 = p.a.connection_windows(), p.b.connection_windows()
    assert b2.recv_consumed == 2500
    assert b2.recv_limit == 2500 + 4096 and a2.send_limit == b2.recv_limit
    assert a2.send_available == 4096


def test_connection_windows_is_a_frozen_snapshot() -> None:
    p = Pair().handshake()
    snap = p.a.connection_windows()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.send_sent = 5  # type: ignore[misc]
    sid = p.a.open_stream("r")
    p.a.send(sid, b"abc")
    p.run()
    assert snap.send_sent == 0 and p.a.connection_windows().send_sent == 3
