"""Stream state table and flow-control windows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mproto.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from m2mproto.frames import MAX_VARINT, MessageFrame, StreamFrame
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
    st.lists(st.tuples(st.booleans(), st.integers(0, 3000), st.integers(1, 2000)), max_size=30),
)
def test_credit_conservation(window: int, conn: int, ops: list[tuple[bool, int, int]]) -> None:
    """Sender output never exceeds credit; the receiver never sees a violation."""
    s = Stream(0, "r", True, SendCredit(window), RecvWindow(window))
    peer = RecvWindow(window)
    conn_credit = conn
    queued = 0
    delivered = 0
    for is_msg, size, room in ops:
        if size:
            s.queue(b"q" * size, is_message=is_msg, end_stream=False)
            queued += size
        for _ in range(100):
            f = s.next_frame(room, conn_credit)
            if f is None:
                break
            payload = f.data if isinstance(f, StreamFrame) else f.fragment
            assert isinstance(f, (StreamFrame, MessageFrame))
            assert len(payload) <= room
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
    assert s.next_frame(100, 0) == StreamFrame(4, b"", True)
    s = _stream(send=5)
    s.queue(b"abcdefgh", is_message=True, end_stream=True)
    assert s.next_frame(100, 100) == MessageFrame(4, b"abcde", last=False, end_stream=False)
    assert s.next_frame(100, 100) is None  # blocked on credit
    s.send_credit.add(10)
    assert s.next_frame(2, 100) == MessageFrame(4, b"fg", last=False, end_stream=False)
    assert s.next_frame(100, 100) == MessageFrame(4, b"h", last=True, end_stream=True)
    assert s.end_sent and not s.has_pending()


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
