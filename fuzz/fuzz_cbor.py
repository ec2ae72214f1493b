"""The deterministic CBOR decoder (m2mproto.cbor.decode / decode_prefix).

Invariant: the decoder accepts or raises ``DecodeError``. When it accepts,
the input is canonical, so ``encode(decode(data)) == data`` byte for byte,
and the independent ``cbor2`` decoder reads the same value (differential).
The first input byte picks the options (depth bound, tag allowlist).
"""

from __future__ import annotations

import math
from typing import Any

import cbor2
from _common import fuzz_main, instrumented

with instrumented(__name__):
    from m2mproto import cbor
    from m2mproto.errors import DecodeError

_TAGS = frozenset({18, 61})


def _from_cbor2(value: Any) -> Any:
    """Map a cbor2 value onto the types m2mproto.cbor encodes (bounded by the depth)."""
    if isinstance(value, cbor2.CBORTag):
        return cbor.Tag(value.tag, _from_cbor2(value.value))
    if isinstance(value, list):
        return [_from_cbor2(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_cbor2(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    """Structural equality (same types, NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, cbor.Tag):
        return bool(a.tag == b.tag and _same(a.value, b.value))
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def check_cbor(data: bytes) -> None:
    """Decode *data* with options from its first byte; check canonical round trip."""
    if not data:
        return
    opts, body = data[0], data[1:]
    depth = 1 + (opts & 0x1F)
    tags = _TAGS if opts & 0x20 else frozenset()
    try:
        value = cbor.decode(body, max_depth=depth, allowed_tags=tags)
    except DecodeError:
        value = _REJECTED
    # decode_prefix must agree with decode on where the first item ends.
    try:
        _, end = cbor.decode_prefix(body, 0, max_depth=depth, allowed_tags=tags)
    except DecodeError:
        end = -1
    if value is _REJECTED:
        assert end != len(body), "decode rejected what decode_prefix read exactly"
        return
    assert end == len(body), "decode accepted but decode_prefix stopped early"
    again = cbor.encode(value)
    assert again == bytes(body), f"non-canonical input accepted: {bytes(body).hex()}"
    other = _from_cbor2(cbor2.loads(bytes(body)))
    assert _same(value, other), f"cbor2 disagrees on {bytes(body).hex()}"


_REJECTED = object()

if __name__ == "__main__":
    fuzz_main(check_cbor)
