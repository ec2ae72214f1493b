"""End-to-end Connection tests over the pair harness: delivery, splitting, every error code."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from helpers import Pair, seeded_entropy
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mproto import cbor
from m2mproto.config import Configuration
from m2mproto.connection import NEED_DATA, Connection, ConnectionState
from m2mproto.errors import AuthorizationError, ErrorCode, LocalProtocolError, TokenError
from m2mproto.events import (
    ConnectionClosed,
    DataReceived,
    HandshakeCompleted,
    KeyUpdated,
    MessageReceived,
    PingAcknowledged,
    StreamEnded,
    StreamOpened,
    StreamReset,
    TokenAccepted,
)
from m2mproto.frames import (
    CloseFrame,
    Frame,
    KeyUpdateFrame,
    MessageFrame,
    OpenFrame,
    PingFrame,
    ResetFrame,
    StreamFrame,
    WindowUpdateFrame,
    encode_frame,
)
from m2mproto.identity import AgentId


def cfg(seed: int, **kw: object) -> Configuration:
    return Configuration(entropy=seeded_entropy(seed), **kw)  # type: ignore[arg-type]


def inject(p: Pair, frames: Sequence[Frame | bytes], *, to_b: bool = True) -> list[object]:
    """Seal raw frames with the sender's real keys and deliver them (a hostile peer)."""
    src, dst = (p.a, p.b) if to_b else (p.b, p.a)
    raw = b"".join(f if isinstance(f, bytes) else encode_frame(f) for f in frames)
    assert src._writer is not None
    dst.receive_data(src._writer.seal(raw), p.clock.now)
    return list(p.drain(dst))


def closed_with(events: Sequence[object], code: ErrorCode) -> None:
    last = events[-1]
    assert isinstance(last, ConnectionClosed), events
    assert last.code == code and last.remote is False


def wire_close_code(p: Pair, frm: Connection) -> int:
    """Decrypt what *frm* sent last by letting the peer read it."""
    other = p.other(frm)
    p.transfer(frm)
    evs = [e for e in p.events[other] if isinstance(e, ConnectionClosed)]
    return evs[-1].code


def test_handshake_and_echo() -> None:
    p = Pair().handshake()
    assert isinstance(p.events[p.a][0], HandshakeCompleted)
    assert p.events[p.a][0].handshake_hash == p.events[p.b][0].handshake_hash
    assert p.a.peer == AgentId(p.events[p.a][0].identity_key)
    sid = p.a.open_stream("echo")
    p.a.send_message(sid, {"q": 1})
    p.a.send(sid, b"raw", end_stream=True)
    p.run()
    kinds = [type(e) for e in p.events[p.b][1:]]
    assert kinds == [StreamOpened, MessageReceived, DataReceived, StreamEnded]
    p.b.send_message(sid, {"a": 2}, end_stream=True)
    p.run()
    assert p.events[p.a][-2:] == [
        MessageReceived(stream_id=sid, value={"a": 2}),
        StreamEnded(stream_id=sid),
    ]
    assert not p.a.streams and not p.b.streams
    p.a.close()
    p.run()
    assert p.events[p.a][-1] == ConnectionClosed(code=0, reason="", remote=False)
    assert p.events[p.b][-1] == ConnectionClosed(code=0, reason="", remote=True)
    with pytest.raises(LocalProtocolError) as info:
        p.a.next_event()
    assert info.value.code is ErrorCode.CONNECTION_CLOSED


def _script(p: Pair) -> list[object]:
    p.handshake()
    s1 = p.a.open_stream("one")
    s2 = p.a.open_stream("two")
    p.a.send(s1, b"a" * 70000)
    p.a.send_message(s2, list(range(3000)), end_stream=True)
    p.a.ping(b"pp")
    p.a.update_keys()
    p.a.send(s1, b"b" * 10, end_stream=True)
    p.run()
    p.b.reset_stream(s1, ErrorCode.CANCELLED)
    p.a.close()
    p.run()
    return [e for c in (p.a, p.b) for e in p.events[c] if not isinstance(e, HandshakeCompleted)]


@settings(max_examples=15)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=6))
def test_split_points_do_not_change_events(chunks: list[int]) -> None:
    assert _script(Pair(chunks=chunks)) == _script(Pair())


def test_one_byte_at_a_time() -> None:
    assert _script(Pair(chunks=[1])) == _script(Pair())


def test_key_update_and_ping() -> None:
    p = Pair().handshake()
    p.a.update_keys(request_peer=True)
    p.a.ping(b"x")
    p.run()
    assert KeyUpdated(remote=False, generation=1) in p.events[p.a]
    assert KeyUpdated(remote=True, generation=1) in p.events[p.b]
    assert KeyUpdated(remote=True, generation=1) in p.events[p.a]  # the requested answer
    assert PingAcknowledged(payload=b"x") in p.events[p.a]
    sid = p.a.open_stream("r")
    p.a.send(sid, b"after")
    p.run()
    assert DataReceived(stream_id=sid, data=b"after") in p.events[p.b]


