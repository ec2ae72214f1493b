"""Messages/s (256-byte CBOR) and MB/s (64 KiB data) between two in-memory Connections,
next to raw ChaCha20-Poly1305 for the same sizes, measured in the same run.

Run: .venv/bin/python bench/inmem_connection.py
"""

from __future__ import annotations

import os
import time

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from m2mproto.config import Configuration
from m2mproto.connection import NEED_DATA, Connection, Role
from m2mproto.events import DataReceived, MessageReceived
from m2mproto.identity import Identity


def _pair() -> tuple[Connection, Connection]:
    a = Connection(Role.INITIATOR, Identity.generate(), Configuration())
    b = Connection(Role.RESPONDER, Identity.generate(), Configuration())
    a.start(0.0)
    b.start(0.0)
    for _ in range(10):
        for src, dst in ((a, b), (b, a)):
            data = src.data_to_send()
            if data:
                dst.receive_data(data, 0.0)
            while dst.next_event() is not NEED_DATA:
                pass
    return a, b


def _pump(a: Connection, b: Connection) -> tuple[int, int]:
    msgs = nbytes = 0
    for src, dst in ((a, b), (b, a)):
        data = src.data_to_send()
        if data:
            dst.receive_data(data, 0.0)
        while (ev := dst.next_event()) is not NEED_DATA:
            if isinstance(ev, MessageReceived):
                msgs += 1
            elif isinstance(ev, DataReceived):
                nbytes += len(ev.data)
    return msgs, nbytes


def bench_messages(n: int = 20000) -> float:
    a, b = _pair()
    sid = a.open_stream("bench")
    value = {"payload": b"x" * 240}  # 256 bytes of CBOR
    t0 = time.perf_counter()
    got = 0
    batch = 64
    for _i in range(0, n, batch):
        for _ in range(batch):
            a.send_message(sid, value)
        got += _pump(a, b)[0]
    while got < n:
        got += _pump(a, b)[0]
    return n / (time.perf_counter() - t0)


def bench_bulk(total: int = 64 * 1024 * 1024) -> float:
    a, b = _pair()
    sid = a.open_stream("bulk")
    chunk = os.urandom(64 * 1024)
    t0 = time.perf_counter()
    sent = got = 0
    while got < total:
        while sent < total and a.send_buffered() < 512 * 1024:
            a.send(sid, chunk)
            sent += len(chunk)
        got += _pump(a, b)[1]
    return total / (time.perf_counter() - t0) / 1e6


def bench_raw(size: int, n: int) -> float:
    """Encrypt + decrypt *n* buffers of *size* bytes (both ends, like the pair)."""
    aead = ChaCha20Poly1305(os.urandom(32))
    data = os.urandom(size)
    t0 = time.perf_counter()
    for i in range(n):
        nonce = i.to_bytes(12, "little")
        aead.decrypt(nonce, aead.encrypt(nonce, data, b""), b"")
    return n / (time.perf_counter() - t0)


def main(rounds: int = 3) -> None:
    """Interleave the four measurements *rounds* times and keep each one's best.

    The machine is shared and noisy; the best of several interleaved rounds
    estimates what each side can do, and the ratio compares like with like.
    """
    msgs = raw_small = mbps = raw_bulk = 0.0
    for _ in range(rounds):
        msgs = max(msgs, bench_messages())
        raw_small = max(raw_small, bench_raw(256, 50000))
        mbps = max(mbps, bench_bulk())
        raw_bulk = max(raw_bulk, bench_raw(65536, 2000) * 65536 / 1e6)
    print(
        f"messages 256 B CBOR : {msgs:12,.0f} msg/s   raw ChaCha20-Poly1305 256 B seal+open: "
        f"{raw_small:12,.0f} /s  ratio {msgs / raw_small:.3f}"
    )
    print(
        f"bulk 64 KiB data    : {mbps:12,.1f} MB/s    raw ChaCha20-Poly1305 64 KiB seal+open: "
        f"{raw_bulk:12,.1f} MB/s ratio {mbps / raw_bulk:.3f}"
    )


if __name__ == "__main__":
    main()
