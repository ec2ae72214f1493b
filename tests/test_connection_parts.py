"""The parts a Connection is composed of, each tested alone (no Connection)."""

from __future__ import annotations

import pytest
from helpers import cipher_pair

from m2mproto._conn_auth import Authorization
from m2mproto._conn_budgets import Budgets
from m2mproto._conn_outbox import MAX_PINGS_OUT, FrameOutbox, Pings
from m2mproto._conn_state import (
    PUBLIC_STATE,
    TRANSITIONS,
    ConnectionState,
    Input,
    Lifecycle,
    State,
    _Fail,
)
from m2mproto._conn_timers import Expiry, Timers
from m2mproto.config import Configuration
from m2mproto.errors import AuthorizationError, ErrorCode, LocalProtocolError, TokenError
from m2mproto.events import KeyUpdated
from m2mproto.frames import (
    CloseFrame,
    KeyUpdateFrame,
    OpenFrame,
    PongFrame,
    ResetFrame,
    StreamFrame,
    decode_frames,
)
from m2mproto.identity import Identity
from m2mproto.records import RecordReader, RecordWriter
from m2mproto.streams import RecvWindow, SendCredit, Stream, StreamState, StreamTable

# -- lifecycle ------------------------------------------------------------------


def test_lifecycle_table_is_the_only_way_between_states() -> None:
    life = Lifecycle()
    assert life.state is State.HANDSHAKING and life.public is ConnectionState.HANDSHAKING
    assert life.transition(Input.HANDSHAKE_DONE) is State.ESTABLISHED
    assert life.transition(Input.CLOSE_GRACEFULLY) is State.DRAINING
    assert life.public is ConnectionState.ESTABLISHED  # draining is established to callers
    assert life.transition(Input.SEND_CLOSE) is State.CLOSING
    assert life.transition(Input.END) is State.CLOSED and life.closed


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(Input))
def test_lifecycle_unknown_pair_names_state_and_input(state: State, event: Input) -> None:
    life = Lifecycle()
    life.state = state
    if (state, event) in TRANSITIONS:
        assert life.transition(event) is TRANSITIONS[(state, event)]
        return
    with pytest.raises(LocalProtocolError) as info:
        life.transition(event)
    assert info.value.code is ErrorCode.INVALID_STATE
    assert state.name in info.value.message and event.name in info.value.message
    assert life.state is state  # unchanged


def test_lifecycle_table_shape() -> None:
    """CLOSED is terminal, every other state can END, every state has a public view."""
    assert set(PUBLIC_STATE) == set(State)
    assert not [pair for pair in TRANSITIONS if pair[0] is State.CLOSED]
    for state in State:
        if state is not State.CLOSED:
            assert TRANSITIONS[(state, Input.END)] is State.CLOSED


# -- timers -----------------------------------------------------------------------


def test_timers_start_once_and_clock_never_goes_back() -> None:
    t = Timers(Configuration(handshake_timeout=3.0))
    t.start(10.0)
    assert t.next_deadline(State.HANDSHAKING) == 13.0
    with pytest.raises(LocalProtocolError) as info:
        t.start(11.0)
    assert info.value.code is ErrorCode.INVALID_STATE
    t.tick(20.0)
    t.tick(15.0)
    assert t.now == 20.0
    assert t.expired(State.HANDSHAKING, 12.9) is None
    assert t.expired(State.HANDSHAKING, 13.0) is Expiry.HANDSHAKE


def test_timers_receipt_without_now_is_stamped_at_the_next_time() -> None:
    t = Timers(Configuration(idle_timeout=5.0))
    t.start(0.0)
    t.received(None)
    assert t.last_rx == 0.0
    t.tick(4.0)
    assert t.last_rx == 4.0  # stamped now, not left at 0
    assert t.expired(State.ESTABLISHED, 8.9) is None
    assert t.expired(State.ESTABLISHED, 9.0) is Expiry.IDLE
    t.received(7.0)
    assert t.last_rx == 7.0


def test_timers_order_close_before_idle_and_keepalive_only_established() -> None:
    t = Timers(Configuration(idle_timeout=10.0, keepalive_interval=2.0, close_timeout=1.0))
    t.start(0.0)
    assert t.expired(State.ESTABLISHED, 2.0) is Expiry.KEEPALIVE
    assert t.expired(State.DRAINING, 2.0) is None  # no keepalive while closing
    assert t.next_deadline(State.DRAINING) == 10.0
    t.arm_close()
    assert t.next_deadline(State.ESTABLISHED) == 1.0
    assert t.expired(State.CLOSING, 11.0) is Expiry.CLOSE
    assert t.next_deadline(State.CLOSED) is None and t.expired(State.CLOSED, 99.0) is None


