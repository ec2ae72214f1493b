"""m2mproto in memory (no sockets): handshakes/s and transport throughput.

* Handshake: two :class:`m2mproto.handshake.Handshake` objects (XX, no
  tokens, empty transport parameters) exchange their output until both
  produce a result, with the identity binding checked on both sides: the
  same work as :mod:`bench.noise_anchor`. Each side's static X25519 key and
  its binding signature are made once per process and passed in (as a
  server would); entropy is ``os.urandom`` (the edge of the system).
  ``handshakes_s`` is the classical suite (XX); ``handshakes_s_hybrid`` the
  hybrid post-quantum one (XXhfs: X25519 + ML-KEM-768, spec/handshake.md
  2.13), measured right after it in the same round.
* Transport: one message of 64 KiB or 256 B from one side to the other
  through m2mproto's sans-IO connection (frames, records, AEAD), once that
  exists in this checkout; until then :class:`Unavailable`. The record layer
  alone (seal + open, no frames) is reported separately as ``records_*``,
  which is a lower bound on the connection's cost, not its figure.

Everything m2mproto is imported lazily, so ``python -m bench`` runs (with
these figures marked "not yet available") on a checkout without them.
"""

from __future__ import annotations

import os
from typing import Any

from .common import Settings, Unavailable, rate
from .primitives import SIZES

__all__ = ["measure"]


def _handshake_pair(post_quantum: bool = False) -> Any:
    try:
        from m2mproto.handshake import Handshake, StaticKey
        from m2mproto.identity import Identity
    except ImportError as exc:
        raise Unavailable(f"m2mproto handshake not importable: {exc}") from None

    ini_id, res_id = Identity.generate(), Identity.generate()
    entropy = os.urandom
    # The static key and its binding signature, once per process (spec 2.3/2.5).
    ini_static = StaticKey.generate(ini_id, entropy)
    res_static = StaticKey.generate(res_id, entropy)

    def once() -> Any:
        ini = Handshake(
            True, ini_id, entropy=entropy, static_key=ini_static, post_quantum=post_quantum
        )
        res = Handshake(
            False, res_id, entropy=entropy, static_key=res_static, post_quantum=post_quantum
        )
        results: list[Any] = [None, None]
        # XX is three flights; 8 turns is a generous bound.
        for _ in range(8):
            data = ini.data_to_send()
            if results[1] is None:
                if data:
                    res.receive_data(data)
                results[1] = res.next_event()
            data = res.data_to_send()
            if results[0] is None:
                if data:
                    ini.receive_data(data)
                results[0] = ini.next_event()
            if results[0] is not None and results[1] is not None:
                break
        r_ini, r_res = results
        if r_ini is None or r_res is None or r_ini.handshake_hash != r_res.handshake_hash:
            raise RuntimeError("m2mproto in-memory handshake did not complete")
        return r_ini, r_res

    return once


def _records(size: int, duration: float, max_iters: int) -> float:
    """Messages/s of ``size`` bytes through RecordWriter.seal + RecordReader (both ends)."""
    from m2mproto.records import MAX_RECORD_PLAINTEXT, RecordReader, RecordWriter

    once = _handshake_pair()
    r_ini, r_res = once()
    big = 1 << 62
    writer = RecordWriter(r_ini.send_cipher, key_update_after=big, max_records_per_key=big)
    reader = RecordReader(r_res.recv_cipher, max_records_per_key=big)
    payload = bytes(size)
    pieces = [payload[i : i + MAX_RECORD_PLAINTEXT] for i in range(0, size, MAX_RECORD_PLAINTEXT)]

    def one() -> None:
        for piece in pieces:
            reader.feed(writer.seal(piece))
        for _ in pieces:
            if reader.next_record() is None:
                raise RuntimeError("record layer lost a record")

    return rate(one, duration, max_iters=max_iters)


def _connection_pair() -> tuple[Any, Any, int]:
    """An established in-memory pair of sans-IO connections and one open stream (A -> B)."""
    try:
        from m2mproto.connection import NEED_DATA, Connection, Role
        from m2mproto.events import ConnectionClosed, StreamOpened
        from m2mproto.identity import Identity
    except ImportError as exc:
        raise Unavailable(f"m2mproto sans-IO connection not importable: {exc}") from None

    a = Connection(Role.INITIATOR, Identity.generate())
    b = Connection(Role.RESPONDER, Identity.generate())
    a.start(0.0)
    b.start(0.0)
    sid = -1
    for _ in range(16):
        for src, dst in ((a, b), (b, a)):
            data = src.data_to_send()
            if data:
                dst.receive_data(data)
        opened = False
        for conn in (a, b):
            for _ in range(64):
                ev = conn.next_event()
                if ev is NEED_DATA:
                    break
                if isinstance(ev, ConnectionClosed):
                    raise RuntimeError(f"in-memory connection closed: {ev}")
                opened = opened or (isinstance(ev, StreamOpened) and conn is b)
        if opened:
            return a, b, sid
        if sid < 0 and a.state.name == "ESTABLISHED" and b.state.name == "ESTABLISHED":
            sid = a.open_stream("bench/sink")
            a.send(sid, b"x")
    raise RuntimeError("in-memory connection pair did not establish a stream")


def _connection_transport(size: int, duration: float, max_iters: int) -> float:
    """Messages/s of ``size`` bytes of stream data from A to B through the sans-IO connection.

    One message per iteration, no batching: A queues ``size`` bytes and
    drains its outbox (frames, records, AEAD), B ingests the bytes and takes
    every event (decryption, frame decoding, flow-control accounting); B's
    window updates go back to A. The same end-to-end work as the AEAD anchor's
    seal+open, plus everything the protocol adds.
    """
    from m2mproto.connection import NEED_DATA
    from m2mproto.events import DataReceived

    a, b, sid = _connection_pair()
    payload = bytes(size)

    def one() -> None:
        a.send(sid, payload)
        out = a.data_to_send()
        if out:
            b.receive_data(out)
        got = 0
        for _ in range(64):
            ev = b.next_event()
            if ev is NEED_DATA:
                break
            if isinstance(ev, DataReceived):
                got += len(ev.data)
        if got != size:
            raise RuntimeError(f"in-memory transport delivered {got} of {size} bytes")
        back = b.data_to_send()
        if back:
            a.receive_data(back)
            for _ in range(64):
                if a.next_event() is NEED_DATA:
                    break

    return rate(one, duration, max_iters=max_iters)


def measure(settings: Settings) -> dict[str, Any]:
    """All in-memory m2mproto figures; ``None`` (with a reason) for what is unavailable."""
    d = max(settings.duration / 2, 0.01)
    it = settings.max_iters
    out: dict[str, Any] = {"unavailable": {}}
    try:
        once = _handshake_pair()
        out["handshakes_s"] = rate(once, d, max_iters=it)
        out["handshakes_s_hybrid"] = rate(_handshake_pair(True), d, max_iters=it)
    except Unavailable as exc:
        out["handshakes_s"] = out["handshakes_s_hybrid"] = None
        out["unavailable"]["handshakes_s"] = str(exc)
    for name, size in SIZES.items():
        for key, fn in (("transport", _connection_transport), ("records", _records)):
            try:
                msgs = fn(size, d, it)
            except (Unavailable, ImportError) as exc:
                out[f"{key}{name}_msgs_s"] = out[f"{key}{name}_mb_s"] = None
                out["unavailable"][f"{key}{name}"] = str(exc)
                continue
            out[f"{key}{name}_msgs_s"] = msgs
            out[f"{key}{name}_mb_s"] = msgs * size / 1e6
    return out
