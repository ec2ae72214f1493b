"""Sender process for proof (b): queue messages durably, deliver them, exit.

Usage: sender_proc.py HOST PORT STATE_DIR COUNT. Message *i* is queued iff the
SQLite outbox's ``next_seq`` is above *i*, so a restarted process continues
exactly where the killed one stopped queueing; the outbox resends the rest.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))

from rel_util import CLIENT_ID, SERVER_ID, payload, token

from m2mproto.config import Configuration
from m2mproto.reliable import ReliableSender, SqliteOutbox

FAST = Configuration(keepalive_interval=0.25, idle_timeout=1.0, close_timeout=0.5)


async def main(host: str, port: int, state: Path, count: int) -> None:
    outbox = SqliteOutbox(state / "outbox.sqlite3")
    start = outbox.next_seq
    async with ReliableSender(
        (host, port), identity=CLIENT_ID, tokens=[token()], resource="feed", outbox=outbox,
        config=FAST, backoff_max=0.2, max_in_flight=256, peer=SERVER_ID.agent_id,
    ) as sender:  # fmt: skip
        for i in range(start, count):
            p = payload(11, i, 48)
            sender.queue({"i": i, "p": p, "h": hashlib.sha256(p).digest()})
            if i % 64 == 63:
                await anyio.sleep(0)  # let the writer run while we queue
        with anyio.fail_after(120):
            await sender.flush()
    print(f"resumed_at={start} connections={sender.connections} outbox_left={len(outbox)}")
    outbox.close()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
