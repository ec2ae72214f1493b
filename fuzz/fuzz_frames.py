"""The frame decoder on record plaintext (m2mproto.frames.decode_frames).

Invariant: ``decode_frames`` accepts or raises ``RemoteProtocolError``
(``DecodeError`` included). When it accepts, re-encoding every frame gives
the input back byte for byte (frames are canonical CBOR), and decoding one
frame at a time with ``decode_frame`` gives the same frames. Each input is
checked twice: without and with request/reply negotiated (kinds 11 and 12,
REQUEST and REPLY, with their fast path); the fast path (``bytes``) and the
strict decoder (a ``memoryview``) agree on every input, accepted or not.
"""

from __future__ import annotations

from _common import fuzz_main, instrumented

with instrumented(__name__):
    from m2mproto.errors import RemoteProtocolError
    from m2mproto.frames import KeyUpdateFrame, decode_frame, decode_frames, encode_frame


def check_frames(data: bytes) -> None:
    """Decode *data* as one record plaintext and check the canonical round trip."""
    _check(data, False)
    _check(data, True)


def _strict(data: bytes, rr: bool) -> object:
    try:
        return decode_frames(memoryview(data), request_reply=rr)
    except RemoteProtocolError as exc:
        return exc.code


def _check(data: bytes, rr: bool) -> None:
    try:
        frames = decode_frames(data, request_reply=rr)
    except RemoteProtocolError as exc:
        frames = None
        assert _strict(data, rr) == exc.code, "fast and strict decoders disagree on the code"
    else:
        assert _strict(data, rr) == frames or _nan_in(frames), "fast and strict decoders differ"
    singles = []
    offset = 0
    try:
        while offset < len(data):
            frame, offset = decode_frame(data, offset, request_reply=rr)
            singles.append(frame)
    except RemoteProtocolError:
        assert frames is None, "decode_frames accepted what decode_frame rejects"
        return
    if frames is None:  # only the KEY_UPDATE-last rule may reject a sequence of good frames
        assert any(isinstance(f, KeyUpdateFrame) for f in singles[:-1])
        return
    assert frames == singles or _nan_in(frames), "frame-at-a-time decode differs"
    again = b"".join(encode_frame(f) for f in frames)
    assert again == data, f"frames re-encode differently: {data.hex()}"


def _nan_in(frames: list[object]) -> bool:
    return "nan" in repr(frames)


if __name__ == "__main__":
    fuzz_main(check_frames)