def test_automatic_key_update_by_volume() -> None:
    p = Pair(cfg(1, key_update_after_records=4, max_records_per_key=8), cfg(2)).handshake()
    sid = p.a.open_stream("bulk")
    for _ in range(20):
        p.a.send(sid, b"z" * 100)
        p.run()
    assert p.a._writer is not None and p.a._writer.updates >= 4
    assert sum(len(e.data) for e in p.events[p.b] if isinstance(e, DataReceived)) == 2000


# ---------------------------------------------------------------- error codes


def test_decrypt_error_on_bit_flip() -> None:
    p = Pair().handshake()
    assert p.a._writer is not None
    rec = bytearray(p.a._writer.seal(encode_frame(PingFrame(b""))))
    rec[5] ^= 1
    p.b.receive_data(bytes(rec), p.clock.now)
    closed_with(p.drain(p.b), ErrorCode.DECRYPT_ERROR)
    assert wire_close_code(p, p.b) == ErrorCode.DECRYPT_ERROR


@pytest.mark.parametrize("length", [0, 1, 15])
def test_frame_size_error_short_record(length: int) -> None:
    p = Pair().handshake()
    p.b.receive_data(length.to_bytes(2, "big"), p.clock.now)
    closed_with(p.drain(p.b), ErrorCode.FRAME_SIZE_ERROR)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x81" * 10000 + b"\x80", ErrorCode.DECODE_ERROR),
        (b"\xbf\x61\x61\x01\xff", ErrorCode.DECODE_ERROR),
        (cbor.encode([40, 1]), ErrorCode.PROTOCOL_ERROR),  # unknown core kind
        (encode_frame(WindowUpdateFrame(None, 1))[:-1] + b"\x00", ErrorCode.PROTOCOL_ERROR),
        (encode_frame(StreamFrame(1, b"x")), ErrorCode.STREAM_STATE_ERROR),  # never opened
        (encode_frame(OpenFrame(1, "r")), ErrorCode.STREAM_STATE_ERROR),  # our parity
        (
            encode_frame(KeyUpdateFrame(False)) + encode_frame(PingFrame(b"")),
            ErrorCode.PROTOCOL_ERROR,
        ),
    ],
)
def test_malformed_frames_close_with_code(payload: bytes, code: ErrorCode) -> None:
    p = Pair().handshake()
    # a (initiator, even IDs) is the hostile sender; b is the IUT, so id 1 is b's parity
    closed_with(inject(p, [payload]), code)
    assert wire_close_code(p, p.b) == code
    assert p.b.state is ConnectionState.CLOSED


def test_extension_frame_ignored() -> None:
    p = Pair().handshake()
    assert inject(p, [cbor.encode([64, "ext"]), PingFrame(b"")]) == []
    assert p.b.state is ConnectionState.ESTABLISHED


def test_stream_reuse_data_after_end_final_size() -> None:
    p = Pair().handshake()
    assert inject(p, [OpenFrame(0, "r"), StreamFrame(0, b"abc", True)])[0] == StreamOpened(
        stream_id=0, resource="r"
    )
    closed_with(inject(p, [StreamFrame(0, b"x")]), ErrorCode.STREAM_STATE_ERROR)
    p = Pair().handshake()
    inject(p, [OpenFrame(0, "r"), StreamFrame(0, b"abc")])
    closed_with(inject(p, [ResetFrame(0, 0x40, 2)]), ErrorCode.FINAL_SIZE_ERROR)
    p = Pair().handshake()
    inject(p, [OpenFrame(0, "r"), ResetFrame(0, 0x40, 0)])
    closed_with(inject(p, [OpenFrame(0, "r")]), ErrorCode.STREAM_STATE_ERROR)


def test_stream_limit_boundary_pair() -> None:
    p = Pair(cfg(1), cfg(2, max_concurrent_streams=3)).handshake()
    evs = inject(p, [OpenFrame(i, "r") for i in (0, 2, 4)])
    assert len(evs) == 3 and p.b.state is ConnectionState.ESTABLISHED
    closed_with(inject(p, [OpenFrame(6, "r")]), ErrorCode.STREAM_LIMIT_ERROR)
    with pytest.raises(LocalProtocolError) as info:  # and locally, the peer's limit is respected
        q = Pair(cfg(1), cfg(2, max_concurrent_streams=1)).handshake()
        q.a.open_stream("r")
        q.a.open_stream("r")
    assert info.value.code is ErrorCode.STREAM_LIMIT_ERROR


