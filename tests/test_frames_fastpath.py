"""The OPEN and WINDOW_UPDATE encoder fast paths give the generic CBOR encoding, byte for byte."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from m2mproto import cbor
from m2mproto.frames import (
    MAX_VARINT,
    OpenFrame,
    WindowUpdateFrame,
    decode_frames,
    encode_frame,
)

_IDS = st.integers(0, MAX_VARINT)
_RESOURCES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60).filter(
    lambda r: len(r.encode()) <= 256
)


@settings(max_examples=200)
@given(sid=_IDS, resource=_RESOURCES)
def test_open_fast_path_matches_generic(sid: int, resource: str) -> None:
    raw = encode_frame(OpenFrame(sid, resource))
    assert raw == cbor.encode([2, sid, resource])
    assert decode_frames(raw) == [OpenFrame(sid, resource)]


@settings(max_examples=200)
@given(sid=st.one_of(st.none(), _IDS), inc=st.integers(1, MAX_VARINT))
def test_window_update_fast_path_matches_generic(sid: int | None, inc: int) -> None:
    raw = encode_frame(WindowUpdateFrame(sid, inc))
    assert raw == cbor.encode([5, sid, inc])
    assert decode_frames(raw) == [WindowUpdateFrame(sid, inc)]
