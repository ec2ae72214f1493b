"""Deterministic CBOR: the encoding profile every m2mproto structure uses.

Theory of operation
-------------------
m2mproto encodes every CBOR structure with the *core deterministic encoding*
of RFC 8949 section 4.2.1 and decodes with a strict single-pass parser that
accepts exactly that profile (spec/README.md, "CBOR profile"):

* integers, lengths and tags in their shortest form; no indefinite lengths;
* map keys sorted by the bytewise lexicographic order of their encodings,
  which also forbids duplicates; keys are integers, text or byte strings;
* floats in the shortest of half/single/double precision that keeps the value
  (NaN is ``f97e00``); only the simple values false, true and null;
* text strings are valid UTF-8; tags only from the caller's allowlist;
* nesting depth bounded; every declared length is checked against the bytes
  actually available *before* anything is allocated, so a 5-byte header can
  never make the decoder reserve gigabytes.

The decoder is O(n) in its input and raises only :class:`DecodeError`
(code ``DECODE_ERROR``). Integers outside ``[-2**64, 2**64-1]`` cannot be
expressed without bignum tags, which are not in any allowlist.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from .errors import DecodeError, ErrorCode, LocalProtocolError

__all__ = ["DEFAULT_MAX_DEPTH", "Tag", "decode", "decode_prefix", "encode", "head", "to_json"]

#: Default bound on nesting (arrays, maps and tags each count one level).
DEFAULT_MAX_DEPTH = 16

_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Tag:
    """A CBOR tag (major type 6) wrapping ``value``."""

    tag: int
    value: Any


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def head(major: int, value: int) -> bytes:
    """The shortest-form CBOR head of major type *major* with argument *value*.

    The one encoder of CBOR heads: the frame layout (``frames``) and the stream
    writer (``streams``) build on it.
    """
    mt = major << 5
    if value < 24:
        return bytes((mt | value,))
    if value < 0x100:
        return bytes((mt | 24, value))
    if value < 0x10000:
        return bytes((mt | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((mt | 26,)) + value.to_bytes(4, "big")
    return bytes((mt | 27,)) + value.to_bytes(8, "big")


def _encode_float(value: float) -> bytes:
    if math.isnan(value):
        return b"\xf9\x7e\x00"
    try:
        half = struct.pack(">e", value)
        if struct.unpack(">e", half)[0] == value:
            return b"\xf9" + half
    except OverflowError:
        pass
    single = struct.pack(">f", value) if abs(value) <= 3.4028234663852886e38 else None
    if single is not None and struct.unpack(">f", single)[0] == value:
        return b"\xfa" + single
    return b"\xfb" + struct.pack(">d", value)


def _encode_into(out: bytearray, obj: Any, depth: int) -> None:
    if depth > 64:
        raise LocalProtocolError("value nested too deeply to encode", ErrorCode.INVALID_ARGUMENT)
    t = type(obj)
    # Fast paths for the exact builtin types (subclasses take the general path below).
    if t is bytes:
        out += head(2, len(obj))
        out += obj
        return
    if t is str:
        raw = obj.encode("utf-8")
        out += head(3, len(raw))
        out += raw
        return
    if t is int and 0 <= obj < 24:
        out.append(obj)
        return
    if t is dict and all(type(k) is str for k in obj):
        # Text keys: encode each key once and sort by the encoded bytes.
        keyed = []
        for key, value in obj.items():
            raw = key.encode("utf-8")
            keyed.append((head(3, len(raw)) + raw, value))
        keyed.sort(key=_first)
        out += head(5, len(keyed))
        for key_bytes, value in keyed:  # str keys are distinct, so encodings are too
            out += key_bytes
            _encode_into(out, value, depth + 1)
        return
    if obj is True:
        out += b"\xf5"
    elif obj is False:
        out += b"\xf4"
    elif obj is None:
        out += b"\xf6"
    elif isinstance(obj, int):
        if 0 <= obj <= _UINT64_MAX:
            out += head(0, obj)
        elif -(2**64) <= obj < 0:
            out += head(1, -1 - obj)
        else:
            raise LocalProtocolError(
                "integer out of CBOR range [-2^64, 2^64-1]", ErrorCode.INVALID_ARGUMENT
            )
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        out += head(2, len(obj))
        out += obj
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        out += head(3, len(raw))
        out += raw
    elif isinstance(obj, (list, tuple)):
        out += head(4, len(obj))
        for item in obj:
            _encode_into(out, item, depth + 1)
    elif isinstance(obj, Mapping):
        items: list[tuple[bytes, Any]] = []
        for key, value in obj.items():
            if not isinstance(key, (int, str, bytes)) or isinstance(key, bool):
                raise LocalProtocolError(
                    f"map key of type {type(key).__name__} is not allowed",
                    ErrorCode.INVALID_ARGUMENT,
                )
            key_out = bytearray()
            _encode_into(key_out, key, depth + 1)
            items.append((bytes(key_out), value))
        items.sort(key=lambda kv: kv[0])
        out += head(5, len(items))
        previous = b""
        for index, (key_bytes, value) in enumerate(items):
            if index and key_bytes == previous:
                raise LocalProtocolError("duplicate map key", ErrorCode.INVALID_ARGUMENT)
            previous = key_bytes
            out += key_bytes
            _encode_into(out, value, depth + 1)
    elif isinstance(obj, float):
        out += _encode_float(obj)
    elif isinstance(obj, Tag):
        out += head(6, obj.tag)
        _encode_into(out, obj.value, depth + 1)
    else:
        raise LocalProtocolError(
            f"cannot encode {type(obj).__name__} as CBOR", ErrorCode.INVALID_ARGUMENT
        )


def _first(pair: tuple[bytes, Any]) -> bytes:
    return pair[0]


def encode(obj: Any) -> bytes:
    """Encode *obj* with the deterministic profile.

    Supports ``int``, ``bool``, ``None``, ``float``, ``bytes``-like, ``str``,
    ``list``/``tuple``, mappings with int/str/bytes keys, and :class:`Tag`.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) for values outside the profile.
    """
    out = bytearray()
    _encode_into(out, obj, 0)
    return bytes(out)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------

_FLOAT_FMT = {25: (">e", 2), 26: (">f", 4), 27: (">d", 8)}


class _Decoder:
    __slots__ = ("allowed_tags", "data", "end", "max_depth")

    def __init__(
        self, data: bytes | memoryview, max_depth: int, allowed_tags: frozenset[int]
    ) -> None:
        self.data = data
        self.end = len(data)
        self.max_depth = max_depth
        self.allowed_tags = allowed_tags

    def fail(self, what: str, pos: int) -> DecodeError:
        return DecodeError(f"CBOR {what} at offset {pos}")

    def head(self, pos: int) -> tuple[int, int, int, int]:
        """Return (major, additional info, argument, next position)."""
        if pos >= self.end:
            raise self.fail("truncated item", pos)
        ib = self.data[pos]
        major, ai = ib >> 5, ib & 0x1F
        pos += 1
        if ai < 24:
            return major, ai, ai, pos
        if ai > 27:
            if ai == 31:
                raise self.fail("indefinite length", pos - 1)
            raise self.fail("reserved additional information", pos - 1)
        size = 1 << (ai - 24)
        if pos + size > self.end:
            raise self.fail("truncated argument", pos - 1)
        if major == 7:
            return major, ai, 0, pos  # floats are read by the caller
        arg = int.from_bytes(self.data[pos : pos + size], "big")
        minimum = 24 if ai == 24 else 1 << (8 * (size >> 1))
        if arg < minimum:
            raise self.fail("non-shortest argument", pos - 1)
        return major, ai, arg, pos + size

    def item(self, pos: int, depth: int) -> tuple[Any, int]:
        # Fast path: a head whose argument fits in the initial byte needs no
        # further checks (always shortest form, never indefinite); any other
        # head goes through head(), which checks everything.
        if pos < self.end:
            ib = self.data[pos]
            ai = ib & 0x1F
            if ai < 24:
                major = ib >> 5
                arg = ai
                pos2 = pos + 1
            else:
                major, ai, arg, pos2 = self.head(pos)
        else:
            major, ai, arg, pos2 = self.head(pos)
        if major == 0:
            return arg, pos2
        if major == 1:
            return -1 - arg, pos2
        if major == 2 or major == 3:
            end = pos2 + arg
            if end > self.end:
                raise self.fail("string longer than input", pos)
            raw = bytes(self.data[pos2:end])
            if major == 2:
                return raw, end
            try:
                return raw.decode("utf-8"), end
            except UnicodeDecodeError:
                raise self.fail("invalid UTF-8 in text string", pos) from None
        if major == 4:
            if depth >= self.max_depth:
                raise self.fail("nesting too deep", pos)
            if arg > self.end - pos2:
                raise self.fail("array longer than input", pos)
            items = []
            for _ in range(arg):
                value, pos2 = self.item(pos2, depth + 1)
                items.append(value)
            return items, pos2
        if major == 5:
            if depth >= self.max_depth:
                raise self.fail("nesting too deep", pos)
            if arg * 2 > self.end - pos2:
                raise self.fail("map longer than input", pos)
            result: dict[Any, Any] = {}
            previous = b""
            for index in range(arg):
                kstart = pos2
                kmajor = self.data[kstart] >> 5
                if kmajor not in (0, 1, 2, 3):
                    raise self.fail("map key is not an integer or string", kstart)
                key, pos2 = self.item(kstart, depth + 1)
                kbytes = bytes(self.data[kstart:pos2])
                if index and kbytes <= previous:
                    what = "duplicate map key" if kbytes == previous else "unsorted map keys"
                    raise self.fail(what, kstart)
                previous = kbytes
                value, pos2 = self.item(pos2, depth + 1)
                result[key] = value
            return result, pos2
        if major == 6:
            if arg not in self.allowed_tags:
                raise self.fail(f"tag {arg} not allowed", pos)
            if depth >= self.max_depth:
                raise self.fail("nesting too deep", pos)
            value, pos2 = self.item(pos2, depth + 1)
            return Tag(arg, value), pos2
        # major 7
        if ai < 24:
            if ai == 20:
                return False, pos2
            if ai == 21:
                return True, pos2
            if ai == 22:
                return None, pos2
            raise self.fail(f"simple value {ai} not allowed", pos)
        if ai == 24:
            raise self.fail("simple value not allowed", pos)
        fmt, size = _FLOAT_FMT[ai]
        value = struct.unpack(fmt, bytes(self.data[pos2 : pos2 + size]))[0]
        if _encode_float(value) != bytes(self.data[pos : pos2 + size]):
            raise self.fail("non-shortest float", pos)
        return value, pos2 + size


def decode_prefix(
    data: bytes | memoryview,
    offset: int = 0,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    allowed_tags: AbstractSet[int] = frozenset(),
) -> tuple[Any, int]:
    """Decode one item starting at *offset*; return ``(value, next_offset)``.

    Raises:
        DecodeError: if the bytes at *offset* are not one item of the profile.
    """
    try:
        tags = allowed_tags if type(allowed_tags) is frozenset else frozenset(allowed_tags)
        return _Decoder(data, max_depth, tags).item(offset, 0)
    except (IndexError, struct.error, OverflowError, ValueError) as exc:  # defensive
        raise DecodeError(f"CBOR malformed ({type(exc).__name__})") from None


def decode(
    data: bytes | memoryview,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    allowed_tags: AbstractSet[int] = frozenset(),
) -> Any:
    """Decode exactly one item that fills *data* (trailing bytes are an error).

    Raises:
        DecodeError: if *data* is not exactly one item of the profile.
    """
    value, end = decode_prefix(data, 0, max_depth=max_depth, allowed_tags=allowed_tags)
    if end != len(data):
        raise DecodeError(f"CBOR trailing bytes at offset {end}")
    return value


def to_json(value: Any) -> Any:
    """A JSON-friendly view of a decoded CBOR value, for tools and logs.

    Byte strings become lowercase hex, map keys become text, and a tag becomes
    ``{"tag": n, "value": ...}``; everything else is returned as it is.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Tag):
        return {"tag": value.tag, "value": to_json(value.value)}
    return value
