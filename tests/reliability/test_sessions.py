"""Reliability proof (c): 1,000 concurrent authenticated sessions to one ``m2m serve``.

One client process (this one) holds 1,000 sessions to one ``m2m serve``
subprocess on loopback, clients spread over 127.0.0.2-127.0.0.9 (the
per-source handshake limit is per address), each exchanging
echo requests for a bounded time; then all close. Asserted: zero errors, every
session held to the end, the server's fds back to baseline, our fds and tasks
back to baseline. Reported: server RSS per session (from /proc).
"""

from __future__ import annotations

import gc
import os
import random
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))

from test_cli_peer import ok, start_serve, stop

from m2mproto.cli.peer import parse_hostport
from m2mproto.identity import Identity
from m2mproto.transport import connect

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SESSIONS = 1000
HOLD = float(os.environ.get("M2M_HOLD", "10"))  # seconds of traffic (long CI form: 120)
DIALERS = 32


def fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")  # pragma: no cover


def tasks() -> int:
    import asyncio

    return len(asyncio.all_tasks())


async def test_c_1000_concurrent_sessions(tmp_path: Path) -> None:
    d = tmp_path
    ids = {n: ok("keygen", "--out", f"{n}.key", cwd=d).strip() for n in ("root", "a", "srv")}
    ok("token", "issue", "--key", "root.key", "--to", ids["a"], "--cap", "echo=*",
       "--aud", ids["srv"], "--out", "a.tok", cwd=d)  # fmt: skip
    identity = Identity.load(d / "a.key")
    from m2mproto.cli.token import read_token

    tok = read_token(str(d / "a.tok"))
    peer = start_serve(d, "--root", ids["root"], "-q")
    server_pid = peer.proc.pid
    host, port = parse_hostport(peer.address)
    await anyio.sleep(0.3)
    base_server_fds, base_rss = fds(server_pid), rss_kib(server_pid)
    gc.collect()  # sockets of earlier tests in this process must not close mid-test
    base_fds, base_tasks = fds(), tasks()
    errors: list[BaseException] = []
    requests = 0
    served: set[int] = set()  # sessions that had at least one request answered
    established = 0
    all_up = anyio.Event()
    stop_traffic = anyio.Event()
    gate = anyio.Semaphore(DIALERS)
    held: dict[str, Any] = {}

    async def one(i: int) -> None:
        nonlocal requests, established
        rng = random.Random(i)
        try:
            async with gate:
                stream = await anyio.connect_tcp(host, port, local_host=f"127.0.0.{2 + i % 8}")
                opener = connect(stream, identity=identity, tokens=[tok], peer=ids["srv"])
                session = await opener
            async with session:
                established += 1
                if established == SESSIONS:
                    all_up.set()
                await all_up.wait()
                while not stop_traffic.is_set():
                    with anyio.move_on_after(rng.uniform(1.0, 3.0)):
                        await stop_traffic.wait()
                    if stop_traffic.is_set():
                        break
                    assert await session.request("echo", i, timeout=30) == i
                    requests += 1
                    served.add(i)
                if session.closed:
                    raise AssertionError(f"session {i} dropped: {session.close_info}")
        except BaseException as exc:
            errors.append(exc)
            all_up.set()
            raise

    start = anyio.current_time()
    try:
        with anyio.fail_after(HOLD + 120):
            async with anyio.create_task_group() as tg:
                for i in range(SESSIONS):
                    tg.start_soon(one, i)
                await all_up.wait()
                up = anyio.current_time() - start
                await anyio.sleep(0.5)
                held["rss"] = rss_kib(server_pid)
                held["server_fds"] = fds(server_pid)
                await anyio.sleep(HOLD)
                stop_traffic.set()
        closed_at = anyio.current_time()
        for _ in range(200):  # the server closes its side after ours
            if fds(server_pid) <= base_server_fds:
                break
            await anyio.sleep(0.05)
        server_fds_after = fds(server_pid)
        settle = anyio.current_time() - closed_at
    finally:
        assert stop(peer) == 0
    per_session = (held["rss"] - base_rss) / SESSIONS
    print(f"proof (c): {SESSIONS} sessions up in {up:.1f}s, held {HOLD:.0f}s, "
          f"{requests} echo requests, {len(errors)} errors; server RSS +{per_session:.1f} KiB "
          f"per session; server fds {base_server_fds} -> {held['server_fds']} -> "
          f"{server_fds_after} ({settle:.2f}s after close); client fds {base_fds} -> {fds()}, "
          f"tasks {base_tasks} -> {tasks()}")  # fmt: skip
    assert not errors, errors[:3]
    assert held["server_fds"] >= base_server_fds + SESSIONS
    assert server_fds_after == base_server_fds
    gc.collect()
    assert fds() <= base_fds and tasks() <= base_tasks
    # every session was alive and served while all were held (not a throughput floor:
    # the rate depends on the machine's load)
    assert served == set(range(SESSIONS)), SESSIONS - len(served)
    assert per_session < 64  # KiB per session: the memory budget
