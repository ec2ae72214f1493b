"""Hardening of the core against hostile peers (pair tests; spec/streams.md §6)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from helpers import Pair, seeded_entropy
from hypothesis import example, given, settings
from hypothesis import strategies as st

from m2mproto import cbor
from m2mproto.config import Configuration
from m2mproto.connection import ConnectionState
from m2mproto.errors import AuthorizationError, ErrorCode
from m2mproto.events import ConnectionClosed, Event, MessageReceived, StreamReset
from m2mproto.frames import (
    Frame,
    MessageFrame,
    OpenFrame,
    StreamFrame,
    WindowUpdateFrame,
    encode_frame,
)
from m2mproto.identity import AgentId


def cfg(seed: int, **kw: object) -> Configuration:
    return Configuration(entropy=seeded_entropy(seed), **kw)  # type: ignore[arg-type]


def inject(p: Pair, frames: Sequence[Frame | bytes]) -> list[Event]:
    """Seal raw frames with a's real keys and deliver them to b (a hostile peer)."""
    raw = b"".join(f if isinstance(f, bytes) else encode_frame(f) for f in frames)
    assert p.a._writer is not None
    p.b.receive_data(p.a._writer.seal(raw), p.clock.now)
    return list(p.drain(p.b))


class _Authz:
    def __init__(self, allowed: set[tuple[str, str]]) -> None:
        self.allowed = allowed

    def accept_tokens(self, peer: AgentId, tokens: Sequence[bytes], now: float) -> object:
        return None

    def authorize(self, peer: AgentId, resource: str, ability: str, now: float) -> object:
        if (resource, ability) not in self.allowed:
            raise AuthorizationError("no")
        return None


def _closed_code(events: Sequence[Event]) -> int | None:
    for ev in events:
        if isinstance(ev, ConnectionClosed):
            return ev.code
    return None


# -- H1: resets the peer provokes are charged (MadeYouReset, CVE-2025-8671) -----------

_NOT_CBOR = (b"\x82\x01", b"\xff", b"\x5f", b"\x1c")


def _decode(i: int) -> list[Frame]:
    sid = 2 * i
    return [OpenFrame(sid, "r"), MessageFrame(sid, _NOT_CBOR[i % 4], True, False)]


def _too_large(i: int) -> list[Frame]:
    sid = 2 * i
    return [OpenFrame(sid, "r"), MessageFrame(sid, b"\x59\x04\x00" + b"\x00" * 1024, True, False)]


def _no_msg_cap(i: int) -> list[Frame]:
    sid = 2 * i
    return [OpenFrame(sid, "open-only"), MessageFrame(sid, b"\x01", True, False)]


def _no_open_cap(i: int) -> list[Frame]:
    sid = 2 * i
    return [OpenFrame(sid, "nothing"), MessageFrame(sid, b"\x01", True, False)]


def _mixed(i: int) -> list[Frame]:
    return (_decode, _too_large, _no_msg_cap, _no_open_cap)[i % 4](i)


@pytest.mark.parametrize(
    "attack", [_decode, _too_large, _no_msg_cap, _no_open_cap, _mixed], ids=lambda f: f.__name__
)
def test_made_you_reset_closes_at_the_churn_budget(attack: Callable[[int], list[Frame]]) -> None:
    authz = _Authz({("r", "stream/open"), ("r", "msg/send"), ("open-only", "stream/open")})
    p = Pair(cfg(1), cfg(2, max_message_size=1000), b={"authorizer": authz}).handshake()
    resets = 0
    code = None
    for i in range(3000):
        got = inject(p, attack(i))
        resets += sum(
            1 for e in got if isinstance(e, StreamReset) and e.code != ErrorCode.ENHANCE_YOUR_CALM
        )
        code = _closed_code(got)
        if code is not None:
            break
        if i % 64 == 0:
            p.b.data_to_send()  # the RESETs leave; the outbox stays small
    assert code == ErrorCode.ENHANCE_YOUR_CALM
    assert resets == 200  # the burst, not 3,000
    assert p.b.state is ConnectionState.CLOSED


