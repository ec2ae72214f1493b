"""A cleartext ABORT after the handshake (spec/handshake.md §2.7), with the real Handshake.

The side that finishes first (XX initiator, IK responder) already has transport keys when
the other side fails and aborts; the ABORT must be reported as the peer's code, not as a
short record, and only as the very first post-handshake bytes.
"""

from __future__ import annotations

import pytest
from helpers import ALICE, BOB, FakeClock, seeded_entropy
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mproto.config import Configuration
from m2mproto.connection import NEED_DATA, Connection, ConnectionState, Role
from m2mproto.errors import AuthenticationError, ErrorCode
from m2mproto.events import ConnectionClosed, Event, HandshakeCompleted, StreamReset
from m2mproto.handshake import encode_abort
from m2mproto.identity import AgentId
from m2mproto.noise import x25519_public_key

_ABORTED = ConnectionClosed(
    code=ErrorCode.UNAUTHORIZED, reason="peer aborted the handshake", remote=True
)


def _refuse(_peer: AgentId) -> None:
    raise AuthenticationError("not on the allow list", ErrorCode.AUTH_UNTRUSTED)


def _events(c: Connection) -> list[Event]:
    out: list[Event] = []
    for _ in range(100):
        ev = c.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, ConnectionClosed):
            return out
    raise AssertionError("unbounded")


def _feed(c: Connection, data: bytes, step: int, now: float) -> list[Event]:
    got: list[Event] = []
    for i in range(0, len(data), step):
        c.receive_data(data[i : i + step], now)
        got += _events(c)
    return got


def _xx_initiator_refused(step: int) -> tuple[Connection, list[Event], bytes]:
    """Run XX where the responder refuses the initiator after message 3.

    Returns the initiator, its events, and the responder's bytes after message 3.
    """
    clock = FakeClock()
    a = Connection(Role.INITIATOR, ALICE, Configuration(entropy=seeded_entropy(1)))
    b = Connection(
        Role.RESPONDER, BOB, Configuration(entropy=seeded_entropy(2)), authenticate_peer=_refuse
    )
    a.start(clock.now)
    b.start(clock.now)
    b.receive_data(a.data_to_send(), clock.now)  # message 1
    assert _events(b) == []
    got = _feed(a, b.data_to_send(), step, clock.now)  # message 2: a completes
    assert [type(e) for e in got] == [HandshakeCompleted]
    assert a.state is ConnectionState.ESTABLISHED
    b.receive_data(a.data_to_send(), clock.now)  # message 3: b refuses a
    closed = _events(b)
    assert isinstance(closed[-1], ConnectionClosed) and closed[-1].remote is False
    abort = b.data_to_send()
    return a, _feed(a, abort, step, clock.now), abort


@pytest.mark.parametrize("step", [1, 2, 3, 1000])
def test_xx_initiator_reports_responder_abort(step: int) -> None:
    a, got, abort = _xx_initiator_refused(step)
    assert abort == encode_abort(ErrorCode.AUTH_UNTRUSTED) == b"\x00\x02\x00\x05"
    assert got == [_ABORTED]
    assert a.state is ConnectionState.CLOSED
    assert a.data_to_send() == b""  # an ABORT is never answered, not even with a CLOSE


def test_abort_reports_open_streams_aborted() -> None:
    clock = FakeClock()
    a = Connection(Role.INITIATOR, ALICE, Configuration(entropy=seeded_entropy(1)))
    b = Connection(
        Role.RESPONDER, BOB, Configuration(entropy=seeded_entropy(2)), authenticate_peer=_refuse
    )
    a.start(clock.now)
    b.start(clock.now)
    b.receive_data(a.data_to_send(), clock.now)
    _events(b)
    a.receive_data(b.data_to_send(), clock.now)
    assert isinstance(_events(a)[0], HandshakeCompleted)
    sid = a.open_stream("orders")
    a.send(sid, b"queued before the abort")
    b.receive_data(a.data_to_send(), clock.now)
    _events(b)
    a.receive_data(b.data_to_send(), clock.now)
    got = _events(a)
    assert got == [
        StreamReset(stream_id=sid, code=ErrorCode.UNAUTHORIZED, remote=True),
        _ABORTED,
    ]
    assert a.data_to_send() == b""


