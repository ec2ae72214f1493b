"""The record layer (m2mproto.records) with a fixed key.

Two modes, picked by the first byte:

* raw: the input is the received byte stream, fed in fuzzer-chosen pieces;
  ``RecordReader.next_record`` must return None or raise
  ``RemoteProtocolError`` (nothing else), and every plaintext it returns is
  handed to the frame decoder;
* sealed: the input describes record plaintexts (frames from the round-trip
  grammar, or raw bytes), key updates, a record limit and one fault (bit
  flip, truncation, drop, duplicate, swap, stray bytes). The records are
  sealed validly with the writer, the fault is applied, and the result is
  fed in pieces. Invariant: every plaintext the reader returns is exactly
  the sealed plaintext at that position (a fault is never accepted), and
  with no fault every record comes back.
"""

from __future__ import annotations

import contextlib

from _common import ByteReader, fuzz_main, instrumented, split_points

with instrumented(__name__):
    from fuzz_roundtrip import build_frame

    from m2mproto.errors import LocalProtocolError, RemoteProtocolError
    from m2mproto.frames import KeyUpdateFrame, decode_frames, encode_frame
    from m2mproto.noise import CipherState, NoiseProtocol
    from m2mproto.records import RecordReader, RecordWriter

_PROTOCOL = NoiseProtocol.from_name("Noise_XX_25519_ChaChaPoly_SHA256")
_KEY = bytes(range(32))


def _ciphers() -> tuple[CipherState, CipherState]:
    return CipherState(_PROTOCOL, _KEY), CipherState(_PROTOCOL, _KEY)


def _drain(reader: RecordReader, limit: int) -> list[bytes]:
    """Open records until None; RemoteProtocolError propagates."""
    out: list[bytes] = []
    for _ in range(limit):
        plaintext = reader.next_record()
        if plaintext is None:
            break
        out.append(plaintext)
    return out


def _check_raw(r: ByteReader) -> None:
    _, rx = _ciphers()
    reader = RecordReader(rx, max_records_per_key=1 + r.u8() % 4)
    wire = r.rest()
    try:
        for piece in split_points(wire, ByteReader(wire[:8])):
            reader.feed(piece)
            for plaintext in _drain(reader, 64):
                with contextlib.suppress(RemoteProtocolError):
                    decode_frames(plaintext)
    except RemoteProtocolError:
        pass
    assert reader.buffered <= len(wire)


def _check_sealed(r: ByteReader) -> None:
    tx, rx = _ciphers()
    limit = 1 + r.u8() % 8
    writer = RecordWriter(tx, key_update_after=limit, max_records_per_key=limit)
    records: list[bytes] = []
    plaintexts: list[bytes] = []
    updates: list[bool] = []
    for _ in range(1 + r.u8() % 8):
        if r.u8() & 1:
            frames = [build_frame(r) for _ in range(1 + r.u8() % 3)]
            try:
                plaintext = b"".join(encode_frame(f) for f in frames)
            except LocalProtocolError:
                plaintext = b""
        else:
            plaintext = r.blob(2000)
        update = bool(r.u8() & 1)
        if update:
            plaintext += encode_frame(KeyUpdateFrame(False))
        try:
            records.append(writer.seal(plaintext))
        except LocalProtocolError:  # the record limit for this key: local, allowed
            break
        plaintexts.append(plaintext)
        updates.append(update)
        if update:
            writer.rekey()
    fault = r.u8() % 7
    if fault == 1 and records:  # flip one bit
        i = r.u8() % len(records)
        pos = r.u16() % len(records[i])
        rec = bytearray(records[i])
        rec[pos] ^= 1 << (r.u8() % 8)
        records[i] = bytes(rec)
    elif fault == 2 and records:  # drop
        del records[r.u8() % len(records)]
    elif fault == 3 and records:  # duplicate (replay)
        i = r.u8() % len(records)
        records.insert(i, records[i])
    elif fault == 4 and len(records) > 1:  # swap (reorder)
        i = r.u8() % (len(records) - 1)
        records[i], records[i + 1] = records[i + 1], records[i]
    elif fault == 5:  # stray bytes after the records
        records.append(r.blob(64))
    wire = b"".join(records)
    if fault == 6 and wire:  # truncate
        wire = wire[: r.u16() % len(wire)]
    reader = RecordReader(rx, max_records_per_key=limit)
    got: list[bytes] = []
    try:
        for piece in split_points(wire, r):
            reader.feed(piece)
            for _ in range(64):
                plaintext = reader.next_record()
                if plaintext is None:
                    break
                index = len(got)
                assert index < len(plaintexts), "more records opened than were sealed"
                assert plaintext == plaintexts[index], f"record {index} accepted altered"
                got.append(plaintext)
                if updates[index]:
                    reader.rekey()
    except RemoteProtocolError:
        assert fault != 0, "an unaltered record stream was rejected"
        return
    if fault == 0:
        assert got == plaintexts, "records lost without a fault"


def check_records(data: bytes) -> None:
    """Run one raw or sealed record-layer case from *data*."""
    r = ByteReader(data)
    if r.u8() & 1:
        _check_sealed(r)
    else:
        _check_raw(r)


if __name__ == "__main__":
    fuzz_main(check_records)
