"""REQUEST and REPLY frames (spec/frames.md §2.2): codec, negotiation, sender
fallback, and the receiver's equivalence with OPEN + MESSAGE(last, end-stream)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from helpers import Pair, SealLog, seeded_entropy
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mproto import cbor
from m2mproto.config import Configuration, TransportParameters
from m2mproto.connection import Connection, ConnectionState
from m2mproto.errors import AuthorizationError, ErrorCode, LocalProtocolError, RemoteProtocolError
from m2mproto.events import (
    ConnectionClosed,
    Event,
    MessageReceived,
    StreamEnded,
    StreamOpened,
    StreamReset,
)
from m2mproto.frames import (
    MAX_VARINT,
    Frame,
    MessageFrame,
    OpenFrame,
    ReplyFrame,
    RequestFrame,
    ResetFrame,
    StreamFrame,
    WindowUpdateFrame,
    decode_frame,
    decode_frames,
    encode_frame,
)
from m2mproto.identity import AgentId


def cfg(seed: int, **kw: object) -> Configuration:
    return Configuration(entropy=seeded_entropy(seed), **kw)  # type: ignore[arg-type]


#: Every record plaintext sealed in the test: (id of the writer, plaintext).
_SEALED = SealLog()


def sent_frames(p: Pair, side: Connection, rr: bool = True) -> list[Frame]:
    """Every frame *side* sealed since :func:`watch` (window updates left out)."""
    writer = id(side._writer)
    out: list[Frame] = []
    for who, plaintext in _SEALED:
        if who == writer:
            out += [
                f
                for f in decode_frames(plaintext, request_reply=rr)
                if not isinstance(f, WindowUpdateFrame)
            ]
    return out


def watch(p: Pair) -> Pair:
    """After the handshake: record each side's sealed output from here on."""
    _SEALED.watch(p.a, p.b)
    _SEALED.clear()
    return p


def pair(a_rr: bool = True, b_rr: bool = True, **b_kw: object) -> Pair:
    authz = b_kw.pop("authorizer", None)
    kwargs = {"b": {"authorizer": authz}} if authz is not None else {}
    return watch(
        Pair(cfg(1, request_reply=a_rr), cfg(2, request_reply=b_rr, **b_kw), **kwargs).handshake()
    )


def request(p: Pair, resource: str, value: object) -> int:
    sid = p.a.open_stream(resource)
    p.a.send_message(sid, value, end_stream=True)
    return sid


def kinds(frames: Sequence[Frame]) -> list[str]:
    return [type(f).__name__ for f in frames]


# ---------------------------------------------------------------- codec


@settings(max_examples=200)
@given(
    st.integers(0, MAX_VARINT),
    st.text(min_size=1, max_size=60).filter(lambda r: 1 <= len(r.encode()) <= 256),
    st.binary(max_size=300),
)
def test_request_and_reply_round_trip_on_both_decoder_paths(
    sid: int, res: str, data: bytes
) -> None:
    for frame in (RequestFrame(sid, res, data), ReplyFrame(sid, data)):
        raw = encode_frame(frame)
        assert decode_frames(raw, request_reply=True) == [frame]  # fast path
        assert decode_frames(memoryview(raw), request_reply=True) == [frame]  # strict
        assert decode_frame(raw, request_reply=True) == (frame, len(raw))


@pytest.mark.parametrize("frame", [RequestFrame(0, "r", b"\xa0"), ReplyFrame(1, b"\xa0")])
def test_not_negotiated_the_kinds_are_unknown(frame: Frame) -> None:
    raw = encode_frame(frame)
    for data in (raw, memoryview(raw)):
        with pytest.raises(RemoteProtocolError) as info:
            decode_frames(data)
        assert info.value.code is ErrorCode.PROTOCOL_ERROR


@settings(max_examples=400)
@given(st.data())
def test_fast_path_and_strict_decoder_agree_on_mutated_frames(data: st.DataObject) -> None:
    base = bytearray(
        data.draw(
            st.sampled_from(
                [
                    encode_frame(RequestFrame(0, "orders/get", b"\xa1\x01\x02")),
                    encode_frame(RequestFrame(300, "é" * 100, b"x" * 30)),
                    encode_frame(ReplyFrame(2**40, b"\x01" * 300)),
                ]
            )
        )
    )
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(base)))
    raw = bytes(base[:cut])

    def outcome(x: bytes | memoryview) -> object:
        try:
            return decode_frames(x, request_reply=True)
        except RemoteProtocolError as exc:
            return exc.code

    assert outcome(raw) == outcome(memoryview(raw))


