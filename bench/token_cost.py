"""Server CPU spent on capability tokens: per TOKEN frame and per handshake (spec/tokens.md §6.12).

Not a test: a benchmark-style report. Two in-memory Connections (sans-IO, no
sockets); the responder ("server") has a real TokenAuthorizer. CPU is
``time.process_time()`` around the server's ``receive_data`` + event drain, the
median of many repetitions, so the figures are the server's own work.

    .venv/bin/python -m bench.token_cost [--json FILE] [--frames N] [--handshakes N]

Figures:

* ``verify_*_us``: one :func:`m2mproto.tokens.verify` of an 8-link chain:
  uncached (8 Ed25519 verifications), cached (0), wrong holder (0: refused
  before any signature);
* ``frame_*_us``: one TOKEN frame (plus one small message, which keeps the
  frames productive) at the server: a distinct chain each time (first
  presentation), the same chain again (cached), a distinct chain the peer
  does not hold, and the message alone (baseline);
* ``handshake_*_ms``: the server's CPU for a whole handshake whose payload
  carries 0, 1 or 23 copies of the chain: 23 copies are refused by the
  handshake token cap by default, or verified through the cache when the cap
  is raised to 23.

``signatures_*`` count the Ed25519 verifications actually run (the verifier's
own counter). The script also runs against an older checkout (PYTHONPATH):
what the older code lacks is reported as null.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from m2mproto.config import Configuration
from m2mproto.connection import NEED_DATA, Connection, Role
from m2mproto.errors import LocalProtocolError, TokenError
from m2mproto.identity import AgentId, Identity
from m2mproto.tokens import TokenAuthorizer, TokenLimits, delegate, issue, verify

try:
    from m2mproto.tokens.cose import signature_verifications
except ImportError:  # an older checkout: no counter

    def signature_verifications() -> int:
        return -1


NOW = 1_767_225_600
START = 1000.0
ROOT = Identity.from_seed(b"\x61" * 32)
MIDDLE = [Identity.from_seed(bytes([0x70 + i]) * 32) for i in range(7)]
CLIENT = Identity.from_seed(b"\x62" * 32)
SERVER = Identity.from_seed(b"\x63" * 32)
OTHER = Identity.from_seed(b"\x64" * 32)


def _entropy(seed: int) -> Callable[[int], bytes]:
    counter = iter(range(seed, seed + 1000))
    return lambda n: next(counter).to_bytes(n, "big")


def chain8(seed: int, holder: Identity = CLIENT) -> bytes:
    """A valid 8-link chain ROOT -> MIDDLE[0..6] -> *holder*, capabilities ``*=*``."""
    holders = [*MIDDLE, holder]
    token = issue(ROOT, holders[0].agent_id, ["*=*"], now=NOW, ttl=86400, entropy=_entropy(seed))
    for i in range(1, 8):
        token = delegate(
            holders[i - 1],
            token,
            holders[i].agent_id,
            ["*=*"],
            now=NOW,
            ttl=86400,
            entropy=_entropy(seed * 100 + i),
        )
    return token


def _limits(**kw: Any) -> TokenLimits:
    """TokenLimits with *kw* where the running code knows the field."""
    known = {f.name for f in fields(TokenLimits)}
    return TokenLimits(**{k: v for k, v in kw.items() if k in known})


def _config(**kw: Any) -> Configuration:
    known = {f.name for f in fields(Configuration)}
    base = Configuration(clock_offset=NOW - START)
    return replace(base, **{k: v for k, v in kw.items() if k in known})


def _drain(c: Connection) -> list[object]:
    out: list[object] = []
    for _ in range(100_000):
        try:
            ev = c.next_event()
        except LocalProtocolError:  # closed: nothing more to read
            break
        if ev is NEED_DATA:
            break
        out.append(ev)
    return out


class Link:
    """A client and a server Connection; the server's CPU is measured on demand."""

    def __init__(self, tokens: Sequence[bytes], authz: TokenAuthorizer, **server_cfg: Any) -> None:
        self.a = Connection(Role.INITIATOR, CLIENT, _config(), tokens=list(tokens))
        self.b = Connection(Role.RESPONDER, SERVER, _config(**server_cfg), authorizer=authz)
        self.server_cpu = 0.0
        self.a.start(START)
        self.b.start(START)

    def shuttle(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            data = self.a.data_to_send()
            if data and self.b.state.name != "CLOSED":
                moved = True
                t0 = time.process_time()
                self.b.receive_data(data, START)
                _drain(self.b)
                self.server_cpu += time.process_time() - t0
            data = self.b.data_to_send()
            if data and self.a.state.name != "CLOSED":
                moved = True
                self.a.receive_data(data, START)
                _drain(self.a)
            if not moved:
                return


def _authz(**limits: Any) -> TokenAuthorizer:
    return TokenAuthorizer(
        trust_roots=[ROOT.agent_id], audience=SERVER.agent_id, limits=_limits(**limits)
    )


def _median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


def bench_verify(n: int) -> dict[str, Any]:
    leaf = chain8(1)
    holder: AgentId = CLIENT.agent_id
    out: dict[str, Any] = {}
    for name, kwargs, count in (
        ("uncached", {"holder": holder}, max(20, n // 10)),
        ("wrong_holder", {"holder": OTHER.agent_id}, n),
    ):
        samples = []
        sig0 = signature_verifications()
        for _ in range(count):
            t0 = time.process_time()
            with contextlib.suppress(TokenError):  # the wrong holder is refused on purpose
                verify(leaf, trust_roots=[ROOT.agent_id], now=NOW, **kwargs)
            samples.append(time.process_time() - t0)
        out[f"verify_{name}_us"] = _median_us(samples)
        out[f"signatures_verify_{name}"] = _per(signature_verifications() - sig0, count)
    authz = _authz()
    if hasattr(authz, "cache"):
        authz.accept_tokens(holder, [leaf], NOW)
        samples = []
        sig0 = signature_verifications()
        for _ in range(n):
            t0 = time.process_time()
            authz.accept_tokens(holder, [leaf], NOW)
            samples.append(time.process_time() - t0)
        out["verify_cached_us"] = _median_us(samples)
        out["signatures_verify_cached"] = _per(signature_verifications() - sig0, n)
    else:
        out["verify_cached_us"] = out["signatures_verify_cached"] = None
    return out


def _per(total: int, n: int) -> float | None:
    if signature_verifications() < 0:
        return None  # an older checkout: not counted
    return round(total / n, 2)


def bench_frames(n: int) -> dict[str, Any]:
    """Server CPU per TOKEN frame (with one message), and for the message alone."""
    distinct = [chain8(100 + i) for i in range(n)]
    stolen = [chain8(100 + i, holder=OTHER) for i in range(n)]
    same = chain8(1)
    out: dict[str, Any] = {}
    cases: list[tuple[str, Callable[[int], bytes | None]]] = [
        ("message_only", lambda i: None),
        ("first_time", lambda i: distinct[i]),
        ("cached", lambda i: same),
        ("wrong_holder", lambda i: stolen[i]),
    ]
    for name, token_for in cases:
        # A budget and cache large enough to measure the verification itself.
        link = Link(
            [same], _authz(verification_burst=10**9, verification_cache_entries=10 * n + 64)
        )
        link.shuttle()
        sid = link.a.open_stream("log")
        link.a.send_message(sid, 0)
        link.shuttle()
        samples = []
        sig0 = signature_verifications()
        for i in range(n):
            token = token_for(i)
            if token is not None:
                link.a.present_token(token)
            link.a.send_message(sid, i)
            before = link.server_cpu
            link.shuttle()
            samples.append(link.server_cpu - before)
        assert link.b.state.name == "ESTABLISHED", link.b.state
        out[f"frame_{name}_us"] = _median_us(samples)
        out[f"signatures_frame_{name}"] = _per(signature_verifications() - sig0, n)
    return out


def bench_handshakes(n: int) -> dict[str, Any]:
    leaf = chain8(1)
    out: dict[str, Any] = {}
    variants: list[tuple[str, list[bytes], dict[str, Any]]] = [
        ("0_tokens", [], {}),
        ("1_chain", [leaf], {}),
        ("23_copies_default", [leaf] * 23, {}),
        ("23_copies_cap_23", [leaf] * 23, {"max_handshake_tokens": 23}),
    ]
    for name, tokens, cfg in variants:
        samples = []
        closed: set[str] = set()
        sig0 = signature_verifications()
        for _ in range(n):
            link = Link(tokens, _authz(), **cfg)
            link.shuttle()
            samples.append(link.server_cpu)
            closed.add(link.b.state.name)
        out[f"handshake_{name}_ms"] = round(statistics.median(samples) * 1e3, 2)
        out[f"signatures_handshake_{name}"] = _per(signature_verifications() - sig0, n)
        out[f"state_handshake_{name}"] = "/".join(sorted(closed))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.token_cost", description=__doc__.split("\n")[0]
    )
    p.add_argument("--frames", type=int, default=200, help="TOKEN frames per figure")
    p.add_argument("--handshakes", type=int, default=20, help="handshakes per figure")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    figures: dict[str, Any] = {"chain_bytes": len(chain8(1))}
    figures.update(bench_verify(args.frames * 5))
    figures.update(bench_frames(args.frames))
    figures.update(bench_handshakes(args.handshakes))
    for key, value in figures.items():
        print(f"{key:40} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
