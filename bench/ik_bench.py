"""XX versus IK: connect, authenticate and one request over loopback, same run.

Theory of operation
-------------------
For each backend one m2mproto bench server runs in its own process (as in
:mod:`bench.net`; it keeps one static key for its lifetime, so IK to it stays
valid). This process alternates rounds: *n* sequential connections of each
kind, each one connect + handshake + one 256-byte echo request + close. The XX
client passes ``ik=False``; the IK client a ``PeerStaticKeys`` that learned
the server's key from one warm-up connection. Interleaving keeps a slow phase
of the shared machine from favouring one side; the best round of each is kept.
Printed: milliseconds per connection (best round's mean) and the IK saving.

Loopback has almost no latency, so the saved round trip is worth microseconds
here; ``--delay-ms D`` puts a relay in front of the server that holds every
chunk D ms in each direction (an emulated network RTT of 2·D), where the
saving approaches one RTT.

Run: ``python -m bench.ik_bench [--backend both] [--rounds 3] [--n 40] [--delay-ms 0]``.
Every loop is bounded by its count and every phase by ``anyio.fail_after``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream

from . import m2m_side
from .net import HOST, MESSAGE, ServerProcess

__all__ = ["main"]


async def _connections(client: Any, port: int, n: int) -> float:
    """Mean seconds per connection: connect, authenticate, one request, close."""
    with anyio.fail_after(120 + n):
        start = anyio.current_time()
        for _ in range(n):
            ch = await client.connect(HOST, port)
            try:
                await ch.request(MESSAGE)
            finally:
                await ch.aclose()
        return (anyio.current_time() - start) / n


async def _pipe(src: SocketStream, dst: SocketStream, delay: float) -> None:
    """Copy *src* to *dst*, each chunk *delay* seconds late (order kept)."""
    send, receive = anyio.create_memory_object_stream[tuple[float, bytes]](1 << 16)

    async def delayed() -> None:
        async with receive:
            async for due, chunk in receive:
                await anyio.sleep(max(0.0, due - anyio.current_time()))
                await dst.send(chunk)
        await dst.send_eof()

    async with anyio.create_task_group() as tg:
        tg.start_soon(delayed)
        async with send:
            for _ in range(1 << 40):
                try:
                    chunk = await src.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
                await send.send((anyio.current_time() + delay, chunk))


async def _relay(port: int, delay: float, *, task_status: Any) -> None:
    """Listen on an ephemeral port and relay each connection to *port*, delayed."""

    async def handle(client: SocketStream) -> None:
        upstream = await anyio.connect_tcp(HOST, port)
        async with client, upstream, anyio.create_task_group() as tg:
            tg.start_soon(_pipe, client, upstream, delay)
            tg.start_soon(_pipe, upstream, client, delay)

    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    async with listener:
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
        await listener.serve(handle)


async def _round(clients: dict[str, Any], port: int, n: int, delay: float) -> dict[str, float]:
    async with anyio.create_task_group() as tg:
        if delay > 0:
            port = await tg.start(_relay, port, delay)
        result = {kind: await _connections(client, port, n) for kind, client in clients.items()}
        tg.cancel_scope.cancel()
    return result


async def _warm(client: Any, port: int) -> None:
    with anyio.fail_after(60):
        ch = await client.connect(HOST, port)
        await ch.aclose()


def _run_backend(backend: str, material: Path, args: argparse.Namespace) -> dict[str, float]:
    from m2mproto.transport import PeerStaticKeys

    memory = PeerStaticKeys()
    clients = {
        "xx": m2m_side.M2MClient(material, ik=False),
        "ik": m2m_side.M2MClient(material, ik=memory),
    }
    best: dict[str, float] = {}
    with ServerProcess("m2m", backend, material) as server:
        anyio.run(_warm, clients["ik"], server.port, backend=backend)
        assert len(memory) == 1, "the IK client did not learn the server's key"
        for _ in range(args.rounds):
            got = anyio.run(_round, clients, server.port, args.n, args.delay_ms / 1000,
                            backend=backend)  # fmt: skip
            for kind, seconds in got.items():
                best[kind] = min(best.get(kind, float("inf")), seconds)
    return best


def _inmem_handshake_us(pattern: str, n: int) -> float:
    """Mean microseconds of CPU for one complete in-memory handshake pair of *pattern*."""
    import os
    import time

    from m2mproto.handshake import Handshake, StaticKey
    from m2mproto.identity import Identity

    ini_id, res_id = Identity.generate(), Identity.generate()
    ini_static = StaticKey.generate(ini_id, os.urandom)
    res_static = StaticKey.generate(res_id, os.urandom)
    remote = res_static.public if pattern == "IK" else None
    start = time.perf_counter()
    for _ in range(n):
        ini = Handshake(True, ini_id, entropy=os.urandom, static_key=ini_static,
                        remote_static=remote)  # fmt: skip
        res = Handshake(False, res_id, entropy=os.urandom, static_key=res_static)
        done: list[Any] = [None, None]
        for _ in range(8):  # at most three flights
            if data := ini.data_to_send():
                res.receive_data(data)
            done[1] = done[1] or res.next_event()
            if data := res.data_to_send():
                ini.receive_data(data)
            done[0] = done[0] or ini.next_event()
            if done[0] is not None and done[1] is not None:
                break
        if done[0] is None or done[1] is None or done[0].pattern != pattern:
            raise RuntimeError(f"in-memory {pattern} handshake did not complete")
    return (time.perf_counter() - start) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ik_bench")
    parser.add_argument("--backend", choices=("asyncio", "trio", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=40, help="connections per kind and round")
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="one-way delay of a relay (0: direct)"
    )
    args = parser.parse_args(argv)
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    cpu: dict[str, float] = {}
    for _ in range(args.rounds):  # interleaved, best round kept
        for pattern in ("XX", "IK"):
            got = _inmem_handshake_us(pattern, 200)
            cpu[pattern] = min(cpu.get(pattern, float("inf")), got)
    print(
        f"in memory: one handshake pair (CPU, both sides)  XX {cpu['XX']:7.0f} us  "
        f"IK {cpu['IK']:7.0f} us  ({cpu['IK'] / cpu['XX'] - 1:+.0%} for IK)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="m2m-ik-") as tmp:
        material = Path(tmp)
        m2m_side.make_material(material)
        for backend in backends:
            best = _run_backend(backend, material, args)
            xx, ik = best["xx"] * 1000, best["ik"] * 1000
            print(
                f"{backend:8s} delay {args.delay_ms:g} ms: connect+auth+request  "
                f"XX {xx:7.2f} ms  IK {ik:7.2f} ms  saving {xx - ik:6.2f} ms "
                f"({(xx - ik) / xx:.0%})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
