"""Regenerate the seed corpora in fuzz/corpus/ from real traffic (deterministic).

Drives the real sans-IO code: complete XX and IK handshakes (every flight
becomes a handshake seed), connection programs run through the connection
harness (every record plaintext either side produced becomes a frame, CBOR
and round-trip seed), and the token functions (issue, delegate, revoke).
Run: ``.venv/bin/python fuzz/record_corpus.py``. Files are named by content
hash, so re-running adds nothing new unless the traffic changed; existing
seeds (including former crash inputs) are never deleted.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import NOW, corpus_dir, identity, run_handshake, token_set

from m2mproto import cbor
from m2mproto.frames import (
    CloseFrame,
    ExtensionFrame,
    KeyUpdateFrame,
    MessageFrame,
    OpenFrame,
    PingFrame,
    PongFrame,
    ResetFrame,
    StreamFrame,
    TokenFrame,
    WindowUpdateFrame,
    encode_frame,
)
from m2mproto.tokens import revoke

# RFC 8949 Appendix A items that are canonical (shortest form, sorted keys).
RFC8949 = [
    "00",
    "01",
    "0a",
    "17",
    "1818",
    "1819",
    "1864",
    "1903e8",
    "1a000f4240",
    "1b000000e8d4a51000",
    "1bffffffffffffffff",
    "3bffffffffffffffff",
    "20",
    "29",
    "3863",
    "3903e7",
    "f90000",
    "f98000",
    "f93c00",
    "fb3ff199999999999a",
    "f93e00",
    "f97bff",
    "fa47c35000",
    "fa7f7fffff",
    "fb7e37e43c8800759c",
    "f90001",
    "f90400",
    "f9c400",
    "fbc010666666666666",
    "f97c00",
    "f97e00",
    "f9fc00",
    "f4",
    "f5",
    "f6",
    "40",
    "4401020304",
    "60",
    "6161",
    "6449455446",
    "62225c",
    "62c3bc",
    "63e6b0b4",
    "64f0908591",
    "80",
    "83010203",
    "8301820203820405",
    "98190102030405060708090a0b0c0d0e0f101112131415161718181819",
    "a0",
    "a201020304",
    "a26161016162820203",
    "826161a161626163",
    "a56161614161626142616361436164614461656145",
]


def save(target: str, data: bytes) -> None:
    d = corpus_dir(target)
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha256(data).hexdigest()[:16]).write_bytes(data)


class Program:
    """Encodes connection-harness programs (mirrors fuzz_connection's grammar)."""

    def __init__(self, target_is_initiator: bool) -> None:
        self.out = bytearray([1 if target_is_initiator else 0])

    def record(self, *frames: bytes, split: bool = False) -> Program:
        self.out += bytes([0, len(frames) - 1])
        for f in frames:
            self.out += f
        self.out += bytes([1 if split else 0]) + (b"\x00\x05" if split else b"")
        return self

    @staticmethod
    def sid(k: int, peer: bool = True) -> bytes:
        return bytes([0 if peer else 5, k])

    def open(self, k: int, resource: int = 0) -> bytes:
        return bytes([2]) + self.sid(k) + bytes([resource])

    def stream(self, k: int, n: int, end: bool = False) -> bytes:
        return bytes([0]) + self.sid(k) + bytes([0, n, 1 if end else 0])

    def message(self, k: int, n: int, last: bool = True, end: bool = False) -> bytes:
        flags = 4 | (1 if last else 0) | (2 if end else 0)
        return bytes([3, flags, 0, n, 1]) + self.sid(k)

    def reset(self, k: int) -> bytes:
        return bytes([4]) + self.sid(k) + bytes([1, 0, 0x40])

    def window(self, conn: bool = True) -> bytes:
        return bytes([5, 1 if conn else 0, 2])

    def ping(self) -> bytes:
        return bytes([6, 0, 4]) + b"ping"

    def token(self, index: int = 5) -> bytes:
        return bytes([8, 1, index])

    def key_update(self) -> bytes:
        return bytes([9, 1])

    def close(self) -> bytes:
        return bytes([10, 0, 0, 0, 3]) + b"bye"

    def local(self, op: int, *args: int) -> Program:
        self.out += bytes([10, op, 0, *args])
        return self

    def tick(self, choice: int) -> Program:
        self.out += bytes([13, choice])
        return self


def connection_programs() -> list[bytes]:
    programs = []
    for initiator in (False, True):
        p = Program(initiator)
        p.record(p.token()).record(p.open(0), p.message(0, 5, end=True))
        p.record(p.open(1, 1), p.stream(1, 50), p.stream(1, 3, end=True), split=True)
        p.record(p.window(), p.ping()).record(p.key_update()).record(p.reset(1))
        p.local(0, 0).local(1, 0, 1).local(4, 0).local(5, 1).tick(2)
        p.record(p.close())
        programs.append(bytes(p.out))
        q = Program(initiator)
        q.record(q.token()).record(q.open(0, 1), q.message(0, 20, last=False))
        q.record(q.message(0, 7)).local(2, 0, 0, 1).record(q.window(False))
        q.local(7, 0).tick(4).tick(4)
        programs.append(bytes(q.out))
    return programs


def main() -> None:
    # handshake: every flight, in the scenario that consumes it
    for ik in (False, True):
        flights = run_handshake(ik)
        save("handshake", b"\x00" + flights["init1"])
        save("handshake", (b"\x03" if ik else b"\x01") + flights["resp2"])
        if not ik:
            save("handshake", b"\x02" + flights["init3"])
            save("handshake", b"\x82" + flights["init3"][:40])
    # hybrid (XXhfs / IKhfs): the responder's flight, for the initiator scenarios with 0x40
    for ik in (False, True):
        flights = run_handshake(ik, post_quantum=True)
        save("handshake", (b"\x43" if ik else b"\x41") + flights["resp2"])
        save("handshake", b"\x00" + flights["init1"])  # refused by the classical responder
    # tokens: every entry point on every token, plus a revocation statement
    tokens = token_set("alice", "bob")
    statement = revoke(identity("authority"), [tokens["valid"]], now=NOW)
    for tok in tokens.values():
        for mode in (0, 1):
            save("tokens", bytes([mode]) + tok)
    save("tokens", b"\x02" + statement)
    save("tokens", b"\x03" + statement + statement)
    # frames: one of each kind
    frames = [
        StreamFrame(0, b"hello", True),
        OpenFrame(2, "echo"),
        MessageFrame(1, cbor.encode({"a": 1}), True, True),
        ResetFrame(3, 0x40, 10),
        WindowUpdateFrame(None, 65536),
        WindowUpdateFrame(4, 1),
        PingFrame(b"12345678"),
        PongFrame(b""),
        TokenFrame(tokens["valid"]),
        KeyUpdateFrame(True),
        CloseFrame(0, "bye"),
        ExtensionFrame(64, (1, b"x", [2, {"k": None}])),
    ]
    for f in frames:
        save("frames", encode_frame(f))
        save("cbor", b"\x10" + encode_frame(f))
    save("frames", b"".join(encode_frame(f) for f in frames))
    for item in RFC8949:
        save("cbor", b"\x10" + bytes.fromhex(item))
    for tok in tokens.values():
        save("cbor", b"\x30" + tok)
    # connection programs, and the record plaintexts they produce both ways
    from _common import ByteReader
    from fuzz_connection import Harness, established

    for prog in connection_programs():
        save("connection", prog)
        h = Harness(established(bool(prog[0] & 1)), ByteReader(prog[1:]))
        h.run()
        for plaintext in h.plaintexts:
            if plaintext:
                save("frames", plaintext)
                save("records", b"\x01\x04\x00\x00" + len(plaintext).to_bytes(2, "big") + plaintext)
    # round trip: a few grammar inputs covering every kind
    for kind in range(11):
        save("roundtrip", bytes([kind, 1, 5, 0, 4]) + b"abcd" + bytes([1]))
    save("records", b"\x00" + bytes.fromhex("0010") + bytes(16))
    # transport: the initiator's real flights, whole and in small pieces
    flights = run_handshake(False)
    save("transport", b"\x80" + flights["init1"])
    save("transport", b"\x07" + flights["init1"] + flights["init3"])
    save("transport", b"\x83" + b"GET / HTTP/1.1\r\n\r\n")
    save("records", b"\x01\x03" + bytes([0, 0, 5]) + b"hello" + bytes([1, 1]))


if __name__ == "__main__":
    main()
