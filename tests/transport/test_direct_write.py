"""Requests and replies written from the calling task (Pump.flush): cancellation safety.

A request or reply is written by the task that made it when the transport is
idle, inside a shielded scope: a cancelled caller never leaves half a record
on the wire, and an abort still ends a write the transport does not take.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream
from transport_util import make_server

from m2mproto.transport import ConnectionClosedError, Context, memory_pair
from m2mproto.transport._pump import Pump

pytestmark = pytest.mark.anyio


def _echo_server() -> Any:
    server = make_server(authorizer_factory=lambda: None)

    @server.request("echo")
    async def echo(value: Any, ctx: Context) -> Any:
        if value.get("sleep"):
            await anyio.sleep(value["sleep"])
        return value

    return server


async def test_cancelled_requests_leave_the_session_usable() -> None:
    """Many concurrent requests, some cancelled at random points: every reply that
    arrives is the right one, no record is corrupted, and the session still works."""
    rng = random.Random(9)
    replies: list[tuple[int, Any]] = []
    cancelled = 0

    with anyio.fail_after(30):
        async with memory_pair(server=_echo_server(), max_buffer_chunks=2) as (client, _srv):

            async def call(i: int, timeout: float) -> None:
                nonlocal cancelled
                value = {"i": i, "pad": bytes(rng.randrange(0, 3000)), "sleep": timeout / 2}
                with anyio.move_on_after(timeout) as scope:
                    replies.append((i, await client.request("echo", value)))
                cancelled += scope.cancelled_caught

            async with anyio.create_task_group() as tg:
                for i in range(120):
                    tg.start_soon(call, i, rng.choice([0.0, 0.0005, 0.002, 0.01, 1.0]))
                    if i % 7 == 0:
                        await anyio.sleep(0)

            assert all(reply["i"] == i for i, reply in replies)
            assert cancelled > 0 and len(replies) > 0
            assert len(replies) + cancelled == 120
            # the session survived: framing and record counters are intact
            for n in range(5):
                assert (await client.request("echo", {"n": n}))["n"] == n
            assert not client.closed


class _StuckSend(ByteStream):
    """Wraps a byte stream; ``send`` never completes once ``stuck`` is set."""

    def __init__(self, inner: ByteStream) -> None:
        self.inner = inner
        self.stuck = False
        self.entered = anyio.Event()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        if self.stuck:
            self.entered.set()
            await anyio.sleep_forever()
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes


async def test_a_cancelled_caller_does_not_cut_a_write_but_abort_does() -> None:
    with anyio.fail_after(20):
        async with memory_pair(server=_echo_server()) as (client, _srv):
            assert (await client.request("echo", {"n": 1}))["n"] == 1
            if not isinstance(client._pump, Pump):
                # the native pump has no send slot to hold: transport.write never waits
                pytest.skip("a write that waits exists only on the anyio path")
            wrapper = _StuckSend(client._pump.transport)
            client._pump.transport = wrapper
            wrapper.stuck = True
            outcome: list[str] = []

            async def call() -> None:
                with anyio.move_on_after(0.05):
                    try:
                        await client.request("echo", {"n": 2})
                    except ConnectionClosedError:
                        outcome.append("closed")
                outcome.append("ended")

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await wrapper.entered.wait()  # the caller itself is writing
                assert client._pump._sending
                await anyio.sleep(0.3)  # its deadline passed: the shield keeps the write whole
                assert outcome == []
                with anyio.fail_after(5):
                    await client.abort()  # ... but an abort ends it
            assert outcome[-1] == "ended"
            assert client.closed
            assert not client._pump._sending
