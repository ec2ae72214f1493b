"""Stream state table and flow-control windows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mproto.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from m2mproto.frames import MAX_VARINT, Frame, MessageFrame, StreamFrame, decode_frames
from m2mproto.streams import (
    TRANSITIONS,
    RecvWindow,
    SendCredit,
    Stream,
    StreamInput,
    StreamState,
    StreamTable,
)


def _stream(send: int = 100, recv: int = 100) -> Stream:
    return Stream(4, "r", True, SendCredit(send), RecvWindow(recv))


_RECORD = 65519  # records.MAX_RECORD_PLAINTEXT


def _write_one(s: Stream, conn_credit: int, space: int = _RECORD) -> tuple[int, list[Frame]]:
    """One frame of *s* written into a record with *space* bytes free, decoded back."""
    buf = bytearray(_RECORD - space)
    sent, n = s.write_frames(buf, conn_credit, min_room=64, one=True)
    frames = decode_frames(bytes(buf[_RECORD - space :]))
    assert len(frames) == n <= 1 and len(buf) <= _RECORD
    return sent, frames


def test_graceful_lifecycles() -> None:
    s = _stream()
    assert s.apply(StreamInput.SEND_END) is StreamState.HALF_CLOSED_LOCAL
    assert s.apply(StreamInput.RECV_DATA) is StreamState.HALF_CLOSED_LOCAL
    assert s.apply(StreamInput.RECV_END) is StreamState.CLOSED
    s = _stream()
    assert s.apply(StreamInput.RECV_END) is StreamState.HALF_CLOSED_REMOTE
    assert s.apply(StreamInput.SEND_DATA) is StreamState.HALF_CLOSED_REMOTE
    assert s.apply(StreamInput.SEND_END) is StreamState.CLOSED


@pytest.mark.parametrize("state", list(StreamState))
@pytest.mark.parametrize("event", list(StreamInput))
def test_every_pair_is_listed_or_refused_without_change(
    state: StreamState, event: StreamInput
) -> None:
    s = _stream()
    s.state = state
    if (state, event) in TRANSITIONS:
        assert s.apply(event) is TRANSITIONS[(state, event)]
        return
    local = event.name.startswith("SEND")
    with pytest.raises(LocalProtocolError if local else RemoteProtocolError) as info:
        s.apply(event)
    assert info.value.code is (ErrorCode.INVALID_STATE if local else ErrorCode.STREAM_STATE_ERROR)
    assert state.name in str(info.value) and event.name in str(info.value)
    assert s.state is state


def test_terminal_states_accept_nothing() -> None:
    for state in (StreamState.CLOSED, StreamState.RESET):
        assert not any(k[0] is state for k in TRANSITIONS)


def test_send_credit_overflow_boundary() -> None:
    c = SendCredit(0)
    c.add(MAX_VARINT)  # exactly at the cap: fine
    with pytest.raises(RemoteProtocolError) as info:
        c.add(1)
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR
    assert c.limit == MAX_VARINT


def test_recv_window_boundary_pair_and_updates() -> None:
    w = RecvWindow(100)
    w.receive(100)  # exactly the window
    with pytest.raises(RemoteProtocolError) as info:
        w.check(1)
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR
    w.consume(49)
    assert w.update_due() == 0  # less than half a window consumed
    w.consume(1)
    assert w.update_due() == 50
    assert w.available == 50
    w.consume(1000)  # cannot consume more than received
    assert w.consumed == 100


@settings(max_examples=200)
@given(
    st.integers(1, 5000),
    st.integers(1, 5000),
    st.lists(st.tuples(st.booleans(), st.integers(0, 3000), st.integers(64, 2000)), max_size=30),
)
def test_credit_conservation(window: int, conn: int, ops: list[tuple[bool, int, int]]) -> None:
    """Sender output never exceeds credit; the receiver never sees a violation."""
    s = Stream(0, "r", True, SendCredit(window), RecvWindow(window))
    peer = RecvWindow(window)
    conn_credit = conn
    queued = 0
    delivered = 0
    for is_msg, size, space in ops:
        if size:
            s.queue(b"q" * size, is_message=is_msg, end_stream=False)
            queued += size
        for _ in range(100):
            sent, frames = _write_one(s, conn_credit, space)
            if not frames:
                break
            (f,) = frames
            assert isinstance(f, (StreamFrame, MessageFrame))
            payload = f.data if isinstance(f, StreamFrame) else f.fragment
            assert len(payload) == sent < space
            conn_credit -= len(payload)
            assert conn_credit >= 0
            peer.receive(len(payload))  # never raises
            delivered += len(payload)
        peer.consume(peer.received)
        inc = peer.update_due()
        if inc:
            s.send_credit.add(inc)
        assert s.send_credit.available >= 0
        assert s.send_buffered == queued - delivered
        conn_credit += 500


def test_end_stream_rides_on_last_fragment_and_empty_frame() -> None:
    s = _stream(send=0)
    s.queue(b"", is_message=False, end_stream=True)
    assert _write_one(s, 0) == (0, [StreamFrame(4, b"", True)])
    s = _stream(send=5)
    s.queue(b"abcdefgh", is_message=True, end_stream=True)
    assert _write_one(s, 100) == (5, [MessageFrame(4, b"abcde", last=False, end_stream=False)])
    assert _write_one(s, 100) == (0, [])  # blocked on credit
    s.send_credit.add(10)
    assert _write_one(s, 2) == (2, [MessageFrame(4, b"fg", last=False, end_stream=False)])
    assert _write_one(s, 100) == (1, [MessageFrame(4, b"h", last=True, end_stream=True)])
    assert s.end_sent and not s.has_pending()


def test_table_totals_follow_the_streams() -> None:
    """The table's sums change only with its streams' own counts (nothing to adjust by hand)."""
    t = StreamTable(initiator=True)
    a, b = _stream(send=10), Stream(6, "r", True, SendCredit(100), RecvWindow(100))
    a.queue(b"x" * 30, is_message=False, end_stream=False)  # before joining the table
    t.add(a)
    t.add(b)
    b.queue(b"y" * 7, is_message=True, end_stream=False)
    assert t.totals.send_buffered == 37
    assert _write_one(a, 1000)[0] == 10  # stream credit 10
    assert t.totals.send_buffered == 27 == a.send_buffered + b.send_buffered
    assert a.drop_pending() == 20 and t.totals.send_buffered == 7
    b.add_fragment(b"abc")
    a.add_fragment(b"de")
    assert t.totals.reassembly == 5
    assert b.take_message(b"z") == b"abcz" and t.totals.reassembly == 2
    a.drop_reassembly()
    assert t.totals.reassembly == 0 and not a.reassembly


def test_stream_table_ids_and_history() -> None:
    t = StreamTable(initiator=True)
    assert [t.allocate_local() for _ in range(3)] == [0, 2, 4]
    r = StreamTable(initiator=False)
    assert r.allocate_local() == 1
    assert t.classify_unknown(1) == "new"
    assert t.classify_unknown(6) == "idle"
    peer = Stream(1, "x", False, SendCredit(1), RecvWindow(1))
    t.add(peer)
    assert t.remote_open == 1 and t.next_remote == 3
    peer.state = StreamState.CLOSED
    t.finish(peer)
    assert t.remote_open == 0
    assert t.classify_unknown(1) == "closed"
    gone = Stream(3, "x", False, SendCredit(1), RecvWindow(1), state=StreamState.RESET)
    t.add(gone)
    t.finish(gone)
    assert t.classify_unknown(3) == "reset"
    assert t.classify_unknown(0) == "reset"  # allocated locally, unknown: late frame
    for i in range(StreamTable.HISTORY + 5):
        s = Stream(5 + 2 * i, "x", False, SendCredit(1), RecvWindow(1), state=StreamState.CLOSED)
        t.add(s)
        t.finish(s)
    assert len(t._history) == StreamTable.HISTORY
    assert t.classify_unknown(1) == "reset"  # forgotten -> ignored, never an error
