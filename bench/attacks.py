"""Attack a live ``m2m serve`` with classes of hostile input; measure a benign client meanwhile.

Not a test: a benchmark-style report. Each attack runs for a fixed time against a
fresh ``m2m serve`` process while a benign client (its own process) makes echo
requests and records their latency. For each attack the report gives the benign
client's median and p99 latency during the attack (and the baseline before it),
the requests that failed, the server's CPU seconds and RSS growth, and how the
server treated the attacker (closed it with which code, after how many frames).

    python -m bench.attacks                 # every attack, 5 s each
    python -m bench.attacks --only token_flood,dead_stream --seconds 3 --json out.json

The attacker is the conformance suite's hostile peer (``m2m_interop.peer``): it
speaks the protocol correctly up to the point where it misbehaves on purpose.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2m_interop.netlink import TcpLink
from m2m_interop.peer import Bugs, HostilePeer, Session
from m2mproto import cbor
from m2mproto.errors import ErrorCode
from m2mproto.frames import (
    MessageFrame,
    OpenFrame,
    ResetFrame,
    StreamFrame,
    TokenFrame,
)
from m2mproto.identity import Identity
from m2mproto.tokens import delegate, issue

HERE = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- setup


@dataclass
class World:
    """Keys, tokens and a running ``m2m serve``."""

    dir: Path
    root: Identity
    server: Identity
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def token(self, holder: Identity, caps: list[str], depth: int = 1) -> bytes:
        """A chain of *depth* links from the root down to *holder*."""
        now = time.time()
        chain = [Identity.generate() for _ in range(depth - 1)] + [holder]
        tok = issue(self.root, chain[0].agent_id, caps, now=now, ttl=3600,
                    audience=self.server.agent_id)
        for parent, child in itertools.pairwise(chain):
            tok = delegate(parent, tok, child.agent_id, caps, now=now, ttl=3600)
        return tok

    def start(self) -> None:
        key = self.dir / "server.key"
        self.server.save(str(key), overwrite=True)
        m2m = [sys.executable, "-m", "m2mproto"]
        self.proc = subprocess.Popen(
            [*m2m, "serve", "--key", str(key), "--listen", "127.0.0.1:0",
             "--root", self.root.agent_id.text, "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise RuntimeError(f"m2m serve did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def usage(self) -> tuple[float, int]:
        """(CPU seconds, RSS bytes) of the server process."""
        assert self.proc is not None
        pid = self.proc.pid
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / tick
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        return cpu, rss


# ----------------------------------------------------------------------------- benign client

BENIGN = """
import json, sys, time, anyio
from m2mproto import Identity
from m2mproto.transport import connect

host, port, key, tok, peer, mode, seconds = sys.argv[1:8]
seconds = float(seconds)
ident = Identity.load(key)
token = open(tok, "rb").read()

async def once(session):
    t = time.perf_counter()
    await session.request("echo", {"x": 1}, timeout=5)
    return time.perf_counter() - t

async def main():
    end = time.monotonic() + seconds
    out = []
    if mode == "session":
        async with await connect((host, int(port)), identity=ident, tokens=[token],
                                 peer=peer) as s:
            while time.monotonic() < end:
                try:
                    out.append(await once(s))
                except Exception as exc:
                    out.append(type(exc).__name__)
                await anyio.sleep(0.02)
    else:
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                with anyio.fail_after(5):
                    async with await connect((host, int(port)), identity=ident,
                                             tokens=[token], peer=peer) as s:
                        await once(s)
                out.append(time.perf_counter() - t)
            except Exception as exc:
                out.append(type(exc).__name__)
            await anyio.sleep(0.05)
    print(json.dumps(out))

