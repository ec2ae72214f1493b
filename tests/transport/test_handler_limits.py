"""Rapid Reset / MadeYouReset: a reset stream's handler is cancelled, so the
handlers a peer keeps running never exceed ``max_concurrent_streams``.

The attacker is a real peer over loopback TCP (the project's own handshake and
record codec, see ``test_limits.Hostile``): it opens a stream with a valid
message, so a handler starts, then gets the stream reset, either by resetting
it itself or by sending a second message the server's core must refuse (the
server then resets it). The core frees the stream's slot at once, so without
the rule every open starts one more handler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio
import pytest
from test_limits import Hostile, benign_request, serving, token, wait_for
from transport_util import make_server

from m2mproto.config import Configuration
from m2mproto.errors import ErrorCode
from m2mproto.frames import Frame, MessageFrame, OpenFrame, ResetFrame
from m2mproto.transport import Context, DataStream, Server

pytestmark = pytest.mark.anyio

LIMIT = 100
STREAMS = 1000
TOKEN = token(["slow=*", "upload=*", "echo=*"])


class Gauge:
    """Counts handlers running now and the most ever running at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.started = 0

    async def hold(self) -> None:
        self.now += 1
        self.started += 1
        self.peak = max(self.peak, self.now)
        try:
            await anyio.sleep(60)  # far longer than the test: only a cancel ends it
        finally:
            self.now -= 1


def victim(gauge: Gauge) -> Server:
    # churn budgets off: this test is about handlers, not about the core's churn limit
    cfg = Configuration(max_concurrent_streams=LIMIT, stream_churn_burst=10**6)
    server = make_server(config=cfg)

    @server.request("slow")
    async def slow(message: Any, ctx: Context) -> Any:
        await gauge.hold()

    @server.stream("upload")
    async def upload(stream: DataStream, ctx: Context) -> None:
        await gauge.hold()

    @server.request("echo")
    async def echo(message: Any, ctx: Any) -> Any:
        return message

    return server


def peer_resets(sid: int) -> list[Frame]:
    """Open with a valid message, then reset it ourselves (Rapid Reset)."""
    return [
        OpenFrame(sid, "slow"),
        MessageFrame(sid, b"\xf6", last=True),
        ResetFrame(sid, ErrorCode.CANCELLED, final_size=1),
    ]


def bad_second_message(sid: int) -> list[Frame]:
    """Open with a valid message, then a second one the core cannot decode: the
    server resets the stream itself (MadeYouReset)."""
    return [
        OpenFrame(sid, "slow"),
        MessageFrame(sid, b"\xf6", last=True),
        MessageFrame(sid, b"\x1c", last=True),  # reserved additional info: DECODE_ERROR
    ]


def stream_then_reset(sid: int) -> list[Frame]:
    """A stream handler starts at the open; the peer resets it."""
    return [
        OpenFrame(sid, "upload"),
        MessageFrame(sid, b"\xf6", last=True),
        ResetFrame(sid, ErrorCode.CANCELLED, final_size=1),
    ]


ATTACKS: dict[str, Callable[[int], Sequence[Frame]]] = {
    "peer_reset": peer_resets,
    "bad_second_message": bad_second_message,
    "stream_reset": stream_then_reset,
}


@pytest.mark.parametrize("kind", sorted(ATTACKS))
async def test_reset_streams_do_not_leave_handlers_running(kind: str) -> None:
    gauge = Gauge()
    server = victim(gauge)
    build = ATTACKS[kind]
    async with serving(server) as address:
        h = await Hostile.connect(address, tokens=[TOKEN])
        for _ in range(STREAMS // 10):  # ten streams per round, 1,000 in all
            programs = [build(h.new_stream()) for _ in range(10)]
            # the valid opening first, so that the handlers start ...
            await h.send([f for p in programs for f in p[:2]])
            await anyio.sleep(0.005)
            # ... then what gets the streams reset
            await h.send([f for p in programs for f in p[2:]])
        await wait_for(lambda: len(server.sessions) == 1)
        (session,) = server.sessions
        # more handlers started than the limit: without cancellation they would pile up
        await wait_for(lambda: gauge.started > 2 * LIMIT)
        await anyio.sleep(0.5)
        assert not session.closed, session.close_info
        benign = await benign_request(address)
        running = session.running_handlers
        await h.aclose()
        await wait_for(lambda: not server.sessions)
    assert gauge.peak <= LIMIT, gauge.peak
    assert running <= LIMIT and gauge.now == 0
    assert benign < 5.0
    print(f"{kind}: {gauge.started} handlers started, peak {gauge.peak}, benign {benign:.3f}s")


async def test_a_handler_is_cancelled_when_the_core_resets_its_stream() -> None:
    """One stream, observed closely: the core's own reset (remote=False) cancels."""
    gauge = Gauge()
    server = victim(gauge)
    async with serving(server) as address:
        h = await Hostile.connect(address, tokens=[TOKEN])
        sid = h.new_stream()
        await h.send([OpenFrame(sid, "slow"), MessageFrame(sid, b"\xf6", last=True)])
        await wait_for(lambda: gauge.now == 1)
        await h.send([MessageFrame(sid, b"\x1c", last=True)])
        await wait_for(lambda: gauge.now == 0)
        (session,) = server.sessions
        assert session.running_handlers == 0 and not session.closed
        await h.aclose()