def test_made_you_reset_at_a_sustainable_rate_stays_up() -> None:
    p = Pair(cfg(1), cfg(2)).handshake()
    for i in range(600):
        if i % 40 == 39:
            p.clock.advance(1.0)  # 40/s, below the refill rate of 50/s
        got = inject(p, _decode(i))
        assert _closed_code(got) is None
        p.b.data_to_send()
    assert p.b.state is ConnectionState.ESTABLISHED


def test_refuse_stream_is_charged_reset_stream_is_not() -> None:
    p = Pair(cfg(1), cfg(2, stream_churn_burst=10)).handshake()
    sids = []
    for _ in range(25):
        sids.append(p.a.open_stream("r"))
        p.a.send(sids[-1], b"x")
    p.run()
    for sid in sids[:12]:
        p.b.reset_stream(sid)  # our own decision: never charged
    for sid in sids[12:22]:
        p.b.refuse_stream(sid, ErrorCode.UNAUTHORIZED)
    assert p.b.state is ConnectionState.ESTABLISHED
    assert p.drain(p.b) == []
    p.b.refuse_stream(sids[22], ErrorCode.UNAUTHORIZED)  # the 11th charge
    got = p.drain(p.b)
    assert _closed_code(got) == ErrorCode.ENHANCE_YOUR_CALM


# -- H3: non-productive frames on dead streams (CVE-2019-9518) ------------------------


def _dead_stream_pair(how: str) -> tuple[Pair, list[int]]:
    """A pair where b has dead stream IDs of a's parity: reset by a, by b, or skipped."""
    p = Pair(cfg(1), cfg(2)).handshake()
    if how == "skipped":
        inject(p, [OpenFrame(6, "r")])  # 0, 2, 4 are skipped
        return p, [0, 2, 4]
    sid = p.a.open_stream("r")
    p.a.send(sid, b"x")
    p.run()
    if how == "peer-reset":
        p.a.reset_stream(sid)
    else:
        p.b.reset_stream(sid)
    p.run()
    assert sid not in p.b.streams
    return p, [sid]


def _empty(i: int, sid: int) -> Frame:
    kinds = (
        StreamFrame(sid, b"", False),
        StreamFrame(sid, b"", True),
        MessageFrame(sid, b"", False, False),
        MessageFrame(sid, b"", True, False),
    )
    return kinds[i % 4]


@pytest.mark.parametrize("how", ["peer-reset", "local-reset", "skipped"])
@pytest.mark.parametrize("per_record", [1, 5, 33])
def test_empty_frames_on_dead_streams_are_budgeted(how: str, per_record: int) -> None:
    p, sids = _dead_stream_pair(how)
    frames = [_empty(i, sids[i % len(sids)]) for i in range(33)]
    got: list[Event] = []
    for k in range(0, 33, per_record):
        got += inject(p, frames[k : k + per_record])
    assert _closed_code(got) == ErrorCode.ENHANCE_YOUR_CALM


@pytest.mark.parametrize("how", ["peer-reset", "local-reset", "skipped"])
def test_thirty_two_empty_frames_on_dead_streams_pass(how: str) -> None:
    p, sids = _dead_stream_pair(how)
    got = inject(p, [_empty(i, sids[0]) for i in range(32)])
    assert _closed_code(got) is None and p.b.state is ConnectionState.ESTABLISHED


def test_data_on_a_dead_stream_is_not_progress() -> None:
    p, (sid,) = _dead_stream_pair("local-reset")
    got = inject(p, [WindowUpdateFrame(None, 4096)] * 20)
    got += inject(p, [StreamFrame(sid, b"late bytes"), MessageFrame(sid, b"\x01")])
    got += inject(p, [WindowUpdateFrame(None, 4096)] * 13)
    assert _closed_code(got) == ErrorCode.ENHANCE_YOUR_CALM