@pytest.mark.parametrize(
    "frame",
    [
        RequestFrame(-1, "r", b""),
        RequestFrame(MAX_VARINT + 1, "r", b""),
        RequestFrame(0, "", b""),
        RequestFrame(0, "a" * 257, b""),
        ReplyFrame(-1, b""),
    ],
)
def test_encoder_refuses_what_a_receiver_must_reject(frame: Frame) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(frame)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- negotiation


def test_parameter_five_is_sent_only_when_on_and_checked() -> None:
    assert Configuration().transport_parameters().to_params()[5] == 1
    assert 5 not in Configuration(request_reply=False).transport_parameters().to_params()
    assert TransportParameters.from_params({}).request_reply == 0
    assert TransportParameters.from_params({5: 1}).request_reply == 1
    for bad in (2, True, "1", -1):
        with pytest.raises(RemoteProtocolError) as info:
            TransportParameters.from_params({5: bad})
        assert info.value.code is ErrorCode.PROTOCOL_ERROR


def test_both_advertise_request_and_reply_are_one_frame_each() -> None:
    p = pair()
    sid = request(p, "orders", {"id": 42})
    p.run()
    got = p.events[p.b]
    assert [type(e) for e in got[-3:]] == [StreamOpened, MessageReceived, StreamEnded]
    p.b.send_message(sid, {"ok": True}, end_stream=True)
    p.run()
    assert kinds(sent_frames(p, p.a)) == ["RequestFrame"]
    assert kinds(sent_frames(p, p.b)) == ["ReplyFrame"]
    reply = [e for e in p.events[p.a] if isinstance(e, MessageReceived)]
    assert reply[-1].value == {"ok": True}
    assert sid not in p.a.streams and sid not in p.b.streams  # closed both ways


@pytest.mark.parametrize(("a_rr", "b_rr"), [(True, False), (False, True), (False, False)])
def test_one_side_without_it_keeps_the_old_frames(a_rr: bool, b_rr: bool) -> None:
    p = pair(a_rr, b_rr)
    sid = request(p, "orders", {"id": 42})
    p.run()
    p.b.send_message(sid, {"ok": True}, end_stream=True)
    p.run()
    # decodable by a peer that knows nothing of kinds 11 and 12
    assert kinds(sent_frames(p, p.a, rr=False)) == ["OpenFrame", "MessageFrame"]
    assert kinds(sent_frames(p, p.b, rr=False)) == ["MessageFrame"]
    assert [e.value for e in p.events[p.a] if isinstance(e, MessageReceived)] == [{"ok": True}]


def inject(p: Pair, frames: Sequence[Frame | bytes]) -> list[Event]:
    """Seal raw frames with a's real keys and deliver them to b (a hostile peer)."""
    raw = b"".join(f if isinstance(f, bytes) else encode_frame(f) for f in frames)
    assert p.a._writer is not None
    p.b.receive_data(p.a._writer.seal(raw), p.clock.now)
    return list(p.drain(p.b))


def closed(events: Sequence[Event]) -> int | None:
    return next((e.code for e in events if isinstance(e, ConnectionClosed)), None)


@pytest.mark.parametrize(("a_rr", "b_rr"), [(False, True), (True, False)])
def test_a_frame_the_receiver_did_not_negotiate_is_a_protocol_error(a_rr: bool, b_rr: bool) -> None:
    for frame in (RequestFrame(0, "r", b"\x01"), ReplyFrame(1, b"\x01")):
        p = pair(a_rr, b_rr)
        assert closed(inject(p, [frame])) == ErrorCode.PROTOCOL_ERROR


def test_reply_on_a_stream_the_sender_opened_is_a_protocol_error() -> None:
    p = pair()
    got = inject(p, [OpenFrame(0, "r"), ReplyFrame(0, b"\x01")])
    assert closed(got) == ErrorCode.PROTOCOL_ERROR


def test_reply_on_a_stream_never_opened_is_a_stream_state_error() -> None:
    p = pair()
    assert closed(inject(p, [ReplyFrame(1, b"\x01")])) == ErrorCode.STREAM_STATE_ERROR


# ---------------------------------------------------------------- sender fallback


