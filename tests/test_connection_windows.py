"""Connection-level flow control seen through the public accessor, and the dribble rule."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from helpers import Pair, seeded_entropy

from m2mproto.config import Configuration
from m2mproto.connection import ConnectionState
from m2mproto.errors import ErrorCode
from m2mproto.events import ConnectionClosed, DataReceived
from m2mproto.frames import Frame, StreamFrame, WindowUpdateFrame, decode_frames, encode_frame
from m2mproto.streams import ConnectionWindows


def cfg(seed: int, **kw: object) -> Configuration:
    return Configuration(entropy=seeded_entropy(seed), **kw)  # type: ignore[arg-type]


def inject(p: Pair, frames: Sequence[Frame], *, to_b: bool = True) -> list[object]:
    """Seal raw frames with the sender's real keys and deliver them (a hostile peer)."""
    src, dst = (p.a, p.b) if to_b else (p.b, p.a)
    assert src._writer is not None
    dst.receive_data(src._writer.seal(b"".join(encode_frame(f) for f in frames)), p.clock.now)
    return list(p.drain(dst))


def closed_with(events: Sequence[object], code: ErrorCode) -> None:
    assert events and isinstance(events[-1], ConnectionClosed), events
    assert events[-1].code == code and events[-1].remote is False


def wire_code(p: Pair) -> int:
    """The close code a put on the wire."""
    closes = [f for f in sent_frames(p) if type(f).__name__ == "CloseFrame"]
    assert len(closes) == 1
    return int(closes[0].code)  # type: ignore[attr-defined]


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


# -- the dribble rule (spec/streams.md §6, runner case 5.3/10 Flow-Dribble, CVE-2019-9511) --

#: b advertises a 64-byte stream window: a grant below min(1024, 64 // 2) = 32 is small.
SMALL_WINDOW = 64


def dribble_pair(data: int = 5000) -> tuple[Pair, int]:
    p = Pair(cfg(1), cfg(2, initial_stream_window=SMALL_WINDOW, auto_window_update=False))
    p.handshake()
    sid = p.a.open_stream("r")
    p.a.send(sid, b"d" * data)
    sent = sent_frames(p)
    assert [len(f.data) for f in sent if isinstance(f, StreamFrame)] == [SMALL_WINDOW]
    return p, sid


def sent_frames(p: Pair) -> list[Frame]:
    """Decrypt what a sent with b's record reader, without b's flow-control checks."""
    reader = p.b._reader
    assert reader is not None
    reader.feed(p.a.data_to_send())
    frames: list[Frame] = []
    for _ in range(10_000):
        record = reader.next_record()
        if record is None:
            return frames
        frames += decode_frames(record)
    raise AssertionError("too many records")


def grant(p: Pair, *frames: WindowUpdateFrame) -> list[object]:
    """b sends *frames* in one record; returns a's events."""
    return inject(p, list(frames), to_b=False)


def test_sender_sends_one_short_frame_per_grant_cycle() -> None:
    p, sid = dribble_pair()
    for _ in range(20):  # one 1-byte grant per cycle: one 1-byte frame
        assert grant(p, WindowUpdateFrame(sid, 1)) == []
        data = [f for f in sent_frames(p) if isinstance(f, StreamFrame)]
        assert [len(f.data) for f in data] == [1]
    # ten tiny grants in one record are one cycle: one 10-byte frame, not ten
    assert grant(p, *[WindowUpdateFrame(sid, 1)] * 10) == []
    data = [f for f in sent_frames(p) if isinstance(f, StreamFrame)]
    assert [len(f.data) for f in data] == [10]
    assert p.a.state is ConnectionState.ESTABLISHED


def test_small_grant_budget_boundary_pair() -> None:
    p, sid = dribble_pair()
    for _ in range(32):
        assert grant(p, WindowUpdateFrame(sid, 1)) == []
        assert len(sent_frames(p)) == 1  # we keep sending: data does not reset the budget
    closed_with(grant(p, WindowUpdateFrame(sid, 1)), ErrorCode.ENHANCE_YOUR_CALM)
    assert wire_code(p) == ErrorCode.ENHANCE_YOUR_CALM


def test_connection_level_dribble_counts_too() -> None:
    p = Pair(cfg(1), cfg(2, initial_connection_window=64, auto_window_update=False))
    p.handshake()
    sid = p.a.open_stream("r")
    p.a.send(sid, b"d" * 5000)
    sent_frames(p)
    for _ in range(32):
        assert grant(p, WindowUpdateFrame(None, 1)) == []
    closed_with(grant(p, WindowUpdateFrame(None, 1)), ErrorCode.ENHANCE_YOUR_CALM)


def test_a_real_grant_with_data_waiting_resets_the_budget() -> None:
    p, sid = dribble_pair(data=10_000)
    for _ in range(3):
        for _ in range(32):
            assert grant(p, WindowUpdateFrame(sid, 1)) == []
            sent_frames(p)
        assert grant(p, WindowUpdateFrame(sid, SMALL_WINDOW // 2)) == []  # not small
        assert [len(f.data) for f in sent_frames(p) if isinstance(f, StreamFrame)] == [32]
    assert p.a.state is ConnectionState.ESTABLISHED


def test_a_real_grant_with_nothing_waiting_does_not_reset() -> None:
    p, sid = dribble_pair()
    idle = p.a.open_stream("idle")
    sent_frames(p)
    for _ in range(32):
        assert grant(p, WindowUpdateFrame(sid, 1)) == []
        sent_frames(p)
    # free credit on a stream with nothing queued costs the peer nothing
    assert grant(p, WindowUpdateFrame(idle, 10_000)) == []
    closed_with(grant(p, WindowUpdateFrame(sid, 1)), ErrorCode.ENHANCE_YOUR_CALM)


def test_honest_small_windows_never_trip_the_budget() -> None:
    # automatic updates are at least half the window: never small, whatever the window
    p = Pair(cfg(1), cfg(2, initial_stream_window=64, initial_connection_window=200))
    p.handshake()
    sid = p.a.open_stream("r")
    p.a.send(sid, b"h" * 20_000, end_stream=True)
    p.run(rounds=5000)
    got = b"".join(e.data for e in p.events[p.b] if isinstance(e, DataReceived))
    assert got == b"h" * 20_000
    assert p.a.state is ConnectionState.ESTABLISHED


def test_configuration_repr_hides_the_static_key() -> None:
    from m2mproto.config import Configuration

    secret = bytes(range(100, 132))
    text = repr(Configuration(static_key=secret))
    assert secret.hex() not in text and repr(secret) not in text
    assert "static_key" not in text
