"""The asyncio-native binding: one Connection driven by ``asyncio.Protocol`` callbacks.

Theory of operation
-------------------
On asyncio, an anyio byte stream costs a task wakeup, cancel-scope checks and
an event per ``receive``/``send``; for a small request/reply that machinery
costs more than the protocol. :class:`NativePump` is a drop-in for
:class:`~._pump.Pump` (the same methods and signals, so ``Link``, the
dispatcher and the session do not know which one runs) that needs no task of
its own:

* *reading*: the protocol's ``data_received`` feeds ``conn.receive_data`` and
  pulls every event right there, in the event loop's callback, handing each to
  the session's callback (which wakes waiters and starts handler tasks);
* *writing*: :meth:`~NativePump.flush` (a request or a reply) takes what the
  core sealed and calls ``transport.write`` at once; :meth:`~NativePump.wake`
  and :meth:`~NativePump.settle` (stream data, control calls, after a receive,
  after the application took an item) write once the callbacks ready now have
  run, so consecutive sends coalesce into few records and writes (as the anyio
  pump's writer task does), the credit a receive frees leaves with the reply a
  handler queues meanwhile, and no empty ``data_to_send`` is asked for per
  receive. ``write`` never blocks, so there
  is no send slot and no shield: a record is either in the core or handed whole
  to the transport. Backpressure: while the transport's
  buffer is above its high-water mark (``pause_writing`` until
  ``resume_writing``) nothing is taken from the core, so queued stream data
  stays there and senders wait on ``flushed`` exactly as with the anyio pump;
  the transport holds at most one batch beyond its high-water mark;
* *time*: the core's deadline is one ``loop.call_at`` handle, re-armed only
  when the core's deadline moves earlier (a later one is re-checked when the
  handle fires);
* *close*: once the core is closed, what is left is written, the write half
  is closed (``write_eof``), and the transport is closed at the peer's EOF or
  after ``linger`` seconds; ``abort`` cuts it (after a grace for the CLOSE).

Bytes that arrive before the session runs the pump (between the accept and
the start of its lifetime) are held, at most :data:`HOLD_LIMIT` bytes before
reading pauses.

The callbacks run outside any task, and they call anyio (start a handler
task, read the clock). Where sniffio is installed anyio asks it which library
runs, and sniffio finds out from the current task or from its context
variable, which ``anyio.run`` sets and a plain ``asyncio.run`` does not; so
transports and servers are created in a copy of the caller's context with
that variable set to ``asyncio`` (:func:`_created_for_callbacks`): every
callback of theirs runs in a copy of it; the pump schedules its own callbacks
(timer, alarm, deferred write) in such a context too.

:class:`NativeStream` is what ``connect()`` and the server's listeners hand to
the session in place of an anyio stream; ``Link`` picks the native pump for it.
TLS, NATS, memory streams and trio use the anyio pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup

from ..errors import ErrorCode, LocalProtocolError, M2MError
from ..events import Event
from ._pump import ConnectionDriver, Flag, Signal

__all__ = [
    "ENV_VAR",
    "AnyTransport",
    "NativeListener",
    "NativePump",
    "NativeStream",
    "open_native",
    "open_native_socket",
    "use_native",
]

#: Set to ``0`` to make ``connect()`` and the server's TCP/Unix listeners use anyio
#: streams on asyncio too (``anyio`` path); any other value or unset: the native path.
ENV_VAR = "M2MPROTO_NATIVE"

#: Connections a listener accepts before it is served (more are cut).
ACCEPT_BACKLOG = 128

#: Bytes held for a session that has not started its pump yet before reading pauses.
HOLD_LIMIT = 262144


def use_native(native: bool | None) -> bool:
    """Whether to use the native path: *native* if given (``True`` on trio is an
    error), else on asyncio unless :data:`ENV_VAR` is ``0``.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) ``native=True`` outside asyncio.
    """
    if native is False:
        return False
    on_asyncio = _on_asyncio()
    if native is True:
        if not on_asyncio:
            raise LocalProtocolError(
                "native=True needs the asyncio backend", ErrorCode.INVALID_ARGUMENT
            )
        return True
    return on_asyncio and os.environ.get(ENV_VAR, "1") != "0"


_T = TypeVar("_T")


def _callback_context() -> contextvars.Context:
    """A copy of this context where anyio, called from a loop callback, finds asyncio."""
    context = contextvars.copy_context()
    # anyio asks sniffio if sniffio is installed (anyio then imported it), else asyncio
    sniffio = sys.modules.get("sniffio")
    if sniffio is not None:
        context.run(sniffio.current_async_library_cvar.set, "asyncio")
    return context


async def _created_for_callbacks(coro: Coroutine[Any, Any, _T]) -> _T:
    """Await *coro* (a ``loop.create_*`` call) in a :func:`_callback_context`: the
    transport's and the server's callbacks then run in copies of it."""
    loop = asyncio.get_running_loop()
    return await loop.create_task(coro, context=_callback_context())


def _on_asyncio() -> bool:
    """Whether this runs in an asyncio task (anyio's asyncio backend included)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no running asyncio loop: trio
        return False


class _Protocol(asyncio.Protocol):
    """Routes the transport's callbacks to the pump once it runs; holds them until then."""

    __slots__ = (
        "_eof",
        "_held",
        "_held_size",
        "_lost",
        "_on_made",
        "_paused",
        "pump",
        "stream",
        "transport",
    )

    def __init__(self, on_made: Callable[[NativeStream], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.pump: NativePump | None = None
        self.stream: NativeStream | None = None
        self._on_made = on_made
        self._held: list[bytes] = []
        self._held_size = 0
        self._eof = False
        self._lost: tuple[BaseException | None] | None = None
        self._paused = False

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.stream = NativeStream(self, transport)
        if self._on_made is not None:
            self._on_made(self.stream)

    def data_received(self, data: bytes) -> None:
        pump = self.pump
        if pump is not None:
            pump.data_received(data)
            return
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > HOLD_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        pump = self.pump
        if pump is not None:
            return pump.eof_received()
        self._eof = True
        return True  # keep the write half until the pump has decided

    def connection_lost(self, exc: Exception | None) -> None:
        pump = self.pump
        if pump is not None:
            pump.connection_lost(exc)
        else:
            self._lost = (exc,)
        if self.stream is not None:
            self.stream._lost.set()

    def pause_writing(self) -> None:
        self._paused = True
        if self.pump is not None:
            self.pump.pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        if self.pump is not None:
            self.pump.resume_writing()

    # -- the pump takes over --------------------------------------------------------------

    def attach(self, pump: NativePump) -> None:
        """Route every callback to *pump* from now on, replaying what was held."""
        self.pump = pump
        if self._paused:
            pump.pause_writing()
        held, self._held, self._held_size = self._held, [], 0
        if held:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
            pump.data_received(b"".join(held))
        if self._eof:
            keep = pump.eof_received()
            if not keep and self.transport is not None:
                self.transport.close()
        if self._lost is not None:
            pump.connection_lost(self._lost[0])


class NativeStream(anyio.abc.AsyncResource, anyio.TypedAttributeProvider):
    """A connected asyncio transport waiting for its session (not a byte stream:
    only a :class:`NativePump` reads and writes it)."""

    # slotted: one per connection (the bases keep a __dict__, never filled)
    __slots__ = ("_lost", "_protocol", "_transport")

    def __init__(self, protocol: _Protocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport
        self._lost = Flag()

    @property
    def transport(self) -> asyncio.Transport:
        """The asyncio transport."""
        return self._transport

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        get = self._transport.get_extra_info
        sock = get("socket")
        attributes: dict[Any, Callable[[], Any]] = {
            SocketAttribute.local_address: lambda: _address(get("sockname")),
        }
        if sock is not None:
            attributes[SocketAttribute.family] = lambda: sock.family
            attributes[SocketAttribute.raw_socket] = lambda: sock
        peer = get("peername")
        if peer:  # a Unix client socket has no peer name
            attributes[SocketAttribute.remote_address] = lambda: _address(peer)
        return attributes

    def abort(self) -> None:
        """Cut the connection at once."""
        self._transport.abort()

    async def aclose(self) -> None:
        """Cut the connection at once and wait (at most 1 s) until the loop has closed it."""
        self._transport.abort()
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            await self._lost.wait()


#: What a session runs on: an anyio byte stream (the anyio pump) or a native one.
AnyTransport = ByteStream | NativeStream


def _address(value: Any) -> Any:
    if isinstance(value, tuple):
        return value[:2]
    return value if value is not None else ""


async def open_native(address: tuple[str, int] | str) -> NativeStream:
    """Connect to a TCP ``(host, port)`` or a Unix socket path.

    Raises:
        OSError: the connection could not be made.
    """
    loop = asyncio.get_running_loop()
    if isinstance(address, tuple):
        transport, protocol = await _created_for_callbacks(
            loop.create_connection(_Protocol, address[0], address[1])
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        transport, protocol = await _created_for_callbacks(
            loop.create_unix_connection(_Protocol, address)
        )
    assert protocol.stream is not None
    return protocol.stream


async def open_native_socket(sock: socket.socket) -> NativeStream:
    """Drive an already connected stream socket (TCP, Unix, one end of a ``socketpair``)."""
    loop = asyncio.get_running_loop()
    if sock.family == socket.AF_UNIX:
        _t, protocol = await _created_for_callbacks(
            loop.create_unix_connection(_Protocol, sock=sock)
        )
    else:
        _t, protocol = await _created_for_callbacks(loop.create_connection(_Protocol, sock=sock))
    assert protocol.stream is not None
    return protocol.stream


class NativeListener(anyio.abc.Listener[NativeStream]):
    """An ``asyncio.Server`` as an anyio listener of :class:`NativeStream`."""

    def __init__(self, server: asyncio.Server, protocols: _Accepting) -> None:
        self._server = server
        self._accepting = protocols

    @classmethod
    async def tcp(cls, host: str, port: int) -> NativeListener:
        accepting = _Accepting()
        loop = asyncio.get_running_loop()
        server = await _created_for_callbacks(
            loop.create_server(accepting.factory, host, port, reuse_address=True)
        )
        return cls(server, accepting)

    @classmethod
    async def unix(cls, path: str | os.PathLike[str]) -> NativeListener:
        accepting = _Accepting()
        loop = asyncio.get_running_loop()
        server = await _created_for_callbacks(loop.create_unix_server(accepting.factory, path))
        return cls(server, accepting)

    @property
    def local_address(self) -> Any:
        """The first bound address (``(host, port)`` or a path)."""
        return _address(self._server.sockets[0].getsockname())

    async def serve(
        self,
        handler: Callable[[NativeStream], Any],
        task_group: TaskGroup | None = None,
    ) -> None:
        """Start *handler* in *task_group* for each accepted connection, until cancelled."""
        if task_group is None:
            async with anyio.create_task_group() as tg:
                await self.serve(handler, tg)
            return
        self._accepting.serve(lambda stream: task_group.start_soon(handler, stream))
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        self._accepting.close()
        self._server.close()  # the listening sockets only; accepted ones stay

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self._server.sockets[0] if self._server.sockets else None
        if sock is None:
            return {}
        return {
            SocketAttribute.local_address: lambda: _address(sock.getsockname()),
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.raw_socket: lambda: sock,
        }


class _Accepting:
    """The protocol factory of a listener: hands each accepted stream to ``on_accept``
    (listening starts at creation, like anyio's listeners: streams accepted before
    :meth:`serve` wait for it, at most :data:`ACCEPT_BACKLOG` of them)."""

    def __init__(self) -> None:
        self.on_accept: Callable[[NativeStream], Any] | None = None
        self._waiting: list[NativeStream] | None = []

    def serve(self, on_accept: Callable[[NativeStream], Any]) -> None:
        self.on_accept = on_accept
        waiting, self._waiting = self._waiting or [], None
        for stream in waiting:
            on_accept(stream)

    def close(self) -> None:
        self.on_accept = None
        waiting, self._waiting = self._waiting or [], None
        for stream in waiting:
            stream.abort()

    def factory(self) -> _Protocol:
        return _Protocol(self._made)

    def _made(self, stream: NativeStream) -> None:
        sock = stream.transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        accept = self.on_accept
        if accept is not None:
            accept(stream)
        elif self._waiting is not None and len(self._waiting) < ACCEPT_BACKLOG:
            self._waiting.append(stream)
        else:  # closing, or too many before serve()
            stream.abort()


class NativePump:
    """Drives ``conn`` from the callbacks of a :class:`NativeStream` (see the module doc);
    the interface of :class:`~._pump.Pump`."""

    __slots__ = (
        "_alarm_handle",
        "_context",
        "_eof_fed",
        "_finishing",
        "_kill_at",
        "_kill_handle",
        "_linger",
        "_log",
        "_loop",
        "_need_data",
        "_paused",
        "_peer_eof",
        "_processing",
        "_protocol",
        "_started",
        "_timer_at",
        "_timer_handle",
        "_transport",
        "_waiter",
        "_write_pending",
        "_wrote_eof",
        "bytes_received",
        "bytes_sent",
        "conn",
        "finished",
        "flushed",
        "on_event",
        "timer_wakeups",
        "transport",
        "transport_error",
    )

    def __init__(
        self,
        conn: ConnectionDriver,
        stream: NativeStream,
        on_event: Callable[[Event], None],
        need_data: object,
        log: logging.LoggerAdapter[logging.Logger] | logging.Logger,
        *,
        linger: float = 2.0,
    ) -> None:
        self.conn = conn
        self.transport = stream
        self._protocol = stream._protocol
        self._transport = stream.transport
        self._loop = asyncio.get_running_loop()
        self._context = _callback_context()
        self.on_event = on_event
        self._need_data = need_data
        self._log = log
        self._linger = linger
        self.flushed = Signal()
        self.finished = Flag()
        #: Times the core's timer fell due (as the anyio pump counts them).
        self.timer_wakeups = 0
        self.transport_error: BaseException | None = None
        self._finishing = False
        self._processing = False
        self._eof_fed = False
        self._peer_eof = False
        self._wrote_eof = False
        #: A deferred write is scheduled (:meth:`settle`).
        self._write_pending = False
        self._paused = False
        self._started = False
        self._timer_at = math.inf
        self._timer_handle: asyncio.TimerHandle | None = None
        self._kill_at = math.inf
        self._kill_handle: asyncio.TimerHandle | None = None
        self._alarm_handle: asyncio.TimerHandle | None = None
        #: What :meth:`run` awaits: a bare future, resolved by :meth:`_done`.
        self._waiter: asyncio.Future[None] | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- the Pump interface --------------------------------------------------------------

    def wake(self) -> None:
        """Process new events; write once the callbacks ready now have run (coalesced
        with what they queue: more stream data, a reply, the credit of what they took)."""
        self.process()
        if not self._write_pending:
            self._write_pending = True
            self._loop.call_soon(self._write_deferred, context=self._context)

    settle = wake

    def _write_deferred(self) -> None:
        if self._write_pending:  # else a write since took everything
            self._write_out()

    async def flush(self) -> None:
        """Process new events and write what the core sealed at once (a request or a
        reply: someone waits for it). Writes never wait here."""
        self.process()
        self._write_out()

    def process(self) -> None:
        """Pull every pending event from the core and dispatch it, in order
        (re-entrant calls return at once)."""
        if self._processing:
            return
        self._processing = True
        try:
            conn, need_data, on_event = self.conn, self._need_data, self.on_event
            while True:  # ends at NEED_DATA or a closed core; each event consumes input
                try:
                    event = conn.next_event()
                except M2MError as exc:  # the core is closed; nothing more to parse
                    if exc.code != ErrorCode.CONNECTION_CLOSED:
                        self._log.warning("connection failed: %s", exc)
                    self.finish()
                    return
                if event is need_data:
                    return
                assert isinstance(event, Event)
                on_event(event)
        finally:
            self._processing = False

    def finish(self) -> None:
        """The core is closed: flush what is left, half-close, linger, close."""
        if not self._finishing:
            self._finishing = True
            if not self._processing:
                self._write_out()

    def abort(self, grace: float = 0.0) -> None:
        """Cut the transport; after *grace* seconds, in which a CLOSE may still be written."""
        self._finishing = True
        if grace <= 0:
            self._kill()
            return
        self._kill_after(self._loop.time() + grace)
        self._write_out()

    def now(self) -> float:
        """The clock of :meth:`set_alarm`: the loop's (anyio's on asyncio), readable from
        the loop's callbacks, where the alarm runs."""
        return self._loop.time()

    def set_alarm(self, when: float, callback: Callable[[], None] | None) -> None:
        """Call *callback* at *when* on the loop's clock (one ``call_at`` handle),
        replacing the previous alarm (``None``: no alarm). Never after the end."""
        if self._alarm_handle is not None:
            self._alarm_handle.cancel()
            self._alarm_handle = None
        if callback is not None and not self.finished.is_set():
            self._alarm_handle = self._loop.call_at(
                when, self._on_alarm, callback, context=self._context
            )

    def _on_alarm(self, callback: Callable[[], None]) -> None:
        self._alarm_handle = None
        if not self.finished.is_set():
            callback()

    async def run(self) -> None:
        """Take over the transport's callbacks and wait until the connection is over.
        Never raises (except cancellation, which cuts the transport).

        The wait is a bare future (resolved by the end of the connection), not an
        event: an idle connection's one task waits on the smallest thing asyncio has.
        """
        try:
            if not self._started:
                self._started = True
                self._protocol.attach(self)
                self._write_out()
            if not self.finished.is_set():
                waiter = self._waiter = self._loop.create_future()
                await waiter
        finally:
            self._waiter = None
            if not self.finished.is_set():  # cancelled: cut, do not wait for the loop
                self._kill()
                self._done()

    # -- transport callbacks (via the protocol) ---------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        try:
            self.conn.receive_data(data, self._loop.time())
        except M2MError as exc:  # data after the core closed: ignore
            self._log.debug("dropped %d bytes: %s", len(data), exc)
        self.settle()

    def eof_received(self) -> bool:
        self._peer_eof = True
        self._feed_eof()
        self.finish()
        self._write_out()
        return not self._wrote_eof  # both halves done: let asyncio close the transport

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is not None and not self._finishing:
            self.transport_error = exc
            self._log.info("transport failed: %r", exc)
        self._finishing = True
        self._done()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self.wake()

    # -- internals ---------------------------------------------------------------------

    def _write_out(self) -> None:
        """Write what the core sealed (unless paused), half-close once finishing, and
        re-arm the core's timer."""
        self._write_pending = False
        transport = self._transport
        if self._paused or self._wrote_eof or self.finished.is_set() or transport.is_closing():
            return
        data = self.conn.data_to_send()
        if data:
            transport.write(data)
            self.bytes_sent += len(data)
            self.flushed.notify()
            if self._paused:
                return
        if self._finishing:
            if not self._wrote_eof:
                self._wrote_eof = True
                if self._peer_eof or not transport.can_write_eof():
                    transport.close()  # after the buffered bytes
                    return
                try:
                    transport.write_eof()
                except OSError:  # the peer is gone already (ENOTCONN)
                    self._kill()
                    return
                self._kill_after(self._loop.time() + self._linger)
            return
        timer = self.conn.get_timer()
        if timer is not None and timer < self._timer_at:
            if self._timer_handle is not None:
                self._timer_handle.cancel()
            self._timer_at = timer
            self._timer_handle = self._loop.call_at(timer, self._on_timer, context=self._context)

    def _on_timer(self) -> None:
        self._timer_handle = None
        self._timer_at = math.inf
        if self.finished.is_set():
            return
        now = self._loop.time()
        timer = self.conn.get_timer()
        if timer is not None and now >= timer:
            self.timer_wakeups += 1
            with contextlib.suppress(M2MError):
                self.conn.handle_timer(now)
        self.wake()

    def _kill_after(self, deadline: float) -> None:
        if deadline < self._kill_at:
            self._kill_at = deadline
            if self._kill_handle is not None:
                self._kill_handle.cancel()
            self._kill_handle = self._loop.call_at(deadline, self._kill, context=self._context)

    def _kill(self) -> None:
        self._finishing = True
        self._transport.abort()  # nothing if already closed

    def _feed_eof(self) -> None:
        if not self._eof_fed:
            self._eof_fed = True
            with contextlib.suppress(M2MError):
                self.conn.receive_data(b"", self._loop.time())
            self.process()

    def _done(self) -> None:
        if self.finished.is_set():
            return
        for handle in (self._timer_handle, self._kill_handle, self._alarm_handle):
            if handle is not None:
                handle.cancel()
        self._timer_handle = self._kill_handle = self._alarm_handle = None
        self._feed_eof()
        self.finished.set()
        self.flushed.notify()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