def test_flow_control_boundary_pairs() -> None:
    p = Pair(cfg(1), cfg(2, initial_stream_window=1000, auto_window_update=False)).handshake()
    inject(p, [OpenFrame(0, "r"), StreamFrame(0, b"x" * 1000)])
    assert p.b.state is ConnectionState.ESTABLISHED
    closed_with(inject(p, [StreamFrame(0, b"x")]), ErrorCode.FLOW_CONTROL_ERROR)
    p = Pair(cfg(1), cfg(2, initial_connection_window=1500, auto_window_update=False))
    p.handshake()
    inject(p, [OpenFrame(0, "r"), OpenFrame(2, "r"), StreamFrame(0, b"x" * 1000)])
    closed_with(inject(p, [StreamFrame(2, b"x" * 501)]), ErrorCode.FLOW_CONTROL_ERROR)
    p = Pair().handshake()
    big = WindowUpdateFrame(None, 2**62 - 1)
    closed_with(inject(p, [big, big]), ErrorCode.FLOW_CONTROL_ERROR)


def test_budgets_enhance_your_calm() -> None:
    # 32 empty frames pass, the 33rd closes (boundary pair)
    p = Pair().handshake()
    inject(p, [OpenFrame(0, "r")] + [StreamFrame(0, b"")] * 32)
    assert p.b.state is ConnectionState.ESTABLISHED
    closed_with(inject(p, [StreamFrame(0, b"")]), ErrorCode.ENHANCE_YOUR_CALM)
    # 32 key updates without data pass, the 33rd closes
    p = Pair().handshake()
    assert p.a._writer is not None
    for i in range(33):
        evs = inject(p, [KeyUpdateFrame(False)])
        p.a._writer.rekey()
        if i < 32:
            assert evs == [KeyUpdated(remote=True, generation=i + 1)]
    closed_with(evs, ErrorCode.ENHANCE_YOUR_CALM)
    # ping flood with a peer that never drains our PONGs
    p = Pair().handshake()
    evs = inject(p, [PingFrame(b"")] * 257)
    closed_with(evs, ErrorCode.ENHANCE_YOUR_CALM)
    # rapid reset: burst 200, then the budget is exhausted
    p = Pair().handshake()
    frames: list[Frame] = []
    for i in range(201):
        frames += [OpenFrame(2 * i, "r"), ResetFrame(2 * i, 0x40, 0)]
    evs = inject(p, frames)
    closed_with(evs, ErrorCode.ENHANCE_YOUR_CALM)
    assert p.b._table.remote_open <= 100


def test_message_too_large_resets_only_the_stream() -> None:
    p = Pair(cfg(1), cfg(2, max_message_size=100)).handshake()
    evs = inject(p, [OpenFrame(0, "r"), MessageFrame(0, b"\x00" * 60, last=False)])
    evs += inject(p, [MessageFrame(0, b"\x00" * 41, last=False)])
    assert evs[-1] == StreamReset(stream_id=0, code=ErrorCode.MESSAGE_TOO_LARGE, remote=False)
    assert p.b.state is ConnectionState.ESTABLISHED
    assert inject(p, [MessageFrame(0, b"late")]) == []  # late fragments are ignored


def test_key_update_error_hard_limit() -> None:
    p = Pair(cfg(1), cfg(2, key_update_after_records=16, max_records_per_key=32)).handshake()
    for _ in range(32):
        inject(p, [PingFrame(b"")])
        p.b.data_to_send()
    assert p.b.state is ConnectionState.ESTABLISHED
    closed_with(inject(p, [PingFrame(b"")]), ErrorCode.KEY_UPDATE_ERROR)


def test_truncation_reports_streams_aborted() -> None:
    p = Pair().handshake()
    sid = p.a.open_stream("r")
    p.a.send(sid, b"partial")
    p.run()
    p.b.receive_data(b"\x00\x40\x01", p.clock.now)  # mid-record
    p.b.receive_data(b"", p.clock.now)
    evs = p.drain(p.b)
    assert evs == [
        StreamReset(stream_id=sid, code=ErrorCode.TRUNCATED, remote=True),
        ConnectionClosed(
            code=ErrorCode.TRUNCATED, reason="transport ended without CLOSE", remote=True
        ),
    ]


def test_close_frame_stops_delivery() -> None:
    p = Pair().handshake()
    evs = inject(p, [CloseFrame(0x1001, "bye"), OpenFrame(0, "r")])
    assert evs == [ConnectionClosed(code=0x1001, reason="bye", remote=True)]


