"""A userspace fault-injection TCP proxy for tests (anyio).

Theory of operation
-------------------
:class:`FaultProxy` listens on 127.0.0.1 and forwards every accepted
connection to a target address. Each connection *n* gets a
:class:`ConnectionPlan` from a :class:`Schedule`: a tuple of :class:`Fault`
values, each bound to one direction (``"c2s"`` client to server, ``"s2c"``
server to client). A direction is one pipeline run by three tasks:

* the *reader* cuts the byte stream into units. In record-aware mode (the
  default) a unit is the 8-byte magic, then one length-prefixed frame
  (``length(2) || body``): handshake messages first (three from the XX
  initiator, one from the responder), then records, numbered from 0. An
  active attacker can do exactly this, since lengths are in clear. If the
  first bytes are not the m2mproto magic the pipeline falls back to raw
  chunks (unit = whatever ``receive`` returned, no record index).
* the *shaper* applies the unit and byte faults in order (record drop,
  duplicate, replay, swap; corruption; truncation, blackhole, reset,
  half-close at a byte offset or record index) and hands the surviving bytes
  to a delay line with their release time (latency, jitter, bandwidth);
* the *writer* releases them in order (slicing them into small writes when
  a slicer is active) to the destination socket.

Every random choice comes from ``random.Random`` seeded with the schedule's
seed, the connection number and the direction, so a failing run is replayed
exactly from :meth:`Schedule.describe` (print it on failure). The proxy counts
what fired in :attr:`FaultProxy.fired`. Everything is bounded: each
connection ends when either side closes, and the proxy is cancelled with
its task group.
"""

from __future__ import annotations

import contextlib
import math
import random
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

__all__ = [
    "FAULT_KINDS",
    "ConnectionPlan",
    "Direction",
    "Fault",
    "FaultProxy",
    "Schedule",
]

Direction = Literal["c2s", "s2c"]

#: m2mproto's magic (spec/handshake.md §2.1).
MAGIC = b"\x8bM2M\r\n\x1a\n"
#: Length-prefixed frames each side sends before its first record (Noise XX).
HANDSHAKE_FRAMES: dict[str, int] = {"c2s": 3, "s2c": 1}

