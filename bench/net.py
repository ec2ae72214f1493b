"""The loopback harness: one shape for m2mproto and for the TLS anchor.

Theory of operation
-------------------
For each protocol and anyio backend the harness starts the protocol's bench
server in its own process (:mod:`bench.server`, 127.0.0.1, ephemeral port)
and drives it from this process with a *client* object of the protocol::

    client.connect(host, port) -> channel         # connect + authenticate
    channel.oneway(obj)      one CBOR message, no answer
    channel.request(obj)     one CBOR message, wait for the echoed answer
    channel.bulk(chunk)      64 KiB of raw bytes
    channel.flush()          barrier: returns once the server processed all
    channel.aclose()

A protocol plugs in by providing such a client and a ``serve(material, ready)``
coroutine (see :mod:`bench.tls_anchor` and :mod:`bench.m2m_side`). Figures:

* ``handshake_s``: sequential connect, authenticate, one request, close;
* per concurrency level N (N connections opened first, then all driven at
  once for the time budget, each ending with a barrier): ``bulk_mb_s``,
  ``oneway_msgs_s`` (256-byte CBOR messages) and ``rr_s`` (round trips);
* ``memory_bytes_per_conn``: in a fresh server process, its RSS after
  ``mem_conns`` idle authenticated connections (each did one request) minus
  its RSS after one connection came and went, divided by ``mem_conns``.

Every loop is bounded by count and time, and every phase runs under
``anyio.fail_after``.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio

from .common import Settings

__all__ = ["CHUNK", "MESSAGE", "Channel", "Client", "ServerProcess", "measure_network"]

HOST = "127.0.0.1"
#: The small message: a CBOR map whose encoding is exactly 256 bytes.
MESSAGE: dict[str, bytes] = {"d": bytes(251)}
#: One bulk write.
CHUNK = bytes(64 * 1024)
_CONNECT_PARALLEL = 64


class Channel(Protocol):
    async def oneway(self, obj: Any) -> None: ...
    async def request(self, obj: Any) -> Any: ...
    async def bulk(self, chunk: bytes) -> None: ...
    async def flush(self) -> None: ...
    async def aclose(self) -> None: ...


class Client(Protocol):
    name: str

    async def connect(self, host: str, port: int) -> Channel: ...


class ServerProcess:
    """A bench server in a child process; stops when the context exits."""

    def __init__(self, proto: str, backend: str, material: Path, timeout: float = 30.0) -> None:
        self._args = [
            sys.executable,
            "-m",
            "bench.server",
            "--proto",
            proto,
            "--backend",
            backend,
            "--material",
            str(material),
        ]
        self._timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> ServerProcess:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self._proc = subprocess.Popen(
            self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        assert self._proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self._proc.stdout, selectors.EVENT_READ)
        line = b""
        deadline = time.monotonic() + self._timeout
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                byte = os.read(self._proc.stdout.fileno(), 1)
                if not byte:
                    break
                line += byte
        sel.close()
        if not line.startswith(b"READY "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"bench server {self._args[4]} did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def rss_bytes(self) -> int | None:
        """The server process's resident set size, from /proc (None where unavailable)."""
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
                for row in f:
                    if row.startswith("VmRSS:"):
                        return int(row.split()[1]) * 1024
        except OSError:
            return None
        return None

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


@asynccontextmanager
async def connections(client: Client, port: int, n: int) -> AsyncIterator[list[Channel]]:
    """Open ``n`` authenticated connections and yield them; close them all on exit.

    Each connection is opened, used for one request (so authentication has
    completed on both sides) and closed by its own *owner* task: some
    transports (m2mproto's sessions) must be closed in the task that opened
    them. At most 64 handshakes are in flight at once.
    """
    channels: list[Channel] = []
    ready, release = anyio.Event(), anyio.Event()
    limiter = anyio.CapacityLimiter(_CONNECT_PARALLEL)

    async def owner() -> None:
        # No cancel scope may be entered between connect and aclose: an m2mproto
        # session owns a task group entered in this task, and scopes nest.
        await limiter.acquire()
        try:
            ch = await client.connect(HOST, port)
        finally:
            limiter.release()
        try:
            await ch.request(0)
            channels.append(ch)
            if len(channels) == n:
                ready.set()
            await release.wait()
        finally:
            await ch.aclose()

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(owner)
        await ready.wait()
        try:
            yield channels
        finally:
            release.set()


async def handshake_rate(client: Client, port: int, duration: float, cap: int) -> float:
    """Sequential handshakes per second: connect, authenticate, one request, close."""
    done = 0
    start = anyio.current_time()
    end = start + duration
    now = start
    while done < cap and now < end:
        ch = await client.connect(HOST, port)
        try:
            await ch.request(MESSAGE)
        finally:
            await ch.aclose()
        done += 1
        now = anyio.current_time()
    return done / max(now - start, 1e-9)


