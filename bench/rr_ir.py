"""Instructions per loopback round trip, both sides in one process: for callgrind.

Theory of operation
-------------------
The bench server (:mod:`bench.m2m_side` or :mod:`bench.tls_anchor`) and its
client run in one event loop of this process, over TCP on 127.0.0.1, so one
``valgrind --tool=callgrind`` run counts both sides. After the connection and
20 warm-up requests, *n* sequential 256-byte echo requests run. Run it for two
values of *n* and divide the difference of the instruction counts (Ir) by the
difference of *n*: setup, warm-up and teardown cancel out, and the result is
deterministic enough to compare paths on a noisy machine (wall time is not)::

    python -m bench.rr_ir --material /tmp/rr_ir --make
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m bench.rr_ir --material /tmp/rr_ir --proto m2m --n 200 2>&1 | grep refs

On asyncio m2mproto takes its native path unless ``M2MPROTO_NATIVE=0`` (the
anyio streams path). Every phase runs under ``anyio.fail_after``.

``--proto core`` is the floor under both paths: the same exchange between two
sans-IO ``Connection`` objects in memory, no transport, no event loop (open a
stream, the request message with end-of-stream, the reply message with
end-of-stream, credit returned as the transport does); without the bench
server's token authorizer.

``--kind bulk`` counts 64 KiB writes on the bulk stream instead (the
bench's ``bulk_mb_s``; each run ends with a barrier request; m2m and tls only).

Run: ``python -m bench.rr_ir --material DIR [--make] [--proto m2m|tls|core] [--n N]
[--backend asyncio|trio] [--kind rr|bulk]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import anyio

from . import m2m_side, tls_anchor
from .m2m_side import ECHO
from .net import CHUNK, HOST, MESSAGE

__all__ = ["main"]


async def _run(proto: str, material: Path, n: int, kind: str = "rr") -> None:
    side: Any = m2m_side if proto == "m2m" else tls_anchor
    directory = material / proto
    client = m2m_side.make_client(directory) if proto == "m2m" else tls_anchor.TLSClient(directory)
    with anyio.fail_after(300):
        async with anyio.create_task_group() as tg:
            ports: list[int] = []
            ready = anyio.Event()

            def on_ready(port: int) -> None:
                ports.append(port)
                ready.set()

            tg.start_soon(side.serve, directory, on_ready)
            await ready.wait()
            ch = await client.connect(HOST, ports[0])
            for _ in range(20):
                await ch.request(MESSAGE)
            if kind == "bulk":
                for _ in range(20):
                    await ch.bulk(CHUNK)
                await ch.flush()
                for _ in range(n):
                    await ch.bulk(CHUNK)
                await ch.flush()
            else:
                for _ in range(n):
                    await ch.request(MESSAGE)
            await ch.aclose()
            tg.cancel_scope.cancel()


def _core(n: int) -> None:
    from m2mproto.config import Configuration
    from m2mproto.connection import NEED_DATA, Connection, Role
    from m2mproto.events import MessageReceived
    from m2mproto.identity import Identity

    cfg = Configuration(auto_window_update=False)
    a = Connection(Role.INITIATOR, Identity.generate(), cfg)
    b = Connection(Role.RESPONDER, Identity.generate(), cfg)
    a.start(0.0)
    b.start(0.0)

    def deliver(src: Connection, dst: Connection) -> list[Any]:
        data = src.data_to_send()
        if data:
            dst.receive_data(data, 0.0)
        got = []
        while (event := dst.next_event()) is not NEED_DATA:
            if isinstance(event, MessageReceived):
                dst.acknowledge_data(event.stream_id, event.size or 0)
                got.append(event)
        return got

    for _ in range(10):  # the handshake
        deliver(a, b)
        deliver(b, a)
    for _ in range(20 + n):
        sid = a.open_stream(ECHO)
        a.send_message(sid, MESSAGE, end_stream=True)
        (request,) = deliver(a, b)
        b.send_message(request.stream_id, request.value, end_stream=True)
        (reply,) = deliver(b, a)
        assert reply.value == MESSAGE
        deliver(a, b)  # credit back
        deliver(b, a)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rr_ir")
    parser.add_argument("--material", type=Path, required=True)
    parser.add_argument("--make", action="store_true", help="write the key material and exit")
    parser.add_argument("--proto", choices=("m2m", "tls", "core"), default="m2m")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--kind", choices=("rr", "bulk"), default="rr", help="round trips or 64 KiB writes"
    )
    args = parser.parse_args(argv)
    if args.make:
        for proto, side in (("m2m", m2m_side), ("tls", tls_anchor)):
            (args.material / proto).mkdir(parents=True, exist_ok=True)
            side.make_material(args.material / proto)
        return
    if args.proto == "core":
        _core(args.n)
        return
    anyio.run(_run, args.proto, args.material, args.n, args.kind, backend=args.backend)


if __name__ == "__main__":
    main()