def test_refused_open_is_not_progress() -> None:
    authz = _Authz({("ok", "stream/open")})
    p = Pair(cfg(1), cfg(2), b={"authorizer": authz}).handshake()
    got = inject(p, [WindowUpdateFrame(None, 4096)] * 20)
    got += inject(p, [OpenFrame(0, "denied"), OpenFrame(2, "denied")])
    got += inject(p, [WindowUpdateFrame(None, 4096)] * 13)
    assert _closed_code(got) == ErrorCode.ENHANCE_YOUR_CALM
    # whereas an accepted OPEN is progress
    q = Pair(cfg(1), cfg(2), b={"authorizer": authz}).handshake()
    got = inject(q, [WindowUpdateFrame(None, 4096)] * 20)
    got += inject(q, [OpenFrame(0, "ok")])
    got += inject(q, [WindowUpdateFrame(None, 4096)] * 13)
    assert _closed_code(got) is None


# -- S1: messages larger than a stream window, with manual or automatic credit --------


def _deliver(p: Pair, *, ack: bool) -> list[MessageReceived]:
    """Shuttle until quiet; b acknowledges each whole message (manual flow control)."""
    got: list[MessageReceived] = []
    for _ in range(10_000):
        moved = 0
        for src in (p.a, p.b):
            data = src.data_to_send()
            moved += len(data)
            if data:
                p.other(src).receive_data(data, p.clock.now)
        for ev in p.drain(p.b):
            assert not isinstance(ev, ConnectionClosed), ev
            if isinstance(ev, MessageReceived):
                got.append(ev)
                if ack:
                    p.b.acknowledge_data(ev.stream_id, ev.size)
        p.drain(p.a)
        if not moved:
            return got
    raise AssertionError("did not go quiet")


@settings(max_examples=12, deadline=None)
@given(size=st.integers(1024, 1 << 20), auto=st.booleans())
@example(size=1 << 20, auto=False)
@example(size=300_000, auto=False)
def test_large_message_through_a_pair(size: int, auto: bool) -> None:
    """Our own sender, any size up to max_message_size: it arrives, whole, both modes."""
    config = {"auto_window_update": auto}
    p = Pair(cfg(1, **config), cfg(2, **config)).handshake()
    sid = p.a.open_stream("r")
    value = b"\x5a" * (size - 5)  # a byte string: CBOR head + payload <= size
    p.a.send_message(sid, value, end_stream=True)
    got = _deliver(p, ack=not auto)
    assert [m.value for m in got] == [value]
    w = p.b.connection_windows()
    assert w.recv_consumed == w.recv_received  # every byte credited exactly once