async def drive(channels: list[Channel], kind: str, duration: float, cap: int) -> float:
    """Drive every channel at once with one workload; return the aggregate rate.

    ``kind`` is ``bulk`` (returns MB/s), ``oneway`` (messages/s) or ``rr`` (round trips/s).
    The per-channel loop stops at the deadline or after ``cap`` operations; the
    one-way and bulk runs end with a barrier, included in the elapsed time.
    """
    counts = [0] * len(channels)
    go = anyio.Event()

    async def worker(i: int, ch: Channel) -> None:
        await go.wait()
        n = 0
        end = anyio.current_time() + duration
        if kind == "bulk":
            while n < cap and anyio.current_time() < end:
                await ch.bulk(CHUNK)
                n += 1
            await ch.flush()
        elif kind == "oneway":
            while n < cap and anyio.current_time() < end:
                await ch.oneway(MESSAGE)
                n += 1
            await ch.flush()
        else:
            while n < cap and anyio.current_time() < end:
                await ch.request(MESSAGE)
                n += 1
        counts[i] = n

    async with anyio.create_task_group() as tg:
        for i, ch in enumerate(channels):
            tg.start_soon(worker, i, ch)
        await anyio.sleep(0)
        start = anyio.current_time()
        go.set()
    elapsed = max(anyio.current_time() - start, 1e-9)
    total = sum(counts)
    if kind == "bulk":
        return total * len(CHUNK) / 1e6 / elapsed
    return total / elapsed


def _describe(exc: BaseException) -> str:
    """One line for a failed phase (the first leaf of an exception group)."""
    leaf = exc
    for _ in range(8):
        if isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
    return f"{type(leaf).__name__}: {leaf}"


async def _throughput(client: Client, port: int, settings: Settings) -> dict[str, Any]:
    """Handshakes and per-level figures; a failing phase is recorded in ``errors`` and
    the run goes on with the next phase (its figures stay ``None``)."""
    out: dict[str, Any] = {"handshake_s": None, "errors": {}}
    try:
        with anyio.fail_after(settings.phase_timeout):
            out["handshake_s"] = await handshake_rate(
                client, port, settings.duration, settings.max_iters
            )
    except Exception as exc:
        out["errors"]["handshake"] = _describe(exc)
    levels: dict[str, Any] = {}
    for n in settings.levels:
        row: dict[str, Any] = {"bulk_mb_s": None, "oneway_msgs_s": None, "rr_s": None}
        try:
            with anyio.fail_after(settings.phase_timeout):
                async with connections(client, port, n) as channels:
                    for kind, key in (
                        ("bulk", "bulk_mb_s"),
                        ("oneway", "oneway_msgs_s"),
                        ("rr", "rr_s"),
                    ):
                        row[key] = await drive(
                            channels, kind, settings.duration, settings.max_iters
                        )
        except Exception as exc:
            out["errors"][f"level {n}"] = _describe(exc)
        levels[str(n)] = row
    out["concurrency"] = levels
    first = levels[str(settings.levels[0])] if settings.levels else {}
    for key in ("bulk_mb_s", "oneway_msgs_s", "rr_s"):
        out[key] = first.get(key)
    return out


async def _memory(client: Client, server: ServerProcess, settings: Settings) -> dict[str, Any]:
    with anyio.fail_after(settings.phase_timeout):
        async with connections(client, server.port, 1):
            pass
        await anyio.sleep(0.3)
        before = server.rss_bytes()
        async with connections(client, server.port, settings.mem_conns):
            await anyio.sleep(0.3)
            after = server.rss_bytes()
    if before is None or after is None:
        return {"memory_bytes_per_conn": None, "memory_conns": settings.mem_conns}
    return {
        "memory_bytes_per_conn": (after - before) / settings.mem_conns,
        "memory_conns": settings.mem_conns,
        "server_rss_before": before,
        "server_rss_after": after,
    }


def measure_network(
    proto: str, client: Client, backend: str, material: Path, settings: Settings
) -> dict[str, Any]:
    """All loopback figures of one protocol on one backend (two server processes)."""
    with ServerProcess(proto, backend, material) as server:
        out = anyio.run(_throughput, client, server.port, settings, backend=backend)
    with ServerProcess(proto, backend, material) as server:
        try:
            out.update(anyio.run(_memory, client, server, settings, backend=backend))
        except Exception as exc:
            out["memory_bytes_per_conn"] = None
            out["errors"]["memory"] = _describe(exc)
    return out