# -- budgets ----------------------------------------------------------------------


def test_budgets_no_progress_boundary_and_reset_by_sending() -> None:
    b = Budgets(Configuration(max_no_progress_frames=3))
    for _ in range(3):
        b.no_progress_frame("x")
    b.data_sent()
    for _ in range(3):
        b.no_progress_frame("x")
    with pytest.raises(_Fail) as info:
        b.no_progress_frame("x")
    assert info.value.code is ErrorCode.ENHANCE_YOUR_CALM


def test_budgets_churn_bucket_refills_from_the_callers_clock() -> None:
    b = Budgets(Configuration(stream_churn_burst=2, stream_churn_rate=1.0))
    b.charge_churn(0.0)
    b.charge_churn(0.0)
    with pytest.raises(_Fail):
        b.charge_churn(0.0)
    b.charge_churn(1.0)  # one token back after a second


# -- pings ------------------------------------------------------------------------


def test_pings_evict_oldest_first() -> None:
    p = Pings()
    payloads = [p.next_payload() for _ in range(MAX_PINGS_OUT + 3)]
    assert len(set(payloads)) == len(payloads)
    for payload in payloads:
        p.sent(payload)
    assert len(p) == MAX_PINGS_OUT
    assert not any(p.acknowledge(x) for x in payloads[:3])  # the three oldest are gone
    assert p.acknowledge(payloads[3]) and not p.acknowledge(payloads[3])
    assert all(p.acknowledge(x) for x in payloads[4:])


# -- authorization ----------------------------------------------------------------


class _Boom:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def accept_tokens(self, peer: object, tokens: object, now: float) -> object:
        raise self.exc

    def authorize(self, peer: object, resource: str, ability: str, now: float) -> object:
        raise self.exc


def _auth(exc: Exception) -> Authorization:
    timers = Timers(Configuration(clock_offset=100.0))
    timers.start(1.0)
    auth = Authorization(_Boom(exc), timers)  # type: ignore[arg-type]
    auth.peer = Identity.from_seed(bytes(32)).agent_id
    return auth


@pytest.mark.parametrize("exc", [RuntimeError("bug"), KeyError("x"), ValueError("y")])
def test_authorization_contains_faults_of_the_callback(exc: Exception) -> None:
    auth = _auth(exc)
    for call in (lambda: auth.authorize("r", "a"), lambda: auth.accept_tokens((b"t",))):
        with pytest.raises(_Fail) as info:
            call()
        assert info.value.code is ErrorCode.INTERNAL_ERROR


@pytest.mark.parametrize(
    "exc", [AuthorizationError("no"), TokenError("expired", ErrorCode.EXPIRED)]
)
def test_authorization_passes_refusals_through(exc: AuthorizationError) -> None:
    auth = _auth(exc)
    with pytest.raises(type(exc)):
        auth.authorize("r", "a")
    with pytest.raises(type(exc)):
        auth.accept_tokens((b"t",))


def test_authorization_without_authorizer_allows_everything() -> None:
    auth = Authorization(None, Timers(Configuration()))
    assert not auth.enabled
    assert auth.authorize("r", "a") is None and auth.accept_tokens((b"t",)) is None


# -- outbox -----------------------------------------------------------------------


def _outbox(**kw: int) -> tuple[FrameOutbox, StreamTable, list[object]]:
    cfg = Configuration(**kw)  # type: ignore[arg-type]
    table = StreamTable(initiator=True)
    events: list[object] = []
    return FrameOutbox(cfg, table, Budgets(cfg), events), table, events


def _open_life() -> Lifecycle:
    life = Lifecycle()
    life.transition(Input.HANDSHAKE_DONE)
    return life


def _keys() -> tuple[RecordWriter, RecordReader]:
    send, recv = cipher_pair()
    return (
        RecordWriter(send, key_update_after=2**40, max_records_per_key=2**40),
        RecordReader(recv, max_records_per_key=2**40),
    )


