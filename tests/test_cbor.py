"""The deterministic CBOR profile: round trips, agreement with cbor2, strict rejection."""

from __future__ import annotations

import math
import tracemalloc

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2mproto import cbor
from m2mproto.errors import DecodeError, ErrorCode, LocalProtocolError

keys = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64 - 1), st.text(max_size=8), st.binary(max_size=8)
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.binary(max_size=40),
    st.text(max_size=40),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=30,
)


@pytest.mark.slow
@given(values)
def test_round_trip_and_reencode_identical(value: object) -> None:
    encoded = cbor.encode(value)
    decoded = cbor.decode(encoded)
    assert decoded == value
    assert cbor.encode(decoded) == encoded


@given(values)
def test_cbor2_reads_what_we_write(value: object) -> None:
    assert cbor2.loads(cbor.encode(value)) == value


@given(st.dictionaries(keys, st.integers(min_value=0, max_value=2**32), max_size=8))
def test_map_keys_sorted_bytewise(value: dict[object, int]) -> None:
    # RFC 8949 4.2.1: pairs ordered by the bytewise lexicographic order of encoded keys.
    pairs = sorted((cbor.encode(k), cbor.encode(v)) for k, v in value.items())
    expected = cbor.encode({}) if not value else None
    body = b"".join(k + v for k, v in pairs)
    encoded = cbor.encode(value)
    assert encoded.endswith(body)
    assert expected is None or encoded == expected


def test_known_encodings() -> None:
    assert cbor.encode({1: 2, -1: 3, "a": 4, 100: 5}).hex() == "a401021864052003616104"
    assert cbor.encode(1.5).hex() == "f93e00"
    assert cbor.encode(100000.0).hex() == "fa47c35000"
    assert cbor.encode(1.1).hex() == "fb3ff199999999999a"
    assert cbor.encode(float("nan")).hex() == "f97e00"
    assert cbor.encode(float("-inf")).hex() == "f9fc00"
    assert cbor.encode(cbor.Tag(18, [])).hex() == "d280"
    assert math.isnan(cbor.decode(bytes.fromhex("f97e00")))


@pytest.mark.parametrize(
    ("hexdata", "why"),
    [
        ("1817", "non-shortest argument"),
        ("190017", "non-shortest argument"),
        ("5f4100ff", "indefinite length"),
        ("9f01ff", "indefinite length"),
        ("bf616101ff", "indefinite length"),
        ("a201020103", "duplicate map key"),
        ("a220010102", "unsorted map keys"),
        ("a1810102", "map key is not"),
        ("c24100", "tag 2 not allowed"),
        ("d81c00", "tag 28 not allowed"),
        ("d9d9f700", "tag 55799 not allowed"),
        ("5b7fffffffffffffff", "longer than input"),
        ("9b00000001000000000000", "longer than input"),
        ("f7", "simple value"),
        ("f820", "simple value"),
        ("fb3ff8000000000000", "non-shortest float"),
        ("fa7fc00000", "non-shortest float"),
        ("62c328", "invalid UTF-8"),
        ("1c", "reserved"),
        ("0102", "trailing bytes"),
        ("", "truncated"),
        ("19", "truncated"),
        ("8201", "longer than input"),
        ("82010000", "trailing bytes"),
    ],
)
def test_rejects_outside_profile(hexdata: str, why: str) -> None:
    with pytest.raises(DecodeError) as info:
        cbor.decode(bytes.fromhex(hexdata))
    assert info.value.code is ErrorCode.DECODE_ERROR
    assert why in info.value.message


def test_allowed_tags() -> None:
    assert cbor.decode(bytes.fromhex("d280"), allowed_tags=frozenset({18})) == cbor.Tag(18, [])


def test_depth_bound_no_recursion_error() -> None:
    data = b"\x81" * 10000 + b"\x80"
    with pytest.raises(DecodeError, match="nesting too deep"):
        cbor.decode(data)
    assert cbor.decode(b"\x81" * 15 + b"\x80") is not None
    with pytest.raises(DecodeError):
        cbor.decode(b"\x81" * 16 + b"\x80")
    assert cbor.decode(b"\x81" * 31 + b"\x80", max_depth=32) is not None


def test_huge_declared_lengths_allocate_nothing() -> None:
    tracemalloc.start()
    try:
        for header in ("5b7fffffffffffffff", "9b0000000100000000", "bb0000000100000000"):
            data = bytes.fromhex(header) + bytes(100)
            with pytest.raises(DecodeError):
                cbor.decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_decode_prefix_sequence() -> None:
    data = cbor.encode([1]) + cbor.encode("x")
    first, pos = cbor.decode_prefix(data)
    second, end = cbor.decode_prefix(data, pos)
    assert (first, second, end) == ([1], "x", len(data))


@given(st.binary(max_size=64))
def test_random_bytes_only_decode_error(data: bytes) -> None:
    try:
        value = cbor.decode(data)
    except DecodeError:
        return
    # Anything accepted is in the deterministic profile: re-encoding gives the same bytes.
    assert value != value or cbor.encode(value) == data


@pytest.mark.parametrize("bad", [2**64, -(2**64) - 1, object(), {(1,): 2}, {True: 1}])
def test_encode_rejects_outside_profile(bad: object) -> None:
    with pytest.raises(LocalProtocolError) as info:
        cbor.encode(bad)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_to_json_view() -> None:
    value = cbor.decode(
        cbor.encode({1: b"\x00\xff", "list": [b"ab", 2, None], "t": cbor.Tag(18, [b"x"])}),
        allowed_tags=frozenset({18}),
    )
    assert cbor.to_json(value) == {
        "1": "00ff",
        "list": ["6162", 2, None],
        "t": {"tag": 18, "value": ["78"]},
    }
