"""Frame kinds and the CBOR frame codec (spec/frames.md).

Theory of operation
-------------------
After the handshake, the plaintext of every record is one or more *frames*
concatenated. Each frame is one deterministic-CBOR array ``[kind, fields...]``
(``m2mproto.cbor``), so a record is parsed by calling ``decode_prefix`` until
the plaintext is used up. Decoding is strict and never allocates more than the
bytes received (the CBOR decoder checks every declared length first).

Kinds ``0..63`` are the *core range*: a kind in it that this version does not
define is ``PROTOCOL_ERROR``. Kinds ``>= 64`` are the *extension range*: a
receiver that does not know the kind ignores the frame (it still has to be
valid CBOR within the depth bound). Kinds 11 (REQUEST) and 12 (REPLY) exist
only on a connection where both sides advertised the request/reply transport
parameter: the decoder is told so (``request_reply=True``); elsewhere they are
unknown core kinds, exactly as for a peer of an earlier version.

Errors (all :class:`~m2mproto.errors.RemoteProtocolError`):

* ``DECODE_ERROR``: not CBOR, not an array, wrong field count or types;
* ``PROTOCOL_ERROR``: unknown core kind, stream ID above 2^62-1, zero window
  increment, empty resource, out-of-range error code, KEY_UPDATE not last;
* ``FRAME_SIZE_ERROR``: a bounded field (reason, resource, ping payload,
  token) is too long;
* ``FLOW_CONTROL_ERROR``: a window increment above 2^62-1;
* ``FINAL_SIZE_ERROR``: a final size above 2^62-1.

This module is pure codec: stream states, windows and budgets are checked by
``streams`` and ``connection``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, get_args

from . import cbor
from .cbor import head
from .errors import DecodeError, ErrorCode, LocalProtocolError, RemoteProtocolError

__all__ = [
    "EXTENSION_KIND_MIN",
    "FRAME_CLASSES",
    "FRAME_MAX_DEPTH",
    "FRAME_SPECS",
    "MAX_CODE",
    "MAX_PING_PAYLOAD",
    "MAX_REASON_BYTES",
    "MAX_RESOURCE_BYTES",
    "MAX_TOKEN_BYTES",
    "MAX_VARINT",
    "REQUEST_REPLY_KINDS",
    "CloseFrame",
    "ExtensionFrame",
    "Frame",
    "FrameKind",
    "FrameSpec",
    "KeyUpdateFrame",
    "MessageFrame",
    "OpenFrame",
    "PingFrame",
    "PongFrame",
    "ReplyFrame",
    "RequestFrame",
    "ResetFrame",
    "StreamFrame",
    "TokenFrame",
    "WindowUpdateFrame",
    "append_data_frame",
    "append_reply_frame",
    "append_request_frame",
    "decode_frame",
    "decode_frames",
    "encode_frame",
    "frame_overhead",
]

#: Largest stream ID, window, increment, offset or final size (2^62-1).
MAX_VARINT = 2**62 - 1
#: Largest error code in RESET and CLOSE frames.
MAX_CODE = 0xFFFF
#: Largest CLOSE reason, in UTF-8 bytes.
MAX_REASON_BYTES = 256
#: Largest OPEN resource name, in UTF-8 bytes.
MAX_RESOURCE_BYTES = 256
#: Largest PING/PONG payload.
MAX_PING_PAYLOAD = 64
#: Largest TOKEN frame token (the configuration may set a lower limit).
MAX_TOKEN_BYTES = 16384
#: CBOR nesting bound inside frames.
FRAME_MAX_DEPTH = 16
#: First kind of the extension range (ignored when unknown).
EXTENSION_KIND_MIN = 64


class FrameKind(IntEnum):
    """Frame kinds of the core range (spec/frames.md)."""

    #: Stream bytes, with an end-of-stream flag.
    STREAM = 1
    #: Opens a stream on a resource.
    OPEN = 2
    #: A fragment of a CBOR message on a stream.
    MESSAGE = 3
    #: Aborts a stream in both directions.
    RESET = 4
    #: Grants flow-control credit (stream, or connection when the ID is null).
    WINDOW_UPDATE = 5
    #: Liveness probe; answered with PONG.
    PING = 6
    #: Answer to PING, echoing the payload.
    PONG = 7
    #: Presents a capability token on a live connection.
    TOKEN = 8
    #: The sender's next record uses the next sending key.
    KEY_UPDATE = 9
    #: Closes the connection with a code and reason.
    CLOSE = 10
    #: OPEN and one whole message ending the sender's half (negotiated, spec/streams.md §2).
    REQUEST = 11
    #: One whole message ending the sender's half of a stream the receiver opened (negotiated).
    REPLY = 12


#: Kinds that exist only on a connection where both sides advertised transport
#: parameter 5 (request_reply); elsewhere they are unknown core kinds.
REQUEST_REPLY_KINDS = frozenset({FrameKind.REQUEST.value, FrameKind.REPLY.value})


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """``[1, stream_id, data, end_stream]``."""

    stream_id: int
    data: bytes
    end_stream: bool = False


@dataclass(frozen=True, slots=True)
class OpenFrame:
    """``[2, stream_id, resource]``."""

    stream_id: int
    resource: str


@dataclass(frozen=True, slots=True)
class MessageFrame:
    """``[3, stream_id, fragment, last, end_stream]`` (end_stream only with last)."""

    stream_id: int
    fragment: bytes
    last: bool = True
    end_stream: bool = False


@dataclass(frozen=True, slots=True)
class ResetFrame:
    """``[4, stream_id, code, final_size]``."""

    stream_id: int
    code: int
    final_size: int


@dataclass(frozen=True, slots=True)
class WindowUpdateFrame:
    """``[5, stream_id / null, increment]``; null means the connection window."""

    stream_id: int | None
    increment: int


@dataclass(frozen=True, slots=True)
class PingFrame:
    """``[6, payload]``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PongFrame:
    """``[7, payload]``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class TokenFrame:
    """``[8, token]``."""

    token: bytes


@dataclass(frozen=True, slots=True)
class KeyUpdateFrame:
    """``[9, update_requested]``."""

    update_requested: bool


@dataclass(frozen=True, slots=True)
class CloseFrame:
    """``[10, code, reason]``."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RequestFrame:
    """``[11, stream_id, resource, payload]``: OPEN + MESSAGE(payload, last, end_stream)."""

    stream_id: int
    resource: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class ReplyFrame:
    """``[12, stream_id, payload]``: MESSAGE(payload, last, end_stream) on the receiver's stream."""

    stream_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ExtensionFrame:
    """A frame of the extension range (kind >= 64); ignored by this version."""

    kind: int
    fields: tuple[Any, ...] = ()