def _fragments(data: bytes, cuts: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = cuts[i % len(cuts)]
        i += 1
        out.append(data[pos : pos + n])
        pos += n
    return out


@settings(max_examples=15, deadline=None)
@given(
    size=st.integers(1024, 1 << 20),
    cuts=st.lists(st.integers(1, 60_000), min_size=1, max_size=4),
    auto=st.booleans(),
)
@example(size=1 << 20, cuts=[60_000, 1, 4097], auto=False)
@example(size=300_000, cuts=[777], auto=False)
def test_large_message_in_foreign_fragments(size: int, cuts: list[int], auto: bool) -> None:
    """A peer fragmenting differently from our sender (within the credit it was given)."""
    cuts = [max(c, size // 400) for c in cuts]  # at most ~400 records per example
    config = {"auto_window_update": auto, "initial_stream_window": 128 * 1024}
    p = Pair(cfg(1), cfg(2, **config)).handshake()
    data = cbor.encode(b"\x00" * (size - 5))
    parts = _fragments(data, cuts)
    got = inject(p, [OpenFrame(0, "r")])
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        got += inject(p, [MessageFrame(0, part, last, last)])
        assert _closed_code(got) is None, got
        assert p.b.streams.get(0) is None or p.b.streams[0].recv_window.available > 0 or last
    (msg,) = [e for e in got if isinstance(e, MessageReceived)]
    assert msg.size == len(data) and msg.value == b"\x00" * (size - 5)
    w = p.b.connection_windows()
    if auto:
        assert w.recv_consumed == w.recv_received
    else:  # the application has not acknowledged: only the last fragment is owed
        assert w.recv_consumed == w.recv_received - len(parts[-1])
        p.b.acknowledge_data(0, msg.size)
        assert p.b.connection_windows().recv_consumed == w.recv_received


def test_manual_credit_is_never_given_twice() -> None:
    """Two fragmented messages; acknowledging the first returns only what is still owed."""
    p = Pair(cfg(1), cfg(2, auto_window_update=False)).handshake()
    m1, m2 = cbor.encode(b"a" * 3000), cbor.encode(b"b" * 5000)
    got = inject(p, [OpenFrame(0, "r"), MessageFrame(0, m1[:1000], False, False)])
    got += inject(p, [MessageFrame(0, m1[1000:], True, False)])
    got += inject(p, [MessageFrame(0, m2[:4000], False, False), MessageFrame(0, m2[4000:], True)])
    msgs = [e for e in got if isinstance(e, MessageReceived)]
    assert [m.size for m in msgs] == [len(m1), len(m2)]
    w = p.b.connection_windows()
    assert w.recv_consumed == 1000 + 4000  # the fragments the core held
    p.b.acknowledge_data(0, len(m1))
    p.b.acknowledge_data(0, len(m2))
    w = p.b.connection_windows()
    assert w.recv_consumed == w.recv_received == len(m1) + len(m2)
    assert p.b.streams[0].recv_window.consumed == len(m1) + len(m2)


def test_manual_credit_for_a_refused_message_is_returned() -> None:
    """Bytes of a message the core refuses never reach the application: credited at once."""
    p = Pair(cfg(1), cfg(2, auto_window_update=False, max_message_size=4000)).handshake()
    big = cbor.encode(b"z" * 5000)
    got = inject(p, [OpenFrame(0, "r"), MessageFrame(0, big[:3000], False, False)])
    got += inject(p, [MessageFrame(0, big[3000:], True, False)])
    got += inject(p, [OpenFrame(2, "r"), MessageFrame(2, b"\xff", True, False)])
    assert [e.code for e in got if isinstance(e, StreamReset)] == [
        ErrorCode.MESSAGE_TOO_LARGE,
        ErrorCode.DECODE_ERROR,
    ]
    w = p.b.connection_windows()
    assert w.recv_consumed == w.recv_received == len(big) + 1


def test_manual_credit_is_per_stream_an_unread_message_holds_only_its_own() -> None:
    """A large delivered message the application has not taken yet does not absorb the
    acknowledgements of other streams (their credit goes back at once)."""
    p = Pair(cfg(1), cfg(2, auto_window_update=False)).handshake()
    big = cbor.encode(b"x" * 200_000)
    parts = _fragments(big, [60_000])
    got = inject(p, [OpenFrame(0, "big"), OpenFrame(2, "small")])
    for k, part in enumerate(parts):
        got += inject(p, [MessageFrame(0, part, k == len(parts) - 1, False)])
    got += inject(p, [StreamFrame(2, b"y" * 1000)])
    assert [e.size for e in got if isinstance(e, MessageReceived)] == [len(big)]
    before = p.b.connection_windows().recv_consumed
    p.b.acknowledge_data(2, 1000)  # stream 2's bytes: credited in full
    assert p.b.connection_windows().recv_consumed == before + 1000
    p.b.acknowledge_data(0, len(big))  # the big message: only its last fragment was owed
    w = p.b.connection_windows()
    assert w.recv_consumed == w.recv_received


def test_manual_credit_after_the_stream_finished() -> None:
    p = Pair(cfg(1), cfg(2, auto_window_update=False)).handshake()
    m = cbor.encode(b"q" * 5000)
    got = inject(p, [OpenFrame(0, "r"), MessageFrame(0, m[:3000], False, False)])
    got += inject(p, [MessageFrame(0, m[3000:], True, True)])
    p.b.send(0, b"", end_stream=True)  # b ends its half too: the stream finishes
    p.b.data_to_send()
    assert 0 not in p.b.streams
    p.b.acknowledge_data(0, len(m))
    w = p.b.connection_windows()
    assert w.recv_consumed == w.recv_received == len(m)
