"""Record layer: sealing, opening, splitting, every record-level error code, key update."""

from __future__ import annotations

import tracemalloc

import pytest
from helpers import cipher_pair
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mproto.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from m2mproto.records import MAX_RECORD_PLAINTEXT, RecordReader, RecordWriter

BIG = 2**32


def _pair(
    key_update_after: int = BIG, max_records: int = BIG, seed: int = 1
) -> tuple[RecordWriter, RecordReader]:
    s, r = cipher_pair(seed)
    return (
        RecordWriter(s, key_update_after=key_update_after, max_records_per_key=max_records),
        RecordReader(r, max_records_per_key=max_records),
    )


def _drain(reader: RecordReader) -> list[bytes]:
    out = []
    for _ in range(10_000):
        rec = reader.next_record()
        if rec is None:
            return out
        out.append(rec)
    raise AssertionError("unbounded")


@settings(max_examples=100)
@given(
    st.lists(st.binary(max_size=2000), min_size=1, max_size=6),
    st.lists(st.integers(1, 3000), max_size=20),
)
def test_split_at_any_points_gives_same_records(plaintexts: list[bytes], cuts: list[int]) -> None:
    w, r = _pair()
    wire = b"".join(w.seal(p) for p in plaintexts)
    got: list[bytes] = []
    pos = 0
    for c in cuts:
        r.feed(wire[pos : pos + c])
        pos += c
        got += _drain(r)
    r.feed(wire[pos:])
    got += _drain(r)
    assert got == plaintexts
    assert r.at_boundary


def test_one_byte_at_a_time_and_max_size() -> None:
    w, r = _pair()
    wire = w.seal(b"a" * MAX_RECORD_PLAINTEXT) + w.seal(b"")
    assert wire[:2] == b"\xff\xff"
    got: list[bytes] = []
    for i in range(len(wire)):
        r.feed(wire[i : i + 1])
        got += _drain(r)
        if i < len(wire) - 1:
            assert not r.at_boundary or got
    assert got == [b"a" * MAX_RECORD_PLAINTEXT, b""]


def test_plaintext_too_large_is_local_error() -> None:
    w, _ = _pair()
    with pytest.raises(LocalProtocolError) as info:
        w.seal(b"a" * (MAX_RECORD_PLAINTEXT + 1))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("length", range(16))
def test_short_lengths_are_frame_size_errors(length: int) -> None:
    _, r = _pair()
    r.feed(length.to_bytes(2, "big"))  # detected before the body arrives
    with pytest.raises(RemoteProtocolError) as info:
        r.next_record()
    assert info.value.code is ErrorCode.FRAME_SIZE_ERROR