Frame = (
    StreamFrame
    | OpenFrame
    | MessageFrame
    | ResetFrame
    | WindowUpdateFrame
    | PingFrame
    | PongFrame
    | TokenFrame
    | KeyUpdateFrame
    | CloseFrame
    | RequestFrame
    | ReplyFrame
    | ExtensionFrame
)


# --------------------------------------------------------------------------
# Field checks (encoder: INVALID_ARGUMENT; decoder: the codes of spec/frames.md)
# --------------------------------------------------------------------------


def _bad(message: str) -> LocalProtocolError:
    return LocalProtocolError(message, ErrorCode.INVALID_ARGUMENT)


def _check_id(stream_id: int) -> None:
    if not isinstance(stream_id, int) or not 0 <= stream_id <= MAX_VARINT:
        raise _bad("stream ID must be 0..2^62-1")


def _check_code(code: int) -> None:
    if not isinstance(code, int) or not 0 <= code <= MAX_CODE:
        raise _bad("error code must be 0..0xFFFF")


def _uint(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise DecodeError(f"frame field {what} must be an unsigned integer")
    return value


def _bytes(value: Any, what: str) -> bytes:
    if type(value) is not bytes:
        raise DecodeError(f"frame field {what} must be a byte string")
    return value


def _text(value: Any, what: str) -> str:
    if type(value) is not str:
        raise DecodeError(f"frame field {what} must be a text string")
    return value


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise DecodeError(f"frame field {what} must be true or false")
    return value


def _stream_id(value: Any) -> int:
    sid = _uint(value, "stream_id")
    if sid > MAX_VARINT:
        raise RemoteProtocolError("stream ID above 2^62-1", ErrorCode.PROTOCOL_ERROR)
    return sid


def _code(value: Any) -> int:
    code = _uint(value, "code")
    if code > MAX_CODE:
        raise RemoteProtocolError("error code above 0xFFFF", ErrorCode.PROTOCOL_ERROR)
    return code


# --------------------------------------------------------------------------
# The data-frame layout (STREAM and MESSAGE): the one encoder of its bytes
# --------------------------------------------------------------------------

_PREFIX_STREAM = b"\x84\x01"  # array(4), kind 1
_PREFIX_MESSAGE = b"\x85\x03"  # array(5), kind 3
#: MESSAGE flags (last, end_stream) -> bytes; end_stream without last is not a frame.
_MESSAGE_FLAGS = {
    (False, False): b"\xf4\xf4",
    (True, False): b"\xf5\xf4",
    (True, True): b"\xf5\xf5",
}


def append_data_frame(
    buf: bytearray,
    sid_head: bytes,
    payload: bytes | memoryview,
    message: bool,
    last: bool,
    end_stream: bool,
    /,
) -> None:
    """Append one STREAM (``message=False``) or MESSAGE frame to *buf*.

    *sid_head* is ``cbor.head(0, stream_id)`` (a stream writer computes it once
    per stream); *last* is ignored for STREAM frames. The caller has checked
    the fields (:func:`encode_frame` does).
    """
    if message:
        buf += _PREFIX_MESSAGE
        buf += sid_head
        buf += head(2, len(payload))
        buf += payload
        buf += _MESSAGE_FLAGS[last, end_stream]
    else:
        buf += _PREFIX_STREAM
        buf += sid_head
        buf += head(2, len(payload))
        buf += payload
        buf += b"\xf5" if end_stream else b"\xf4"


def frame_overhead(stream_id: int, payload_len: int) -> int:
    """Bytes a STREAM or MESSAGE frame adds around a payload of *payload_len*."""
    return 2 + len(head(0, stream_id)) + len(head(2, payload_len)) + 2


# --------------------------------------------------------------------------
# Per-kind codecs
# --------------------------------------------------------------------------


def _enc_stream(f: StreamFrame) -> bytes:
    _check_id(f.stream_id)
    buf = bytearray()
    append_data_frame(buf, head(0, f.stream_id), f.data, False, True, f.end_stream)
    return bytes(buf)


def _dec_stream(items: list[Any]) -> StreamFrame:
    return StreamFrame(
        _stream_id(items[1]), _bytes(items[2], "data"), _bool(items[3], "end_stream")
    )


def _enc_message(f: MessageFrame) -> bytes:
    _check_id(f.stream_id)
    if f.end_stream and not f.last:
        raise _bad("end_stream requires the last fragment")
    buf = bytearray()
    append_data_frame(buf, head(0, f.stream_id), f.fragment, True, bool(f.last), bool(f.end_stream))
    return bytes(buf)


def _dec_message(items: list[Any]) -> MessageFrame:
    last = _bool(items[3], "last")
    end = _bool(items[4], "end_stream")
    sid = _stream_id(items[1])
    fragment = _bytes(items[2], "fragment")
    if end and not last:
        raise RemoteProtocolError(
            "MESSAGE end_stream without last fragment", ErrorCode.PROTOCOL_ERROR
        )
    return MessageFrame(sid, fragment, last, end)


def _enc_open(f: OpenFrame) -> bytes:
    _check_id(f.stream_id)
    raw = f.resource.encode("utf-8")
    if not 1 <= len(raw) <= MAX_RESOURCE_BYTES:
        raise _bad(f"resource must be 1..{MAX_RESOURCE_BYTES} UTF-8 bytes")
    if type(f.stream_id) is int:  # fast path: one per stream opened
        return b"".join((b"\x83\x02", head(0, f.stream_id), head(3, len(raw)), raw))
    return _generic(FrameKind.OPEN, f.stream_id, f.resource)


def _dec_open(items: list[Any]) -> OpenFrame:
    sid = _stream_id(items[1])
    resource = _text(items[2], "resource")
    size = len(resource.encode("utf-8"))
    if size == 0:
        raise RemoteProtocolError("empty resource name", ErrorCode.PROTOCOL_ERROR)
    if size > MAX_RESOURCE_BYTES:
        raise RemoteProtocolError("resource name too long", ErrorCode.FRAME_SIZE_ERROR)
    return OpenFrame(sid, resource)


def _enc_reset(f: ResetFrame) -> bytes:
    _check_id(f.stream_id)
    _check_code(f.code)
    if not 0 <= f.final_size <= MAX_VARINT:
        raise _bad("final size out of range")
    return _generic(FrameKind.RESET, f.stream_id, f.code, f.final_size)


def _dec_reset(items: list[Any]) -> ResetFrame:
    sid = _stream_id(items[1])
    code = _code(items[2])
    final = _uint(items[3], "final_size")
    if final > MAX_VARINT:
        raise RemoteProtocolError("final size above 2^62-1", ErrorCode.FINAL_SIZE_ERROR)
    return ResetFrame(sid, code, final)


def _enc_window_update(f: WindowUpdateFrame) -> bytes:
    sid = f.stream_id
    if sid is not None:
        _check_id(sid)
    if not 1 <= f.increment <= MAX_VARINT:
        raise _bad("window increment must be 1..2^62-1")
    if type(f.increment) is int and (sid is None or type(sid) is int):  # fast path
        sid_raw = b"\xf6" if sid is None else head(0, sid)
        return b"\x83\x05" + sid_raw + head(0, f.increment)
    return _generic(FrameKind.WINDOW_UPDATE, sid, f.increment)


def _dec_window_update(items: list[Any]) -> WindowUpdateFrame:
    wsid = None if items[1] is None else _stream_id(items[1])
    inc = _uint(items[2], "increment")
    if inc == 0:
        raise RemoteProtocolError("window increment of 0", ErrorCode.PROTOCOL_ERROR)
    if inc > MAX_VARINT:
        raise RemoteProtocolError("window increment above 2^62-1", ErrorCode.FLOW_CONTROL_ERROR)
    return WindowUpdateFrame(wsid, inc)


def _ping_payload(payload: bytes) -> bytes:
    if len(payload) > MAX_PING_PAYLOAD:
        raise _bad(f"ping payload is limited to {MAX_PING_PAYLOAD} bytes")
    return payload


def _dec_ping_payload(items: list[Any]) -> bytes:
    payload = _bytes(items[1], "payload")
    if len(payload) > MAX_PING_PAYLOAD:
        raise RemoteProtocolError("ping payload too long", ErrorCode.FRAME_SIZE_ERROR)
    return payload


def _enc_ping(f: PingFrame) -> bytes:
    return _generic(FrameKind.PING, _ping_payload(f.payload))


def _dec_ping(items: list[Any]) -> PingFrame:
    return PingFrame(_dec_ping_payload(items))


def _enc_pong(f: PongFrame) -> bytes:
    return _generic(FrameKind.PONG, _ping_payload(f.payload))


def _dec_pong(items: list[Any]) -> PongFrame:
    return PongFrame(_dec_ping_payload(items))


def _enc_token(f: TokenFrame) -> bytes:
    if len(f.token) > MAX_TOKEN_BYTES:
        raise _bad(f"token is limited to {MAX_TOKEN_BYTES} bytes")
    return _generic(FrameKind.TOKEN, f.token)


def _dec_token(items: list[Any]) -> TokenFrame:
    token = _bytes(items[1], "token")
    if len(token) > MAX_TOKEN_BYTES:
        raise RemoteProtocolError("token too long", ErrorCode.FRAME_SIZE_ERROR)
    return TokenFrame(token)


def _enc_key_update(f: KeyUpdateFrame) -> bytes:
    return _generic(FrameKind.KEY_UPDATE, bool(f.update_requested))


def _dec_key_update(items: list[Any]) -> KeyUpdateFrame:
    return KeyUpdateFrame(_bool(items[1], "update_requested"))


def _enc_close(f: CloseFrame) -> bytes:
    _check_code(f.code)
    if len(f.reason.encode("utf-8")) > MAX_REASON_BYTES:
        raise _bad(f"close reason is limited to {MAX_REASON_BYTES} UTF-8 bytes")
    return _generic(FrameKind.CLOSE, f.code, f.reason)


def _dec_close(items: list[Any]) -> CloseFrame:
    code = _code(items[1])
    reason = _text(items[2], "reason")
    if len(reason.encode("utf-8")) > MAX_REASON_BYTES:
        raise RemoteProtocolError("close reason too long", ErrorCode.FRAME_SIZE_ERROR)
    return CloseFrame(code, reason)


def _enc_resource(resource: str) -> bytes:
    raw = resource.encode("utf-8")
    if not 1 <= len(raw) <= MAX_RESOURCE_BYTES:
        raise _bad(f"resource must be 1..{MAX_RESOURCE_BYTES} UTF-8 bytes")
    return raw


def _dec_resource(value: Any) -> str:
    resource = _text(value, "resource")
    size = len(resource.encode("utf-8"))
    if size == 0:
        raise RemoteProtocolError("empty resource name", ErrorCode.PROTOCOL_ERROR)
    if size > MAX_RESOURCE_BYTES:
        raise RemoteProtocolError("resource name too long", ErrorCode.FRAME_SIZE_ERROR)
    return resource


def append_request_frame(
    buf: bytearray, stream_id: int, resource_raw: bytes, payload: bytes, /
) -> None:
    """Append one REQUEST frame (*resource_raw*: the checked UTF-8 resource) to *buf*."""
    buf += b"\x84\x0b"
    buf += head(0, stream_id)
    buf += head(3, len(resource_raw))
    buf += resource_raw
    buf += head(2, len(payload))
    buf += payload


def append_reply_frame(buf: bytearray, stream_id: int, payload: bytes, /) -> None:
    """Append one REPLY frame to *buf*."""
    buf += b"\x83\x0c"
    buf += head(0, stream_id)
    buf += head(2, len(payload))
    buf += payload


def _enc_request(f: RequestFrame) -> bytes:
    _check_id(f.stream_id)
    raw = _enc_resource(f.resource)
    if type(f.payload) is not bytes:
        raise _bad("payload must be bytes")
    buf = bytearray()
    append_request_frame(buf, f.stream_id, raw, f.payload)
    return bytes(buf)


def _dec_request(items: list[Any]) -> RequestFrame:
    sid = _stream_id(items[1])
    resource = _text(items[2], "resource")
    payload = _bytes(items[3], "payload")
    return RequestFrame(sid, _dec_resource(resource), payload)


def _enc_reply(f: ReplyFrame) -> bytes:
    _check_id(f.stream_id)
    if type(f.payload) is not bytes:
        raise _bad("payload must be bytes")
    buf = bytearray()
    append_reply_frame(buf, f.stream_id, f.payload)
    return bytes(buf)


def _dec_reply(items: list[Any]) -> ReplyFrame:
    return ReplyFrame(_stream_id(items[1]), _bytes(items[2], "payload"))


def _enc_extension(f: ExtensionFrame) -> bytes:
    if f.kind < EXTENSION_KIND_MIN or f.kind > 2**64 - 1:
        raise _bad("extension kinds are 64..2^64-1")
    return _generic(f.kind, *f.fields)


def _generic(kind: int, *fields: Any) -> bytes:
    return cbor.encode([int(kind), *fields])


@dataclass(frozen=True, slots=True)
class FrameSpec:
    """One row of the frame table: everything the codec knows about a core kind."""

    kind: FrameKind
    cls: type[Any]
    #: Array length, the kind included.
    arity: int
    #: Decoded array (length already checked) -> frame; raises the codes of spec/frames.md.
    decode: Callable[[list[Any]], Any]
    #: Frame -> deterministic CBOR; raises ``INVALID_ARGUMENT`` for a bad field.
    encode: Callable[[Any], bytes]


#: The frame table: one row per core kind, in kind order.
FRAME_SPECS: tuple[FrameSpec, ...] = (
    FrameSpec(FrameKind.STREAM, StreamFrame, 4, _dec_stream, _enc_stream),
    FrameSpec(FrameKind.OPEN, OpenFrame, 3, _dec_open, _enc_open),
    FrameSpec(FrameKind.MESSAGE, MessageFrame, 5, _dec_message, _enc_message),
    FrameSpec(FrameKind.RESET, ResetFrame, 4, _dec_reset, _enc_reset),
    FrameSpec(
        FrameKind.WINDOW_UPDATE, WindowUpdateFrame, 3, _dec_window_update, _enc_window_update
    ),
    FrameSpec(FrameKind.PING, PingFrame, 2, _dec_ping, _enc_ping),
    FrameSpec(FrameKind.PONG, PongFrame, 2, _dec_pong, _enc_pong),
    FrameSpec(FrameKind.TOKEN, TokenFrame, 2, _dec_token, _enc_token),
    FrameSpec(FrameKind.KEY_UPDATE, KeyUpdateFrame, 2, _dec_key_update, _enc_key_update),
    FrameSpec(FrameKind.CLOSE, CloseFrame, 3, _dec_close, _enc_close),
    FrameSpec(FrameKind.REQUEST, RequestFrame, 4, _dec_request, _enc_request),
    FrameSpec(FrameKind.REPLY, ReplyFrame, 3, _dec_reply, _enc_reply),
)
#: Core kinds on a connection with request/reply negotiated.
_BY_KIND_RR: dict[int, FrameSpec] = {spec.kind.value: spec for spec in FRAME_SPECS}
#: Core kinds on any other connection (kinds 11 and 12 are then unknown).
_BY_KIND: dict[int, FrameSpec] = {
    k: spec for k, spec in _BY_KIND_RR.items() if k not in REQUEST_REPLY_KINDS
}
_ENCODERS: dict[type[Any], Callable[[Any], bytes]] = {spec.cls: spec.encode for spec in FRAME_SPECS}
_ENCODERS[ExtensionFrame] = _enc_extension

#: Every frame class (the members of :data:`Frame`).
FRAME_CLASSES: frozenset[type[Any]] = frozenset(get_args(Frame))

# Exhaustiveness: a kind, or a class of ``Frame``, without a table row fails at import.
assert {spec.kind for spec in FRAME_SPECS} == set(FrameKind), "FRAME_SPECS misses a FrameKind"
assert set(_ENCODERS) == FRAME_CLASSES, "a Frame class has no encoder"


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame as deterministic CBOR.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) if a field is out of range,
            so that this side never emits a frame the peer must reject.
    """
    encoder = _ENCODERS.get(type(frame))
    if encoder is None:
        raise _bad(f"not a frame: {type(frame).__name__}")
    return encoder(frame)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def _from_items(items: Any, request_reply: bool = False) -> Frame:
    if type(items) is not list or not items:
        raise DecodeError("a frame is a non-empty CBOR array")
    kind = _uint(items[0], "kind")
    if kind >= EXTENSION_KIND_MIN:
        return ExtensionFrame(kind, tuple(items[1:]))
    spec = (_BY_KIND_RR if request_reply else _BY_KIND).get(kind)
    if spec is None:
        raise RemoteProtocolError(
            f"unknown frame kind {kind} in the core range", ErrorCode.PROTOCOL_ERROR
        )
    if len(items) != spec.arity:
        raise DecodeError(
            f"{spec.kind.name} frame has {len(items) - 1} fields, expected {spec.arity - 1}"
        )
    frame: Frame = spec.decode(items)
    return frame


def decode_frame(
    data: bytes | memoryview, offset: int = 0, *, request_reply: bool = False
) -> tuple[Frame, int]:
    """Decode the frame at *offset*; return ``(frame, next_offset)``.

    With *request_reply* (negotiated on the connection), kinds 11 (REQUEST)
    and 12 (REPLY) are core kinds; otherwise they are unknown core kinds.

    Raises:
        RemoteProtocolError: with the code listed in the module docstring.
    """
    items, end = cbor.decode_prefix(data, offset, max_depth=FRAME_MAX_DEPTH)
    return _from_items(items, request_reply), end


_HEAD_SIZE = {24: 1, 25: 2, 26: 4, 27: 8}


def _fast_uint(data: bytes, p: int, base: int, end: int) -> tuple[int, int]:
    """Read a shortest-form CBOR head of major type ``base >> 5`` at *p*: ``(value, next)``.

    Returns ``(-1, p)`` for anything else, including a head cut off by *end*
    (the strict decoder then decides).
    """
    if p >= end:
        return -1, p
    ib = data[p] - base
    if p + 1 + _HEAD_SIZE.get(ib, 0) > end:
        return -1, p
    if 0 <= ib < 24:
        return ib, p + 1
    if ib == 24:
        v = data[p + 1]
        return (v, p + 2) if v >= 24 else (-1, p)
    if ib == 25:
        v = (data[p + 1] << 8) | data[p + 2]
        return (v, p + 3) if v >= 0x100 else (-1, p)
    if ib == 26:
        v = int.from_bytes(data[p + 1 : p + 5], "big")
        return (v, p + 5) if v >= 0x10000 else (-1, p)
    if ib == 27:
        v = int.from_bytes(data[p + 1 : p + 9], "big")
        return (v, p + 9) if 0x100000000 <= v <= MAX_VARINT else (-1, p)
    return -1, p


def _fast_data_frame(data: bytes, offset: int, end: int) -> tuple[Frame, int] | None:
    """Decode a STREAM or MESSAGE frame in its one valid encoding, or return None.

    A fast path only: it accepts exactly the deterministic encoding with a
    stream ID of at most 2^62-1 and valid flags, which the strict decoder
    accepts with the same result; anything else (including truncation) is
    left to the strict decoder, which reports the precise error.
    """
    if end - offset < 5:
        return None
    is_message = data[offset] == 0x85
    sid, p = _fast_uint(data, offset + 2, 0x00, end)
    if sid < 0 or p >= end:
        return None
    n, p = _fast_uint(data, p, 0x40, end)
    if n < 0:
        return None
    q = p + n
    if is_message:
        if q + 2 > end:
            return None
        last = data[q]
        fin = data[q + 1]
        if last == 0xF5:
            if fin == 0xF4:
                return MessageFrame(sid, data[p:q], True, False), q + 2
            if fin == 0xF5:
                return MessageFrame(sid, data[p:q], True, True), q + 2
        elif last == 0xF4 and fin == 0xF4:
            return MessageFrame(sid, data[p:q], False, False), q + 2
        return None
    if q + 1 > end:
        return None
    fin = data[q]
    if fin == 0xF4:
        return StreamFrame(sid, data[p:q], False), q + 1
    if fin == 0xF5:
        return StreamFrame(sid, data[p:q], True), q + 1
    return None


def _fast_rr_frame(data: bytes, offset: int, end: int) -> tuple[Frame, int] | None:
    """Decode a REQUEST or REPLY frame in its one valid encoding, or return None.

    Like :func:`_fast_data_frame`, a fast path only: anything it does not
    accept (a resource that is empty, too long or not UTF-8, truncation, a
    non-shortest head) goes to the strict decoder, which reports the error.
    """
    request = data[offset] == 0x84
    sid, p = _fast_uint(data, offset + 2, 0x00, end)
    if sid < 0:
        return None
    resource = ""
    if request:
        n, p = _fast_uint(data, p, 0x60, end)
        q = p + n
        if not 1 <= n <= MAX_RESOURCE_BYTES or q > end:
            return None
        try:
            resource = data[p:q].decode("utf-8")
        except UnicodeDecodeError:
            return None
        p = q
    n, p = _fast_uint(data, p, 0x40, end)
    q = p + n
    if n < 0 or q > end:
        return None
    if request:
        return RequestFrame(sid, resource, data[p:q]), q
    return ReplyFrame(sid, data[p:q]), q


def decode_frames(plaintext: bytes | memoryview, *, request_reply: bool = False) -> list[Frame]:
    """Decode every frame of one record plaintext (possibly none).

    *request_reply*: as for :func:`decode_frame`.

    The whole record is validated before anything is returned, so a record
    with one bad frame changes nothing. A KEY_UPDATE frame must be the last
    frame of its record. STREAM and MESSAGE frames (and REQUEST and REPLY
    where negotiated) in their (only valid) deterministic encoding take a
    fast path; every other byte sequence goes through the strict CBOR
    decoder, so nothing is accepted that it rejects.

    Raises:
        RemoteProtocolError: with the code listed in the module docstring.
    """
    frames: list[Frame] = []
    append = frames.append
    offset = 0
    end = len(plaintext)
    fast = type(plaintext) is bytes
    while offset < end:
        if fast:
            b0 = plaintext[offset]
            if 0x83 <= b0 <= 0x85 and offset + 1 < end:
                kind = plaintext[offset + 1]
                if (b0 == 0x84 and kind == 1) or (b0 == 0x85 and kind == 3):
                    hit = _fast_data_frame(plaintext, offset, end)  # type: ignore[arg-type]
                    if hit is not None:
                        append(hit[0])
                        offset = hit[1]
                        continue
                elif request_reply and ((b0 == 0x84 and kind == 11) or (b0 == 0x83 and kind == 12)):
                    hit = _fast_rr_frame(plaintext, offset, end)  # type: ignore[arg-type]
                    if hit is not None:
                        append(hit[0])
                        offset = hit[1]
                        continue
        frame, offset = decode_frame(plaintext, offset, request_reply=request_reply)
        append(frame)
    for frame in frames[:-1]:
        if isinstance(frame, KeyUpdateFrame):
            raise RemoteProtocolError(
                "KEY_UPDATE must be the last frame of its record", ErrorCode.PROTOCOL_ERROR
            )
    return frames
