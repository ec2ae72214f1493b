"""Differential round trip of structured frames (no exception allowed).

The input is a small grammar (``_common.ByteReader``) that builds a list of
frames with arbitrary field values inside the types of ``m2mproto.frames``.
Invariant: ``encode_frame`` either refuses a frame with
``LocalProtocolError(INVALID_ARGUMENT)`` (its fields are out of range) or its
output decodes to an equal frame and re-encodes to identical bytes; a record
of several encoded frames decodes to the same list. A frame the encoder
accepts must never be rejected by the decoder, and vice versa for field
ranges the decoder would accept.
"""

from __future__ import annotations

from typing import Any

from _common import ByteReader, fuzz_main, instrumented

with instrumented(__name__):
    from m2mproto.errors import ErrorCode, LocalProtocolError
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
        ResetFrame,
        StreamFrame,
        TokenFrame,
        WindowUpdateFrame,
        decode_frame,
        decode_frames,
        encode_frame,
    )

_EDGES = (0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, MAX_VARINT, MAX_VARINT + 1)


def _int(r: ByteReader) -> int:
    """Integers that hit every CBOR head size and the range edges."""
    mode = r.u8() % 4
    if mode == 0:
        return int(r.choice(_EDGES))
    if mode == 1:
        return r.u8()
    if mode == 2:
        return r.u16()
    return r.uint(8)


def _text(r: ByteReader, limit: int) -> str:
    return r.blob(limit).decode("utf-8", "replace")


def _value(r: ByteReader, depth: int) -> Any:
    """An arbitrary CBOR value for extension frame fields."""
    kind = r.u8() % (8 if depth < 4 else 5)
    if kind == 0:
        return _int(r)
    if kind == 1:
        return -1 - _int(r)
    if kind == 2:
        return r.blob(40)
    if kind == 3:
        return _text(r, 40)
    if kind == 4:
        return r.choice((True, False, None, 0.5, -0.0, 1e300, float("inf")))
    if kind == 5:
        return [_value(r, depth + 1) for _ in range(r.u8() % 4)]
    if kind == 6:
        return {_int(r): _value(r, depth + 1) for _ in range(r.u8() % 4)}
    return {_text(r, 8): _value(r, depth + 1) for _ in range(r.u8() % 4)}


def build_frame(r: ByteReader) -> Frame:
    """One frame with fuzzer-chosen fields (possibly out of range)."""
    kind = r.u8() % 11
    if kind == 0:
        return StreamFrame(_int(r), r.blob(300), bool(r.u8() & 1))
    if kind == 1:
        return OpenFrame(_int(r), _text(r, 300))
    if kind == 2:
        flags = r.u8()
        return MessageFrame(_int(r), r.blob(300), bool(flags & 1), bool(flags & 2))
    if kind == 3:
        return ResetFrame(_int(r), _int(r), _int(r))
    if kind == 4:
        return WindowUpdateFrame(None if r.u8() & 1 else _int(r), _int(r))
    if kind == 5:
        return PingFrame(r.blob(80))
    if kind == 6:
        return PongFrame(r.blob(80))
    if kind == 7:
        return TokenFrame(r.blob(600))
    if kind == 8:
        return KeyUpdateFrame(bool(r.u8() & 1))
    if kind == 9:
        return CloseFrame(_int(r), _text(r, 300))
    return ExtensionFrame(_int(r), tuple(_value(r, 0) for _ in range(r.u8() % 4)))


def _has_nan(frame: Frame) -> bool:
    return "nan" in repr(frame)


def check_roundtrip(data: bytes) -> None:
    """Build frames from *data*; every encodable one must round-trip exactly."""
    r = ByteReader(data)
    encoded: list[tuple[Frame, bytes]] = []
    for _ in range(8):
        if not r.remaining:
            break
        frame = build_frame(r)
        try:
            raw = encode_frame(frame)
        except LocalProtocolError as exc:
            assert exc.code is ErrorCode.INVALID_ARGUMENT, exc
            continue
        back, end = decode_frame(raw)  # must not raise: we encoded it
        assert end == len(raw), "decoder left bytes of an encoded frame"
        if not _has_nan(frame):
            assert back == frame or _equal_ext(back, frame), f"{frame!r} -> {back!r}"
        assert encode_frame(back) == raw, f"re-encoding {frame!r} differs"
        encoded.append((back, raw))
    # A record of the frames: KEY_UPDATE only last, as the connection sends it.
    body = [(f, raw) for f, raw in encoded if not isinstance(f, KeyUpdateFrame)]
    record = b"".join(raw for _, raw in body)
    assert decode_frames(record) == [f for f, _ in body] or any(_has_nan(f) for f, _ in body)


def _equal_ext(a: Frame, b: Frame) -> bool:
    """Extension fields are decoded as lists where the builder used tuples."""
    return (
        isinstance(a, ExtensionFrame)
        and isinstance(b, ExtensionFrame)
        and a.kind == b.kind
        and list(a.fields) == list(b.fields)
    )


if __name__ == "__main__":
    fuzz_main(check_roundtrip)
