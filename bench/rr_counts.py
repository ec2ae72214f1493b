"""Where a round trip goes: per-request counts and per-idle-connection memory of the server.

Theory of operation
-------------------
Measurement only: the library is never changed. This process runs the bench
server (:func:`bench.m2m_side.serve`, an echo request handler) on an asyncio
loop in one thread and the bench client on another loop in a second thread,
over TCP on 127.0.0.1. Before either starts it wraps, for this process only:

* ``BaseEventLoop._run_once`` (one event-loop iteration),
* anyio's asyncio ``CancelScope.__init__`` (every cancel scope, also anyio's own),
* ``asyncio.Event.__init__`` (every event; an ``anyio.Event`` wraps one),
* each loop's task factory (every task spawned),

and counts each by the thread it ran in, so the server's counts are apart from
the client's. ``--counts`` reports them per request (the difference between a
run of *n* and of *2n* sequential requests on one connection, divided by *n*,
so the warm-up and the connection's own setup cancel out); ``--sites`` adds the
m2mproto line that constructed each scope or event.

``--memory N`` starts a child process that opens N authenticated connections
(one request each) and holds them idle; the server runs under ``tracemalloc``
and reports, per idle connection, the bytes still allocated by source file and
the tasks the server holds for them. ``--backend trio`` runs that server on trio
(the clients stay on asyncio); on asyncio ``M2MPROTO_NATIVE=0`` measures the anyio
streams path instead of the native one.

``--ir N`` runs N requests in memory (``memory_pair``, one asyncio loop) and
nothing else (with ``--sites``: and prints the counts per round trip, which are
deterministic in memory), for ``valgrind --tool=callgrind``: run it for two values of N and
divide the difference of the instruction counts (Ir) by the difference of N to
get Ir per round trip (client and server together)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m bench.rr_counts --ir 200 2>&1 | grep refs

Run: ``python -m bench.rr_counts [--counts 500] [--sites] [--memory 200] [--backend trio]
[--ir N]``.
Every phase runs under ``anyio.fail_after``; the child holding connections exits
when its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from . import m2m_side
from .net import HOST, MESSAGE

__all__ = ["main"]

#: (thread name, what) -> count
COUNTS: collections.Counter[tuple[str, str]] = collections.Counter()
#: (thread name, what, site) -> count, with --sites
SITES: collections.Counter[tuple[str, str, str]] = collections.Counter()
_TRACK_SITES = False


def _site() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/m2mproto/" in name:
            return f"{name.split('/m2mproto/')[-1]}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return "(outside m2mproto)"


def _count(what: str) -> None:
    who = threading.current_thread().name
    COUNTS[who, what] += 1
    if _TRACK_SITES and what != "loop_iterations":
        SITES[who, what, _site()] += 1


def _wrap(cls: Any, name: str, what: str) -> None:
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        _count(what)
        return original(self, *args, **kwargs)

    setattr(cls, name, wrapper)


def instrument() -> None:
    """Wrap the constructors and the loop iteration (this process only)."""
    from anyio._backends import _asyncio as anyio_asyncio

    _wrap(asyncio.base_events.BaseEventLoop, "_run_once", "loop_iterations")
    _wrap(anyio_asyncio.CancelScope, "__init__", "cancel_scopes")
    _wrap(asyncio.Event, "__init__", "events")


def _task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    _count("tasks")
    return asyncio.Task(coro, loop=loop, **kwargs)


def _run_loop(
    name: str, func: Callable[[], Any], out: list[Any], backend: str = "asyncio"
) -> threading.Thread:
    def target() -> None:
        async def main() -> Any:
            if backend == "asyncio":
                asyncio.get_running_loop().set_task_factory(_task_factory)
            return await func()

        try:
            out.append(anyio.run(main, backend=backend))
        except BaseException as exc:  # reported by the caller
            out.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class _ServerThread:
    """The bench server on its own asyncio loop, in a thread of this process."""

    def __init__(self, directory: Path, backend: str = "asyncio") -> None:
        self.port = 0
        self._ready = threading.Event()
        self._stop: Any = None
        #: Runs a callback in the server's loop, from another thread.
        self._call_soon: Callable[[Callable[[], Any]], Any] | None = None
        self._out: list[Any] = []

        async def run() -> None:
            if backend == "trio":
                import trio

                self._call_soon = trio.lowlevel.current_trio_token().run_sync_soon
            else:
                self._call_soon = asyncio.get_running_loop().call_soon_threadsafe
            self._stop = anyio.Event()
            async with anyio.create_task_group() as tg:

                def ready(port: int) -> None:
                    self.port = port
                    self._ready.set()

                tg.start_soon(m2m_side.serve, directory, ready)
                await self._stop.wait()
                tg.cancel_scope.cancel()

        self._thread = _run_loop("server", run, self._out, backend)
        if not self._ready.wait(60):
            raise RuntimeError(f"server did not start: {self._out}")

    def call(self, func: Callable[[], Any]) -> Any:
        """Run *func* in the server's loop (synchronously) and return its result."""
        assert self._call_soon is not None
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(func())
            done.set()

        self._call_soon(run)
        done.wait(30)
        return box[0]

    def stop(self) -> None:
        assert self._call_soon is not None
        self._call_soon(self._stop.set)
        self._thread.join(30)