#: Fault kinds and what they do (``at``: a byte offset into the direction's
#: output, or with ``record`` set the index of a post-handshake record).
FAULT_KINDS = {
    "latency": "delay every unit by ``ms`` (+ uniform jitter ``jitter_ms``)",
    "slicer": "write in chunks of ``size`` bytes (1: byte by byte), ``delay_ms`` apart",
    "bandwidth": "cap the direction at ``rate`` bytes per second",
    "truncate": "forward up to the trigger point, then close both sides (FIN)",
    "blackhole": "stop forwarding at the trigger; close both sides after ``ms`` (0: never)",
    "reset": "at the trigger, close both sides with RST (SO_LINGER 0)",
    "half_close": "at the trigger, send FIN in this direction only",
    "corrupt": "flip ``bits`` random bits in the unit holding the trigger",
    "drop_record": "drop record ``record``",
    "duplicate_record": "send record ``record`` twice",
    "replay_record": "send record ``record`` again after the next one",
    "swap_records": "send record ``record`` + 1 before record ``record``",
}
_SHAPING = frozenset({"latency", "slicer", "bandwidth"})
_RECORD_ONLY = frozenset({"drop_record", "duplicate_record", "replay_record", "swap_records"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One fault in one direction of one connection.

    Raises:
        ValueError: unknown kind or direction (a test-construction mistake).
    """

    #: One of :data:`FAULT_KINDS`.
    kind: str
    #: ``"c2s"`` or ``"s2c"``.
    direction: Direction = "c2s"
    #: Byte offset into this direction's output where the fault fires.
    at: int = 0
    #: Post-handshake record index where the fault fires (overrides ``at``);
    #: with ``inside`` a truncation/reset cuts in the middle of that record.
    record: int | None = None
    #: Cut inside the record rather than before it.
    inside: bool = False
    #: Milliseconds: latency, blackhole duration, slicer delay.
    ms: float = 0.0
    #: Latency jitter in milliseconds.
    jitter_ms: float = 0.0
    #: Slicer chunk size in bytes.
    size: int = 1
    #: Bandwidth in bytes per second.
    rate: float = 0.0
    #: Bits flipped by ``corrupt``.
    bits: int = 1

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.direction not in ("c2s", "s2c"):
            raise ValueError(f"unknown direction {self.direction!r}")
        if self.kind in _RECORD_ONLY and self.record is None:
            raise ValueError(f"{self.kind} needs a record index")

    def describe(self) -> str:
        """A one-line, replayable description."""
        where = (
            f"record {self.record}{' (inside)' if self.inside else ''}"
            if self.record is not None
            else f"byte {self.at}"
        )
        extra = {
            "latency": f" {self.ms}ms+-{self.jitter_ms}",
            "slicer": f" size={self.size} delay={self.ms}ms",
            "bandwidth": f" {self.rate:.0f}B/s",
            "blackhole": f" for {self.ms}ms",
            "corrupt": f" bits={self.bits}",
        }.get(self.kind, "")
        if self.kind in _SHAPING:
            where = "always"
        return f"{self.direction} {self.kind}{extra} at {where}"


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """The faults of one proxied connection."""

    faults: tuple[Fault, ...] = ()

    def for_direction(self, direction: Direction) -> tuple[Fault, ...]:
        return tuple(f for f in self.faults if f.direction == direction)


@dataclass(slots=True)
class Schedule:
    """Per-connection fault plans plus the seed for every random choice.

    Connection *n* (0-based, in accept order) gets ``plans[n]``, or no fault
    once the plans are used up.
    """

    seed: int
    plans: list[ConnectionPlan] = field(default_factory=list)

    @classmethod
    def random(
        cls,
        seed: int,
        *,
        connections: int,
        kinds: Sequence[str] = ("reset", "truncate", "corrupt", "drop_record", "blackhole"),
        toxicity: float = 1.0,
        max_record: int = 50,
        max_byte: int = 20000,
        blackhole_ms: float = 300.0,
    ) -> Schedule:
        """A seeded random timeline: for each of *connections*, with probability
        *toxicity*, one fault of a random kind, direction and position."""
        rng = random.Random(seed)
        plans: list[ConnectionPlan] = []
        for _ in range(connections):
            if rng.random() >= toxicity:
                plans.append(ConnectionPlan())
                continue
            kind = rng.choice(list(kinds))
            direction: Direction = rng.choice(("c2s", "s2c"))
            record = rng.randrange(max_record) if rng.random() < 0.5 else None
            if kind in _RECORD_ONLY and record is None:
                record = rng.randrange(max_record)
            fault = Fault(
                kind=kind,
                direction=direction,
                at=rng.randrange(1, max_byte),
                record=record,
                inside=rng.random() < 0.5,
                ms=blackhole_ms if kind == "blackhole" else 0.0,
                bits=rng.randint(1, 3),
            )
            plans.append(ConnectionPlan((fault,)))
        return cls(seed, plans)

    def plan(self, n: int) -> ConnectionPlan:
        """The plan of connection *n*."""
        return self.plans[n] if n < len(self.plans) else ConnectionPlan()

    def describe(self) -> str:
        """The whole timeline, one line per connection with faults (print on failure)."""
        lines = [f"fault schedule seed={self.seed} connections={len(self.plans)}"]
        for n, plan in enumerate(self.plans):
            if plan.faults:
                lines.append(f"  conn {n}: " + "; ".join(f.describe() for f in plan.faults))
        return "\n".join(lines)


@dataclass(slots=True)
class _Unit:
    data: bytes
    record: int | None  # post-handshake record index, else None


class _Splitter:
    """Cuts one direction's bytes into units (magic, frames) or raw chunks."""

    def __init__(self, handshake_frames: int) -> None:
        self._buf = bytearray()
        self._mode = "magic"
        self._frames_seen = 0
        self._handshake_frames = handshake_frames

    def feed(self, data: bytes) -> list[_Unit]:
        if self._mode == "raw":
            return [_Unit(data, None)]
        self._buf += data
        units: list[_Unit] = []
        if self._mode == "magic":
            n = min(len(self._buf), len(MAGIC))
            if self._buf[:n] != MAGIC[:n]:
                self._mode = "raw"
                out, self._buf = bytes(self._buf), bytearray()
                return [_Unit(out, None)]
            if len(self._buf) < len(MAGIC):
                return units
            units.append(_Unit(bytes(self._buf[: len(MAGIC)]), None))
            del self._buf[: len(MAGIC)]
            self._mode = "frames"
        pos = 0
        while len(self._buf) - pos >= 2:
            length = int.from_bytes(self._buf[pos : pos + 2], "big")
            if len(self._buf) - pos < 2 + length:
                break
            index = self._frames_seen - self._handshake_frames
            units.append(
                _Unit(bytes(self._buf[pos : pos + 2 + length]), index if index >= 0 else None)
            )
            self._frames_seen += 1
            pos += 2 + length
        del self._buf[:pos]
        return units

    def rest(self) -> bytes:
        """Bytes of an incomplete unit (forwarded as they are at EOF)."""
        out, self._buf = bytes(self._buf), bytearray()
        return out


class _Direction:
    """The fault pipeline of one direction of one connection."""

    def __init__(
        self,
        name: Direction,
        faults: Sequence[Fault],
        rng: random.Random,
        record_aware: bool,
        fired: Callable[[Fault], None],
    ) -> None:
        self.name = name
        self.rng = rng
        self.fired = fired
        self.splitter = _Splitter(HANDSHAKE_FRAMES[name] if record_aware else -1)
        if not record_aware:
            self.splitter._mode = "raw"
        self.triggers = [f for f in faults if f.kind not in _SHAPING]
        self.latency = [f for f in faults if f.kind == "latency"]
        self.slicer = next((f for f in faults if f.kind == "slicer"), None)
        self.bandwidth = next((f for f in faults if f.kind == "bandwidth"), None)
        self.out_bytes = 0
        self.held: _Unit | None = None  # swap
        self.replay: _Unit | None = None
        self.done = False
        self._next_free = 0.0  # bandwidth: when the link is free again

    # -- unit faults -------------------------------------------------------------

    def process(self, unit: _Unit) -> list[bytes]:
        """Apply record and byte faults to one unit; raise :class:`_CutWith` to end here."""
        units = [unit]
        for fault in list(self.triggers):
            if fault.record is None or unit.record != fault.record:
                continue
            kind = fault.kind
            if kind == "drop_record":
                self._fire(fault)
                units = []
            elif kind == "duplicate_record":
                self._fire(fault)
                units = [unit, unit]
            elif kind == "replay_record":
                self._fire(fault)
                self.replay = unit
            elif kind == "swap_records":
                self._fire(fault)
                self.held = unit
                units = []
        if self.held is not None and unit.record is not None and unit is not self.held:
            units = [unit, self.held]
            self.held = None
        elif self.replay is not None and unit is not self.replay and unit.record is not None:
            units = [unit, self.replay]
            self.replay = None
        out: list[bytes] = []
        for u in units:
            out.extend(self._bytes_faults(u))
        return out

    def _fire(self, fault: Fault) -> None:
        self.triggers.remove(fault)
        self.fired(fault)

    def _bytes_faults(self, unit: _Unit) -> list[bytes]:
        data = bytearray(unit.data)
        start = self.out_bytes
        end = start + len(data)
        for fault in list(self.triggers):
            if fault.kind in _RECORD_ONLY:
                continue
            if fault.record is not None:
                if unit.record != fault.record:
                    continue
                cut = len(data) // 2 if fault.inside else 0
            elif start <= fault.at < end:
                cut = fault.at - start
            else:
                continue
            self._fire(fault)
            if fault.kind == "corrupt":
                for _ in range(max(1, fault.bits)):
                    bit = self.rng.randrange(len(data) * 8)
                    data[bit // 8] ^= 1 << (bit % 8)
                continue
            self.out_bytes += cut
            raise _CutWith(fault, bytes(data[:cut]))
        self.out_bytes = end
        return [bytes(data)]

    # -- shaping -----------------------------------------------------------------

    def release_time(self, now: float, size: int) -> float:
        delay = 0.0
        for f in self.latency:
            delay += f.ms / 1000 + (self.rng.uniform(0, f.jitter_ms) / 1000 if f.jitter_ms else 0)
        when = now + delay
        if self.bandwidth is not None and self.bandwidth.rate > 0:
            start = max(when, self._next_free)
            self._next_free = start + size / self.bandwidth.rate
            when = self._next_free
        return when


class _CutWith(Exception):
    """Internal: the direction ends at a fault, after forwarding ``head``."""

    def __init__(self, fault: Fault, head: bytes) -> None:
        super().__init__(fault.kind)
        self.fault = fault
        self.head = head


def _set_rst(stream: SocketStream) -> None:
    with contextlib.suppress(Exception):
        sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


#: A queued chunk ``(release time, bytes)``, or ``"eof"`` (send FIN) / ``"stop"`` (just stop).
_Item = tuple[float, bytes] | str


class _Link:
    """One proxied connection: two directions and their fate."""

    def __init__(self, proxy: FaultProxy, n: int, client: SocketStream, server: SocketStream):
        self.proxy = proxy
        self.n = n
        self.client = client
        self.server = server
        self.scope = anyio.CancelScope()
        self.rst = False

    async def run(self) -> None:
        plan = self.proxy.schedule.plan(self.n)
        seed = self.proxy.schedule.seed
        with self.scope:
            async with anyio.create_task_group() as tg:
                for name, src, dst in (
                    ("c2s", self.client, self.server),
                    ("s2c", self.server, self.client),
                ):
                    direction = _Direction(
                        name,  # type: ignore[arg-type]
                        plan.for_direction(name),  # type: ignore[arg-type]
                        random.Random(f"{seed}:{self.n}:{name}"),
                        self.proxy.record_aware,
                        lambda f: self.proxy._record(self.n, f),
                    )
                    tg.start_soon(self._pipe, direction, src, dst)
        await self._close()

    async def _close(self) -> None:
        if self.rst:
            _set_rst(self.client)
            _set_rst(self.server)
        with anyio.CancelScope(shield=True):
            for s in (self.client, self.server):
                with contextlib.suppress(Exception):
                    await anyio.aclose_forcefully(s)

    async def _pipe(self, d: _Direction, src: SocketStream, dst: SocketStream) -> None:
        send, receive = anyio.create_memory_object_stream[_Item](math.inf)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer, d, receive, dst)
            ending = await self._reader(d, src, send)
        if ending == "eof":
            return  # half of the connection ended normally; the other may go on
        if ending == "half_close":
            return
        if ending.startswith("blackhole"):
            ms = float(ending.split(":")[1])
            if ms > 0:
                await anyio.sleep(ms / 1000)
                self.scope.cancel()
            else:
                await anyio.sleep_forever()
            return
        if ending == "reset":
            self.rst = True
        self.scope.cancel()

    async def _reader(
        self,
        d: _Direction,
        src: SocketStream,
        out: anyio.abc.ObjectSendStream[_Item],
    ) -> str:
        """Forward units until EOF or a cut; return how the direction ended."""
        async with out:
            while True:  # until EOF or a cut
                try:
                    data = await src.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    rest = d.splitter.rest()
                    if rest:
                        await out.send((anyio.current_time(), rest))
                    await out.send("eof")  # forwarded as FIN after what is queued
                    return "eof"
                try:
                    for unit in d.splitter.feed(data):
                        for chunk in d.process(unit):
                            when = d.release_time(anyio.current_time(), len(chunk))
                            await out.send((when, chunk))
                except _CutWith as cut:
                    if cut.head:
                        await out.send((d.release_time(anyio.current_time(), 0), cut.head))
                    how = cut.fault.kind
                    if how == "blackhole":
                        return f"blackhole:{cut.fault.ms}"
                    await out.send("eof" if how in ("half_close", "truncate") else "stop")
                    return how
        return "eof"  # pragma: no cover

    async def _writer(
        self,
        d: _Direction,
        queue: anyio.abc.ObjectReceiveStream[_Item],
        dst: SocketStream,
    ) -> None:
        async with queue:
            async for item in queue:
                if isinstance(item, str):
                    if item == "eof":
                        with contextlib.suppress(Exception):
                            await dst.send_eof()
                    return
                when, chunk = item
                delay = when - anyio.current_time()
                if delay > 0:
                    await anyio.sleep(delay)
                try:
                    if d.slicer is not None:
                        step = max(1, d.slicer.size)
                        for i in range(0, len(chunk), step):
                            await dst.send(chunk[i : i + step])
                            if d.slicer.ms:
                                await anyio.sleep(d.slicer.ms / 1000)
                    else:
                        await dst.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    self.scope.cancel()
                    return


class FaultProxy:
    """A TCP proxy that injects the faults of a :class:`Schedule` (tests only).

    Use it in a task group::

        proxy = FaultProxy(("127.0.0.1", server_port), Schedule.random(seed, connections=30))
        host, port = await tg.start(proxy.serve)
        ...  # connect to (host, port)
        print(proxy.schedule.describe())  # on failure
    """

    def __init__(
        self,
        target: tuple[str, int],
        schedule: Schedule | None = None,
        *,
        record_aware: bool = True,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.target = target
        self.schedule = schedule if schedule is not None else Schedule(0)
        self.record_aware = record_aware
        self.listen_host = listen_host
        #: Connections accepted so far.
        self.connections = 0
        #: ``(connection number, fault)`` for every fault that fired.
        self.fired: list[tuple[int, Fault]] = []
        self._links: set[_Link] = set()

    def _record(self, n: int, fault: Fault) -> None:
        self.fired.append((n, fault))

    @property
    def active(self) -> int:
        """Connections currently proxied."""
        return len(self._links)

    def cut_all(self, *, rst: bool = True) -> int:
        """Cut every live connection now (RST by default); return how many."""
        links = list(self._links)
        for link in links:
            link.rst = rst
            link.scope.cancel()
        return len(links)

    async def _handle(self, client: SocketStream) -> None:
        n = self.connections
        self.connections += 1
        try:
            server = await anyio.connect_tcp(*self.target)
        except OSError:
            await anyio.aclose_forcefully(client)
            return
        link = _Link(self, n, client, server)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)

    async def serve(
        self, *, task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on an ephemeral port until cancelled; ``task_status`` gets ``(host, port)``."""
        listener = await anyio.create_tcp_listener(local_host=self.listen_host, local_port=0)
        address: Any = listener.extra(SocketAttribute.local_address)
        async with listener:
            task_status.started((str(address[0]), int(address[1])))
            await listener.serve(self._handle)
