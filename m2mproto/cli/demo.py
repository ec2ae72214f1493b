"""``m2m demo``: the README's main job, on an embedded default.

In a temporary directory it makes a root authority and two agents, issues a
token to agent A and a narrower delegated one to agent B, starts the reference
peer (``m2m serve``, a separate process) on 127.0.0.1 with an ephemeral port,
has A and B authenticate and exchange messages and requests, shows B refused
outside its delegation, revokes B's token and shows the refusal, and prints a
transcript.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from ..errors import M2MError
from ..identity import Identity
from ..tokens import FileRevocationStore, delegate, issue, revoke
from . import error_name
from .peer import require_backend

__all__ = ["register", "run_demo"]

#: Seconds to wait for the reference peer to start.
START_TIMEOUT = 20.0


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a local demo: two agents, a reference peer, tokens")
    p.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="async backend"
    )
    p.add_argument("--keep", metavar="DIR", help="keep keys, tokens and logs in DIR")
    p.add_argument(
        "--nats",
        metavar="URL",
        help="carry the sessions over a NATS server you run (nats://...); revocation is pushed",
    )
    p.set_defaults(handler=cmd_demo)


@dataclass
class Step:
    agent: str
    action: str
    resource: str
    outcome: str
    ok: bool


class Transcript:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    def add(self, agent: str, action: str, resource: str, outcome: str, ok: bool) -> None:
        self.steps.append(Step(agent, action, resource, outcome, ok))
        mark = "ok " if ok else "no "
        print(f"  {mark} {agent:<2} {action:<8} {resource:<12} {outcome}", flush=True)

    def table(self) -> str:
        headers = ("#", "agent", "action", "resource", "expected", "outcome")
        rows = [
            (str(i), s.agent, s.action, s.resource, "allowed" if s.ok else "refused", s.outcome)
            for i, s in enumerate(self.steps, 1)
        ]
        widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(len(headers))]
        line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

        def fmt(values: tuple[str, ...]) -> str:
            cells = (f" {v.ljust(w)} " for v, w in zip(values, widths, strict=True))
            return "|" + "|".join(cells) + "|"

        return "\n".join([line, fmt(headers), line, *(fmt(r) for r in rows), line])


#: NATS subject prefix of the demo (its own, so it never meets other traffic).
NATS_PREFIX = "m2mdemo"


def _start_peer(
    workdir: Path, root_id: str, backend: str, nats: str | None = None
) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-m", "m2mproto", "serve",
        "--key", str(workdir / "server.key"),
        "--listen", "127.0.0.1:0",
        "--root", root_id,
        "--revocations", str(workdir / "revocations.bin"),
        "--log-file", str(workdir / "log.jsonl"),
        "--backend", backend,
    ]  # fmt: skip
    if nats:  # no port, no revocation file: the revocation feed arrives over NATS
        cmd[cmd.index("--listen") : cmd.index("--listen") + 2] = ["--nats", nats]
        cmd[cmd.index("--revocations") : cmd.index("--revocations") + 2] = [
            "--service", "demo", "--nats-prefix", NATS_PREFIX,
        ]  # fmt: skip
    errlog = (workdir / "server.log").open("w")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=errlog, stdin=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    line = ""
    while time.monotonic() < deadline and not line:
        line = proc.stdout.readline()
        if proc.poll() is not None:
            break
    if not line.startswith("listening on "):
        proc.kill()
        raise M2MError(f"the reference peer did not start (see {workdir / 'server.log'})")
    return proc, line.split()[-1]


async def _scenario(
    workdir: Path, address: str, t: Transcript, ids: dict[str, Identity], nats: str | None = None
) -> None:
    from ..transport import connect

    host, port = address.rsplit(":", 1) if not nats else ("", "0")
    server_id = Identity.load(workdir / "server.key").agent_id
    tok_a = (workdir / "a.tok").read_bytes()
    tok_b = (workdir / "b.tok").read_bytes()

    introduced: set[str] = set()

    async def attempt(agent: str, token: bytes, action: str, resource: str, value: Any) -> bool:
        try:
            if nats:
                from ..transport.nats import connect_nats

                opener: Any = connect_nats(
                    nats, identity=ids[agent], tokens=[token], peer=server_id,
                    service="demo", prefix=NATS_PREFIX,
                )  # fmt: skip
            else:
                opener = connect(
                    (host, int(port)), identity=ids[agent], tokens=[token], peer=server_id
                )
            async with opener as session:
                if agent not in introduced:
                    introduced.add(agent)
                    print(
                        f"  --  {agent} authenticated the peer as {session.peer.short_id}... "
                        f"(channel binding {session.handshake_hash.hex()[:16]}...)",
                        flush=True,
                    )
                if action == "request":
                    reply = await session.request(resource, value, timeout=10)
                    t.add(agent, action, resource, f"reply {json.dumps(reply)}", True)
                else:
                    await session.send(resource, value, confirm=True)
                    t.add(agent, action, resource, "delivered", True)
                return True
        except M2MError as exc:
            t.add(agent, action, resource, f"refused: {error_name(exc)}", False)
            return False

    await attempt("A", tok_a, "request", "echo", {"hello": "from A"})
    await attempt("A", tok_a, "send", "log", {"event": "A was here"})
    await attempt("B", tok_b, "request", "echo", {"hello": "from B"})
    await attempt("B", tok_b, "send", "log", {"event": "B tries to log"})

    # Revoke B's token (signed by A, its issuer); the peer reloads the file.
    statement = revoke(ids["A"], [tok_b], now=time.time())
    if nats:
        from ..transport.nats import publish_revocation

        how = await publish_revocation(nats, statement, prefix=NATS_PREFIX)
        print(f"  --  A revokes B's token and publishes it over NATS ({how})", flush=True)
        await anyio.sleep(0.5)
    else:
        FileRevocationStore(workdir / "revocations.bin").add(statement)
        print("  --  A revokes B's token; the reference peer reloads its revocation file",
              flush=True)  # fmt: skip
        await anyio.sleep(1.0)  # the peer polls the file every 0.5 s
    await attempt("B", tok_b, "request", "echo", {"hello": "from B again"})
    await attempt("A", tok_a, "request", "echo", {"still": "works"})


def run_demo(workdir: Path, backend: str = "asyncio", nats: str | None = None) -> int:
    """Run the whole demo in *workdir*; return the exit status."""
    print(f"m2mproto demo (working directory {workdir})\n")
    ids: dict[str, Identity] = {}
    for name, file in (("root", "root.key"), ("A", "a.key"), ("B", "b.key"), ("S", "server.key")):
        ids[name] = Identity.generate()
        ids[name].save(workdir / file)
    for name, label in (("root", "root authority"), ("S", "reference peer"),
                        ("A", "agent A"), ("B", "agent B")):  # fmt: skip
        print(f"  {label:<15} {ids[name].agent_id.text}")
    now = time.time()
    server = ids["S"].agent_id  # tokens name their audience: only the reference peer accepts them
    tok_a = issue(ids["root"], ids["A"].agent_id, ["echo=*", "log=*"], now=now, ttl=3600,
                  audience=server)  # fmt: skip
    tok_b = delegate(ids["A"], tok_a, ids["B"].agent_id, ["echo=*"], now=now, ttl=600,
                     audience=server)  # fmt: skip
    (workdir / "a.tok").write_bytes(tok_a)
    (workdir / "b.tok").write_bytes(tok_b)
    (workdir / "revocations.bin").write_bytes(b"")  # the peer requires its revocation file
    print("\n  root -> A: echo=*, log=*   (1 h)")
    print("  A -> B:    echo=*          (10 min, delegated: B may not log)\n")

    proc, address = _start_peer(workdir, ids["root"].agent_id.text, backend, nats)
    transcript = Transcript()
    try:
        print(f"  reference peer listening on {address}\n")
        anyio.run(_scenario, workdir, address, transcript, ids, nats, backend=backend)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print("\nTranscript")
    print(transcript.table())
    expected = [True, True, True, False, False, True]
    got = [s.ok for s in transcript.steps]
    if got != expected:
        print(f"\nunexpected outcome: {got} (expected {expected})", file=sys.stderr)
        return 1
    print("\nAll steps behaved as expected: authenticated, authorized, delegated, revoked.")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    require_backend(args.backend)
    if args.keep:
        workdir = Path(args.keep)
        workdir.mkdir(parents=True, exist_ok=True)
        return run_demo(workdir, args.backend, args.nats)
    with tempfile.TemporaryDirectory(prefix="m2m-demo-") as tmp:
        os.chmod(tmp, 0o700)
        return run_demo(Path(tmp), args.backend, args.nats)
