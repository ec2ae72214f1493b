"""The fault proxy against a real server (m2mproto.testing.faultproxy).

Invariants, for every fault: the run ends within a bound (no hang);
corruption is never delivered (every delivered payload matches its hash);
a loss surfaces as an aborted stream or a closed session, never as a clean
end: a stream the receiver saw end cleanly carried every message sent on it.
The seeded schedule is printed on failure (pytest shows captured stdout).
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest
from rel_util import CLIENT_ID, SERVER_ID, SinkLog, payload, server_and_proxy, sink_server, token

from m2mproto.config import Configuration
from m2mproto.errors import ErrorCode, M2MError
from m2mproto.testing.faultproxy import ConnectionPlan, Fault, FaultProxy, Schedule
from m2mproto.transport import connect

pytestmark = pytest.mark.anyio

#: Bound of every run: a fault must never turn into a hang.
RUN_BOUND = 15.0
#: Payload bytes per message (200 messages span several 64 KiB records).
SIZE = 1024
#: Short timers so blackholes end quickly.
CONFIG = Configuration(idle_timeout=2.0, keepalive_interval=0.5, close_timeout=1.0,
                       handshake_timeout=3.0)  # fmt: skip


async def feed_run(address: tuple[str, int], seed: int, count: int) -> dict[str, Any]:
    """Send *count* hashed messages on one stream and wait for the sink's count."""
    outcome: dict[str, Any] = {"error": None, "acked": None}
    try:
        with anyio.fail_after(RUN_BOUND):
            async with connect(
                address,
                identity=CLIENT_ID,
                tokens=[token()],
                config=CONFIG,
                peer=SERVER_ID.agent_id,
            ) as session:
                stream = await session.open_message_stream("feed")
                import hashlib

                for seq in range(count):
                    p = payload(seed, seq, SIZE)
                    await stream.send({"s": seq, "p": p, "h": hashlib.sha256(p).digest()})
                await stream.send_eof()
                reply = await stream.receive()
                outcome["acked"] = reply["count"]
    except M2MError as exc:
        outcome["error"] = exc
    except (anyio.BrokenResourceError, anyio.EndOfStream, OSError) as exc:
        outcome["error"] = exc
    return outcome


def check_invariants(log: SinkLog, count: int, seed: int, outcome: dict[str, Any]) -> None:
    assert log.corrupt == 0, "a corrupted payload was delivered"
    for seq, p in log.delivered:
        assert p == payload(seed, seq, SIZE)
    seqs = [s for s, _ in log.delivered]
    assert seqs == list(range(len(seqs))), "delivered out of order or with a gap"
    for seen in log.clean_ends:
        assert seen == count, f"a clean end after {seen} of {count} messages (loss hidden)"
    if outcome["acked"] is not None:
        assert outcome["acked"] == count


KIND_PLANS: dict[str, list[Fault]] = {
    "latency": [Fault(kind="latency", direction="c2s", ms=20, jitter_ms=10),
                Fault(kind="latency", direction="s2c", ms=20)],
    "slicer_1_byte": [Fault(kind="slicer", direction="c2s", size=1),
                      Fault(kind="slicer", direction="s2c", size=1)],
    "bandwidth": [Fault(kind="bandwidth", direction="c2s", rate=200_000)],
    "truncate_at_record": [Fault(kind="truncate", direction="c2s", record=2)],
    "truncate_inside_record": [Fault(kind="truncate", direction="c2s", record=2, inside=True)],
    "truncate_s2c": [Fault(kind="truncate", direction="s2c", record=1, inside=True)],
    "blackhole": [Fault(kind="blackhole", direction="c2s", record=2, ms=0)],
    "reset": [Fault(kind="reset", direction="c2s", record=2, inside=True)],
    "half_close": [Fault(kind="half_close", direction="c2s", record=2)],
    "corrupt_handshake": [Fault(kind="corrupt", direction="c2s", at=60, bits=1)],
    "corrupt_record": [Fault(kind="corrupt", direction="c2s", record=1, bits=1)],
    "drop_record": [Fault(kind="drop_record", direction="c2s", record=1)],
    "duplicate_record": [Fault(kind="duplicate_record", direction="c2s", record=1)],
    "replay_record": [Fault(kind="replay_record", direction="c2s", record=1)],
    "swap_records": [Fault(kind="swap_records", direction="c2s", record=1)],
}  # fmt: skip
LOSSY = {k for k in KIND_PLANS if k not in ("latency", "slicer_1_byte", "bandwidth")}