def test_a_request_larger_than_the_stream_window_falls_back_to_fragments() -> None:
    p = pair(initial_stream_window=1024)
    sid = request(p, "big", b"x" * 5000)
    p.run()
    frames = sent_frames(p, p.a)
    assert kinds(frames)[0] == "OpenFrame" and "RequestFrame" not in kinds(frames)
    assert [e.value for e in p.events[p.b] if isinstance(e, MessageReceived)] == [b"x" * 5000]
    assert sid in p.a.streams  # waiting for the reply


def test_a_request_larger_than_a_record_falls_back() -> None:
    p = pair()
    request(p, "big", b"y" * 70_000)
    p.run()
    assert "RequestFrame" not in kinds(sent_frames(p, p.a))
    assert [e.value for e in p.events[p.b] if isinstance(e, MessageReceived)] == [b"y" * 70_000]


def test_a_reply_with_a_separate_end_or_more_messages_uses_message_frames() -> None:
    p = pair()
    sid = request(p, "echo", 1)
    p.run()
    p.b.send_message(sid, 2)
    p.b.send(sid, b"", end_stream=True)
    p.run()
    assert kinds(sent_frames(p, p.b)) == ["MessageFrame", "StreamFrame"]
    assert [e.value for e in p.events[p.a] if isinstance(e, MessageReceived)] == [2]


def test_a_stream_opened_and_used_before_its_last_message_uses_message_frames() -> None:
    p = pair()
    sid = p.a.open_stream("feed")
    p.a.send_message(sid, 1)
    p.run()
    p.a.send_message(sid, 2, end_stream=True)
    p.run()
    assert kinds(sent_frames(p, p.a)) == ["OpenFrame", "MessageFrame", "MessageFrame"]


def test_a_reply_on_our_own_stream_is_never_a_reply_frame() -> None:
    """The responder opens (odd IDs): its request is a REQUEST, the initiator's answer a REPLY."""
    p = pair()
    sid = p.b.open_stream("up")
    p.b.send_message(sid, "ping", end_stream=True)
    p.run()
    p.a.send_message(sid, "pong", end_stream=True)
    p.run()
    assert kinds(sent_frames(p, p.b)) == ["RequestFrame"]
    assert kinds(sent_frames(p, p.a)) == ["ReplyFrame"]


def test_cancelled_request_is_reset_with_its_final_size() -> None:
    p = pair()
    sid = request(p, "slow", {"n": 1})
    p.run()
    p.a.reset_stream(sid)
    p.run()
    frames = sent_frames(p, p.a)
    size = len(cbor.encode({"n": 1}))
    assert frames == [RequestFrame(sid, "slow", cbor.encode({"n": 1})), ResetFrame(sid, 0x40, size)]
    resets = [e for e in p.events[p.b] if isinstance(e, StreamReset)]
    assert [(r.stream_id, r.code, r.remote) for r in resets] == [(sid, ErrorCode.CANCELLED, True)]
    assert p.b.state is ConnectionState.ESTABLISHED


# ---------------------------------------------------------------- receiver equivalence


class _Authz:
    """Allows (resource, ability) pairs; ``capped`` resources get a 16-byte caveat."""

    def __init__(self) -> None:
        self.allowed = {
            ("ok", "stream/open"),
            ("ok", "msg/send"),
            ("open-only", "stream/open"),
            ("capped", "stream/open"),
            ("capped", "msg/send"),
        }

    def accept_tokens(self, peer: AgentId, tokens: Sequence[bytes], now: float) -> object:
        return None

    def authorize(self, peer: AgentId, resource: str, ability: str, now: float) -> object:
        if (resource, ability) not in self.allowed:
            raise AuthorizationError("no", ErrorCode.UNAUTHORIZED)
        return _CAPPED if resource == "capped" else None


class _Capped:
    max_message_size = 16

    def check_message(self, size: int) -> None:
        if size > 16:
            raise AuthorizationError("caveat", ErrorCode.MESSAGE_TOO_LARGE)


_CAPPED = _Capped()  # one object: events of two runs compare equal

_PAYLOADS = [
    b"",
    b"\x01",
    b"\xff",  # not CBOR
    b"\x82\x01",  # truncated
    cbor.encode(b"\x00" * 14),  # 16 bytes: at the caveat
    cbor.encode(b"\x00" * 15),  # 17 bytes: over the caveat
    cbor.encode(b"\x00" * 2000),  # over max_message_size (1000)
    cbor.encode(b"\x00" * 5000),  # over the stream window (4096)
]
_RESOURCES = ["ok", "open-only", "nothing", "capped"]

