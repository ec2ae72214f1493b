"""Frame codec: round trips, split-record equivalence, every malformed frame -> its code."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mproto import cbor
from m2mproto.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from m2mproto.frames import (
    MAX_VARINT,
    CloseFrame,
    ExtensionFrame,
    Frame,
    KeyUpdateFrame,
    MessageFrame,
    OpenFrame,
    PingFrame,
    PongFrame,
    ReplyFrame,
    RequestFrame,
    ResetFrame,
    StreamFrame,
    TokenFrame,
    WindowUpdateFrame,
    decode_frame,
    decode_frames,
    encode_frame,
    frame_overhead,
)

ids = st.integers(0, MAX_VARINT)
small_bytes = st.binary(max_size=300)
codes = st.integers(0, 0xFFFF)
text = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 256)

frames_st: st.SearchStrategy[Frame] = st.one_of(
    st.builds(StreamFrame, ids, small_bytes, st.booleans()),
    st.builds(OpenFrame, ids, text.filter(lambda s: len(s) > 0)),
    st.builds(MessageFrame, ids, small_bytes, st.just(True), st.booleans()),
    st.builds(MessageFrame, ids, small_bytes, st.just(False), st.just(False)),
    st.builds(ResetFrame, ids, codes, ids),
    st.builds(WindowUpdateFrame, st.none() | ids, st.integers(1, MAX_VARINT)),
    st.builds(PingFrame, st.binary(max_size=64)),
    st.builds(PongFrame, st.binary(max_size=64)),
    st.builds(TokenFrame, small_bytes),
    st.builds(KeyUpdateFrame, st.booleans()),
    st.builds(CloseFrame, codes, text),
    st.builds(
        ExtensionFrame,
        st.integers(64, 2**64 - 1),
        st.lists(st.integers(0, 10) | st.binary(max_size=5), max_size=3).map(tuple),
    ),
)


@settings(max_examples=300)
@given(frames_st)
def test_round_trip_and_canonical(frame: Frame) -> None:
    raw = encode_frame(frame)
    decoded, end = decode_frame(raw)
    assert end == len(raw)
    assert decoded == frame
    assert encode_frame(decoded) == raw
    # the fast paths produce exactly the generic deterministic encoding
    assert cbor.encode(cbor.decode(raw)) == raw


@settings(max_examples=100)
@given(st.lists(frames_st, max_size=8))
def test_record_of_many_frames(frames: list[Frame]) -> None:
    # KEY_UPDATE may only be last: drop the others
    frames = [f for f in frames if not isinstance(f, KeyUpdateFrame)]
    plaintext = b"".join(encode_frame(f) for f in frames)
    assert decode_frames(plaintext) == frames


def test_frame_overhead_bounds_stream_and_message() -> None:
    for sid in (0, 23, 24, 2**40):
        for n in (0, 23, 24, 300, 65519):
            assert len(encode_frame(StreamFrame(sid, b"x" * n, True))) <= n + frame_overhead(sid, n)
            assert len(encode_frame(MessageFrame(sid, b"x" * n))) == n + frame_overhead(sid, n)


def _code_of(raw: bytes) -> ErrorCode:
    with pytest.raises(RemoteProtocolError) as info:
        decode_frames(raw)
    return info.value.code


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (cbor.encode({1: 2}), ErrorCode.DECODE_ERROR),  # not an array
        (cbor.encode([]), ErrorCode.DECODE_ERROR),  # empty array
        (cbor.encode(["x"]), ErrorCode.DECODE_ERROR),  # kind not a uint
        (cbor.encode([-1]), ErrorCode.DECODE_ERROR),
        (cbor.encode([0]), ErrorCode.PROTOCOL_ERROR),  # reserved core kind
        (cbor.encode([63, 1]), ErrorCode.PROTOCOL_ERROR),  # unknown core kind
        (cbor.encode([1, 1, b"x"]), ErrorCode.DECODE_ERROR),  # too few fields
        (cbor.encode([1, 1, b"x", False, 0]), ErrorCode.DECODE_ERROR),  # too many
        (cbor.encode([1, "1", b"x", False]), ErrorCode.DECODE_ERROR),  # id as text
        (cbor.encode([1, -1, b"x", False]), ErrorCode.DECODE_ERROR),  # negative id
        (cbor.encode([1, 1.0, b"x", False]), ErrorCode.DECODE_ERROR),  # float id
        (cbor.encode([1, b"\x01", b"x", False]), ErrorCode.DECODE_ERROR),  # bytes id
        (cbor.encode([1, True, b"x", False]), ErrorCode.DECODE_ERROR),  # bool id
        (cbor.encode([1, 1, "x", False]), ErrorCode.DECODE_ERROR),  # text data
        (cbor.encode([1, 1, b"x", 0]), ErrorCode.DECODE_ERROR),  # int flag
        (cbor.encode([1, 2**62, b"x", False]), ErrorCode.PROTOCOL_ERROR),  # id too large
        (cbor.encode([2, 1, ""]), ErrorCode.PROTOCOL_ERROR),  # empty resource
        (cbor.encode([2, 1, "r" * 257]), ErrorCode.FRAME_SIZE_ERROR),
        (cbor.encode([3, 1, b"", False, True]), ErrorCode.PROTOCOL_ERROR),  # end w/o last
        (cbor.encode([4, 1, 0x10000, 0]), ErrorCode.PROTOCOL_ERROR),  # code too large
        (cbor.encode([4, 1, 0, 2**62]), ErrorCode.FINAL_SIZE_ERROR),
        (cbor.encode([5, 1, 0]), ErrorCode.PROTOCOL_ERROR),  # zero increment
        (cbor.encode([5, None, 0]), ErrorCode.PROTOCOL_ERROR),
        (cbor.encode([5, 1, 2**62]), ErrorCode.FLOW_CONTROL_ERROR),
        (cbor.encode([5, "c", 1]), ErrorCode.DECODE_ERROR),
        (cbor.encode([6, b"p" * 65]), ErrorCode.FRAME_SIZE_ERROR),
        (cbor.encode([7, b"p" * 65]), ErrorCode.FRAME_SIZE_ERROR),
        (cbor.encode([8, b"t" * 16385]), ErrorCode.FRAME_SIZE_ERROR),
        (cbor.encode([9, 1]), ErrorCode.DECODE_ERROR),  # KU-Malformed: invalid value
        (cbor.encode([9, True, 0]), ErrorCode.DECODE_ERROR),  # KU-Malformed: extra field
        (cbor.encode([10, 0, "r" * 257]), ErrorCode.FRAME_SIZE_ERROR),
        (cbor.encode([10, 0, b"r"]), ErrorCode.DECODE_ERROR),
        # KEY_UPDATE not last in its record
        (cbor.encode([9, False]) + cbor.encode([6, b""]), ErrorCode.PROTOCOL_ERROR),
        # CBOR profile violations (spec/frames.md §1; the runner's cases 4.1/*)
        (b"\x81" * 10000 + b"\x80", ErrorCode.DECODE_ERROR),  # depth 10000
        (b"\x81" * 16 + b"\x80", ErrorCode.DECODE_ERROR),  # depth 17
        (b"\xbf\x61\x61\x01\xff", ErrorCode.DECODE_ERROR),  # indefinite map
        (b"\x9f\x01\xff", ErrorCode.DECODE_ERROR),  # indefinite array
        (b"\x83\x0a\x00\x7f\x61\x61\xff", ErrorCode.DECODE_ERROR),  # indefinite text
        (b"\xa2\x01\x01\x01\x02", ErrorCode.DECODE_ERROR),  # duplicate key
        (b"\x82\x06\xc2\x41\x01", ErrorCode.DECODE_ERROR),  # bignum tag
        (b"\x82\x06\xd8\x1c\x41\x01", ErrorCode.DECODE_ERROR),  # tag 28
        (b"\x82\x06\xd9\x01\x00\x41\x01", ErrorCode.DECODE_ERROR),  # tag 256
        (b"\xd9\xd9\xf7\x82\x06\x40", ErrorCode.DECODE_ERROR),  # tag 55799
        (
            b"\x84\x01\x01\x5b\x7f\xff\xff\xff\xff\xff\xff\xff" + b"\x00" * 88,
            ErrorCode.DECODE_ERROR,
        ),
        (b"\x9a\xff\xff\xff\xff" + b"\x00" * 95, ErrorCode.DECODE_ERROR),  # 2^32 items
        (encode_frame(PingFrame(b"")) + b"\xff", ErrorCode.DECODE_ERROR),  # trailing garbage
        (encode_frame(PingFrame(b""))[:-1], ErrorCode.DECODE_ERROR),  # truncated
    ],
)
def test_malformed_frame_codes(raw: bytes, code: ErrorCode) -> None:
    assert _code_of(raw) is code


def test_extension_range_ignored_core_range_rejected() -> None:
    frames = decode_frames(cbor.encode([64, {1: [2, 3]}]) + cbor.encode([6, b"p"]))
    assert frames == [ExtensionFrame(64, ({1: [2, 3]},)), PingFrame(b"p")]
    assert _code_of(cbor.encode([11, 0])) is ErrorCode.PROTOCOL_ERROR


def test_huge_declared_lengths_allocate_nothing() -> None:
    tracemalloc.start()
    try:
        for raw in (
            b"\x84\x01\x01\x5b\x7f\xff\xff\xff\xff\xff\xff\xff" + b"\x00" * 88,
            b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00" + b"\x00" * 91,
            b"\x81" * 10000 + b"\x80",
        ):
            with pytest.raises(RemoteProtocolError):
                decode_frames(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


@pytest.mark.parametrize(
    "frame",
    [
        StreamFrame(2**62, b""),
        OpenFrame(1, ""),
        OpenFrame(1, "x" * 257),
        MessageFrame(1, b"", last=False, end_stream=True),
        ResetFrame(1, 0x10000, 0),
        ResetFrame(1, 0, -1),
        WindowUpdateFrame(1, 0),
        WindowUpdateFrame(None, 2**62),
        PingFrame(b"x" * 65),
        TokenFrame(b"x" * 16385),
        CloseFrame(0, "é" * 129),
        ExtensionFrame(63),
    ],
)
def test_encoder_refuses_invalid_frames(frame: Frame) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(frame)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


# -- the STREAM/MESSAGE fast path of decode_frames ----------------------------------
# decode_frames takes the fast path only for `bytes`; a memoryview of the same bytes
# goes through the strict decoder alone, so the two must always agree.


def _outcome(data: bytes | memoryview) -> object:
    try:
        return decode_frames(data)
    except RemoteProtocolError as exc:
        return exc.code


data_frames = st.one_of(
    st.builds(StreamFrame, ids, small_bytes, st.booleans()),
    st.builds(
        MessageFrame, ids, small_bytes, st.just(True), st.booleans()
    ),  # last fragment, with or without end_stream
    st.builds(MessageFrame, ids, small_bytes, st.just(False), st.just(False)),
)


@settings(max_examples=300)
@given(
    st.lists(st.one_of(data_frames, frames_st), min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=3),
    st.integers(0, 2000),
)
def test_fast_path_agrees_with_strict_decoder(
    frames: list[Frame], edits: list[tuple[int, int]], cut: int
) -> None:
    raw = bytearray(b"".join(encode_frame(f) for f in frames))
    for pos, value in edits:  # hostile edits: any byte anywhere, then a truncation
        raw[pos % len(raw)] = value
    data = bytes(raw[: len(raw) - cut % (len(raw) + 1)])
    assert _outcome(data) == _outcome(memoryview(data))
    if not edits and cut % (len(raw) + 1) == 0:
        misplaced = any(isinstance(f, KeyUpdateFrame) for f in frames[:-1])
        assert _outcome(data) == (ErrorCode.PROTOCOL_ERROR if misplaced else frames)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x84\x01\x18\x05\x41a\xf4",  # non-shortest stream ID
        b"\x84\x01\x05\x58\x01a\xf4",  # non-shortest length
        b"\x84\x01\x05\x41a\xf6",  # null end flag
        b"\x85\x03\x05\x41a\xf4\xf5",  # end_stream without last
        b"\x84\x01\x1b\x40\x00\x00\x00\x00\x00\x00\x00\x41a\xf4",  # stream ID 2^62
        b"\x84\x01\x05\x42a",  # truncated payload
        b"\x84\x01\x05\x5f\x41a\xff\xf4",  # indefinite length
        b"\x85\x03\x05\x41a\xf5",  # MESSAGE missing a flag
        b"\x84\x01\x18",  # stream ID head cut after its first byte
        b"\x84\x01\x19\x01",  # 2-byte stream ID head cut short
        b"\x85\x03\x05\x59\x01",  # 2-byte length head cut short
        b"\x85\x03\x1b\x00\x00\x00\x01",  # 8-byte stream ID head cut short
    ],
)
def test_fast_path_rejects_what_strict_rejects(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as fast:
        decode_frames(raw)
    with pytest.raises(RemoteProtocolError) as strict:
        decode_frames(memoryview(raw))
    assert fast.value.code is strict.value.code


def test_frame_table_is_exhaustive() -> None:
    """Every core kind has one table row, every Frame class an encoder and a decoder path."""
    from m2mproto.frames import FRAME_CLASSES, FRAME_SPECS, ExtensionFrame, FrameKind

    assert [spec.kind for spec in FRAME_SPECS] == sorted(FrameKind)
    assert {spec.cls for spec in FRAME_SPECS} | {ExtensionFrame} == FRAME_CLASSES
    samples = {
        StreamFrame: StreamFrame(3, b"ab", True),
        OpenFrame: OpenFrame(2, "r"),
        MessageFrame: MessageFrame(1, b"\x01", True, False),
        ResetFrame: ResetFrame(1, 8, 9),
        WindowUpdateFrame: WindowUpdateFrame(None, 5),
        PingFrame: PingFrame(b"p"),
        PongFrame: PongFrame(b"q"),
        TokenFrame: TokenFrame(b"t"),
        KeyUpdateFrame: KeyUpdateFrame(True),
        CloseFrame: CloseFrame(0, "bye"),
        RequestFrame: RequestFrame(4, "r", b"\x01"),
        ReplyFrame: ReplyFrame(5, b"\x02"),
        ExtensionFrame: ExtensionFrame(70, (1, "x")),
    }
    assert set(samples) == FRAME_CLASSES
    for spec in FRAME_SPECS:
        raw = encode_frame(samples[spec.cls])
        assert raw[1] == spec.kind and raw[0] == 0x80 + spec.arity
        assert decode_frames(raw, request_reply=True) == [samples[spec.cls]]