def _expect(r: RecordReader, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        _drain(r)
    assert info.value.code is code


def test_garbage_max_length_record() -> None:
    _, r = _pair()
    r.feed(b"\xff\xff" + bytes(range(256)) * 255 + b"\x00" * 255)
    _expect(r, ErrorCode.DECRYPT_ERROR)


@settings(max_examples=200)
@given(st.integers(0, 8 * (2 + 16 + 40) - 1))
def test_any_bit_flip_is_decrypt_error(bit: int) -> None:
    w, r = _pair()
    wire = bytearray(w.seal(b"x" * 40))
    bit %= len(wire) * 8
    wire[bit // 8] ^= 1 << (bit % 8)
    r.feed(bytes(wire))
    with pytest.raises(RemoteProtocolError) as info:
        r.next_record()
        r.next_record()  # a length flip may need more bytes: feed the rest as garbage
        r.feed(b"\x00" * 70000)
        _drain(r)
    assert info.value.code in (ErrorCode.DECRYPT_ERROR, ErrorCode.FRAME_SIZE_ERROR)
    if bit >= 16:  # body flips are always DECRYPT_ERROR
        assert info.value.code is ErrorCode.DECRYPT_ERROR


@pytest.mark.parametrize("fault", ["replay", "reorder", "drop"])
def test_replay_reorder_drop(fault: str) -> None:
    w, r = _pair()
    recs = [w.seal(bytes([i]) * 10) for i in range(3)]
    if fault == "replay":
        recs = [recs[0], recs[0]]
    elif fault == "reorder":
        recs = [recs[1], recs[0]]
    else:
        recs = [recs[0], recs[2]]
    r.feed(b"".join(recs))
    with pytest.raises(RemoteProtocolError) as info:
        _drain(r)
    assert info.value.code is ErrorCode.DECRYPT_ERROR


def test_error_leaves_buffer_unchanged() -> None:
    w, r = _pair()
    good = w.seal(b"ok")
    bad = bytearray(good)
    bad[-1] ^= 1
    r.feed(bytes(bad))
    _expect(r, ErrorCode.DECRYPT_ERROR)
    assert r.buffered == len(bad)


def test_key_update_both_sides() -> None:
    w, r = _pair()
    r.feed(w.seal(b"before"))
    assert _drain(r) == [b"before"]
    w.rekey()
    r.feed(w.seal(b"after"))
    _expect(r, ErrorCode.DECRYPT_ERROR)  # receiver did not ratchet: old key fails
    w2, r2 = _pair()
    r2.feed(w2.seal(b"1"))
    assert _drain(r2) == [b"1"]
    w2.rekey()
    r2.rekey()
    r2.feed(w2.seal(b"2"))
    assert _drain(r2) == [b"2"]
    assert (w2.updates, r2.updates, w2.records, r2.records) == (1, 1, 1, 1)


def test_record_limits_boundary_pair() -> None:
    w, r = _pair(key_update_after=16, max_records=32)
    for i in range(32):
        assert w.update_due is (i >= 16)
        r.feed(w.seal(b"r"))
    assert len(_drain(r)) == 32  # record 32 accepted
    with pytest.raises(LocalProtocolError) as info:
        w.seal(b"r")  # the writer refuses record 33 under the same key
    assert info.value.code is ErrorCode.KEY_UPDATE_ERROR
    # a hostile writer that ignores the limit: the reader refuses record 33
    s, rr = cipher_pair()
    hostile = RecordWriter(s, key_update_after=BIG, max_records_per_key=BIG)
    reader = RecordReader(rr, max_records_per_key=32)
    for _ in range(33):
        reader.feed(hostile.seal(b"r"))
    with pytest.raises(RemoteProtocolError) as rinfo:
        _drain(reader)
    assert rinfo.value.code is ErrorCode.KEY_UPDATE_ERROR
    assert reader.records == 32


def test_nonce_exhaustion_never_sends() -> None:
    s, _ = cipher_pair()
    s.set_nonce(2**64 - 1)
    w = RecordWriter(s, key_update_after=BIG, max_records_per_key=BIG)
    with pytest.raises(LocalProtocolError) as info:
        w.seal(b"x")
    assert info.value.code is ErrorCode.KEY_UPDATE_ERROR


def test_buffer_is_compacted_and_bounded() -> None:
    w, r = _pair()
    tracemalloc.start()
    try:
        for _ in range(2000):
            r.feed(w.seal(b"z" * 1000))
            assert r.next_record() == b"z" * 1000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_abort_is_recognised_only_when_enabled_and_first() -> None:
    from m2mproto.records import AbortReceived

    _, r = cipher_pair()
    reader = RecordReader(r, max_records_per_key=BIG, accept_abort=True)
    reader.feed(b"\x00\x02\x00")
    assert reader.next_record() is None  # waits for the second code byte
    reader.feed(b"\x07")
    with pytest.raises(AbortReceived) as info:
        reader.next_record()
    assert info.value.raw_code == 7
    # after one record, the same bytes are a short record
    s2, r2 = cipher_pair()
    reader2 = RecordReader(r2, max_records_per_key=BIG, accept_abort=True)
    reader2.feed(RecordWriter(s2, key_update_after=BIG, max_records_per_key=BIG).seal(b"x"))
    assert reader2.next_record() == b"x"
    reader2.feed(b"\x00\x02\x00\x07")
    with pytest.raises(RemoteProtocolError) as info2:
        reader2.next_record()
    assert not isinstance(info2.value, AbortReceived)
    assert info2.value.code is ErrorCode.FRAME_SIZE_ERROR


def test_records_from_a_real_handshake() -> None:
    """Split() CipherStates of a completed m2mproto handshake carry records both ways."""
    from helpers import ALICE, BOB, seeded_entropy

    from m2mproto.handshake import Handshake

    i = Handshake(True, ALICE, entropy=seeded_entropy(1))
    r = Handshake(False, BOB, entropy=seeded_entropy(2))
    results = {}
    for _ in range(6):
        for src, dst in ((i, r), (r, i)):
            data = src.data_to_send()
            if not data or dst.is_complete:
                continue
            dst.receive_data(data)
            res = dst.next_event()
            if res is not None:
                results[dst] = res
    ri, rr = results[i], results[r]
    assert ri.handshake_hash == rr.handshake_hash
    for src_res, dst_res in ((ri, rr), (rr, ri)):
        w = RecordWriter(src_res.send_cipher, key_update_after=BIG, max_records_per_key=BIG)
        rd = RecordReader(dst_res.recv_cipher, max_records_per_key=BIG)
        rd.feed(w.seal(b"one") + w.seal(b"two"))
        assert _drain(rd) == [b"one", b"two"]
        w.rekey()
        rd.rekey()
        rd.feed(w.seal(b"three"))
        assert _drain(rd) == [b"three"]
