"""Hypothesis state machine: streams, messages, data, resets, pings, key updates, close."""

from __future__ import annotations

import os

import pytest
from helpers import Pair, seeded_entropy
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from m2mproto.config import Configuration
from m2mproto.connection import ConnectionState
from m2mproto.errors import ErrorCode
from m2mproto.events import DataReceived, MessageReceived, StreamReset

MAX_STREAMS = 4


class ConnectionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        small = {
            "initial_stream_window": 4096,
            "initial_connection_window": 8192,
            "max_concurrent_streams": MAX_STREAMS,
        }
        self.p = Pair(
            Configuration(entropy=seeded_entropy(1), **small),  # type: ignore[arg-type]
            Configuration(entropy=seeded_entropy(2), **small),  # type: ignore[arg-type]
            chunks=[1, 500, 7000],
        ).handshake()
        self.sent: dict[int, list[object]] = {}
        self.reset: set[int] = set()
        self.closed = False

    def _open(self) -> list[int]:
        return [s for s in self.sent if s not in self.reset and s in self.p.a.streams]

    @precondition(lambda self: not self.closed and len(self.p.a.streams) < MAX_STREAMS)
    @rule()
    def open_stream(self) -> None:
        self.sent[self.p.a.open_stream("r")] = []

    @precondition(lambda self: not self.closed)
    @rule(data=st.data(), size=st.integers(1, 20000))
    def send_data(self, data: st.DataObject, size: int) -> None:
        live = self._open()
        if live:
            sid = data.draw(st.sampled_from(live))
            payload = bytes([sid % 251]) * size
            self.p.a.send(sid, payload)
            self.sent[sid].append(payload)

    @precondition(lambda self: not self.closed)
    @rule(data=st.data(), size=st.integers(0, 9000))
    def send_message(self, data: st.DataObject, size: int) -> None:
        live = self._open()
        if live:
            sid = data.draw(st.sampled_from(live))
            value = {"n": size, "b": b"m" * size}
            self.p.a.send_message(sid, value)
            self.sent[sid].append(value)

    @precondition(lambda self: not self.closed)
    @rule(data=st.data())
    def reset(self, data: st.DataObject) -> None:
        live = self._open()
        if live:
            sid = data.draw(st.sampled_from(live))
            self.p.a.reset_stream(sid, ErrorCode.CANCELLED)
            self.reset.add(sid)

    @precondition(lambda self: not self.closed)
    @rule()
    def ping_and_update(self) -> None:
        self.p.a.ping()
        self.p.a.update_keys()

    @rule(rounds=st.integers(1, 3))
    def pump(self, rounds: int) -> None:
        for _ in range(rounds):
            self.p.transfer(self.p.a)
            self.p.transfer(self.p.b)

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        self.p.run(2000)  # flow control never deadlocks: everything queued drains
        assert self.p.a.send_buffered() == 0
        self.check_delivery(final=True)
        self.p.a.close()
        self.p.run()
        self.closed = True
        assert self.p.a.state is self.p.b.state is ConnectionState.CLOSED

    def check_delivery(self, *, final: bool) -> None:
        got: dict[int, list[object]] = {}
        data: dict[int, bytearray] = {}
        for ev in self.p.events[self.p.b]:
            if isinstance(ev, MessageReceived):
                got.setdefault(ev.stream_id, []).append(ev.value)
            elif isinstance(ev, DataReceived):
                data.setdefault(ev.stream_id, bytearray()).extend(ev.data)
            elif isinstance(ev, StreamReset):
                assert ev.stream_id in self.reset
        for sid, items in self.sent.items():
            if sid in self.reset:
                continue
            want_msgs = [i for i in items if not isinstance(i, bytes)]
            want_data = b"".join(i for i in items if isinstance(i, bytes))
            msgs, raw = got.get(sid, []), bytes(data.get(sid, b""))
            if final:
                assert msgs == want_msgs and raw == want_data
            else:
                assert msgs == want_msgs[: len(msgs)] and want_data.startswith(raw)

    @invariant()
    def windows_and_limits(self) -> None:
        for c in (self.p.a, self.p.b):
            w = c.connection_windows()
            assert w.send_available >= 0 and w.recv_available >= 0
            assert 0 <= w.recv_consumed <= w.recv_received
            assert c._table.remote_open <= MAX_STREAMS and c._table.local_open <= MAX_STREAMS
            for s in c._table.streams.values():
                assert s.send_credit.available >= 0 and s.recv_window.available >= 0
                assert len(s.reassembly) <= s.recv_window.received
        if not self.closed:
            self.check_delivery(final=False)


TestConnectionMachine = ConnectionMachine.TestCase
TestConnectionMachine.pytestmark = [pytest.mark.slow]  # type: ignore[attr-defined]
# 1,000 examples x 50 steps per run; 20,000 in the extended profile.
_EXAMPLES = 20_000 if os.environ.get("HYPOTHESIS_PROFILE") == "extended" else 1_000
TestConnectionMachine.settings = settings(
    max_examples=_EXAMPLES, stateful_step_count=50, deadline=None
)