anyio.run(main)
"""


def start_benign(world: World, mode: str, seconds: float) -> subprocess.Popen[bytes]:
    ident = Identity.generate()
    key = world.dir / f"benign-{time.monotonic_ns()}.key"
    ident.save(str(key), overwrite=True)
    tok = world.dir / f"{key.name}.tok"
    tok.write_bytes(world.token(ident, ["echo=*"]))
    return subprocess.Popen(
        [sys.executable, "-c", BENIGN, world.host, str(world.port), str(key), str(tok),
         world.server.agent_id.text, mode, str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )


def collect(proc: subprocess.Popen[bytes]) -> tuple[list[float], int]:
    out, _ = proc.communicate(timeout=120)
    items = json.loads(out.decode() or "[]")
    ok = [x for x in items if isinstance(x, float)]
    return ok, len(items) - len(ok)


# ----------------------------------------------------------------------------- attacker


@dataclass
class Outcome:
    """How the server treated one attack."""

    connections: int = 0
    frames: int = 0
    closes: dict[str, int] = field(default_factory=dict)
    first_close_after: int | None = None  # frames on the first connection before its CLOSE
    notes: list[str] = field(default_factory=list)

    def closed(self, code: int | None, frames_on_conn: int) -> None:
        name = "EOF" if code is None else _code_name(code)
        self.closes[name] = self.closes.get(name, 0) + 1
        if self.first_close_after is None:
            self.first_close_after = frames_on_conn


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


def connect_hostile(world: World, ident: Identity, tokens: list[bytes]) -> Session | None:
    link = TcpLink(world.host, world.port)
    link.first_wait = 1.0
    peer = HostilePeer(link, bugs=Bugs(identity=ident, tokens=tokens))
    got = peer.handshake()
    if not isinstance(got, Session):
        link.sock.close()
        return None
    link.first_wait = 0.0
    link.quiet = 0.0
    return got


def server_verdict(s: Session) -> tuple[bool, int | None]:
    """Non-blocking: (the server ended this connection, CLOSE code if any)."""
    link = s.link
    sock: socket.socket = link.sock  # type: ignore[attr-defined]
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready:
        return False, None
    try:
        got = s.receive()
    except Exception:  # an undecodable answer ends the connection for us
        return True, None
    code = got.close_code()
    return (code is not None or got.closed), code


AttackFn = Callable[[World, float, Outcome], None]


def _flood(world: World, seconds: float, out: Outcome, ident: Identity, tokens: list[bytes],
           setup: Callable[[Session], Any], batch: Callable[[Session, Any], list[Any]]) -> None:
    """Reconnect and repeat *batch* until the time is up; record each server verdict."""
    end = time.monotonic() + seconds
    for _ in range(10_000):  # bounded by the deadline
        if time.monotonic() >= end:
            return
        s = connect_hostile(world, ident, tokens)
        if s is None:
            out.notes.append("handshake refused")
            time.sleep(0.05)
            continue
        out.connections += 1
        state = setup(s)
        for sent in range(1, 1_000_000):  # bounded by the deadline
            if time.monotonic() >= end:
                break
            try:
                s.send(*batch(s, state))
            except OSError:
                out.closed(None, sent - 1)
                break
            out.frames += 1
            done, code = server_verdict(s)
            if done:
                out.closed(code, sent)
                break
        s.link.sock.close()  # type: ignore[attr-defined]


def attack_made_you_reset(world: World, seconds: float, out: Outcome) -> None:
    """Open streams the server must refuse (no capability) and bad messages it must reset."""
    ident = Identity.generate()
    tok = world.token(ident, ["log=msg/send"])

    def batch(s: Session, _: Any) -> list[Any]:
        a, b = s.open_stream(), s.open_stream()
        return [OpenFrame(a, "echo"), MessageFrame(a, cbor.encode(1), True, True),
                OpenFrame(b, "log"), MessageFrame(b, b"\xff\xff", True, True)]

    _flood(world, seconds, out, ident, [tok], lambda s: None, batch)


def attack_rapid_reset(world: World, seconds: float, out: Outcome) -> None:
    """Open authorized streams whose handler starts, then reset them at once."""
    ident = Identity.generate()
    tok = world.token(ident, ["echo=*"])

    def batch(s: Session, _: Any) -> list[Any]:
        a = s.open_stream()
        body = cbor.encode(1)
        return [OpenFrame(a, "echo"), MessageFrame(a, body, True, False),
                ResetFrame(a, ErrorCode.CANCELLED, len(body))]

    _flood(world, seconds, out, ident, [tok], lambda s: None, batch)


def attack_token_flood(world: World, seconds: float, out: Outcome) -> None:
    """Present a valid 8-link chain again and again in TOKEN frames."""
    ident = Identity.generate()
    tok = world.token(ident, ["echo=*"], depth=8)
    _flood(world, seconds, out, ident, [tok], lambda s: None,
           lambda s, _: [TokenFrame(tok)] * 4)


def attack_handshake_tokens(world: World, seconds: float, out: Outcome) -> None:
    """Handshakes that each carry as many copies of an 8-link chain as fit (23 of a small one)."""
    ident = Identity.generate()
    tok = world.token(ident, ["echo=*"], depth=8)
    copies = min(23, 60_000 // len(tok))
    out.notes.append(f"{copies} copies of a {len(tok)}-byte chain per handshake")
    end = time.monotonic() + seconds
    for _ in range(10_000):  # bounded by the deadline
        if time.monotonic() >= end:
            return
        try:
            link = TcpLink(world.host, world.port)
        except OSError:
            out.notes.append("connect refused")
            time.sleep(0.05)
            continue
        link.first_wait = 2.0
        got = HostilePeer(link, bugs=Bugs(identity=ident, tokens=[tok] * copies)).handshake()
        out.connections += 1
        if isinstance(got, Session):
            done, code = False, None
            for _ in range(20):
                done, code = server_verdict(got)
                if done:
                    break
                time.sleep(0.01)
            if done:
                out.closed(code, 0)
        else:
            out.closed(got.abort, 0)
        link.sock.close()


def attack_dead_stream(world: World, seconds: float, out: Outcome) -> None:
    """Empty STREAM and MESSAGE frames to a stream we reset and to skipped stream IDs."""
    ident = Identity.generate()
    tok = world.token(ident, ["echo=*"])

    def setup(s: Session) -> tuple[int, int]:
        a = s.open_stream()
        s.open_stream()  # skipped: never opened
        c = s.open_stream()
        s.send(OpenFrame(c, "echo"), ResetFrame(c, ErrorCode.CANCELLED, 0))
        return a, c

    def batch(s: Session, ids: tuple[int, int]) -> list[Any]:
        a, c = ids
        return [StreamFrame(c, b"", False), MessageFrame(c, b"", False, False),
                StreamFrame(a, b"", False)] * 30

    _flood(world, seconds, out, ident, [tok], setup, batch)


def attack_slots(world: World, seconds: float, out: Outcome) -> None:
    """Hold as many established, token-less sessions from one source as the server allows."""
    held: list[Session] = []
    end = time.monotonic() + seconds
    ident = Identity.generate()
    for _ in range(1_100):
        if time.monotonic() >= end:
            break
        try:
            s = connect_hostile(world, ident, [])
        except OSError:
            s = None
        if s is None:
            out.notes.append("refused")
            break
        held.append(s)
        out.connections += 1
    for _ in range(1_000):  # keep them until the time is up; note which the server ends
        if time.monotonic() >= end:
            break
        time.sleep(0.1)
    ended = 0
    for s in held:
        done, code = server_verdict(s)
        if done:
            ended += 1
            out.closed(code, 0)
        s.link.sock.close()  # type: ignore[attr-defined]
    out.notes.append(f"held {len(held)}, ended by the server {ended}")


ATTACKS: dict[str, tuple[AttackFn, str]] = {
    "made_you_reset": (attack_made_you_reset, "session"),
    "rapid_reset": (attack_rapid_reset, "session"),
    "token_flood": (attack_token_flood, "session"),
    "handshake_tokens": (attack_handshake_tokens, "fresh"),
    "dead_stream": (attack_dead_stream, "session"),
    "slots": (attack_slots, "fresh"),
}


def _stats(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"median_ms": None, "p99_ms": None}
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1e3, 2),
            "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3, 2)}


def run(name: str, seconds: float) -> dict[str, Any]:
    fn, mode = ATTACKS[name]
    with tempfile.TemporaryDirectory() as d:
        world = World(Path(d), Identity.generate(), Identity.generate())
        world.start()
        try:
            base = start_benign(world, mode, min(2.0, seconds))
            base_ok, base_fail = collect(base)
            cpu0, rss0 = world.usage()
            benign = start_benign(world, mode, seconds + 1.0)
            time.sleep(0.5)
            out = Outcome()
            t0 = time.monotonic()
            fn(world, seconds, out)
            elapsed = time.monotonic() - t0
            cpu1, rss1 = world.usage()
            ok, failed = collect(benign)
        finally:
            world.stop()
    return {
        "attack": name,
        "benign_mode": mode,
        "baseline": {**_stats(base_ok), "failed": base_fail},
        "during": {**_stats(ok), "failed": failed, "requests": len(ok)},
        "server_cpu_s": round(cpu1 - cpu0, 2),
        "server_rss_growth_mb": round((rss1 - rss0) / 2**20, 1),
        "attack_seconds": round(elapsed, 1),
        "attacker": {
            "connections": out.connections,
            "records_sent": out.frames,
            "server_closes": out.closes,
            "records_before_first_close": out.first_close_after,
            "notes": sorted(set(out.notes)),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__.split("\n")[0])
    p.add_argument("--only", help="comma-separated attacks: " + ", ".join(ATTACKS))
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each attack")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        p.error(f"unknown attack(s): {', '.join(unknown)}")
    results = []
    for name in names:
        r = run(name, args.seconds)
        results.append(r)
        b, d, a = r["baseline"], r["during"], r["attacker"]
        print(f"{name:17} benign median {b['median_ms']} -> {d['median_ms']} ms "
              f"(p99 {d['p99_ms']}, failed {d['failed']}/{d['requests'] + d['failed']}); "
              f"server cpu {r['server_cpu_s']} s, rss +{r['server_rss_growth_mb']} MB; "
              f"attacker: {a['connections']} conns, {a['records_sent']} records, "
              f"closes {a['server_closes']}, first close after {a['records_before_first_close']}"
              + (f"; {'; '.join(a['notes'])}" if a["notes"] else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