def _client_run(func: Callable[[], Any]) -> Any:
    out: list[Any] = []
    _run_loop("client", func, out).join(300)
    if not out or isinstance(out[0], BaseException):
        raise RuntimeError(f"client failed: {out}")
    return out[0]


def counts(directory: Path, n: int) -> dict[str, dict[str, float]]:
    """Per-request counts of the server and the client (difference of n and 2n requests)."""
    server = _ServerThread(directory)
    client = m2m_side.make_client(directory)
    snapshots: list[collections.Counter[tuple[str, str]]] = []
    sites: list[collections.Counter[tuple[str, str, str]]] = []

    async def run() -> None:
        with anyio.fail_after(300):
            ch = await client.connect(HOST, server.port)
            try:
                for _ in range(50):
                    await ch.request(MESSAGE)
                for count in (n, 2 * n):
                    await anyio.sleep(0.05)
                    before, before_sites = COUNTS.copy(), SITES.copy()
                    for _ in range(count):
                        await ch.request(MESSAGE)
                    await anyio.sleep(0.05)
                    snapshots.append(COUNTS - before)
                    sites.append(SITES - before_sites)
            finally:
                await ch.aclose()

    try:
        _client_run(run)
    finally:
        server.stop()
    result: dict[str, dict[str, float]] = {}
    for who in ("server", "client"):
        result[who] = {
            what: (snapshots[1][who, what] - snapshots[0][who, what]) / n
            for what in ("loop_iterations", "cancel_scopes", "events", "tasks")
        }
    if _TRACK_SITES:
        diff = sites[1] - sites[0]
        for (who, what, site), got in sorted(diff.items(), key=lambda kv: -kv[1]):
            if got >= n // 2:
                print(f"  {who:6s} {what:13s} {got / n:5.2f}  {site}")
    return result


# -- memory per idle connection -----------------------------------------------------------


def _hold(directory: Path, port: int, n: int) -> None:
    """Child: open *n* sessions (one request each), say so, hold them until stdin closes."""
    client = m2m_side.make_client(directory)

    async def run() -> None:
        with anyio.fail_after(600):
            channels = []
            try:
                for _ in range(n):
                    ch = await client.connect(HOST, port)
                    await ch.request(MESSAGE)
                    channels.append(ch)
                print("ready", flush=True)
                with anyio.CancelScope() as scope:
                    await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
                    scope.cancel()
            finally:
                for ch in channels:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                        await ch.aclose()

    anyio.run(run, backend="asyncio")