_op = st.one_of(
    st.tuples(st.just("req"), st.sampled_from(_RESOURCES), st.sampled_from(range(len(_PAYLOADS)))),
    st.tuples(st.just("reset"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("reuse"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("empty"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("tick"), st.just(0), st.just(0)),
)


def _frames(ops: list[tuple[str, object, object]], as_request: bool) -> list[list[Frame]]:
    """The attack as records: REQUEST frames, or the OPEN + MESSAGE pairs they stand for."""
    records: list[list[Frame]] = []
    sid = 0
    sizes: dict[int, int] = {}
    for kind, x, y in ops:
        if kind == "req":
            data = _PAYLOADS[y]  # type: ignore[index]
            if as_request:
                records.append([RequestFrame(sid, str(x), data)])
            else:
                records.append([OpenFrame(sid, str(x)), MessageFrame(sid, data, True, True)])
            sizes[sid] = len(data)
            sid += 2
        elif kind == "reset" and sizes:
            target = sorted(sizes)[int(x) % len(sizes)]  # type: ignore[call-overload]
            records.append([ResetFrame(target, 0x40, sizes[target] if y else 0)])
        elif kind == "reuse" and sizes:
            target = sorted(sizes)[int(x) % len(sizes)]  # type: ignore[call-overload]
            if as_request:
                records.append([RequestFrame(target, "ok", b"\x01")])
            else:
                records.append([OpenFrame(target, "ok"), MessageFrame(target, b"\x01", True, True)])
        elif kind == "empty" and sizes:
            target = sorted(sizes)[int(x) % len(sizes)]  # type: ignore[call-overload]
            records.append([StreamFrame(target, b"", False)])
        elif kind == "tick":
            records.append([])
    return records


def _run(
    ops: list[tuple[str, object, object]], as_request: bool
) -> tuple[list[Event], list[list[Frame]]]:
    p = pair(
        authorizer=_Authz(),
        max_message_size=1000,
        initial_stream_window=4096,
        initial_connection_window=16384,
        stream_churn_burst=6,
        max_no_progress_frames=5,
        max_concurrent_streams=4,
    )
    events: list[Event] = []
    out: list[list[Frame]] = []
    for record in _frames(ops, as_request):
        if p.b.state is ConnectionState.CLOSED:
            break
        events += inject(p, record)
        p.b.data_to_send()
        out.append(sent_frames(p, p.b, rr=True))  # what b answered, in order
        _SEALED.clear()
    return events, out


@settings(max_examples=150, deadline=None)
@given(st.lists(_op, min_size=1, max_size=24))
def test_request_is_exactly_open_plus_last_message(ops: list[tuple[str, object, object]]) -> None:
    """Same events, same bytes sent back, same close: authorization, caveats, sizes,
    windows, stream limit, resets and every budget charge are those of the pair."""
    assert _run(ops, True) == _run(ops, False)


@pytest.mark.parametrize(
    ("make", "limit", "code"),
    [
        (lambda i: [RequestFrame(2 * i, "ok", b"\x01"), ResetFrame(2 * i, 0x40, 1)], 200,
         ErrorCode.ENHANCE_YOUR_CALM),
        (lambda i: [RequestFrame(2 * i, "nothing", b"\x01")], 200, ErrorCode.ENHANCE_YOUR_CALM),
        (lambda i: [RequestFrame(2 * i, "ok", b"\xff")], 200, ErrorCode.ENHANCE_YOUR_CALM),
        (lambda i: [RequestFrame(2 * i, "nothing", b"")], 32, ErrorCode.ENHANCE_YOUR_CALM),
    ],
    ids=["rapid-reset", "refused-open", "undecodable", "refused-empty"],
)  # fmt: skip
def test_request_floods_are_charged_like_stream_floods(make: object, limit: int, code: int) -> None:
    p = pair(authorizer=_Authz())
    for i in range(limit):
        got = inject(p, make(i))  # type: ignore[operator]
        assert closed(got) is None, i
        if i % 32 == 0:
            p.b.data_to_send()
    assert closed(inject(p, make(limit))) == code  # type: ignore[operator]