def test_ik_responder_reports_initiator_abort() -> None:
    clock = FakeClock()
    static_b = bytes(range(40, 72))
    a = Connection(
        Role.INITIATOR,
        ALICE,
        Configuration(entropy=seeded_entropy(1)),
        remote_static=x25519_public_key(static_b),
        authenticate_peer=_refuse,
    )
    b = Connection(
        Role.RESPONDER, BOB, Configuration(entropy=seeded_entropy(2), static_key=static_b)
    )
    a.start(clock.now)
    b.start(clock.now)
    b.receive_data(a.data_to_send(), clock.now)  # IK message 1: b completes
    got = _events(b)
    assert isinstance(got[0], HandshakeCompleted) and got[0].pattern == "IKhfs"  # hybrid by default
    a.receive_data(b.data_to_send(), clock.now)  # message 2: a refuses b
    assert isinstance(_events(a)[-1], ConnectionClosed)
    abort = a.data_to_send()
    assert abort == b"\x00\x02\x00\x05"
    b.receive_data(abort, clock.now)
    assert _events(b) == [_ABORTED]
    assert b.data_to_send() == b""


def _established() -> tuple[Connection, Connection, FakeClock]:
    clock = FakeClock()
    a = Connection(Role.INITIATOR, ALICE, Configuration(entropy=seeded_entropy(1)))
    b = Connection(Role.RESPONDER, BOB, Configuration(entropy=seeded_entropy(2)))
    a.start(clock.now)
    b.start(clock.now)
    for _ in range(4):
        for src, dst in ((a, b), (b, a)):
            data = src.data_to_send()
            if data:
                dst.receive_data(data, clock.now)
            _events(dst)
    assert a.state is b.state is ConnectionState.ESTABLISHED
    return a, b, clock


@settings(max_examples=40)
@given(st.integers(0, 0xFFFF))
def test_abort_code_mapping(raw: int) -> None:
    a, _, clock = _established()
    a.receive_data(b"\x00\x02" + raw.to_bytes(2, "big"), clock.now)
    (ev,) = _events(a)
    assert isinstance(ev, ConnectionClosed) and ev.remote is True
    if raw < 0x40 and raw in {c.value for c in ErrorCode}:
        assert ev.code == raw
    else:
        assert ev.code == ErrorCode.HANDSHAKE_FAILURE
    assert a.data_to_send() == b""


def test_abort_only_as_first_record() -> None:
    a, b, clock = _established()
    sid = b.open_stream("x")
    b.send(sid, b"hello")
    a.receive_data(b.data_to_send(), clock.now)
    assert [type(e).__name__ for e in _events(a)] == ["StreamOpened", "DataReceived"]
    a.receive_data(b"\x00\x02\x00\x03", clock.now)
    (reset, closed) = _events(a)
    assert isinstance(reset, StreamReset)
    assert isinstance(closed, ConnectionClosed)
    assert closed.code == ErrorCode.FRAME_SIZE_ERROR and closed.remote is False


def test_abort_length_then_eof_is_truncated() -> None:
    a, _, clock = _established()
    a.receive_data(b"\x00\x02\x00", clock.now)
    assert _events(a) == []  # waits for the code byte
    a.receive_data(b"", clock.now)
    (ev,) = _events(a)
    assert isinstance(ev, ConnectionClosed) and ev.code == ErrorCode.TRUNCATED


@pytest.mark.parametrize("length", [0, 1, 3, 15])
def test_other_short_first_lengths_stay_frame_size_errors(length: int) -> None:
    a, _, clock = _established()
    a.receive_data(length.to_bytes(2, "big"), clock.now)
    (ev,) = _events(a)
    assert isinstance(ev, ConnectionClosed) and ev.code == ErrorCode.FRAME_SIZE_ERROR
