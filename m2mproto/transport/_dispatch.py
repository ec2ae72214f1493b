"""Event dispatch: turns the Connection's events into channel status and handler runs.

Theory of operation
-------------------
The pump calls :meth:`Dispatcher.on_event` synchronously, in its own task, for
every event the core produces, in order. One table (:data:`HANDLERS`) maps
every event class of :mod:`m2mproto.events` to its handler, so an event the
transport does not handle is a test failure, not a silent drop.

Data and messages go to their stream's :class:`~._link.Channel` inbox (credit
is returned only when the application takes them). A stream the peer opens is
offered to the session's ``admit`` callback, which answers with a plan: serve
it with a stream handler now, hand its first message to a call handler, deliver
that message to ``async for incoming in session``, or refuse it. Resets, the
end of streams and the close wake whoever waits. After every event the
``flushed`` signal fires, since any event may have moved flow-control credit.

Handlers run in *workers*: tasks of the session's task group, each running
one handler at a time. A worker that finished its handler waits
:data:`WORKER_IDLE` seconds for the next one and then ends, so sequential
requests reuse one task instead of spawning one each, concurrent handlers
each have a worker of their own (a slow handler never delays another), and an
idle session holds none. Each handler runs in the copy of the context taken
when its stream arrived (as a task of its own would), so what one handler
sets in a ``contextvars.ContextVar`` is never seen by the next one on the same
worker. A reset of a handler's stream cancels its worker (the cancel scope is
the worker's, one per worker rather than per handler); the worker ends with
it.
"""

from __future__ import annotations

import contextvars
import enum
import logging
import math
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from .. import events as ev
from ..errors import ErrorCode, code_name
from ._link import Channel, Link, Peer, logger
from ._pump import Flag, Signal
from ._streams import Incoming
from ._throttle import LogThrottle

__all__ = ["HANDLERS", "WORKER_IDLE", "Dispatcher", "Plan", "describe"]

#: Seconds a worker that finished its handler waits for the next one before it ends.
WORKER_IDLE = 0.5

_trace = logger

#: Token verdict lines, throttled per source address across all sessions (a peer
#: presenting tokens in a loop gets a few lines, then one "suppressed" line).
TOKEN_LOG = LogThrottle()


def describe(event: ev.Event) -> str:
    """One line for the DEBUG trace: the event's kind, stream, resource and sizes.

    Never key material, handshake hashes, ping payloads, message values or data
    bytes: only their sizes.
    """
    name = type(event).__name__
    match event:
        case ev.HandshakeCompleted():
            return f"{name} peer={event.peer.short} pattern={event.pattern} v{event.version}"
        case ev.StreamOpened():
            return f"{name} stream={event.stream_id} resource={event.resource!r}"
        case ev.DataReceived():
            return f"{name} stream={event.stream_id} bytes={len(event.data)}"
        case ev.MessageReceived():
            size = "?" if event.size is None else event.size
            return f"{name} stream={event.stream_id} message bytes={size}"
        case ev.StreamEnded():
            return f"{name} stream={event.stream_id}"
        case ev.StreamReset():
            who = "peer" if event.remote else "local"
            return f"{name} stream={event.stream_id} code={code_name(event.code)} by {who}"
        case ev.KeyUpdated():
            return f"{name} {'peer' if event.remote else 'our'} generation={event.generation}"
        case ev.TokenRejected():
            return f"{name} code={event.code.name}"
        case ev.ConnectionClosed():
            who = "peer" if event.remote else "local"
            return f"{name} code={code_name(event.code)} by {who} reason={event.reason!r}"
    return name


R = TypeVar("R")

_Func = Callable[..., Coroutine[Any, Any, None]]
_Job = tuple["Channel", _Func, tuple[Any, ...], contextvars.Context]


class _Worker:
    """A task that runs handlers one at a time (see the module docstring)."""

    __slots__ = ("job", "scope", "wake")

    def __init__(self, job: _Job) -> None:
        #: The handler to run next (None: none, the worker waits or ends).
        self.job: _Job | None = job
        #: Cancelled by a reset of the stream whose handler it runs (ends the worker);
        #: its deadline bounds the wait for the next handler.
        self.scope = anyio.CancelScope()
        #: Set when a waiting worker is handed a job.
        self.wake = Flag()