def memory(directory: Path, n: int, lines: str = "", backend: str = "asyncio") -> dict[str, Any]:
    """Bytes per idle connection held by the server, by source file (tracemalloc).

    *backend*: the server's (``asyncio``: the native path unless ``M2MPROTO_NATIVE=0``;
    ``trio``); the clients always run on asyncio in a child process."""
    tracemalloc.start(1)
    server = _ServerThread(directory, backend)

    def snapshot() -> tuple[tracemalloc.Snapshot, int]:
        gc.collect()
        if backend == "asyncio":
            tasks = len(asyncio.all_tasks(asyncio.get_running_loop()))
        else:  # trio (anyio's task list needs no task here)
            tasks = len(anyio.get_running_tasks())
        return tracemalloc.take_snapshot(), tasks

    def parked() -> collections.Counter[str]:
        """Where the server's tasks wait (innermost frame of each; asyncio only)."""
        where: collections.Counter[str] = collections.Counter()
        if backend != "asyncio":
            return where
        for task in asyncio.all_tasks(asyncio.get_running_loop()):
            names, coro = [], task.get_coro()
            while coro is not None and hasattr(coro, "cr_code"):
                names.append(coro.cr_code.co_name)
                coro = coro.cr_await
            where[" > ".join(names[-4:])] += 1
        return where

    def open_clients(count: int) -> subprocess.Popen[str]:
        argv = ["-m", "bench.rr_counts", "--hold", str(count), "--port", str(server.port)]
        child = subprocess.Popen(
            [sys.executable, *argv, "--dir", str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            child.kill()
            raise RuntimeError("client holder failed")
        return child

    def close(child: subprocess.Popen[str]) -> None:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(60)

    close(open_clients(1))  # warm-up: caches, the static key, one connection came and went
    import time

    time.sleep(0.5)
    before, tasks_before = server.call(snapshot)
    child = open_clients(n)
    time.sleep(0.5)
    after, tasks_after = server.call(snapshot)
    waits = server.call(parked)
    close(child)
    server.stop()
    tracemalloc.stop()
    by_file: dict[str, float] = {}
    for stat in after.compare_to(before, "filename"):
        name = stat.traceback[0].filename
        short = name.split("/site-packages/")[-1].split("/lib/python3")[-1]
        short = short.split("/m2mproto/")[-1] if "/m2mproto/" in short else short
        by_file[short] = by_file.get(short, 0.0) + stat.size_diff / n
    total = sum(by_file.values())
    by_line = {}
    if lines:
        for stat in after.compare_to(before, "lineno"):
            frame = stat.traceback[0]
            if lines in frame.filename and abs(stat.size_diff) >= n * 32:
                by_line[f"{frame.filename.split('/')[-1]}:{frame.lineno}"] = stat.size_diff / n
    return {
        "bytes_per_conn": total,
        "tasks_per_conn": (tasks_after - tasks_before) / n,
        "by_file": dict(sorted(by_file.items(), key=lambda kv: -kv[1])),
        "parked": {k: v for k, v in waits.items() if v >= n},
        "by_line": by_line,
    }


# -- Ir per round trip (valgrind) -------------------------------------------------------------


def ir_run(n: int, counted: bool = False) -> None:
    """*n* in-memory round trips on asyncio and nothing else (for callgrind)."""
    from m2mproto.identity import Identity
    from m2mproto.transport import Server, memory_pair

    server = Server(Identity.generate(), authorizer_factory=lambda: None)  # no tokens

    @server.request("echo")
    async def echo(value: Any, ctx: Any) -> Any:
        return value

    async def run() -> None:
        if counted:
            asyncio.get_running_loop().set_task_factory(_task_factory)
        async with memory_pair(server=server) as (client, _server):
            for _ in range(20):
                await client.request("echo", MESSAGE)
            before = COUNTS.copy()
            for _ in range(n):
                await client.request("echo", MESSAGE)
            if counted:
                got = COUNTS - before
                print(
                    "in memory, both sides, per round trip: "
                    + "  ".join(f"{what} {got[who, what] / n:.2f}" for who, what in sorted(got)),
                    flush=True,
                )

    if counted:
        instrument()
    anyio.run(run, backend="asyncio")


def main(argv: list[str] | None = None) -> int:
    global _TRACK_SITES
    parser = argparse.ArgumentParser(prog="python -m bench.rr_counts")
    parser.add_argument("--counts", type=int, default=0, help="requests per counting run")
    parser.add_argument("--sites", action="store_true", help="where scopes/events are made")
    parser.add_argument("--memory", type=int, default=0, help="idle connections to measure")
    parser.add_argument("--ir", type=int, default=0, help="in-memory round trips (callgrind)")
    parser.add_argument("--lines", default="", help="by line, for files matching this")
    parser.add_argument("--top", type=int, default=12, help="source files listed (memory)")
    parser.add_argument(
        "--backend", default="asyncio", choices=("asyncio", "trio"), help="server's (memory)"
    )
    parser.add_argument("--hold", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hold:
        _hold(Path(args.dir), args.port, args.hold)
        return 0
    if args.ir:
        ir_run(args.ir, args.sites)
        return 0
    if not (args.counts or args.memory):
        args.counts, args.memory = 500, 200
    _TRACK_SITES = args.sites
    with tempfile.TemporaryDirectory(prefix="m2m-counts-") as tmp:
        directory = Path(tmp)
        m2m_side.make_material(directory)
        if args.counts:
            instrument()
            got = counts(directory, args.counts)
            for who, figures in got.items():
                print(
                    f"{who:6s} per request: "
                    + "  ".join(f"{what} {value:.2f}" for what, value in figures.items()),
                    flush=True,
                )
        if args.memory:
            mem = memory(directory, args.memory, args.lines, args.backend)
            print(
                f"server per idle connection: {mem['bytes_per_conn']:.0f} B traced"
                f" (tracemalloc), {mem['tasks_per_conn']:.2f} tasks",
                flush=True,
            )
            for name, size in list(mem["by_file"].items())[: args.top]:
                print(f"  {size:8.0f} B  {name}")
            for line, size in mem["by_line"].items():
                print(f"  {size:8.0f} B  {line}")
            for where, got in mem["parked"].items():
                print(f"  {got / args.memory:4.1f} tasks/conn waiting in {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
