"""Shared helpers for the transport tests: identities, tokens, a running server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from m2mproto.identity import AgentId, Identity
from m2mproto.tokens import issue
from m2mproto.transport import Server

AUTHORITY = Identity.from_seed(bytes(range(32)))
SERVER_ID = Identity.from_seed(bytes(range(1, 33)))
CLIENT_ID = Identity.from_seed(bytes(range(2, 34)))


def token(
    caps: Iterable[str], holder: AgentId | None = None, *, ttl: float = 3600, now: float = 0
) -> bytes:
    """A token from AUTHORITY to *holder* (CLIENT_ID) for SERVER_ID."""
    return issue(
        AUTHORITY,
        holder or CLIENT_ID.agent_id,
        list(caps),
        now=now or time.time(),
        ttl=ttl,
        audience=SERVER_ID.agent_id,
    )


def make_server(**kwargs: Any) -> Server:
    kwargs.setdefault("trust_roots", [AUTHORITY.agent_id])
    return Server(SERVER_ID, **kwargs)


@asynccontextmanager
async def running_tcp(server: Server) -> AsyncIterator[tuple[str, int]]:
    """Serve *server* on 127.0.0.1 (ephemeral port) for the block."""
    async with anyio.create_task_group() as tg:
        address = await tg.start(server.serve_tcp, "127.0.0.1", 0)
        try:
            yield address
        finally:
            tg.cancel_scope.cancel()