@types.coroutine
def _in_context(
    ctx: contextvars.Context, coro: Coroutine[Any, Any, None]
) -> Generator[Any, Any, None]:
    """Await *coro* with every step run in *ctx* (the task's own context is not
    touched): what a task does, without a task. Yields and exceptions pass
    through unchanged, so cancellation and the event loop see the worker task."""
    send, throw = coro.send, coro.throw
    value: Any = None
    error: BaseException | None = None
    while True:  # one turn per suspension of *coro*; ends when it returns or raises
        try:
            if error is None:
                yielded = ctx.run(send, value)
            else:
                yielded = ctx.run(throw, error)
                error = None
        except StopIteration:
            return
        try:
            value = yield yielded
        except BaseException as exc:  # thrown into the worker: pass it on
            error = exc
            value = None


class Plan(enum.Enum):
    """What to do with a stream the peer opened (the ``admit`` callback's answer)."""

    #: Run the stream handler now; it reads the stream.
    STREAM = "stream"
    #: Run the call handler with the stream's first message.
    CALL = "call"
    #: Deliver the first message to ``async for incoming in session``.
    INCOMING = "incoming"


class Dispatcher(Generic[R]):
    """Applies events to a :class:`~._link.Link` and runs handlers for peer streams.

    *admit* maps a new peer stream to ``(plan, route)`` or ``None`` (refused
    with ``REFUSED``); *serve_stream* and *serve_call* run a route's handler.
    """

    # slotted: one per session
    __slots__ = (
        "_admit",
        "_handlers",
        "_link",
        "_max_handlers",
        "_parked",
        "_serve_call",
        "_serve_stream",
        "_server_side",
        "_tg",
        "capabilities",
        "idle",
        "incoming",
        "incoming_signal",
        "last_activity",
        "on_session_event",
        "pings",
    )

    def __init__(
        self,
        link: Link,
        admit: Callable[[Channel], tuple[Plan, R | None] | None],
        serve_stream: Callable[[Channel, R], Coroutine[Any, Any, None]],
        serve_call: Callable[[Channel, R, Any, object], Coroutine[Any, Any, None]],
        *,
        server_side: bool,
    ) -> None:
        self._link = link
        link.pump.on_event = self.on_event
        self._admit = admit
        self._serve_stream = serve_stream
        self._serve_call = serve_call
        self._server_side = server_side
        #: At most this many handlers at once (the peer's stream limit).
        self._max_handlers = link.conn.config.max_concurrent_streams
        self._tg: TaskGroup | None = None
        #: The worker of each running handler, by the channel it serves.
        self._handlers: dict[Channel, _Worker] = {}
        #: Workers waiting for a handler to run (most recent last).
        self._parked: list[_Worker] = []
        #: Set while no handler runs.
        self.idle = Flag()
        self.idle.set()
        #: Messages with no route, for ``async for incoming in session`` (made on
        #: the first one: most sessions never get one).
        self.incoming: deque[Incoming] | None = None
        self.incoming_signal = Signal()
        #: Waiters for our pings, by payload (made on the first ping).
        self.pings: dict[bytes, anyio.Event] | None = None
        #: The peer's last accepted token summary.
        self.capabilities: object = None
        #: The application's event hook (see ``Session``'s ``on_event``), or None.
        self.on_session_event: Callable[[ev.Event], None] | None = None
        #: When the peer last did something productive (anyio clock): completed the
        #: handshake, had a stream admitted, sent data, a message or a stream end,
        #: had tokens accepted, or answered our ping. Refusals never count.
        self.last_activity = 0.0

    @property
    def running(self) -> int:
        """Handler tasks running now."""
        return len(self._handlers)

    # -- lifecycle ------------------------------------------------------------------

    def bind(self, tg: TaskGroup | None) -> None:
        """Run handlers in *tg* from now on (``None``: start no more handlers)."""
        self._tg = tg

    def cancel_handlers(self) -> None:
        for worker in list(self._handlers.values()):
            worker.scope.cancel()

    def mark_closed(self, code: int, reason: str, remote: bool) -> None:
        """The connection is over: record it and wake every waiter."""
        self._link.mark_closed(code, reason, remote)
        self.incoming_signal.notify()
        for waiter in (self.pings or {}).values():
            waiter.set()

    # -- events -----------------------------------------------------------------------

    def on_event(self, event: ev.Event) -> None:
        if self.on_session_event is not None:
            self.on_session_event(event)
        if _trace.isEnabledFor(logging.DEBUG):
            self._link.log.debug("event %s", describe(event))
        handler = HANDLERS.get(type(event))
        if handler is None:  # a subclass the table does not name (tested not to happen)
            self._link.log.debug("event not handled: %r", type(event).__name__)
        else:
            handler(self, event)
        # any event may have moved credit: let waiting senders re-check
        self._link.pump.flushed.notify()

    def _handshake_completed(self, event: ev.HandshakeCompleted) -> None:
        self.last_activity = anyio.current_time()
        link = self._link
        base = event.pattern.removesuffix("hfs")  # XXhfs/IKhfs: the XX/IK pattern, hybrid
        link.peer = Peer(event.peer, event.remote_static, base)
        link.log.extra = {"peer": event.peer.short, "address": link.address}
        link.log.info("handshake complete (%s)", "server" if self._server_side else "client")
        link.handshake_done.set()
        if link.on_ready is not None:
            link.on_ready()

    def _connection_closed(self, event: ev.ConnectionClosed) -> None:
        self.mark_closed(event.code, event.reason, event.remote)
        self._link.pump.finish()

    def _token_accepted(self, event: ev.TokenAccepted) -> None:
        self.last_activity = anyio.current_time()
        self.capabilities = event.grant
        link = self._link
        TOKEN_LOG.log(link.log, logging.INFO, "token lines", link.source, "peer tokens accepted")

    def _token_rejected(self, event: ev.TokenRejected) -> None:
        link = self._link
        TOKEN_LOG.log(link.log, logging.INFO, "token lines", link.source,
                      "peer token rejected: %s", event.code.name)  # fmt: skip

    def _ping_acknowledged(self, event: ev.PingAcknowledged) -> None:
        self.last_activity = anyio.current_time()
        waiter = self.pings.pop(event.payload, None) if self.pings else None
        if waiter is not None:
            waiter.set()

    def _key_updated(self, event: ev.KeyUpdated) -> None:
        who = "peer" if event.remote else "our"
        self._link.log.debug("%s sending key updated (generation %d)", who, event.generation)

    def _stream_opened(self, event: ev.StreamOpened) -> None:
        link = self._link
        chan = Channel(event.stream_id, event.resource, local=False, grant=event.grant)
        decision = self._admit(chan)
        if decision is None:
            link.log.info("no handler for %r: refused", event.resource)
            link.reset(event.stream_id, ErrorCode.REFUSED, refuse=True)
            return
        if decision[0] is not Plan.INCOMING and len(self._handlers) >= self._max_handlers:
            # Backstop: reset streams cancel their handlers, but a cancelled handler
            # may still be finishing; never run more than the peer may have open.
            link.log.info("%d handlers running: stream %d to %r refused", self.running,
                          chan.stream_id, chan.resource)  # fmt: skip
            link.reset(event.stream_id, ErrorCode.REFUSED, refuse=True)
            return
        plan, route = decision
        self.last_activity = anyio.current_time()
        link.channels[event.stream_id] = chan
        if plan is Plan.STREAM:
            assert route is not None
            self._spawn(chan, self._serve_stream, chan, route)
        else:
            chan.first = route if plan is Plan.CALL else Plan.INCOMING

    def _data_received(self, event: ev.DataReceived) -> None:
        self.last_activity = anyio.current_time()
        link, sid = self._link, event.stream_id
        chan = link.channels.get(sid)
        if chan is None or chan.discard:
            link.acknowledge(sid, len(event.data))
            return
        if chan.first is not None:  # a message stream carrying bytes
            link.acknowledge(sid, len(event.data))
            link.reset(chan, ErrorCode.PROTOCOL_ERROR, refuse=True)
            return
        chan.push(False, event.data, len(event.data))

    def _message_received(self, event: ev.MessageReceived) -> None:
        self.last_activity = anyio.current_time()
        link, sid = self._link, event.stream_id
        size = link.message_size(event)
        chan = link.channels.get(sid)
        if chan is None or chan.discard:
            link.acknowledge(sid, size)
            return
        first = chan.first
        if first is None:
            chan.push(True, event.value, size)
            return
        chan.first = None
        chan.discard = True  # the call handler gets this message; later items are dropped
        link.acknowledge(sid, size)
        grant = event.grant if event.grant is not None else chan.grant
        if first is Plan.INCOMING:
            assert link.peer is not None
            if self.incoming is None:
                self.incoming = deque()
            self.incoming.append(Incoming(link, link.peer, sid, chan.resource, event.value, grant))
            self.incoming_signal.notify()
        else:
            self._spawn(chan, self._serve_call, chan, first, event.value, grant)

    def _stream_ended(self, event: ev.StreamEnded) -> None:
        self.last_activity = anyio.current_time()
        link = self._link
        chan = link.channels.get(event.stream_id)
        if chan is None:
            return
        chan.recv_ended = True
        if chan.first is not None:  # ended before its message: end ours too
            chan.first = None
            link.end(event.stream_id)
        chan.changed.notify()
        link.forget_if_done(chan)

    def _stream_reset(self, event: ev.StreamReset) -> None:
        link, sid, code, remote = self._link, event.stream_id, event.code, event.remote
        chan = link.channels.pop(sid, None)
        if not remote and code == ErrorCode.UNAUTHORIZED:
            # the Connection refused the peer's stream or message: no capability covers it
            resource = chan.resource if chan is not None else event.resource
            what = f" to {resource!r}" if resource is not None else ""
            link.log.info("refused stream %d%s: %s", sid, what, code_name(code))
        if chan is None:
            return
        chan.reset = (code, remote)
        chan.first = None
        worker = self._handlers.get(chan)
        if worker is not None:
            # Either side's reset ends the handler: the core has freed the stream's
            # slot, so a handler left running would let the peer start one more per
            # open (Rapid Reset, or MadeYouReset when the core resets a bad message).
            worker.scope.cancel()
        chan.changed.notify()
        link.log.debug("stream %d to %r reset (%s, %s)", sid, chan.resource, code_name(code),
                       "peer" if remote else "local")  # fmt: skip

    # -- handler workers ----------------------------------------------------------------

    def _spawn(self, chan: Channel, func: _Func, *args: Any) -> None:
        """Run ``func(*args)`` for *chan*: on a waiting worker, or a new one."""
        if self._tg is None or self._link.closed.is_set():
            return
        job: _Job = (chan, func, args, contextvars.copy_context())
        self.idle.clear()
        while self._parked:  # most recent first; skip one whose wait just expired
            worker = self._parked.pop()
            if worker.scope.cancel_called:
                continue
            worker.scope.deadline = math.inf
            worker.job = job
            self._handlers[chan] = worker
            worker.wake.set()
            return
        worker = _Worker(job)
        self._handlers[chan] = worker
        self._tg.start_soon(self._worker, worker)

    def ping_waiter(self, payload: bytes) -> anyio.Event:
        """An event set when our ping *payload* is answered (or the session closes)."""
        if self.pings is None:
            self.pings = {}
        waiter = self.pings[payload] = anyio.Event()
        return waiter

    def _release(self, chan: Channel) -> None:
        del self._handlers[chan]
        if not self._handlers:
            self._handlers = {}  # an emptied dict keeps its table: an idle session drops it
            self.idle.set()

    async def _worker(self, worker: _Worker) -> None:
        with worker.scope:
            try:
                while True:  # one turn per handler; ends when idle or cancelled
                    job = worker.job
                    if job is None:
                        return
                    chan, func, args, ctx = job
                    try:
                        if not worker.scope.cancel_called:  # not reset before it could start
                            await _in_context(ctx, func(*args))
                    finally:
                        worker.job = None
                        self._release(chan)
                    await self._park(worker)
            finally:
                job = worker.job
                if job is not None:  # handed a handler it never ran (cancelled meanwhile)
                    worker.job = None
                    self._release(job[0])

    async def _park(self, worker: _Worker) -> None:
        """Wait at most :data:`WORKER_IDLE` seconds to be handed the next handler.

        The wait is bounded by the worker's own scope (its deadline, set back to
        infinity by :meth:`_spawn` with the job): no cancel scope per wait.
        """
        if self._tg is None or worker.scope.cancel_called:
            return
        worker.wake.clear()
        worker.scope.deadline = anyio.current_time() + WORKER_IDLE
        self._parked.append(worker)
        try:
            await worker.wake.wait()
        finally:
            if worker.job is None and worker in self._parked:  # not handed one: leave
                self._parked.remove(worker)


_Handler = Callable[[Dispatcher[Any], Any], None]

#: The handler of every event class of :mod:`m2mproto.events` (exhaustive: tested).
HANDLERS: dict[type[ev.Event], _Handler] = {
    ev.HandshakeCompleted: Dispatcher._handshake_completed,
    ev.StreamOpened: Dispatcher._stream_opened,
    ev.DataReceived: Dispatcher._data_received,
    ev.MessageReceived: Dispatcher._message_received,
    ev.StreamEnded: Dispatcher._stream_ended,
    ev.StreamReset: Dispatcher._stream_reset,
    ev.PingAcknowledged: Dispatcher._ping_acknowledged,
    ev.KeyUpdated: Dispatcher._key_updated,
    ev.TokenAccepted: Dispatcher._token_accepted,
    ev.TokenRejected: Dispatcher._token_rejected,
    ev.ConnectionClosed: Dispatcher._connection_closed,
}
