"""Conformance cases for spec/streams.md (§5)."""

from __future__ import annotations

from collections.abc import Callable

from m2mproto import cbor
from m2mproto.errors import ErrorCode
from m2mproto.frames import (
    CloseFrame,
    ExtensionFrame,
    Frame,
    MessageFrame,
    OpenFrame,
    PingFrame,
    PongFrame,
    ResetFrame,
    StreamFrame,
    TokenFrame,
    WindowUpdateFrame,
)

from .framework import Actual, Ctx, after, case, conn, holder_token, ok, restricted_token, stream
from .inprocess import IUTProfile
from .peer import Session, resets


def _steps(*items: Frame | str) -> Callable[[Session], object]:
    """Send the frames; the marker ``"|"`` ends a record and reads the IUT's answer."""

    def act(s: Session) -> object:
        batch: list[Frame] = []
        for item in items:
            if item == "|":
                s.send(*batch)
                s.receive()
                batch = []
            else:
                assert not isinstance(item, str)
                batch.append(item)
        if batch:
            s.send(*batch)
        return None

    return act


# ------------------------------------------------------------------ §5.1 IDs, lifecycle

case(
    "5.1/1",
    "Stream-WrongParity",
    "5.1: OPEN with the receiver's own parity is STREAM_STATE_ERROR.",
    conn("STREAM_STATE_ERROR"),
)(after(lambda s: s.send(OpenFrame(1, "echo"))))

case(
    "5.1/2",
    "Stream-IdReuse",
    "5.1: OPEN of an ID already used is STREAM_STATE_ERROR.",
    conn("STREAM_STATE_ERROR"),
)(
    after(
        _steps(OpenFrame(0, "log"), ResetFrame(0, ErrorCode.CANCELLED, 0), "|", OpenFrame(0, "log"))
    )
)

case(
    "5.1/3",
    "Stream-IdsDecrease",
    "5.1: IDs of one parity increase; opening 2 after 4 is STREAM_STATE_ERROR.",
    conn("STREAM_STATE_ERROR"),
)(after(_steps(OpenFrame(4, "log"), "|", OpenFrame(2, "log"))))

case(
    "5.1/4",
    "Stream-NeverOpened",
    "5.1: STREAM on a never-opened ID is STREAM_STATE_ERROR.",
    conn("STREAM_STATE_ERROR"),
)(after(lambda s: s.send(StreamFrame(0, b"x", False))))

case(
    "5.1/5",
    "Stream-DataAfterEnd",
    "5.1: data after the peer's end of stream is STREAM_STATE_ERROR.",
    conn("STREAM_STATE_ERROR"),
)(
    after(
        lambda s: s.send(
            OpenFrame(0, "log"),
            MessageFrame(0, b"\x01", True, True),
            MessageFrame(0, b"\x02", True, False),
        )
    )
)

case(
    "5.1/6",
    "Stream-ResetFinalSizeMismatch",
    "5.1: a RESET final size that differs from the bytes sent is FINAL_SIZE_ERROR.",
    conn("FINAL_SIZE_ERROR"),
)(
    after(
        lambda s: s.send(
            OpenFrame(0, "log"), MessageFrame(0, b"\x83\x01\x02", False), ResetFrame(0, 0x40, 2)
        )
    )
)

case(
    "5.1/7",
    "Stream-StreamInsideMessage",
    "5.1: a STREAM frame inside an unfinished MESSAGE is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(
    after(
        lambda s: s.send(
            OpenFrame(0, "log"), MessageFrame(0, b"\x82", False, False), StreamFrame(0, b"x")
        )
    )
)