@pytest.mark.parametrize("kind", sorted(KIND_PLANS))
async def test_each_fault_is_bounded_detected_and_never_a_clean_loss(kind: str) -> None:
    schedule = Schedule(seed=7, plans=[ConnectionPlan(tuple(KIND_PLANS[kind]))])
    log = SinkLog()
    count = 5 if kind.startswith("slicer") else 200  # byte by byte is slow
    start = anyio.current_time()
    async with server_and_proxy(sink_server(log, config=CONFIG), schedule) as (proxy, address):
        outcome = await feed_run(address, 7, count)
        print(schedule.describe(), "\nfired:", proxy.fired, "\noutcome:", outcome)
        await anyio.sleep(0.1)
    assert anyio.current_time() - start < RUN_BOUND + 5
    check_invariants(log, count, 7, outcome)
    if kind in LOSSY:
        assert proxy.fired, "the fault never fired"
        assert outcome["error"] is not None, "a lossy fault went unnoticed by the sender"
        assert outcome["acked"] is None
    else:
        assert outcome["error"] is None and outcome["acked"] == count
        assert log.clean_ends == [count]
    if kind.startswith(("corrupt_record", "drop", "duplicate", "replay", "swap")):
        # the server saw an unauthentic record: the session's close says DECRYPT_ERROR
        err = outcome["error"]
        assert getattr(err, "close_code", None) == ErrorCode.DECRYPT_ERROR, err


async def test_random_bit_flips_are_always_detected() -> None:
    """At CI scale: single-bit flips at random offsets of handshake and records."""
    runs = 60
    fired = detected = 0
    rng = random.Random(99)
    log = SinkLog()
    plans = []
    for _ in range(runs):
        direction = rng.choice(("c2s", "s2c"))
        plans.append(ConnectionPlan((Fault(kind="corrupt", direction=direction,
                                           at=rng.randrange(0, 6000), bits=1),)))  # fmt: skip
    schedule = Schedule(seed=99, plans=plans)
    async with server_and_proxy(sink_server(log, config=CONFIG), schedule) as (proxy, address):
        for i in range(runs):
            before = len(proxy.fired)
            outcome = await feed_run(address, 1000 + i, 40)
            if len(proxy.fired) > before:
                fired += 1
                if outcome["error"] is not None:
                    detected += 1
                else:  # pragma: no cover - would be a protocol failure
                    print(schedule.describe())
    assert log.corrupt == 0
    assert fired >= runs // 2
    assert detected == fired
    print(f"bit flips: {fired} fired, {detected} detected, 0 delivered")


async def test_seeded_schedule_is_reproducible_and_printed() -> None:
    a = Schedule.random(5, connections=40, toxicity=0.7)
    b = Schedule.random(5, connections=40, toxicity=0.7)
    assert a.describe() == b.describe()
    assert a.describe() != Schedule.random(6, connections=40, toxicity=0.7).describe()
    assert "seed=5" in a.describe()
    assert 10 < sum(bool(p.faults) for p in a.plans) < 40


async def test_cut_all_resets_live_connections() -> None:
    log = SinkLog()
    async with server_and_proxy(sink_server(log, config=CONFIG)) as (proxy, address):
        with anyio.fail_after(10):
            async with connect(
                address, identity=CLIENT_ID, tokens=[token()], peer=SERVER_ID.agent_id
            ) as session:
                assert await session.request("echo", 1) == 1
                assert proxy.cut_all() == 1
                await session.wait_closed()
                assert session.close_info is not None
                assert session.close_info[0] == ErrorCode.TRUNCATED


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_passthrough_on_both_backends(anyio_backend: str) -> None:
    log = SinkLog()
    async with server_and_proxy(sink_server(log, config=CONFIG)) as (proxy, address):
        outcome = await feed_run(address, 3, 100)
    assert outcome == {"error": None, "acked": 100}
    assert proxy.connections == 1 and not proxy.fired


async def test_non_protocol_traffic_is_forwarded_raw() -> None:
    async def echo(stream: Any) -> None:
        async with stream:
            async for chunk in stream:
                await stream.send(chunk)

    async with anyio.create_task_group() as tg:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.start_soon(listener.serve, echo)
        proxy = FaultProxy(("127.0.0.1", port))
        address = await tg.start(proxy.serve)
        with anyio.fail_after(5):
            async with await anyio.connect_tcp(*address) as s:
                await s.send(b"GET / HTTP/1.1\r\n\r\n")
                got = b""
                while len(got) < 18:
                    got += await s.receive()
        assert got == b"GET / HTTP/1.1\r\n\r\n"
        tg.cancel_scope.cancel()
