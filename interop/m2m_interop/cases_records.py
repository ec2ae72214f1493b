"""Conformance cases for spec/records.md (§3) and spec/frames.md (§4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from m2mproto.frames import (
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
)

from .framework import Actual, Ctx, after, case, conn, gone, ok
from .inprocess import IUTProfile
from .peer import Session


def _send(*items: Frame | bytes) -> Callable[[Ctx], Actual]:
    return after(lambda s: s.send(*items))


def _raw_items(*items: Any) -> Callable[[Ctx], Actual]:
    return after(lambda s: s.send_raw_items(*items))


def _plain(hexstr: str) -> Callable[[Ctx], Actual]:
    return after(lambda s: s.send(bytes.fromhex(hexstr)))


# ------------------------------------------------------------------ §3.1 records

case(
    "3.1/1",
    "Record-LengthMax-Garbage",
    "3.1: a record that fails authentication closes the connection with DECRYPT_ERROR.",
    conn("DECRYPT_ERROR"),
)(after(lambda s: s.write(b"\xff\xff" + bytes(range(256)) * 255 + bytes(255))))

case(
    "3.1/2",
    "Record-LengthZero",
    "3.1: a record length of 0 is FRAME_SIZE_ERROR as soon as its two bytes arrive.",
    conn("FRAME_SIZE_ERROR"),
)(after(lambda s: s.write(b"\x00\x00")))

case(
    "3.1/3",
    "Record-Length15",
    "3.1: a record length below 16 (shorter than the tag) is FRAME_SIZE_ERROR.",
    conn("FRAME_SIZE_ERROR"),
)(after(lambda s: s.write(b"\x00\x0f")))

case(
    "3.1/4",
    "Record-Length16-Pass",
    "3.1: a 16-byte record (empty plaintext) is allowed (boundary of 3.1/3).",
    ok(),
)(after(lambda s: s.write(s.seal(b""))))


def _flip(pos: int) -> Callable[[Session], None]:
    def act(s: Session) -> None:
        rec = bytearray(s.seal(s.plaintext(PingFrame(b"x"))))
        rec[2 + pos % (len(rec) - 2)] ^= 0x80
        s.write(bytes(rec))

    return act


case(
    "3.1/5",
    "Record-BitFlip-Ciphertext",
    "3.1: a flipped bit in the ciphertext is DECRYPT_ERROR.",
    conn("DECRYPT_ERROR"),
)(after(_flip(1)))

case(
    "3.1/6",
    "Record-BitFlip-Tag",
    "3.1: a flipped bit in the tag is DECRYPT_ERROR (same behaviour whatever the position).",
    conn("DECRYPT_ERROR"),
)(after(_flip(-1)))


def _replay(s: Session) -> None:
    s.send(PingFrame(b"1"))
    s.receive()
    s.write(s.records_sent[-1])


def _reorder(s: Session) -> None:
    a = s.seal(s.plaintext(PingFrame(b"1")))
    b = s.seal(s.plaintext(PingFrame(b"2")))
    s.write(b + a)


def _drop(s: Session) -> None:
    s.seal(s.plaintext(PingFrame(b"1")))
    s.write(s.seal(s.plaintext(PingFrame(b"2"))))


case("3.1/7", "Record-Replay", "3.1: a replayed record is DECRYPT_ERROR.", conn("DECRYPT_ERROR"))(
    after(_replay)
)
case(
    "3.1/8",
    "Record-Reorder",
    "3.1: records swapped in order are DECRYPT_ERROR.",
    conn("DECRYPT_ERROR"),
)(after(_reorder))
case(
    "3.1/9",
    "Record-Drop",
    "3.1: a dropped record makes the next one DECRYPT_ERROR.",
    conn("DECRYPT_ERROR"),
)(after(_drop))


@case(
    "3.1/10",
    "Record-NoPartialEffect",
    "frames §1: a record with one invalid frame changes nothing (the OPEN before it is "
    "not delivered).",
    conn("PROTOCOL_ERROR"),
)
def _no_partial(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(OpenFrame(0, "echo"), bytes.fromhex("810b"))
    act = ctx.observe(s)
    view = s.link.local()
    if view is not None and "StreamOpened" in view.events:
        act.kind, act.detail = "fail", "the OPEN of the bad record reached the application"
    return act


@case(
    "3.1/11",
    "Record-OneBytePerWrite",
    "3.1: a whole session delivered one byte per write behaves the same.",
    ok(),
)
def _one_byte(ctx: Ctx) -> Actual:
    link = ctx.link()
    inner_write = link.write

    def slow(data: bytes) -> None:
        for i in range(len(data)):
            inner_write(data[i : i + 1])

    link.write = slow  # type: ignore[method-assign]
    p = ctx.peer(link)
    result = p.handshake()
    if not isinstance(result, Session):
        return ctx.after_handshake(p, result)
    return ctx.observe(result)


@case(
    "3.1/12",
    "Record-MaxPlaintext-Pass",
    "3.1: a record of 65535 bytes (65519 of plaintext) is accepted.",
    ok(),
)
def _max_record(ctx: Ctx) -> Actual:
    s = ctx.session()
    sid = s.open_stream()

    def build(n: int) -> bytes:  # a message fragment (not the last) fills the record
        return s.plaintext(OpenFrame(sid, "log"), MessageFrame(sid, b"\x00" * n, False, False))

    data_len = 65400
    frames = build(data_len)
    for _ in range(4):  # converge on exactly 65519 bytes of plaintext
        if len(frames) == 65519:
            break
        data_len += 65519 - len(frames)
        frames = build(data_len)
    record = s.seal(frames)
    if len(record) != 65537:
        return Actual("fail", detail=f"runner built a {len(record)}-byte record")
    s.write(record)
    return ctx.observe(s)


@case(
    "3.2/1",
    "Record-TruncationNoClose",
    "3.2: end of transport without CLOSE is TRUNCATED; open streams are reported reset "
    "(TRUNCATED), never ended.",
    gone("TRUNCATED"),
)
def _truncation(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(OpenFrame(0, "log"), StreamFrame(0, b"partial", False))
    s.receive()
    s.link.write_eof()
    got = s.receive()
    act = ctx._closed(s.link, got)
    view = s.link.local()
    if view is not None:
        if "StreamEnded" in view.events:
            act.kind, act.detail = "fail", "a stream was reported ended"
        elif not any(i == 0 and c == 0x12 for (i, c, _r) in view.resets):
            act.kind, act.detail = "fail", "stream 0 not reported reset(TRUNCATED)"
    return act


@case(
    "3.2/2",
    "Record-TruncationMidRecord",
    "3.2: end of transport inside a record is TRUNCATED.",
    gone("TRUNCATED"),
)
def _trunc_mid(ctx: Ctx) -> Actual:
    s = ctx.session()
    rec = s.seal(s.plaintext(PingFrame(b"x")))
    s.write(rec[:7])
    s.link.write_eof()
    return ctx._closed(s.link, s.receive())


_LIMIT = IUTProfile(config={"max_records_per_key": 32, "key_update_after_records": 16})


def _records_then_observe(n: int) -> Callable[[Ctx], Actual]:
    def run(ctx: Ctx) -> Actual:
        s = ctx.session()
        used = s.send_cs.nonce  # records already sealed under our key (none when we dial)
        for i in range(n - used):
            s.write(s.seal(s.plaintext(PingFrame(b"p"))))
            if i % 16 == 15:
                s.receive()
        got = s.receive()
        if got.close_code() is not None or s.link.iut_closed:
            return ctx._closed(s.link, got)
        return Actual("ok") if n <= 32 else Actual("fail", detail="record 33 accepted")

    return run


case(
    "3.3/1",
    "Record-HardLimit-Pass",
    "3.3: max_records_per_key (32 configured) records under one key are accepted.",
    ok(),
    profile=_LIMIT,
)(_records_then_observe(32))

case(
    "3.3/2",
    "Record-HardLimit",
    "3.3: record max+1 under one key is refused with KEY_UPDATE_ERROR before it is opened.",
    conn("KEY_UPDATE_ERROR"),
    profile=_LIMIT,
)(_records_then_observe(33))


@case(
    "3.3/3",
    "Record-AutoKeyUpdate",
    "3.3: a sender sends KEY_UPDATE after key_update_after_records (16 configured) records.",
    ok(),
    profile=_LIMIT,
)
def _auto_ku(ctx: Ctx) -> Actual:
    s = ctx.session()
    for i in range(20):
        s.write(s.seal(s.plaintext(PingFrame(bytes([i])))))
        s.receive()
        if s.key_updates_seen:
            break
    if not s.key_updates_seen:
        return Actual("fail", detail="no KEY_UPDATE after 20 records from the IUT")
    return ctx.observe(s)


# ------------------------------------------------------------------ §3.4 key update


@case(
    "3.4/1",
    "KU-Requested",
    "3.4: KEY_UPDATE(update_requested) is answered with KEY_UPDATE(false); both keys rotate.",
    ok(),
)
def _ku(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(KeyUpdateFrame(True))
    s.rekey_send()
    got = s.receive()
    answers = got.of(KeyUpdateFrame)
    if [a.update_requested for a in answers] != [False]:
        return Actual("fail", detail=f"answers {answers}")
    return ctx.observe(s)


@case(
    "3.4/2",
    "KU-OneOutstandingAnswer",
    "3.4: two requests before the answer is sent produce one answer.",
    ok(),
)
def _ku_two(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.write(s.seal(s.plaintext(KeyUpdateFrame(True))) + _rekeyed(s, KeyUpdateFrame(True)))
    s.rekey_send()
    got = s.receive()
    n = len(got.of(KeyUpdateFrame))
    if n != 1:
        return Actual("fail", detail=f"{n} KEY_UPDATE answers")
    return ctx.observe(s)


def _rekeyed(s: Session, frame: Frame) -> bytes:
    s.rekey_send()
    return s.seal(s.plaintext(frame))


case(
    "3.4/3",
    "KU-NotLast",
    "3.4: KEY_UPDATE that is not the last frame of its record is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(_send(KeyUpdateFrame(False), PingFrame(b"x")))


@case(
    "3.4/4",
    "KU-OldKeyAfterUpdate",
    "3.4: a record under the old key after KEY_UPDATE is DECRYPT_ERROR.",
    conn("DECRYPT_ERROR"),
)
def _ku_old(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(KeyUpdateFrame(False))  # ... and do not rekey
    s.send(PingFrame(b"x"))
    return ctx.observe(s)


def _ku_flood(n: int) -> Callable[[Ctx], Actual]:
    def run(ctx: Ctx) -> Actual:
        s = ctx.session()
        for i in range(n):
            s.send(KeyUpdateFrame(False))
            s.rekey_send()
            if i % 8 == 7:
                s.receive()
        return ctx.observe(s)

    return run


case(
    "3.4/5",
    "KU-Flood-Pass",
    "3.4: 32 KEY_UPDATEs without data are accepted (boundary of 3.4/6).",
    ok(),
)(_ku_flood(32))

case(
    "3.4/6",
    "KU-Flood",
    "3.4: more than 32 KEY_UPDATEs without application data is ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
)(_ku_flood(33))

case(
    "3.4/7",
    "KU-Malformed",
    "frames §2 rule 4: KEY_UPDATE with an integer flag is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_plain("820901"))

case(
    "3.4/8",
    "KU-ExtraField",
    "frames §2 rule 4: KEY_UPDATE with an extra field is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_plain("8309f500"))

# ------------------------------------------------------------------ §4.1 framing

case(
    "4.1/1",
    "CBOR-Depth10000",
    "4.1: nesting deeper than 16 is DECODE_ERROR (no recursion failure).",
    conn("DECODE_ERROR"),
)(after(lambda s: s.send(b"\x82\x18\x40" + b"\x81" * 10000 + b"\x80")))


def _nested(depth: int) -> bytes:
    # [64, [[...]]]: the frame array is level 1
    return b"\x82\x18\x40" + b"\x81" * (depth - 2) + b"\x80"


case(
    "4.1/2",
    "CBOR-Depth16-Pass",
    "4.1: nesting of exactly 16 (an ignored extension frame) is accepted.",
    ok(),
)(after(lambda s: s.send(_nested(16))))

case(
    "4.1/3",
    "CBOR-Depth17",
    "4.1: nesting of 17 is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(after(lambda s: s.send(_nested(17))))

case(
    "4.1/4",
    "CBOR-IndefiniteArray",
    "4.1: indefinite-length items are DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_plain("9f0641ff"))

case(
    "4.1/5",
    "CBOR-IndefiniteMap",
    "4.1: an indefinite-length map is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_plain("bf616101ff"))

case(
    "4.1/6",
    "CBOR-HugeDeclaredLength",
    "4.1: a declared length beyond the record is DECODE_ERROR, checked before allocating.",
    conn("DECODE_ERROR"),
)(_plain("8401005b7fffffffffffffff" + "00" * 80))

case(
    "4.1/7",
    "CBOR-HugeArray",
    "4.1: an array header of 2^32 items in a small record is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_plain("9b0000000100000000" + "00" * 16))

case(
    "4.1/8",
    "CBOR-DuplicateKey",
    "4.1: duplicate map keys are DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_plain("821840a201010102"))

case(
    "4.1/9",
    "CBOR-UnsortedKeys",
    "4.1: unsorted map keys are DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_plain("821840a202010101"))

case(
    "4.1/10",
    "CBOR-Tag",
    "4.1: no tags in frames (tag 2 bignum stream ID).",
    conn("DECODE_ERROR"),
)(_plain("8401c24100426869f5"))

case(
    "4.1/11",
    "CBOR-SelfDescribeTag",
    "4.1: no tags in frames (tag 55799).",
    conn("DECODE_ERROR"),
)(_plain("d9d9f7820640"))

case(
    "4.1/12",
    "Frame-TrailingBytes",
    "4.1: bytes after the last complete frame are DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_plain("820640" + "18"))

case(
    "4.1/13",
    "CBOR-NonShortestInt",
    "README: integers in their shortest form (stream ID 0 as 2 bytes is DECODE_ERROR).",
    conn("DECODE_ERROR"),
)(_plain("8401180042" + "6869f5"))

case(
    "4.1/14",
    "CBOR-InvalidUTF8",
    "README: text strings MUST be valid UTF-8 (OPEN resource ff).",
    conn("DECODE_ERROR"),
)(_plain("83020061ff"))

case(
    "4.1/15",
    "CBOR-UndefinedSimple",
    "README: the only simple values are false, true and null (undefined is DECODE_ERROR).",
    conn("DECODE_ERROR"),
)(_plain("840100426869f7"))

# ------------------------------------------------------------------ §4.2 kinds

case(
    "4.2/1",
    "Frame-NotArray",
    "4.2 rule 1: an item that is not a non-empty array is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_plain("a0"))

case(
    "4.2/2",
    "Frame-EmptyArray",
    "4.2 rule 1: an empty array is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_plain("80"))

case(
    "4.2/3",
    "Frame-UnknownCoreKind",
    "4.2 rule 2: an unknown core kind (11) is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(_plain("810b"))

case(
    "4.2/4",
    "Frame-Kind0",
    "4.2 rule 2: kind 0 is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(_plain("8100"))

case(
    "4.2/5",
    "Frame-ExtensionIgnored",
    "4.2 rule 3: an unknown extension frame (kind 64, 65535) is ignored.",
    ok(),
)(_send(ExtensionFrame(64, ("x", 1)), ExtensionFrame(65535, ())))

case(
    "4.2/6",
    "Frame-WrongArity",
    "4.2 rule 4: a core frame with a wrong field count is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_plain("83060000"))


@case(
    "4.2/7",
    "Frame-WrongTypes",
    "4.2 rule 4: a stream ID as text, negative integer, float, bytes or bool is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)
def _wrong_types(ctx: Ctx) -> Actual:
    first: Actual | None = None
    for sid in ("0", -1, 1.0, b"\x00", True):
        s = ctx.session()
        s.send_raw_items([1, sid, b"hi", True])
        act = ctx.observe(s)
        if first is None:
            first = act
        elif (act.kind, act.wire, act.local) != (first.kind, first.wire, first.local):
            return Actual(act.kind, act.wire, act.local, f"stream ID {sid!r} differs")
    assert first is not None
    return first


case(
    "4.2/8",
    "Frame-StreamIdTooLarge",
    "4.2 rule 5: a stream ID above 2^62-1 is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(_raw_items([1, 2**62, b"", True]))

case(
    "4.2/9",
    "Frame-CodeTooLarge",
    "4.2 rule 5: a code above 0xFFFF is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(_raw_items([10, 0x10000, ""]))

case(
    "4.2/10",
    "Open-EmptyResource",
    "4.2: OPEN with an empty resource is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(_raw_items([2, 0, ""]))

case(
    "4.2/11",
    "Open-Resource256-Pass",
    "4.2: a resource of 256 bytes is accepted by the codec (the application may refuse it).",
    ok(),
)(after(lambda s: _accepted_open(s, "log/" + "r" * 252)))


def _accepted_open(s: Session, resource: str) -> Any:
    s.send(OpenFrame(0, resource))
    got = s.receive()
    if got.close_code() is not None or s.link.iut_closed:
        return got  # observed as a connection error
    bad = [r for r in got.of(ResetFrame) if r.code != 0x41]  # REFUSED by the app is fine
    return Actual("fail", detail=f"stream reset with {bad[0].code}") if bad else None


case(
    "4.2/12",
    "Open-Resource257",
    "4.2: a resource over 256 bytes is FRAME_SIZE_ERROR.",
    conn("FRAME_SIZE_ERROR"),
)(_raw_items([2, 0, "log/" + "r" * 253]))

case(
    "4.2/13",
    "Message-EndWithoutLast",
    "4.2: MESSAGE with end-stream but not last is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(_raw_items([2, 0, "echo"], [3, 0, b"\x01", False, True]))


@case(
    "4.2/14",
    "Ping-Payload64-Pass",
    "4.2: PING with a 64-byte payload is answered by PONG with the same payload.",
    ok(),
)
def _ping64(ctx: Ctx) -> Actual:
    s = ctx.session()
    payload = bytes(range(64))
    s.send(PingFrame(payload))
    got = s.receive()
    if [p.payload for p in got.of(PongFrame)] != [payload]:
        return Actual("fail", detail="no matching PONG")
    return ctx.observe(s)


case(
    "4.2/15",
    "Ping-Payload65",
    "4.2: a PING payload over 64 bytes is FRAME_SIZE_ERROR.",
    conn("FRAME_SIZE_ERROR"),
)(_raw_items([6, b"\x00" * 65]))

case(
    "4.2/16",
    "Close-Reason257",
    "4.2: a CLOSE reason over 256 bytes is FRAME_SIZE_ERROR.",
    conn("FRAME_SIZE_ERROR"),
)(_raw_items([10, 0, "r" * 257]))

case(
    "4.2/17",
    "Token-Frame16385",
    "4.2: a TOKEN frame over 16384 bytes is FRAME_SIZE_ERROR.",
    conn("FRAME_SIZE_ERROR"),
)(_raw_items([8, b"\x00" * 16385]))

case(
    "4.2/18",
    "WindowUpdate-IncrementTooLarge",
    "4.2: a window increment above 2^62-1 is FLOW_CONTROL_ERROR.",
    conn("FLOW_CONTROL_ERROR"),
)(_raw_items([5, None, 2**62]))

case(
    "4.2/19",
    "Reset-FinalSizeTooLarge",
    "4.2: a final size above 2^62-1 is FINAL_SIZE_ERROR.",
    conn("FINAL_SIZE_ERROR"),
)(_raw_items([2, 0, "log"], [4, 0, 0x40, 2**62]))


@case(
    "4.2/20",
    "Token-Frame16384-LocalOnly",
    "4.2 / streams §7: a 16384-byte TOKEN frame is accepted by the codec; its rejection "
    "(TOO_LARGE, over max_token_size) is local only and the connection stays up.",
    ok(),
)
def _token_big(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(TokenFrame(b"\x00" * 16384))
    act = ctx.observe(s)
    view = s.link.local()
    if view is not None and view.token_rejected != (0x20C,):
        return Actual("fail", detail=f"local TokenRejected(TOO_LARGE) missing: {view}")
    return act