def test_timers() -> None:
    p = Pair(cfg(1, idle_timeout=30.0, keepalive_interval=10.0), cfg(2, idle_timeout=30.0))
    p.handshake()
    assert p.a.get_timer() == pytest.approx(p.clock.now + 10.0)
    for _ in range(6):  # keepalive keeps both sides alive for a minute
        p.a.handle_timer(p.clock.advance(10.0))
        p.b.handle_timer(p.clock.now)
        p.run()
    assert p.a.state is p.b.state is ConnectionState.ESTABLISHED
    assert any(isinstance(e, PingAcknowledged) for e in p.events[p.a])
    q = Pair(cfg(1, idle_timeout=30.0), cfg(2)).handshake()
    q.a.handle_timer(q.clock.advance(30.0))
    closed_with(q.drain(q.a), ErrorCode.IDLE_TIMEOUT)
    h = Pair()
    h.b.handle_timer(h.clock.advance(10.0))
    closed_with(h.drain(h.b), ErrorCode.HANDSHAKE_TIMEOUT)


@dataclass(frozen=True)
class _G:
    """A minimal config.Grant: no caveats."""

    resource: str
    ability: str
    max_message_size: int | None = None

    def check_message(self, size: int) -> None:
        pass


class _Authz:
    def __init__(self, allowed: set[tuple[str, str]], bad_token: bool = False) -> None:
        self.allowed = allowed
        self.bad_token = bad_token
        self.calls: list[float] = []

    def accept_tokens(self, peer: AgentId, tokens: Sequence[bytes], now: float) -> object:
        self.calls.append(now)
        if self.bad_token:
            raise TokenError("expired", ErrorCode.EXPIRED)
        return ("grant", tokens)

    def authorize(self, peer: AgentId, resource: str, ability: str, now: float) -> _G:
        if (resource, ability) not in self.allowed:
            raise AuthorizationError("no capability")
        return _G(resource, ability)


def test_authorization_refusals_and_tokens() -> None:
    authz = _Authz({("ok", "stream/open"), ("ok", "msg/send"), ("nomsg", "stream/open")})
    p = Pair(cfg(1), cfg(2, clock_offset=1e9), a={"tokens": [b"tok"]}, b={"authorizer": authz})
    p.handshake()
    assert TokenAccepted(grant=("grant", (b"tok",))) in p.events[p.b]
    assert authz.calls == [pytest.approx(p.clock.now + 1e9)]  # Unix time, not monotonic
    ok, denied, nomsg = p.a.open_stream("ok"), p.a.open_stream("secret"), p.a.open_stream("nomsg")
    p.a.send_message(ok, 1)
    p.a.send_message(nomsg, 2)
    p.run()
    evs = p.events[p.b][2:]
    assert StreamOpened(stream_id=ok, resource="ok", grant=_G("ok", "stream/open")) in evs
    assert StreamReset(stream_id=denied, code=ErrorCode.UNAUTHORIZED, remote=False) in evs
    assert StreamReset(stream_id=nomsg, code=ErrorCode.UNAUTHORIZED, remote=False) in evs
    assert MessageReceived(stream_id=ok, value=1, grant=_G("ok", "msg/send")) in evs
    assert StreamReset(stream_id=denied, code=ErrorCode.UNAUTHORIZED, remote=True) in p.events[p.a]
    assert p.b.state is ConnectionState.ESTABLISHED
    authz.allowed.clear()
    assert p.b.reauthorize(p.clock.now) == [ok]


@pytest.mark.parametrize("wire_reason", [False, True])
def test_bad_token_at_handshake(wire_reason: bool) -> None:
    authz = _Authz(set(), bad_token=True)
    p = Pair(
        cfg(1),
        cfg(2, wire_token_reason=wire_reason),
        a={"tokens": [b"tok"]},
        b={"authorizer": authz},
    )
    p.handshake()
    closed_with(p.events[p.b], ErrorCode.EXPIRED)  # precise locally
    wire = p.events[p.a][-1]
    assert isinstance(wire, ConnectionClosed) and wire.remote
    assert wire.code == (ErrorCode.EXPIRED if wire_reason else ErrorCode.TOKEN_INVALID)


def test_zero_reader_memory_is_bounded_by_windows() -> None:
    p = Pair().handshake()
    sid = p.a.open_stream("r")
    chunk = b"q" * 65536
    tracemalloc.start()
    try:
        for _ in range(64):  # 4 MiB offered, never read by b
            try:
                p.a.send(sid, chunk)
            except LocalProtocolError as exc:
                assert exc.code is ErrorCode.FLOW_CONTROL_ERROR
                break
            p.a.data_to_send()  # the link drops it: b never reads
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert p.a.send_buffered() <= p.a.config.max_send_buffer
    assert peak < p.a.config.max_send_buffer + 2 * 1024 * 1024
    assert p.b.next_event() is NEED_DATA
