"""Core-only cost of one request/reply (sans-IO, two in-memory Connections).

Each round trip: the requester opens a stream and sends one message ending its
half; the receiver gets the request's events and replies with one message
ending its half; the requester gets the reply. With request/reply negotiated
(the default) this is one REQUEST and one REPLY frame; ``--off`` turns the
transport parameter off on both sides (OPEN + MESSAGE, MESSAGE).

``--session`` runs the same round trips through the transport instead
(``Session.request`` to an echo request handler over ``memory_pair``, one
asyncio loop, client and server in this process).

Run: .venv/bin/python bench/rr_core.py [--off] [--session] [-n N] [--wire]
Instruction counts (deterministic on a noisy machine):
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/rr_core.py -n 300   (then -n 900; per request = diff / 600)
"""

from __future__ import annotations

import argparse
import time

from m2mproto.config import Configuration
from m2mproto.connection import NEED_DATA, Connection, Role
from m2mproto.events import MessageReceived, StreamEnded, StreamOpened
from m2mproto.identity import Identity


def _config(request_reply: bool) -> Configuration:
    """With or without the mode (a tree from before the mode: always without)."""
    try:
        return Configuration(request_reply=request_reply)  # type: ignore[call-arg,unused-ignore]
    except TypeError:
        return Configuration()


def pair(request_reply: bool) -> tuple[Connection, Connection]:
    """An established initiator/responder pair (both with or without the mode)."""
    cfg = _config(request_reply)
    a = Connection(Role.INITIATOR, Identity.generate(), cfg)
    b = Connection(Role.RESPONDER, Identity.generate(), cfg)
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


def round_trip(a: Connection, b: Connection, value: object, wire: list[bytes] | None) -> object:
    """One request from *a* served by *b*; returns the reply value."""
    sid = a.open_stream("echo")
    a.send_message(sid, value, end_stream=True)
    data = a.data_to_send()
    if wire is not None:
        wire.append(data)
    b.receive_data(data, 0.0)
    request = None
    while (ev := b.next_event()) is not NEED_DATA:
        if type(ev) is MessageReceived:
            request = ev
        elif type(ev) not in (StreamOpened, StreamEnded):
            raise AssertionError(f"unexpected {ev!r}")
    assert request is not None
    b.send_message(request.stream_id, request.value, end_stream=True)
    data = b.data_to_send()
    if wire is not None:
        wire.append(data)
    a.receive_data(data, 0.0)
    reply = None
    while (ev := a.next_event()) is not NEED_DATA:
        if type(ev) is MessageReceived:
            reply = ev.value
    return reply


def session_run(n: int, request_reply: bool, value: object) -> None:
    """*n* round trips through ``Session.request`` in memory (after 20 to warm up)."""
    import anyio

    from m2mproto.transport import Server, memory_pair

    cfg = _config(request_reply)
    server = Server(Identity.generate(), authorizer_factory=lambda: None, config=cfg)

    @server.request("echo")
    async def echo(v: object, ctx: object) -> object:
        return v

    async def run() -> None:
        async with memory_pair(server=server, config=cfg) as (client, _server):
            for _ in range(20):
                await client.request("echo", value)
            for _ in range(n):
                assert await client.request("echo", value) == value

    anyio.run(run, backend="asyncio")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--off", action="store_true", help="request/reply frames off (both sides)")
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--wire", action="store_true", help="print the bytes per round trip")
    ap.add_argument("--session", action="store_true", help="through Session.request in memory")
    args = ap.parse_args()
    value = {"id": 42, "payload": b"x" * 64}
    mode = "OPEN+MESSAGE/MESSAGE" if args.off else "REQUEST/REPLY"
    if args.session:
        t0 = time.perf_counter()
        session_run(args.n, not args.off, value)
        dt = time.perf_counter() - t0
        print(f"session {mode}: {args.n / dt:,.0f} round trips/s (setup included)")
        return
    a, b = pair(not args.off)
    wire: list[bytes] | None = [] if args.wire else None
    t0 = time.perf_counter()
    for _ in range(args.n):
        assert round_trip(a, b, value, wire) == value
    dt = time.perf_counter() - t0
    print(f"{mode}: {args.n / dt:,.0f} round trips/s ({dt / args.n * 1e6:.1f} us each)")
    if wire:
        print(f"bytes on the wire per round trip: {sum(map(len, wire)) / args.n:.1f}")


if __name__ == "__main__":
    main()