@case(
    "5.1/8",
    "Stream-ResetByPeer",
    "5.1/errors: a RESET (any code, here CANCELLED and application 0x1001) aborts the "
    "stream; the receiver reports the code and stays usable.",
    ok(),
)
def _peer_reset(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(
        OpenFrame(0, "log"),
        MessageFrame(0, b"\x82\x01", False),
        ResetFrame(0, ErrorCode.CANCELLED, 2),
    )
    s.send(OpenFrame(2, "log"), ResetFrame(2, 0x1001, 0))
    s.next_stream = 4
    act = ctx.observe(s)
    view = s.link.local()
    if view is not None and [(i, c) for (i, c, r) in view.resets if r] != [(0, 0x40), (2, 0x1001)]:
        return Actual("fail", detail=f"local resets {view.resets}")
    return act


@case(
    "5.1/9",
    "Stream-FramesAfterLocalResetIgnored",
    "5.1: frames for a stream this end reset are ignored (credit still counted).",
    ok(),
)
def _after_local_reset(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(OpenFrame(0, "nosuchservice"))
    got = s.receive()
    if [r.code for r in resets(got, 0)] != [ErrorCode.REFUSED]:
        return Actual("fail", detail="no RESET(REFUSED) for an unknown resource")
    s.send(StreamFrame(0, b"late data", False), WindowUpdateFrame(0, 10))
    s.next_stream = 2
    return ctx.observe(s)


_FOUR = IUTProfile(config={"max_concurrent_streams": 4})


def _open_n(n: int) -> Callable[[Session], object]:
    def act(s: Session) -> object:
        s.send(*[OpenFrame(2 * i, "log") for i in range(n)])
        got = s.receive()
        if got.close_code() is not None or s.link.iut_closed:
            return got
        # end them all again so the liveness echo has room
        s.send(*[StreamFrame(2 * i, b"", True) for i in range(n)])
        s.receive()
        return None

    return act


case(
    "5.1/10",
    "Stream-Limit-Pass",
    "5.3: max_concurrent_streams (4 configured) concurrent streams are accepted.",
    ok(),
    profile=_FOUR,
)(after(_open_n(3)))

case(
    "5.1/11",
    "Stream-OverLimit",
    "5.3: one stream over the advertised limit is STREAM_LIMIT_ERROR.",
    conn("STREAM_LIMIT_ERROR"),
    profile=_FOUR,
)(after(_open_n(5)))


@case(
    "5.1/12",
    "Stream-Limit-AtN",
    "5.3: exactly max_concurrent_streams (4) open at once is accepted (boundary of 5.1/11).",
    ok(),
    profile=_FOUR,
)
def _at_limit(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(*[OpenFrame(2 * i, "log") for i in range(4)])
    got = s.receive()
    if got.close_code() is not None:
        return ctx.observe(s, got)
    s.send(StreamFrame(0, b"", True))  # free one slot for the liveness echo
    s.receive()
    s.next_stream = 8
    return ctx.observe(s)


# ------------------------------------------------------------------ §5.2 transport parameters

case(
    "5.2/1",
    "Params-OutOfRange",
    "5.2: a known transport parameter with a value out of range is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(
    lambda ctx: (
        ctx.observe(s)
        if isinstance(s := ctx.peer(params={1: 100, 2: "big"}).handshake(), Session)
        else Actual("fail", detail="handshake aborted")
    )
)

case(
    "5.2/2",
    "Params-UnknownKeyIgnored",
    "5.2: unknown transport parameter keys are ignored.",
    ok(),
)(lambda ctx: ctx.observe(ctx.session(params={1: 100, 99: "x", 1000: [1]})))


@case(
    "5.2/3",
    "Params-PeerStreamWindowRespected",
    "5.2/5.3: the IUT sends no more than the stream window we advertise (100 bytes) until "
    "we grant credit.",
    ok(),
)
def _peer_window(ctx: Ctx) -> Actual:
    s = ctx.session(params={2: 100})
    data = cbor.encode("w" * 300)
    s.send(OpenFrame(0, "echo"), MessageFrame(0, data, True, True))
    first = b"".join(f.fragment for f in s.receive().of(MessageFrame) if f.stream_id == 0)
    if len(first) != 100:
        return Actual("fail", detail=f"IUT sent {len(first)} bytes in a 100-byte window")
    s.send(WindowUpdateFrame(0, 500))
    rest = b"".join(f.fragment for f in s.receive().of(MessageFrame) if f.stream_id == 0)
    if first + rest != data:
        return Actual("fail", detail=f"echo incomplete after credit: {len(rest)}")
    return ctx.observe(s)


case(
    "5.2/4",
    "Params-EmptyMap-Pass",
    "5.2: an empty transport-parameter map is valid: every parameter takes its default.",
    ok(),
)(lambda ctx: ctx.observe(ctx.session(params={})))

case(
    "5.2/5",
    "Params-ZeroStreamLimit-Pass",
    "5.2: max_concurrent_streams 0 is in range (the peer may open no stream; we still may).",
    ok(),
)(lambda ctx: ctx.observe(ctx.session(params={1: 0})))

case(
    "5.2/6",
    "Params-ZeroWindow",
    "5.2: initial_stream_window 0 is out of range (1..2^62-1): PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(
    lambda ctx: (
        ctx.observe(s)
        if isinstance(s := ctx.peer(params={2: 0}).handshake(), Session)
        else Actual("fail", detail="handshake aborted")
    )
)


# ------------------------------------------------------------------ §5.3 flow control

_FLOW = IUTProfile(
    config={
        "initial_stream_window": 4096,
        "initial_connection_window": 8192,
        "auto_window_update": False,
    }
)


def _fill(sizes: list[int]) -> Callable[[Session], object]:
    def act(s: Session) -> object:
        items: list[object] = []
        for i, n in enumerate(sizes):
            items += [OpenFrame(2 * i, "log"), StreamFrame(2 * i, b"\x00" * n, True)]
        s.send(*items)  # type: ignore[arg-type]
        s.alive_echo = False  # the connection window is used up and never returned
        return s.receive()

    return act


case(
    "5.3/1",
    "Flow-StreamWindow-Pass",
    "5.3: data up to the stream window (4096 configured) is accepted.",
    ok(),
    profile=_FLOW,
)(after(_fill([4096])))

case(
    "5.3/2",
    "Flow-OverStreamWindow",
    "5.3: one byte over the stream window is FLOW_CONTROL_ERROR.",
    conn("FLOW_CONTROL_ERROR"),
    profile=_FLOW,
)(after(_fill([4097])))

case(
    "5.3/3",
    "Flow-ConnWindow-Pass",
    "5.3: data up to the connection window (8192) over two streams is accepted.",
    ok(),
    profile=_FLOW,
)(after(_fill([4096, 4096])))

case(
    "5.3/4",
    "Flow-OverConnWindow",
    "5.3: streams each within their window but one byte over the connection window is "
    "FLOW_CONTROL_ERROR.",
    conn("FLOW_CONTROL_ERROR"),
    profile=_FLOW,
)(after(_fill([4096, 4096, 1])))

case(
    "5.3/5",
    "Flow-WindowOverflow",
    "5.3: credit above 2^62-1 (two WINDOW_UPDATEs of 2^62-1) is FLOW_CONTROL_ERROR.",
    conn("FLOW_CONTROL_ERROR"),
)(after(lambda s: s.send(WindowUpdateFrame(None, 2**62 - 1), WindowUpdateFrame(None, 2**62 - 1))))

case(
    "5.3/6",
    "Flow-ZeroIncrement",
    "5.3: a WINDOW_UPDATE increment of 0 is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(after(lambda s: s.send_raw_items([5, None, 0])))

case(
    "5.3/7",
    "Flow-WindowUpdateNeverOpened",
    "5.1: WINDOW_UPDATE naming a never-opened stream is STREAM_STATE_ERROR.",
    conn("STREAM_STATE_ERROR"),
)(after(lambda s: s.send(WindowUpdateFrame(6, 100))))


@case(
    "5.3/8",
    "Flow-LargeMessageNoDeadlock",
    "5.3: message fragments are credited on receipt; a message larger than the stream "
    "window (4096) is delivered.",
    ok(),
    profile=IUTProfile(config={"initial_stream_window": 4096, "initial_connection_window": 8192}),
)
def _big_message(ctx: Ctx) -> Actual:
    s = ctx.session()
    data = cbor.encode(b"\x07" * 20000)
    s.send(OpenFrame(0, "echo"))
    sent = 0
    echoed = bytearray()
    for _ in range(100):  # bounded: 1000-byte fragments, each answered with credit
        if sent >= len(data):
            break
        chunk = data[sent : sent + 1000]
        sent += len(chunk)
        s.send(MessageFrame(0, chunk, sent >= len(data), sent >= len(data)))
        got = s.receive()
        if got.close_code() is not None:
            return ctx.observe(s, got)
        for f in got.of(MessageFrame):
            echoed += f.fragment
    for _ in range(100):  # the echo needs our credit: grant it as it arrives
        if len(echoed) >= len(data):
            break
        s.send(WindowUpdateFrame(0, 4096), WindowUpdateFrame(None, 4096))
        for f in s.receive().of(MessageFrame):
            echoed += f.fragment
    if bytes(echoed) != data:
        return Actual("fail", detail=f"echoed {len(echoed)} of {len(data)} bytes")
    return ctx.observe(s)


def _dribble(grants: int) -> Callable[[Ctx], Actual]:
    """Make the IUT echo 2000 bytes into a 64-byte stream window, then grant 1 byte at a time."""

    def run(ctx: Ctx) -> Actual:
        s = ctx.session(params={2: 64})  # a grant below min(1024, 64 // 2) is small
        data = cbor.encode("d" * 2000)
        s.send(OpenFrame(0, "echo"), MessageFrame(0, data, True, True))
        first = [f for f in s.receive().of(MessageFrame) if f.stream_id == 0]
        if sum(len(f.fragment) for f in first) != 64:
            return Actual("fail", detail="IUT did not fill the 64-byte window")
        got = None
        for i in range(grants):
            s.send(WindowUpdateFrame(0, 1))
            got = s.receive()
            if got.close_code() is not None or s.link.iut_closed:
                return ctx.observe(s, got)
            short = [f for f in got.of(MessageFrame) if f.stream_id == 0]
            if len(short) > 1 or sum(len(f.fragment) for f in short) > 1:
                sizes = [len(f.fragment) for f in short]
                return Actual("fail", detail=f"grant {i + 1}: frames {sizes} for 1 byte of credit")
        s.alive_echo = False  # stream 0 holds the window; liveness by PING
        return ctx.observe(s, got)

    return run


case(
    "5.3/9",
    "Flow-Dribble-Pass",
    "5.3/6.1: 32 small WINDOW_UPDATEs (1 byte each) are accepted, each answered by at most one "
    "frame of at most 1 byte (boundary of 5.3/10).",
    ok(),
)(_dribble(32))

case(
    "5.3/10",
    "Flow-Dribble",
    "5.3/6.1: the 33rd small WINDOW_UPDATE in a row (CVE-2019-9511) is ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
)(_dribble(33))


# ------------------------------------------------------------------ §5.4 messages

_SMALL_MSG = IUTProfile(config={"max_message_size": 2048, "max_reassembly_bytes": 4096})


def _message_of(size: int) -> bytes:
    body = b"\x00" * size
    for pad in range(size, 0, -1):
        enc = cbor.encode(b"\x00" * pad)
        if len(enc) == size:
            return enc
    return body  # pragma: no cover


case(
    "5.4/1",
    "Msg-MaxSize-Pass",
    "5.4: a message of exactly max_message_size (2048 configured) is accepted.",
    ok(),
    profile=_SMALL_MSG,
)(after(_steps(OpenFrame(0, "log"), MessageFrame(0, _message_of(2048), True, True))))

case(
    "5.4/2",
    "Msg-TooLarge",
    "5.4: a message over max_message_size resets the stream with MESSAGE_TOO_LARGE; the "
    "connection stays up.",
    stream("MESSAGE_TOO_LARGE"),
    profile=_SMALL_MSG,
)(
    after(
        _steps(
            OpenFrame(0, "log"),
            MessageFrame(0, _message_of(2049)[:1500], False, False),
            MessageFrame(0, _message_of(2049)[1500:], True, True),
        )
    )
)

case(
    "5.4/3",
    "Msg-NotCBOR",
    "5.4: a message that is not one valid CBOR item resets the stream with DECODE_ERROR.",
    stream("DECODE_ERROR"),
)(after(_steps(OpenFrame(0, "log"), MessageFrame(0, b"\x82\x01", True, False))))

case(
    "5.4/4",
    "Msg-ReassemblyBudget",
    "5.4: partial messages above the reassembly budget (4096) reset the stream with "
    "MESSAGE_TOO_LARGE.",
    stream("MESSAGE_TOO_LARGE"),
    profile=_SMALL_MSG,
)(
    after(
        _steps(
            OpenFrame(0, "log"),
            OpenFrame(2, "log"),
            OpenFrame(4, "log"),
            MessageFrame(0, b"\x59\x07\xd0" + b"\x00" * 1997, False, False),
            MessageFrame(2, b"\x59\x07\xd0" + b"\x00" * 1997, False, False),
            MessageFrame(4, b"\x59\x07\xd0" + b"\x00" * 1997, False, False),
        )
    )
)


@case(
    "5.4/5",
    "Msg-Fragmented",
    "5.4: a message split over three fragments is delivered once, whole.",
    ok(),
)
def _fragments(ctx: Ctx) -> Actual:
    s = ctx.session()
    data = cbor.encode({"k": "v" * 100})
    s.send(OpenFrame(0, "echo"), MessageFrame(0, data[:10], False, False))
    s.send(MessageFrame(0, data[10:50], False, False))
    s.send(MessageFrame(0, data[50:], True, True))
    got = s.receive()
    echoed = b"".join(f.fragment for f in got.of(MessageFrame) if f.stream_id == 0)
    if echoed != data:
        return Actual("fail", detail="fragmented message not echoed whole")
    s.next_stream = 2
    return ctx.observe(s)


def _large_message(cuts: tuple[int, ...]) -> Callable[[Ctx], Actual]:
    """A 20,000-byte message (about 5 stream windows of 4096) in fragments of *cuts* bytes
    (cycled), sent as the IUT's credit for them comes back: it must arrive whole."""

    def run(ctx: Ctx) -> Actual:
        s = ctx.session()
        data = _message_of(20000)
        frames: list[Frame] = []
        pos = i = 0
        while pos < len(data):
            n = cuts[i % len(cuts)]
            i += 1
            part = data[pos : pos + n]
            pos += len(part)
            frames.append(MessageFrame(0, part, pos == len(data), pos == len(data)))
        s.send(OpenFrame(0, "echo"))
        echoed = b""
        for k in range(0, len(frames) + 3, 3):
            if k < len(frames):
                s.send(*frames[k : k + 3])
            got = s.receive()
            if got.close_code() is not None or s.link.iut_closed:
                return ctx.observe(s, got)
            echoed += b"".join(f.fragment for f in got.of(MessageFrame) if f.stream_id == 0)
        if echoed != data:
            return Actual("fail", detail=f"echoed {len(echoed)} of {len(data)} bytes")
        s.next_stream = 2
        return ctx.observe(s)

    return run


_MANUAL_SMALL_WINDOW = IUTProfile(
    config={"auto_window_update": False, "initial_stream_window": 4096}
)

case(
    "5.4/6",
    "Msg-LargerThanWindow-Manual",
    "5.4/5.3: with manual flow control, a message of about 5 stream windows in uneven "
    "fragments arrives: the receiver credits buffered fragments on receipt.",
    ok(),
    profile=_MANUAL_SMALL_WINDOW,
)(_large_message((1000, 3, 2048, 517)))

case(
    "5.4/7",
    "Msg-LargerThanWindow-Manual-Tiny",
    "5.4/5.3: as 5.4/6, in fragments alternating 1 and 2048 bytes.",
    ok(),
    profile=_MANUAL_SMALL_WINDOW,
)(_large_message((1, 2048)))

case(
    "5.4/8",
    "Msg-LargerThanWindow-Auto",
    "5.4/5.3: as 5.4/6 with automatic flow control, fragments of 1999 bytes.",
    ok(),
    profile=IUTProfile(config={"initial_stream_window": 4096}),
)(_large_message((1999,)))


# ------------------------------------------------------------------ §5.5 close


@case(
    "5.5/1",
    "Close-Graceful",
    "5.5: CLOSE(NO_ERROR) is answered with CLOSE(NO_ERROR); the receiver closes.",
    conn("NO_ERROR"),
    hostile=False,
)
def _close(ctx: Ctx) -> Actual:
    s = ctx.session()
    return ctx.observe(s, s.close())


@case(
    "5.5/2",
    "Close-DataAfterClose",
    "5.5: nothing after CLOSE reaches the application (same record or later records).",
    conn("NO_ERROR"),
)
def _after_close(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(CloseFrame(0, ""), OpenFrame(0, "echo"), StreamFrame(0, b"late"))
    s.send(OpenFrame(2, "echo"))
    act = ctx.observe(s)
    view = s.link.local()
    if view is not None and "StreamOpened" in view.events:
        act.kind, act.detail = "fail", "a frame after CLOSE reached the application"
    return act


@case(
    "5.5/3",
    "Close-AnyCodeReported",
    "errors: a receiver accepts any code in CLOSE (INTERNAL_ERROR, application 0x1234, "
    "unknown 0x0999), reports it as the number and answers CLOSE(NO_ERROR).",
    conn("NO_ERROR", "INTERNAL_ERROR"),
)
def _any_code(ctx: Ctx) -> Actual:
    first: Actual | None = None
    for code in (ErrorCode.INTERNAL_ERROR, 0x1234, 0x0999):
        s = ctx.session()
        act = ctx.observe(s, s.close(code, "bye"))
        view = s.link.local()
        if view is not None and view.closed_code != code:
            return Actual("fail", act.wire, act.local, f"reported {view.closed_code} for {code}")
        first = first or act
    assert first is not None
    return first


@case(
    "5.5/4",
    "Close-OpenStreamsCancelled",
    "5.5: streams not ended when the connection closes gracefully are reported reset "
    "with CANCELLED.",
    conn("NO_ERROR"),
)
def _cancelled(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(OpenFrame(0, "log"), StreamFrame(0, b"x"))
    s.receive()
    act = ctx.observe(s, s.close())
    view = s.link.local()
    if view is not None:
        if not any(i == 0 and c == ErrorCode.CANCELLED for (i, c, _r) in view.resets):
            return Actual("fail", act.wire, act.local, f"resets {view.resets}")
        act.also = ("CANCELLED",)
    return act


# ------------------------------------------------------------------ §5.6 budgets


def _flood(make: Callable[[int], list[object]], n: int) -> Callable[[Ctx], Actual]:
    def run(ctx: Ctx) -> Actual:
        s = ctx.session()
        for i in range(n):
            s.send(*make(i))  # type: ignore[arg-type]
        return ctx.observe(s)

    return run


def _pair(
    num: int, name: str, what: str, make: Callable[[int], list[object]], limit: int = 32
) -> None:
    case(
        f"5.6/{num}",
        f"{name}-Pass",
        f"5.6: {limit} consecutive {what} are accepted (boundary of 5.6/{num + 1}).",
        ok(),
    )(_flood(make, limit))
    case(
        f"5.6/{num + 1}",
        name,
        f"5.6: more than {limit} consecutive {what} is ENHANCE_YOUR_CALM.",
        conn("ENHANCE_YOUR_CALM"),
    )(_flood(make, limit + 1))


_pair(
    1,
    "DoS-EmptyFrames",
    "empty STREAM frames",
    lambda i: [OpenFrame(0, "log")] if i == 0 else [StreamFrame(0, b"", False)],
    33,
)
_pair(3, "DoS-EmptyRecords", "empty records", lambda i: [b""])
_pair(5, "DoS-WindowUpdates", "WINDOW_UPDATE frames", lambda i: [WindowUpdateFrame(None, 1)])
_pair(7, "DoS-UnsolicitedPong", "unsolicited PONGs", lambda i: [PongFrame(b"?")])
_pair(9, "DoS-IgnoredExtensions", "ignored extension frames", lambda i: [ExtensionFrame(99, ())])
_pair(11, "DoS-TokenFrames", "TOKEN frames", lambda i: [TokenFrame(holder_token())])


def _ping_flood(n: int) -> Callable[[Ctx], Actual]:
    def run(ctx: Ctx) -> Actual:
        s = ctx.session()
        batch = b"".join(s.seal(s.plaintext(PingFrame(i.to_bytes(2, "big")))) for i in range(n))
        s.write(batch)  # the IUT's outbox is drained only after the whole batch
        got = s.receive()
        if got.close_code() is not None or s.link.iut_closed:
            return ctx.observe(s, got)
        if len(got.of(PongFrame)) != n:
            return Actual("fail", detail=f"{len(got.of(PongFrame))} PONGs for {n} PINGs")
        return ctx.observe(s)

    return run


case(
    "5.6/13",
    "DoS-PingFlood-Pass",
    "5.6: 256 queued control responses are allowed (boundary of 5.6/14).",
    ok(),
)(_ping_flood(256))

case(
    "5.6/14",
    "DoS-PingFlood",
    "5.6: more than 256 queued control responses (PINGs never drained) is ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
)(_ping_flood(257))


def _rapid_reset(n: int, refill_after: int | None = None) -> Callable[[Ctx], Actual]:
    def run(ctx: Ctx) -> Actual:
        s = ctx.session()
        for i in range(n):
            if refill_after is not None and i == refill_after:
                s.link.advance(1.0)
            sid = 2 * i
            s.send(OpenFrame(sid, "log"), ResetFrame(sid, ErrorCode.CANCELLED, 0))
            if i % 50 == 49:
                got = s.receive()
                if got.close_code() is not None or s.link.iut_closed:
                    return ctx.observe(s, got)
        s.next_stream = 2 * n
        return ctx.observe(s)

    return run


case(
    "5.6/15",
    "DoS-RapidReset-Pass",
    "5.6: a burst of 200 peer RESETs is within the stream churn budget.",
    ok(),
)(_rapid_reset(200))

case(
    "5.6/16",
    "DoS-RapidReset",
    "5.6: the 201st RESET in a burst (CVE-2023-44487) is ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
    needs={"frozen-clock"},
)(_rapid_reset(201))

case(
    "5.6/17",
    "DoS-RapidReset-Refill",
    "5.6: the churn budget refills at 50/s: 200, one second, 50 more are accepted.",
    ok(),
)(_rapid_reset(250, refill_after=200))


def _made_you_reset(
    n: int,
    body: Callable[[int], bytes],
    *,
    tokens: Callable[[], list[bytes]] | None = None,
    resource: Callable[[int], str] = lambda i: "log",
) -> Callable[[Ctx], Actual]:
    """Streams the IUT must reset itself (MadeYouReset, CVE-2025-8671): each OPEN is
    followed by a message the IUT refuses (or the OPEN itself is refused)."""

    def run(ctx: Ctx) -> Actual:
        s = ctx.session(tokens=tokens()) if tokens is not None else ctx.session()
        for i in range(n):
            sid = 2 * i
            s.send(OpenFrame(sid, resource(i)), MessageFrame(sid, body(i), True, False))
            if i % 50 == 49:
                got = s.receive()
                if got.close_code() is not None or s.link.iut_closed:
                    return ctx.observe(s, got)
        s.next_stream = 2 * n
        return ctx.observe(s)

    return run


def _not_cbor(i: int) -> bytes:
    return (b"\x82\x01", b"\xff", b"\x5f", b"\x1c")[i % 4]  # truncated, break, indefinite, reserved


case(
    "5.6/18",
    "DoS-MadeYouReset-Pass",
    "5.6: 200 streams the IUT resets itself (undecodable messages) are within the churn "
    "budget (boundary of 5.6/19).",
    ok(),
)(_made_you_reset(200, _not_cbor))

case(
    "5.6/19",
    "DoS-MadeYouReset-Decode",
    "5.6: the 201st stream the peer makes the IUT reset (undecodable message, "
    "CVE-2025-8671) is ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
    needs={"frozen-clock"},
)(_made_you_reset(201, _not_cbor))

case(
    "5.6/20",
    "DoS-MadeYouReset-TooLarge",
    "5.6: 201 streams reset for a message over max_message_size (2048 configured) are "
    "ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
    profile=_SMALL_MSG,
    needs={"frozen-clock"},
)(_made_you_reset(201, lambda i: _message_of(2049 + i % 7)))

case(
    "5.6/21",
    "DoS-MadeYouReset-Unauthorized",
    "5.6: 201 streams reset because a message lacks msg/send (UNAUTHORIZED) are ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
    needs={"frozen-clock"},
)(
    _made_you_reset(
        201,
        lambda i: b"\x01",
        tokens=lambda: [restricted_token(("*", "stream/open"), ("echo", "msg/send"))],
    )
)

case(
    "5.6/22",
    "DoS-MadeYouReset-Mixed",
    "5.6: refused opens and refused messages share one budget: 101 opens refused and 100 "
    "messages refused (UNAUTHORIZED) are ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
    needs={"frozen-clock"},
)(
    _made_you_reset(
        201,
        lambda i: b"\x01",
        tokens=lambda: [restricted_token(("echo", "stream/open"), ("log", "msg/send"))],
        resource=lambda i: "log" if i % 2 == 0 else "echo",
    )
)

# Non-productive frames on dead streams (CVE-2019-9518): the budget sees every frame.


def _dead(first: list[object], empty: Callable[[int], Frame]) -> Callable[[int], list[object]]:
    return lambda i: list(first) if i == 0 else [empty(i)]


_RESET_0: list[object] = [OpenFrame(0, "log"), ResetFrame(0, ErrorCode.CANCELLED, 0)]
_SKIP_TO_4: list[object] = [OpenFrame(4, "log")]

case(
    "5.6/23",
    "DoS-DeadStream-Empty-Pass",
    "5.6: 32 empty STREAM frames on a stream the peer reset are accepted (boundary of 5.6/24).",
    ok(),
)(_flood(_dead(_RESET_0, lambda i: StreamFrame(0, b"", False)), 33))

case(
    "5.6/24",
    "DoS-DeadStream-EmptyStream",
    "5.6: 33 empty STREAM frames on a stream the peer reset (CVE-2019-9518) are ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
)(_flood(_dead(_RESET_0, lambda i: StreamFrame(0, b"", i % 2 == 0)), 34))

case(
    "5.6/25",
    "DoS-DeadStream-EmptyMessage",
    "5.6: 33 empty MESSAGE fragments on a stream the peer reset are ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
)(_flood(_dead(_RESET_0, lambda i: MessageFrame(0, b"", i % 3 == 0, False)), 34))

case(
    "5.6/26",
    "DoS-SkippedStream-Empty",
    "5.6: 33 empty STREAM frames on a lower stream ID the peer skipped are ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
)(_flood(_dead(_SKIP_TO_4, lambda i: StreamFrame(2 * (i % 2), b"", False)), 34))


@case(
    "5.6/27",
    "DoS-RefusedOpen-NotProgress",
    "5.6: a refused OPEN is not progress: 20 empty frames, refused OPENs, 13 more empty "
    "frames are ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
)
def _refused_open_not_progress(ctx: Ctx) -> Actual:
    s = ctx.session(tokens=[restricted_token(("echo", "stream/open"), ("echo", "msg/send"))])
    s.send(*[WindowUpdateFrame(None, 4096) for _ in range(20)])
    s.send(OpenFrame(0, "log"), OpenFrame(2, "log"))  # refused: UNAUTHORIZED
    s.send(*[WindowUpdateFrame(None, 4096) for _ in range(13)])
    return ctx.observe(s)


# ------------------------------------------------------------------ §5.7 authorization


@case(
    "5.7/1",
    "Authz-NoCapability-Open",
    "5.7: OPEN of a resource the peer holds no stream/open capability for is reset with "
    "UNAUTHORIZED; the connection stays up.",
    stream("UNAUTHORIZED"),
)
def _no_cap(ctx: Ctx) -> Actual:
    s = ctx.session(tokens=[restricted_token(("echo", "stream/open"), ("echo", "msg/send"))])
    s.send(OpenFrame(0, "log"))
    s.next_stream = 2
    return ctx.observe(s, sid=0)


@case(
    "5.7/2",
    "Authz-NoCapability-Message",
    "5.7: a message on a stream whose resource lacks msg/send is reset with UNAUTHORIZED.",
    stream("UNAUTHORIZED"),
)
def _no_send(ctx: Ctx) -> Actual:
    s = ctx.session(tokens=[restricted_token(("*", "stream/open"), ("echo", "msg/send"))])
    s.send(OpenFrame(0, "log"), MessageFrame(0, b"\x01", True, False))
    s.next_stream = 2
    return ctx.observe(s, sid=0)


@case(
    "5.7/3",
    "Authz-WildcardNeedsSegment",
    "6.3: `echo/*` does not match `echo` (a wildcard matches one or more segments).",
    stream("UNAUTHORIZED"),
    needs={"app-profile"},
)
def _wild(ctx: Ctx) -> Actual:
    s = ctx.session(tokens=[restricted_token(("echo/*", "*"), ("log", "*"))])
    s.alive_resource = "echo/alive"
    s.send(OpenFrame(0, "echo"))
    got = s.receive()
    s.send(OpenFrame(2, "echo/x"), MessageFrame(2, b"\x01", True, True))
    got2 = s.receive()
    if not any(f.stream_id == 2 for f in got2.of(MessageFrame)):
        return Actual("fail", detail="echo/x not allowed under echo/*")
    s.next_stream = 4
    return _liveness_via(ctx, s, got, 0, "log")


def _liveness_via(ctx: Ctx, s: Session, got: object, sid: int, resource: str) -> Actual:
    act = ctx.observe(s, got, sid=sid)  # type: ignore[arg-type]
    return act


@case(
    "5.7/4",
    "Authz-GrantLapses",
    "6.8: expiry is re-checked on every operation: after exp + skew new opens are reset "
    "with UNAUTHORIZED.",
    stream("UNAUTHORIZED"),
)
def _lapse(ctx: Ctx) -> Actual:
    from . import mint

    token = mint.craft_token(
        mint.ROOT,
        mint.claims_for(
            mint.ROOT, mint.HOLDER, (("*", "*"),), cti=b"short-lived-0001", exp=mint.NOW + 100
        ),
    )
    s = ctx.session(tokens=[token])
    ok_first, _ = s.echo()
    if not ok_first:
        return Actual("fail", detail="echo refused while the token was valid")
    s.link.advance(161)
    s.send(OpenFrame(s.open_stream(), "echo"))
    got = s.receive()
    act = ctx.observe(s, got, sid=2)
    if act.kind == "fail" and act.wire == "UNAUTHORIZED":
        act.kind, act.detail = "stream_error", ""  # liveness echo is refused too: expected
    return act


@case(
    "5.7/5",
    "Authz-TokenFrameLate",
    "6.8: a token presented in a TOKEN frame after the handshake grants its capabilities.",
    ok(),
)
def _late_token(ctx: Ctx) -> Actual:
    s = ctx.session(tokens=[])
    s.send(OpenFrame(0, "echo"))
    got = s.receive()
    if [r.code for r in resets(got, 0)] != [ErrorCode.UNAUTHORIZED]:
        return Actual("fail", detail="open without any token was not refused")
    s.send(TokenFrame(holder_token()))
    s.receive()
    s.next_stream = 2
    return ctx.observe(s)


@case(
    "5.7/6",
    "Authz-TokenFrameInvalid",
    "5.7: a TOKEN frame that fails verification is reported locally only; the connection stays up.",
    ok(),
)
def _bad_token_frame(ctx: Ctx) -> Actual:
    from . import mint

    bad = mint.token_named("Expired")
    s = ctx.session()
    s.send(TokenFrame(bad.token))
    act = ctx.observe(s)
    view = s.link.local()
    if view is not None and view.token_rejected != (ErrorCode.EXPIRED,):
        return Actual("fail", detail=f"no local TokenRejected(EXPIRED): {view}")
    return act


@case(
    "5.7/7",
    "App-Refused",
    "errors: a stream the application does not serve is reset with REFUSED.",
    stream("REFUSED", app=True),
    hostile=False,
)
def _refused(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(OpenFrame(0, "nosuchservice"))
    s.next_stream = 2
    return ctx.observe(s, sid=0)


@case(
    "5.7/8",
    "App-HandlerFailed",
    "errors: a failing handler resets its stream with APPLICATION_ERROR.",
    stream("APPLICATION_ERROR", app=True),
    hostile=False,
    needs={"app-profile"},
)
def _app_error(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(OpenFrame(0, "fail"))
    s.next_stream = 2
    return ctx.observe(s, sid=0)


# ------------------------------------------------------------------ §5.8 timers

_IDLE = IUTProfile(config={"idle_timeout": 30.0})


@case(
    "5.8/1",
    "Idle-Timeout",
    "5.8: no record within the idle timeout (30 s configured) closes with IDLE_TIMEOUT.",
    conn("IDLE_TIMEOUT"),
    profile=_IDLE,
)
def _idle(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.link.advance(29.0)
    if s.link.iut_closed:
        return Actual("fail", detail="closed before the idle timeout")
    s.link.advance(1.5)
    return ctx.observe(s)


@case(
    "5.8/2",
    "Idle-TrafficKeepsAlive",
    "5.8: a received record restarts the idle timer.",
    ok(),
    profile=_IDLE,
)
def _idle_reset(ctx: Ctx) -> Actual:
    s = ctx.session()
    for _ in range(3):
        s.link.advance(20.0)
        s.send(PingFrame(b"k"))
        s.receive()
    if s.link.iut_closed:
        return Actual("fail", detail="closed although records kept arriving")
    return ctx.observe(s)


@case(
    "5.8/3",
    "Keepalive-Ping",
    "5.8: with keepalive_interval (10 s) the IUT sends a PING after 10 quiet seconds.",
    ok(),
    profile=IUTProfile(config={"keepalive_interval": 10.0, "idle_timeout": 60.0}),
)
def _keepalive(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.receive()
    s.link.advance(10.5)
    pings = s.receive().of(PingFrame)
    if not pings:
        return Actual("fail", detail="no keepalive PING")
    s.send(PongFrame(pings[0].payload))
    return ctx.observe(s)


# ------------------------------------------------------------------ §5.7 / frames §2.1: order


@case(
    "5.7/9",
    "Authz-TokenThenOpenSameRecord",
    "frames §2.1: a TOKEN frame applies to the later frames of its own record: "
    "[TOKEN, OPEN, MESSAGE] in one record is authorized by that token.",
    ok(),
)
def _token_then_open(ctx: Ctx) -> Actual:
    s = ctx.session(tokens=[])
    data = cbor.encode({"same": "record"})
    s.send(TokenFrame(holder_token()), OpenFrame(0, "echo"), MessageFrame(0, data, True, True))
    got = s.receive()
    if resets(got, 0) or not any(
        f.stream_id == 0 and f.fragment == data for f in got.of(MessageFrame)
    ):
        return Actual("fail", detail="OPEN after TOKEN in one record was not authorized")
    return ctx.observe(s)


@case(
    "5.7/10",
    "Authz-OpenThenTokenSameRecord",
    "frames §2.1: frames act in record order: an OPEN before the TOKEN of its record is "
    "checked without it (UNAUTHORIZED); the token then applies to later streams.",
    stream("UNAUTHORIZED"),
)
def _open_then_token(ctx: Ctx) -> Actual:
    s = ctx.session(tokens=[])
    s.send(OpenFrame(0, "echo"), TokenFrame(holder_token()))
    s.next_stream = 2
    return ctx.observe(s, sid=0)


# ------------------------------------------------------------------ application.md (§7)


@case(
    "7.1/1",
    "App-EchoBytesXor",
    "7.1 / interop §3: STREAM bytes on `echo` come back XOR ff; our end of stream is answered "
    "by the IUT's.",
    ok(),
)
def _echo_bytes(ctx: Ctx) -> Actual:
    s = ctx.session()
    data = bytes(range(256))
    s.send(OpenFrame(0, "echo"), StreamFrame(0, data, False))
    got = s.receive()
    s.send(StreamFrame(0, b"", True))
    got2 = s.receive()
    back = b"".join(f.data for f in got.of(StreamFrame) + got2.of(StreamFrame) if f.stream_id == 0)
    if back != bytes(b ^ 0xFF for b in data):
        return Actual("fail", detail=f"echo sent back {len(back)} bytes, not the input XOR ff")
    if (
        resets(got, 0)
        or resets(got2, 0)
        or not any(f.stream_id == 0 and f.end_stream for f in got2.of(StreamFrame))
    ):
        return Actual("fail", detail="the IUT did not end its half after ours")
    s.next_stream = 2
    return ctx.observe(s)


@case(
    "7.2/1",
    "App-RequestReplyEnds",
    "7.2: a request (OPEN, MESSAGE last end) gets one reply message and the IUT's end of "
    "stream (on the reply or in an empty STREAM frame after it).",
    ok(),
)
def _request_reply(ctx: Ctx) -> Actual:
    s = ctx.session()
    data = cbor.encode({"request": 1})
    s.send(OpenFrame(0, "echo"), MessageFrame(0, data, True, True))
    got = s.receive()
    mine = [f for f in got.frames if getattr(f, "stream_id", None) == 0]
    replies = [f for f in mine if isinstance(f, MessageFrame)]
    ended = any(getattr(f, "end_stream", False) for f in mine)
    if [f.fragment for f in replies] != [data] or not replies[0].last or not ended:
        return Actual("fail", detail=f"not one reply and an end: {mine}")
    s.next_stream = 2
    return ctx.observe(s)


@case(
    "7.3/1",
    "App-OneWayEnded",
    "7.3: after handling a one-way message the receiver ends its half with an empty STREAM "
    "frame carrying end-stream, and sends nothing else on the stream.",
    ok(),
)
def _one_way(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(OpenFrame(0, "log"), MessageFrame(0, cbor.encode({"event": "boot"}), True, True))
    got = s.receive()
    mine = [f for f in got.frames if getattr(f, "stream_id", None) == 0]
    mine = [f for f in mine if not isinstance(f, WindowUpdateFrame)]
    if mine != [StreamFrame(0, b"", True)]:
        return Actual("fail", detail=f"expected only STREAM(0, '', end), got {mine}")
    s.next_stream = 2
    return ctx.observe(s)