def _records(data: bytes, reader: RecordReader) -> list[list[object]]:
    reader.feed(data)
    out: list[list[object]] = []
    for _ in range(1000):
        plain = reader.next_record()
        if plain is None:
            return out
        frames = decode_frames(plain)
        out.append(list(frames))
        if frames and isinstance(frames[-1], KeyUpdateFrame):
            reader.rekey()
    raise AssertionError("unbounded")


def test_outbox_control_budget_counts_responses_only() -> None:
    box, _, _ = _outbox(max_queued_control=2)
    box.queue_control(PongFrame(b"1"), response=True)
    box.queue_control(PongFrame(b"2"), response=True)
    box.queue_control(CloseFrame(0, ""))  # our own frames are not budgeted
    with pytest.raises(_Fail) as info:
        box.queue_control(PongFrame(b"3"), response=True)
    assert info.value.code is ErrorCode.ENHANCE_YOUR_CALM


def test_outbox_drains_control_then_streams_then_graceful_close() -> None:
    box, table, events = _outbox()
    writer, reader = _keys()
    life = _open_life()
    s = Stream(0, "r", True, SendCredit(100), RecvWindow(100), open_pending=True)
    table.add(s)
    box.order.append(0)
    s.queue(b"hello", is_message=False, end_stream=True)
    box.queue_key_update(True)
    box.local_close = (0, "bye")
    life.transition(Input.CLOSE_GRACEFULLY)
    out = box.drain(writer, life, SendCredit(1000))
    records = _records(out, reader)
    assert records == [
        [KeyUpdateFrame(True)],
        [OpenFrame(0, "r"), StreamFrame(0, b"hello", True), CloseFrame(0, "bye")],
    ]
    assert life.state is State.CLOSING  # the drained graceful close went out
    assert events == [KeyUpdated(remote=False, generation=1)]
    assert table.totals.send_buffered == 0 and not box.key_update_queued


def test_outbox_waits_for_credit_before_the_graceful_close() -> None:
    box, table, _ = _outbox()
    writer, reader = _keys()
    life = _open_life()
    s = Stream(0, "r", True, SendCredit(3), RecvWindow(100))
    table.add(s)
    box.schedule(0)
    box.schedule(0)  # once in the order
    assert box.order == [0]
    s.queue(b"abcdef", is_message=False, end_stream=False)
    life.transition(Input.CLOSE_GRACEFULLY)
    conn = SendCredit(1000)
    assert _records(box.drain(writer, life, conn), reader) == [[StreamFrame(0, b"abc")]]
    assert life.state is State.DRAINING and conn.sent == 3
    s.send_credit.add(10)
    frames = _records(box.drain(writer, life, conn), reader)
    assert frames == [[StreamFrame(0, b"def"), CloseFrame(0, "")]]
    assert life.state is State.CLOSING


def test_outbox_reset_drops_both_directions_and_tells_the_peer() -> None:
    box, table, _ = _outbox()
    s = Stream(1, "r", False, SendCredit(100), RecvWindow(100))
    table.add(s)
    s.queue(b"xyz", is_message=False, end_stream=False)
    s.add_fragment(b"\x82")
    box.reset(s, ErrorCode.CANCELLED)
    assert box.control == [ResetFrame(1, ErrorCode.CANCELLED, 0)]
    assert s.state is StreamState.RESET and 1 not in table.streams
    assert table.totals.send_buffered == 0 == table.totals.reassembly
    unannounced = Stream(0, "r", True, SendCredit(1), RecvWindow(1), open_pending=True)
    table.add(unannounced)
    box.reset(unannounced, ErrorCode.CANCELLED)
    assert len(box.control) == 1  # never announced: nothing to tell


def test_outbox_abortive_close_drops_stream_bytes_keeps_control() -> None:
    box, table, _ = _outbox()
    writer, reader = _keys()
    life = _open_life()
    s = Stream(0, "r", True, SendCredit(100), RecvWindow(100))
    table.add(s)
    box.schedule(0)
    s.queue(b"dropped", is_message=False, end_stream=False)
    box.queue_control(PongFrame(b"p"))
    box.queue_close(ErrorCode.PROTOCOL_ERROR, "x")
    life.transition(Input.SEND_CLOSE)
    frames = _records(box.drain(writer, life, SendCredit(1000)), reader)
    assert frames == [[PongFrame(b"p"), CloseFrame(ErrorCode.PROTOCOL_ERROR, "x")]]
    assert table.totals.send_buffered == 0
