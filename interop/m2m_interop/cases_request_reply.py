"""Conformance cases for the negotiated REQUEST and REPLY frames (spec/frames.md §2.2, §5.9).

Cases 5.9/1-4 hold for every implementation: without both sides advertising
transport parameter 5 the frames are unknown core kinds. The other cases
advertise the parameter and need the IUT to advertise it too (an IUT that
does not is reported ERROR "not applicable" for them); each checks that a
REQUEST is treated exactly as the OPEN and MESSAGE it stands for: the same
checks, authorization, flow control, resets and budget charges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from m2mproto import cbor
from m2mproto.errors import ErrorCode
from m2mproto.frames import (
    MessageFrame,
    OpenFrame,
    ReplyFrame,
    RequestFrame,
    ResetFrame,
    StreamFrame,
)

from . import mint
from .framework import Actual, CaseError, Ctx, case, conn, ok, restricted_token, stream
from .inprocess import IUTProfile
from .peer import DEFAULT_PARAMS, Session

_RR_PARAMS = {**DEFAULT_PARAMS, 5: 1}
_VALUE = cbor.encode({"hello": "world"})
_FOUR = IUTProfile(config={"max_concurrent_streams": 4})
_SMALL_MSG = IUTProfile(config={"max_message_size": 2048, "max_reassembly_bytes": 4096})
_SMALL_WINDOWS = IUTProfile(
    config={"initial_stream_window": 4096, "initial_connection_window": 4096}
)


def _rr(ctx: Ctx, **bugs: Any) -> Session:
    """A session where both sides advertised request/reply."""
    s = ctx.session(params=_RR_PARAMS, **bugs)
    if not s.iut_request_reply:
        raise CaseError("not applicable: the IUT does not advertise request_reply (parameter 5)")
    return s


def _message_of(size: int) -> bytes:
    """A CBOR byte string whose encoding is exactly *size* bytes."""
    for pad in range(size, 0, -1):
        enc = cbor.encode(b"\x00" * pad)
        if len(enc) == size:
            return enc
    raise ValueError(size)  # pragma: no cover


def _then(
    send: Callable[[Session], object],
    *,
    sid: int | None = None,
    tokens: Callable[[], list[bytes]] | None = None,
    **bugs: Any,
) -> Callable[[Ctx], Actual]:
    """Negotiate, run *send*, observe (on stream *sid* for stream errors).

    *tokens* is called when the case runs, not at import: a run against a
    socket target re-roots the catalog (``--root-key``) after the import.
    """

    def run(ctx: Ctx) -> Actual:
        if tokens is not None:
            bugs["tokens"] = tokens()
        s = _rr(ctx, **bugs)
        send(s)
        return ctx.observe(s, sid=sid)

    return run


# ------------------------------------------------------------------ negotiation


@case(
    "5.9/1",
    "RR-NotNegotiated-Request",
    "frames.md §2.2: a REQUEST frame to an IUT the peer did not advertise request_reply to "
    "is an unknown core kind: PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)
def _not_negotiated(ctx: Ctx) -> Actual:
    s = ctx.session()  # no parameter 5: not negotiated, whatever the IUT advertised
    s.send(RequestFrame(0, "echo", _VALUE))
    return ctx.observe(s)


@case(
    "5.9/2",
    "RR-NotNegotiated-Reply",
    "frames.md §2.2: a REPLY frame where request/reply is not negotiated is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)
def _not_negotiated_reply(ctx: Ctx) -> Actual:
    s = ctx.session()
    s.send(OpenFrame(0, "log"), ReplyFrame(0, _VALUE))
    return ctx.observe(s)


case(
    "5.9/3",
    "RR-Param-OutOfRange",
    "streams.md §2: transport parameter 5 (request_reply) with the value 2 is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(
    lambda ctx: (
        ctx.observe(s)
        if isinstance(s := ctx.peer(params={**DEFAULT_PARAMS, 5: 2}).handshake(), Session)
        else Actual("fail", detail="handshake aborted")
    )
)


@case(
    "5.9/4",
    "RR-OneSided",
    "streams.md §2: the IUT advertised request_reply but the peer did not: requests and their "
    "replies use OPEN and MESSAGE frames only (the peer decodes kinds 11 and 12 as unknown).",
    ok(),
)
def _one_sided(ctx: Ctx) -> Actual:
    s = ctx.session()
    good, _got = s.echo()  # the receive raises (fails the case) on a REQUEST or REPLY frame
    if not good:
        return Actual("fail", detail="no echo of the request")
    return ctx.observe(s)


# ------------------------------------------------------------------ requests that work


@case(
    "5.9/5",
    "RR-Request-Echo",
    "frames.md §2.2: REQUEST(echo) is served like OPEN + MESSAGE(last, end): the value comes "
    "back and the IUT ends its half.",
    ok(),
)
def _request_echo(ctx: Ctx) -> Actual:
    s = _rr(ctx)
    s.send(RequestFrame(0, "echo", _VALUE))
    got = s.receive()
    replies = [f.fragment for f in got.of(MessageFrame) if f.stream_id == 0 and f.last]
    replies += [f.payload for f in got.of(ReplyFrame) if f.stream_id == 0]
    if replies != [_VALUE]:
        return Actual("fail", detail=f"replies {replies!r}")
    ended = (
        any(f.stream_id == 0 and f.end_stream for f in got.of(StreamFrame))
        or any(f.stream_id == 0 and f.end_stream for f in got.of(MessageFrame))
        or bool(got.of(ReplyFrame))
    )
    if not ended:
        return Actual("fail", detail="the IUT did not end its half")
    return ctx.observe(s)


@case(
    "5.9/6",
    "RR-Request-OneWay",
    "application.md §7.8: a one-way REQUEST(log) is handled; the IUT ends its half.",
    ok(),
)
def _request_one_way(ctx: Ctx) -> Actual:
    s = _rr(ctx)
    s.send(RequestFrame(0, "log", _VALUE))
    got = s.receive()
    if not any(f.stream_id == 0 and f.end_stream for f in got.of(StreamFrame)):
        return Actual("fail", detail="the IUT did not end its half")
    return ctx.observe(s)


# ------------------------------------------------------------------ malformed (frames.md §2)

_MALFORMED: list[tuple[str, str, str, str, bytes]] = [
    ("7", "RR-Malformed-RequestArity", "REQUEST with 2 fields", "DECODE_ERROR",
     bytes.fromhex("830b0061") + b"r"),
    ("8", "RR-Malformed-RequestIdText", "REQUEST with a text stream ID", "DECODE_ERROR",
     bytes.fromhex("840b6161617240")),
    ("9", "RR-Malformed-RequestId2^62", "REQUEST with stream ID 2^62", "PROTOCOL_ERROR",
     bytes.fromhex("840b1b4000000000000000617240")),
    ("10", "RR-Malformed-ResourceEmpty", "REQUEST with an empty resource", "PROTOCOL_ERROR",
     bytes.fromhex("840b006040")),
    ("11", "RR-Malformed-Resource257", "REQUEST with a 257-byte resource", "FRAME_SIZE_ERROR",
     bytes.fromhex("840b00790101") + b"a" * 257 + b"\x40"),
    ("12", "RR-Malformed-PayloadText", "REQUEST with a text payload", "DECODE_ERROR",
     bytes.fromhex("840b00617260")),
    ("13", "RR-Malformed-OrderTypesBeforeSize",
     "REQUEST with a 257-byte resource and a text payload (types before sizes)", "DECODE_ERROR",
     bytes.fromhex("840b00790101") + b"a" * 257 + b"\x60"),
    ("14", "RR-Malformed-ReplyArity", "REPLY with 3 fields", "DECODE_ERROR",
     bytes.fromhex("840c004040")),
]  # fmt: skip


def _send_raw(raw: bytes) -> Callable[[Session], object]:
    return lambda s: s.send(raw)


for _num, _name, _what, _code, _raw in _MALFORMED:
    case(
        f"5.9/{_num}",
        _name,
        f"frames.md §2: {_what} is {_code} where request/reply is negotiated.",
        conn(_code),
    )(_then(_send_raw(_raw)))


case(
    "5.9/15",
    "RR-Reply-PeerParity",
    "frames.md §2.2: a REPLY on a stream the sender itself opened is PROTOCOL_ERROR.",
    conn("PROTOCOL_ERROR"),
)(_then(lambda s: s.send(OpenFrame(0, "log"), ReplyFrame(0, _VALUE))))

case(
    "5.9/16",
    "RR-Reply-NeverOpened",
    "streams.md §1: a REPLY on a stream of the receiver's parity it never opened is "
    "STREAM_STATE_ERROR (as the MESSAGE it stands for).",
    conn("STREAM_STATE_ERROR"),
)(_then(lambda s: s.send(ReplyFrame(1 if s.next_stream % 2 == 0 else 0, _VALUE))))

# ------------------------------------------------------------------ the OPEN's checks

case(
    "5.9/17",
    "RR-Request-WrongParity",
    "streams.md §1: a REQUEST with the receiver's own parity is STREAM_STATE_ERROR.",
    conn("STREAM_STATE_ERROR"),
)(_then(lambda s: s.send(RequestFrame(s.next_stream + 1, "log", _VALUE))))

case(
    "5.9/18",
    "RR-Request-IdReuse",
    "streams.md §1: a REQUEST reusing an ID is STREAM_STATE_ERROR.",
    conn("STREAM_STATE_ERROR"),
)(
    _then(
        lambda s: s.send(
            RequestFrame(s.next_stream, "log", _VALUE), RequestFrame(s.next_stream, "log", _VALUE)
        )
    )
)


def _over_limit(s: Session) -> None:
    base = s.next_stream
    s.send(
        *[OpenFrame(base + 2 * i, "log") for i in range(4)], RequestFrame(base + 8, "log", _VALUE)
    )


case(
    "5.9/19",
    "RR-Request-OverLimit",
    "streams.md §3: a REQUEST over max_concurrent_streams (4 configured) is STREAM_LIMIT_ERROR.",
    conn("STREAM_LIMIT_ERROR"),
    profile=_FOUR,
)(_then(_over_limit))

# ------------------------------------------------------------------ the message's checks

case(
    "5.9/20",
    "RR-Request-NotCbor",
    "streams.md §4: a REQUEST whose payload is not one CBOR item resets the stream with "
    "DECODE_ERROR; the connection stays up.",
    stream("DECODE_ERROR"),
)(_then(lambda s: s.send(RequestFrame(0, "log", b"\xff")), sid=0))

case(
    "5.9/21",
    "RR-Request-EmptyPayload",
    "frames.md §2.2: an empty REQUEST payload is an empty message: DECODE_ERROR reset.",
    stream("DECODE_ERROR"),
)(_then(lambda s: s.send(RequestFrame(0, "log", b"")), sid=0))

case(
    "5.9/22",
    "RR-Request-TooLarge",
    "streams.md §4: a REQUEST payload over max_message_size (2048 configured) resets the "
    "stream with MESSAGE_TOO_LARGE.",
    stream("MESSAGE_TOO_LARGE"),
    profile=_SMALL_MSG,
)(_then(lambda s: s.send(RequestFrame(0, "log", _message_of(2049))), sid=0))

case(
    "5.9/23",
    "RR-Request-AtLimit",
    "streams.md §4: a REQUEST payload of exactly max_message_size (2048) is accepted.",
    ok(),
    profile=_SMALL_MSG,
)(_then(lambda s: s.send(RequestFrame(0, "log", _message_of(2048)))))


def _caveat_token(size: int, cti: bytes) -> bytes:
    claims = mint.claims_for(
        mint.ROOT, mint.HOLDER, (("*", "*"),), cti=cti, caveats={"max_message_size": size}
    )
    return mint.craft_token(mint.ROOT, claims)


case(
    "5.9/24",
    "RR-Request-Caveat",
    "tokens.md §6.4: a REQUEST payload one byte over the grant's max_message_size caveat "
    "(16) resets the stream with MESSAGE_TOO_LARGE.",
    stream("MESSAGE_TOO_LARGE"),
)(
    _then(
        lambda s: s.send(RequestFrame(0, "log", _message_of(17))),
        sid=0,
        tokens=lambda: [_caveat_token(16, b"rr-caveat-001")],
    )
)

# ------------------------------------------------------------------ authorization (§7)

case(
    "5.9/25",
    "RR-Authz-NoOpen",
    "streams.md §7: a REQUEST for a resource without stream/open is reset with UNAUTHORIZED.",
    stream("UNAUTHORIZED"),
)(
    _then(
        lambda s: s.send(RequestFrame(0, "log", _VALUE)),
        sid=0,
        tokens=lambda: [restricted_token(("echo", "stream/open"), ("echo", "msg/send"))],
    )
)

case(
    "5.9/26",
    "RR-Authz-NoSend",
    "streams.md §7: a REQUEST whose resource has stream/open but not msg/send is reset with "
    "UNAUTHORIZED (the message's check).",
    stream("UNAUTHORIZED"),
)(
    _then(
        lambda s: s.send(RequestFrame(0, "log", _VALUE)),
        sid=0,
        tokens=lambda: [restricted_token(("*", "stream/open"), ("echo", "msg/send"))],
    )
)

# ------------------------------------------------------------------ flow control (§3)

case(
    "5.9/27",
    "RR-Request-OverStreamWindow",
    "streams.md §3: a REQUEST payload above the stream window (4096 configured) is "
    "FLOW_CONTROL_ERROR.",
    conn("FLOW_CONTROL_ERROR"),
    profile=_SMALL_WINDOWS,
)(_then(lambda s: s.send(RequestFrame(0, "log", _message_of(4097)))))

case(
    "5.9/28",
    "RR-Request-RefusedStillCounted",
    "streams.md §3: the payload of a REQUEST refused at its open still counts against the "
    "connection window (4096 configured): 4097 bytes are FLOW_CONTROL_ERROR.",
    conn("FLOW_CONTROL_ERROR"),
    profile=_SMALL_WINDOWS,
)(
    _then(
        lambda s: s.send(RequestFrame(0, "log", _message_of(4097))),
        tokens=lambda: [restricted_token(("echo", "stream/open"), ("echo", "msg/send"))],
    )
)

# ------------------------------------------------------------------ reset of a request


@case(
    "5.9/29",
    "RR-Request-Reset",
    "streams.md §1: a RESET after a REQUEST (final size = the payload) cancels it; the IUT "
    "reports the peer's code and stays usable.",
    ok(),
)
def _request_reset(ctx: Ctx) -> Actual:
    s = _rr(ctx)
    s.send(RequestFrame(0, "log", _VALUE), ResetFrame(0, ErrorCode.CANCELLED, len(_VALUE)))
    act = ctx.observe(s)
    view = s.link.local()
    if view is not None and act.kind == "ok":
        remote = [(i, c) for (i, c, r) in view.resets if r]
        if remote and remote != [(0, ErrorCode.CANCELLED)]:
            return Actual("fail", detail=f"local resets {view.resets}")
    return act


case(
    "5.9/30",
    "RR-Request-ResetFinalSize",
    "streams.md §1: a RESET after a REQUEST whose final size omits the payload is "
    "FINAL_SIZE_ERROR (the payload counts as the stream's bytes).",
    conn("FINAL_SIZE_ERROR"),
)(_then(lambda s: s.send(RequestFrame(0, "log", _VALUE), ResetFrame(0, ErrorCode.CANCELLED, 0))))

# ------------------------------------------------------------------ floods (§6)


def _requests(
    n: int,
    make: Callable[[int], list[Any]],
    *,
    tokens: Callable[[], list[bytes]] | None = None,
    drain: bool = False,
) -> Callable[[Ctx], Actual]:
    """*n* rounds of the frames ``make(stream_id)``, 50 per record batch.

    With *drain*, the IUT's answers to the rounds (resets it must send) are read
    before the verdict, which then only asks whether the IUT is still up.
    """

    def run(ctx: Ctx) -> Actual:
        s = _rr(ctx, tokens=tokens()) if tokens is not None else _rr(ctx)
        for i in range(n):
            s.send(*make(2 * i))
            if i % 50 == 49:
                got = s.receive()
                if got.close_code() is not None or s.link.iut_closed:
                    return ctx.observe(s, got)
        s.next_stream = 2 * n
        if drain:
            got = s.receive()
            if got.close_code() is not None or s.link.iut_closed:
                return ctx.observe(s, got)
        return ctx.observe(s)

    return run


def _rapid(sid: int) -> list[Any]:
    return [RequestFrame(sid, "log", _VALUE), ResetFrame(sid, ErrorCode.CANCELLED, len(_VALUE))]


def _no_log() -> list[bytes]:
    return [restricted_token(("echo", "stream/open"), ("echo", "msg/send"))]

case(
    "5.9/31",
    "RR-DoS-RapidReset-Pass",
    "streams.md §6: 200 REQUEST + RESET pairs are within the stream churn budget.",
    ok(),
)(_requests(200, _rapid))

case(
    "5.9/32",
    "RR-DoS-RapidReset",
    "streams.md §6: the 201st REQUEST + RESET in a burst is ENHANCE_YOUR_CALM (charged as "
    "OPEN + RESET).",
    conn("ENHANCE_YOUR_CALM"),
    needs={"frozen-clock"},
)(_requests(201, _rapid))

case(
    "5.9/33",
    "RR-DoS-MadeYouReset-Unauthorized",
    "streams.md §6.2: 201 REQUESTs refused at the open (UNAUTHORIZED) are ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
    needs={"frozen-clock"},
)(_requests(201, lambda sid: [RequestFrame(sid, "log", _VALUE)], tokens=_no_log))

case(
    "5.9/34",
    "RR-DoS-MadeYouReset-Decode",
    "streams.md §6.2: 201 REQUESTs with an undecodable payload are ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
    needs={"frozen-clock"},
)(_requests(201, lambda sid: [RequestFrame(sid, "log", b"\x82\x01")]))

case(
    "5.9/35",
    "RR-DoS-MadeYouReset-Mixed",
    "streams.md §6: REQUESTs and OPENs share one churn budget: 100 OPEN + RESET pairs and 101 "
    "REQUEST + RESET pairs are ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
    needs={"frozen-clock"},
)(
    _requests(
        201,
        lambda sid: (
            [OpenFrame(sid, "log"), ResetFrame(sid, ErrorCode.CANCELLED, 0)]
            if sid % 4 == 2
            else _rapid(sid)
        ),
    )
)

case(
    "5.9/36",
    "RR-DoS-RefusedEmpty-Pass",
    "streams.md §6.3: 32 REQUESTs with an empty payload refused at the open are accepted "
    "(boundary of 5.9/37).",
    ok(),
)(_requests(32, lambda sid: [RequestFrame(sid, "log", b"")], tokens=_no_log, drain=True))

case(
    "5.9/37",
    "RR-DoS-RefusedEmpty",
    "streams.md §6.3: a refused REQUEST is not progress and its empty payload is an empty "
    "message on a dead stream: 33 of them are ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
)(_requests(33, lambda sid: [RequestFrame(sid, "log", b"")], tokens=_no_log))
