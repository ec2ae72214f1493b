"""Fast paths of the deterministic CBOR codec (m2mproto/cbor.py) agree with its general path.

The encoder takes shortcuts for exact builtin types (bytes, str, small ints, dicts with text
keys) and the decoder for heads whose argument fits in the initial byte; every rejection in
tests/test_cbor.py still holds. Here the shortcuts are checked against the general path.
"""

from __future__ import annotations

from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mproto.cbor import decode, encode
from m2mproto.errors import DecodeError

# -- encoder fast paths (exact builtin types) agree with the general path ------------


_leaves = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)


class _Str(str):
    pass


def _general(obj: object) -> object:
    """The same value built from types that miss every fast path."""
    if isinstance(obj, dict):
        return MappingProxyType(
            {(_Str(k) if isinstance(k, str) else k): _general(v) for k, v in obj.items()}
        )
    if isinstance(obj, list):
        return tuple(_general(v) for v in obj)
    if type(obj) is bytes:
        return bytearray(obj)
    if type(obj) is str:
        return _Str(obj)
    return obj


_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
        st.dictionaries(st.one_of(st.integers(-30, 300), st.text(max_size=3)), inner, max_size=4),
    ),
    max_leaves=12,
)


@pytest.mark.slow
@settings(max_examples=300)
@given(_values)
def test_encoder_fast_paths_match_general_path(value: object) -> None:
    fast = encode(value)
    assert fast == encode(_general(value))
    assert encode(decode(fast)) == fast


@pytest.mark.parametrize(
    "raw",
    [
        bytes([0x18, 0x05]),  # non-shortest
        bytes([0x5F, 0x41, 0x61, 0xFF]),  # indefinite byte string
        bytes([0xA2, 0x61, 0x62, 0x01, 0x61, 0x61, 0x02]),  # unsorted keys
        bytes([0xA2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02]),  # duplicate keys
        bytes([0xF0]),  # unassigned simple value
        bytes([0xC1, 0x00]),  # tag outside the allowlist
        bytes([0x81]) * 17 + b"\x00",  # nesting deeper than 16
        bytes([0x62, 0xC3, 0x28]),  # invalid UTF-8
        bytes([0x5A, 0xFF, 0xFF, 0xFF, 0xFF]),  # declared length beyond the input
    ],
)
def test_small_heads_still_rejected(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw)
