"""Scale-out: three `m2m serve --nats` replicas in one queue group, a bounded client
load, one replica killed mid-run, a revocation published mid-run, a late replica."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from m2mproto import Identity
from m2mproto.errors import AuthorizationError, ErrorCode
from m2mproto.tokens import issue, revoke
from m2mproto.transport import ConnectionClosedError
from m2mproto.transport.nats import NatsLink, connect_nats, publish_revocation

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

M2M = [sys.executable, "-m", "m2mproto"]
WORKERS = 18
RUN_SECONDS = 7.0
KILL_AT, REVOKE_AT = 1.5, 4.0  # the killed replica's sessions are back before the revocation


def _log_time(line: str) -> float:
    stamp = line[:23]  # "2026-12-02 15:50:01,123"
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:23]) / 1000


class Replica:
    def __init__(
        self, workdir: Path, n: int, url: str, root: str, prefix: str, backend: str
    ) -> None:
        self.err = workdir / f"replica{n}.err"
        self.proc = subprocess.Popen(
            [*M2M, "serve", "--key", str(workdir / "server.key"), "--root", root,
             "--nats", url, "--service", "svc", "--nats-prefix", prefix, "--backend", backend],
            stdout=subprocess.PIPE, stderr=self.err.open("w"), text=True,
        )  # fmt: skip

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on nats "), (line, self.err.read_text())

    def lines(self, text: str) -> list[str]:
        return [ln for ln in self.err.read_text().splitlines() if text in ln]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def test_three_replicas_kill_and_revoke(
    nats_url: str, tmp_path: Path, anyio_backend: str
) -> None:
    authority, server, good, bad = (Identity.generate() for _ in range(4))
    server.save(tmp_path / "server.key", overwrite=True)
    now = time.time()
    good_token = issue(authority, good.agent_id, ["echo=*"], now=now, ttl=600)
    bad_token = issue(authority, bad.agent_id, ["echo=*"], now=now, ttl=600)
    prefix = "r" + os.urandom(4).hex()
    root = authority.agent_id.text
    replicas = [Replica(tmp_path, n, nats_url, root, prefix, anyio_backend) for n in range(3)]
    stats: dict[str, Any] = {"lost": 0, "reestablished": 0, "requests": 0}
    stats.update(refused_at={}, why=[])
    try:
        for r in replicas:
            r.wait_ready()
        stop = anyio.Event()
        revoked_at: list[float] = []

        async def worker(i: int, link: NatsLink) -> None:
            identity, token = (bad, bad_token) if i % 2 else (good, good_token)
            lost = False
            for _ in range(200):  # sessions, bounded
                if stop.is_set():
                    return
                established = False
                try:
                    async with connect_nats(link, identity=identity, peer=server.agent_id,
                                            service="svc", tokens=[token], prefix=prefix,
                                            keepalive=0.3, liveness=1.5) as s:  # fmt: skip
                        established = True
                        if lost:
                            stats["reestablished"] += 1
                            lost = False
                        for n in range(10_000):
                            if stop.is_set():
                                return
                            try:
                                await s.request("echo", {"i": i, "n": n}, timeout=5)
                            except AuthorizationError:
                                stats["refused_at"].setdefault(i, time.time())
                                await anyio.sleep(0.05)
                                continue
                            stats["requests"] += 1
                            await anyio.sleep(0.05)
                except ConnectionClosedError as exc:
                    if exc.close_code == ErrorCode.TOKEN_INVALID:  # revoked: refused at handshake
                        stats["refused_at"].setdefault(i, time.time())
                    elif established and not stop.is_set():
                        stats["why"].append(repr(exc.__cause__ or exc)[:100])
                        stats["lost"] += 1
                        lost = True
                    await anyio.sleep(0.1)

        async with NatsLink.connect(nats_url) as link, anyio.create_task_group() as tg:
            for i in range(WORKERS):
                tg.start_soon(worker, i, link)
            await anyio.sleep(KILL_AT)
            # SIGKILL the busiest replica: no goodbye to anyone
            counts = [len(r.lines("handshake complete (server)")) for r in replicas]
            killed = counts.index(max(counts))
            replicas[killed].proc.kill()
            await anyio.sleep(REVOKE_AT - KILL_AT)
            statement = revoke(authority, [bad_token], now=time.time())
            revoked_at.append(time.time())
            assert await publish_revocation(link, statement, prefix=prefix) == "jetstream"
            await anyio.sleep(RUN_SECONDS - REVOKE_AT)
            stop.set()
        # a replica started after the revocation replays it from JetStream
        late = Replica(tmp_path, 3, nats_url, root, prefix, anyio_backend)
        replicas.append(late)
        late.wait_ready()
        for r in replicas:
            r.stop()
    finally:
        for r in replicas:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()

    served = [len(r.lines("handshake complete (server)")) for r in replicas[:3]]
    applied = [r.lines("revocation from") for r in replicas]
    survivors = [n for n in range(3) if n != killed]
    delays = [_log_time(applied[n][0]) - revoked_at[0] for n in survivors]
    print(f"\nsessions per replica at the kill {counts}, killed #{killed}, at the end {served}; "
          f"lost {stats['lost']}, re-established "
          f"{stats['reestablished']}; requests {stats['requests']}; "
          f"revocation reached replicas in {[round(d, 3) for d in delays]} s")  # fmt: skip
    print("sessions lost:", stats["why"])
    assert sum(n >= 1 for n in served) >= 2, served  # the queue group spread the sessions
    assert stats["requests"] > WORKERS * 10
    assert stats["lost"] >= 1  # the killed replica's sessions...
    assert stats["reestablished"] == stats["lost"]  # ...were all re-established elsewhere
    assert not applied[killed]  # killed before the revocation
    assert all(0 <= d < 1.0 for d in delays), delays
    assert applied[3], "the late replica did not replay the revocation"
    refused = stats["refused_at"]
    assert set(refused) == {i for i in range(WORKERS) if i % 2}  # every revoked holder refused
    assert all(t - revoked_at[0] < 1.5 for t in refused.values()), refused
