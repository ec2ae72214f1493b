"""Reliability proofs (a) and (b) (spec/reliability.md §6, 10.1/6 and 10.1/7) at minimum scale.

Figures are printed.

(a) 10,000 messages through the fault proxy, which cuts the connection at least
    20 times at random points (RST, truncation, bit flips, dropped records,
    blackholes): every message is delivered exactly once, in order, with
    matching hashes, and the sender's outbox ends empty.
(b) the same with the sender in a separate process that is SIGKILLed
    mid-stream and restarted on its SQLite outbox.

``M2M_LONG=1`` scales (a) to its extended form (more runs).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from rel_util import AUTHORITY, CLIENT_ID, SERVER_ID, payload, token

from m2mproto.config import Configuration
from m2mproto.reliable import Delivery, ReliableReceiver, ReliableSender, SqliteDedup
from m2mproto.testing.faultproxy import FaultProxy, Schedule
from m2mproto.transport import Server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

LONG = os.environ.get("M2M_LONG") == "1"
#: Fast failure detection so blackholes cost about a second each.
FAST = Configuration(keepalive_interval=0.25, idle_timeout=1.0, close_timeout=0.5,
                     handshake_timeout=2.0)  # fmt: skip
HERE = Path(__file__).parent


class Checker:
    """The receiving application: logs deliveries and checks each payload's hash."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.bad_hash = 0

    async def __call__(self, body: Any, delivery: Delivery) -> None:
        if hashlib.sha256(body["p"]).digest() != body["h"]:
            self.bad_hash += 1
        self.seqs.append(body["i"])


def message(seed: int, i: int) -> dict[str, Any]:
    p = payload(seed, i, 48)
    return {"i": i, "p": p, "h": hashlib.sha256(p).digest()}


async def run_a(seed: int, count: int, connections: int) -> dict[str, Any]:
    checker = Checker()
    receiver = ReliableReceiver(checker)
    server = Server(SERVER_ID, trust_roots=[AUTHORITY.agent_id], config=FAST)
    receiver.install(server, "feed")
    schedule = Schedule.random(
        seed,
        connections=connections,
        kinds=("reset", "truncate", "corrupt", "drop_record", "swap_records", "blackhole",
               "half_close", "duplicate_record"),
        max_byte=3000,
        max_record=3,
        blackhole_ms=0,
    )  # fmt: skip
    start = anyio.current_time()
    try:
        async with anyio.create_task_group() as tg:
            target = await tg.start(server.serve_tcp, "127.0.0.1", 0)
            proxy = FaultProxy(target, schedule)
            address = await tg.start(proxy.serve)
            with anyio.fail_after(240):
                async with ReliableSender(
                    address,
                    identity=CLIENT_ID,
                    tokens=[token()],
                    resource="feed",
                    config=FAST,
                    backoff_max=0.2,
                    max_in_flight=256,
                    peer=SERVER_ID.agent_id,
                ) as sender:
                    for i in range(count):
                        sender.queue(message(seed, i))
                        if i % 256 == 255:
                            await anyio.sleep(0)  # let the writer run while we queue
                    await sender.flush()
            tg.cancel_scope.cancel()
    except BaseException:
        print(schedule.describe())
        raise
    elapsed = anyio.current_time() - start
    expected = list(range(count))
    result = {
        "elapsed": elapsed,
        "fired": len(proxy.fired),
        "connections": sender.connections,
        "failures": sender.failures,
        "resent": sender.resent,
        "duplicates_dropped": receiver.duplicates,
        "lost": len(set(expected) - set(checker.seqs)),
        "duplicated": len(checker.seqs) - len(set(checker.seqs)),
        "in_order": checker.seqs == expected,
        "bad_hash": checker.bad_hash,
        "outbox_left": len(sender.outbox),
        "kinds": sorted({f.kind for _, f in proxy.fired}),
    }
    if not result["in_order"] or result["fired"] < 20:
        print(schedule.describe())
    return result


async def test_a_10000_messages_survive_20_cuts() -> None:
    runs = [(11, 10_000, 30)] + ([(s, 5_000, 30) for s in range(200)] if LONG else [])
    for seed, count, connections in runs:
        r = await run_a(seed, count, connections)
        print(f"proof (a) seed={seed}: {r}")
        assert r["fired"] >= 20
        assert r["lost"] == 0 and r["duplicated"] == 0 and r["in_order"]
        assert r["bad_hash"] == 0 and r["outbox_left"] == 0


# ---------------------------------------------------------------------- (b)


def sender_process(address: tuple[str, int], state: Path, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "sender_proc.py"), address[0], str(address[1]),
         str(state), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip


async def test_b_sigkilled_sender_restarts_on_its_sqlite_outbox(tmp_path: Path) -> None:
    count = 10_000
    checker = Checker()
    store = SqliteDedup(tmp_path / "dedup.sqlite3")
    receiver = ReliableReceiver(checker, store)
    server = Server(SERVER_ID, trust_roots=[AUTHORITY.agent_id], config=FAST)
    receiver.install(server, "feed")
    kills = 0
    async with anyio.create_task_group() as tg:
        address = await tg.start(server.serve_tcp, "127.0.0.1", 0)
        with anyio.fail_after(240):
            for kill_at in (1500, 4000, 7000):  # SIGKILL mid-stream, three times
                proc = sender_process(address, tmp_path, count)
                try:
                    while len(checker.seqs) < kill_at and proc.poll() is None:
                        await anyio.sleep(0.005)
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                finally:
                    await anyio.to_thread.run_sync(proc.wait)
                assert proc.returncode == -signal.SIGKILL
            proc = sender_process(address, tmp_path, count)
            out, err = await anyio.to_thread.run_sync(proc.communicate)
            assert proc.returncode == 0, err.decode()
        tg.cancel_scope.cancel()
    store.close()
    expected = list(range(count))
    lost = len(set(expected) - set(checker.seqs))
    duplicated = len(checker.seqs) - len(set(checker.seqs))
    print(f"proof (b): {kills} SIGKILLs, delivered {len(checker.seqs)}, lost {lost}, "
          f"duplicated {duplicated}, resent after restarts {receiver.duplicates} dropped; "
          f"final sender: {out.decode().strip()}")  # fmt: skip
    assert kills == 3
    assert lost == 0 and duplicated == 0 and checker.seqs == expected
    assert checker.bad_hash == 0
    assert "outbox_left=0" in out.decode()
