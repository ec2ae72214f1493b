"""Shared helpers: identities, tokens, a server with a checking sink, the proxy."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from m2mproto.identity import AgentId, Identity
from m2mproto.testing.faultproxy import FaultProxy, Schedule
from m2mproto.tokens import issue
from m2mproto.transport import Server

AUTHORITY = Identity.from_seed(bytes(range(40, 72)))
SERVER_ID = Identity.from_seed(bytes(range(41, 73)))
CLIENT_ID = Identity.from_seed(bytes(range(42, 74)))
OTHER_ID = Identity.from_seed(bytes(range(43, 75)))


def token(holder: AgentId | None = None, caps: tuple[str, ...] = ("*=*",)) -> bytes:
    return issue(
        AUTHORITY,
        holder or CLIENT_ID.agent_id,
        list(caps),
        now=time.time(),
        ttl=3600,
        audience=SERVER_ID.agent_id,
    )


def payload(seed: int, seq: int, size: int = 64) -> bytes:
    """A deterministic payload for message *seq* of run *seed*."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{seq}:{counter}".encode()).digest()
        counter += 1
    return out[:size]


@dataclass
class SinkLog:
    """What the checking sink saw: deliveries, corrupt payloads, how streams ended."""

    delivered: list[tuple[int, bytes]] = field(default_factory=list)
    corrupt: int = 0
    clean_ends: list[int] = field(default_factory=list)  # messages seen on cleanly ended streams
    aborted: list[str] = field(default_factory=list)


def sink_server(log: SinkLog, **kwargs: Any) -> Server:
    """A server whose ``feed`` stream handler checks every message's hash."""
    server = Server(SERVER_ID, trust_roots=[AUTHORITY.agent_id], **kwargs)

    @server.message_stream("feed")
    async def feed(stream: Any, ctx: Any) -> None:
        seen = 0
        try:
            while True:  # until the end of the stream
                try:
                    msg = await stream.receive()
                except anyio.EndOfStream:
                    log.clean_ends.append(seen)
                    await stream.send({"count": seen})
                    return
                if hashlib.sha256(msg["p"]).digest() != msg["h"]:
                    log.corrupt += 1
                log.delivered.append((msg["s"], msg["p"]))
                seen += 1
        except Exception as exc:
            log.aborted.append(type(exc).__name__)
            raise

    @server.request("echo")
    async def echo(message: Any, ctx: Any) -> Any:
        return message

    return server


@asynccontextmanager
async def server_and_proxy(
    server: Server, schedule: Schedule | None = None, *, record_aware: bool = True
) -> AsyncIterator[tuple[FaultProxy, tuple[str, int]]]:
    async with anyio.create_task_group() as tg:
        target = await tg.start(server.serve_tcp, "127.0.0.1", 0)
        proxy = FaultProxy(target, schedule, record_aware=record_aware)
        address = await tg.start(proxy.serve)
        try:
            yield proxy, address
        finally:
            tg.cancel_scope.cancel()
