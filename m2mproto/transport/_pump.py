"""The binding of one sans-IO Connection to an anyio ByteStream.

Theory of operation
-------------------
The Connection never does I/O; this module is the only place its bytes meet a
transport. A :class:`Pump` runs in the task that calls :meth:`Pump.run` (the
session's lifetime), so an idle connection holds that one task:

* the *reader* (in that task) awaits ``transport.receive()``, feeds the bytes
  to ``conn.receive_data`` and pulls every event with ``conn.next_event()``
  until it reports ``NEED_DATA``, handing each event to the session's
  callback. End of stream and transport failures are fed to the core as EOF
  (``receive_data(b"")``), so the core decides what they mean (a clean end
  after CLOSE, otherwise ``TRUNCATED``). It also keeps the core's timer: it
  receives inside a cancel scope whose deadline is ``conn.get_timer()`` (on
  anyio's clock); when the scope expires it calls ``conn.handle_timer(now)``
  and re-arms. A deadline that moved earlier (a close, a keepalive) brings the
  scope forward at once; one that moved later (each receive pushes the idle
  timeout) is left alone, so the scope expires early once per period and the
  core does nothing. The receive is therefore cancelled at a timer expiry:
  that is done only on byte streams whose ``receive`` is known to lose
  nothing when cancelled (:func:`receive_cancel_safe`: anyio's TCP and Unix
  socket streams, the memory and NATS streams). On any other stream (anyio's
  ``TLSStream`` drops the bytes it decrypted if cancelled while it flushes TLS
  protocol output, such as the answer to a key update) the same timer loop
  runs in a task of its own around a plain wait, and the reader's receive is
  cancelled only at the end of the connection. The owner's *alarm*
  (:meth:`Pump.set_alarm`: the server's idle and grant checks) rides on the
  same timer: the scope expires at the earlier of the two.
* the *writer* task is spawned in the pump's task group when there is
  something to write (or a close to finish); it drains ``conn.data_to_send()``
  and, once there is nothing left, waits :data:`WRITER_IDLE` seconds for more
  (a busy stream keeps its writer) and then ends.

Writes and the send slot
------------------------
At most one task writes to the transport at a time: the one holding the send
slot (``_sending``). A task that just queued a request or a reply (someone
waits for it) calls :meth:`Pump.flush`: if the slot is free and the pump is
running, it takes the sealed bytes from the core and writes them itself,
inside a cancel scope shielded from the caller's cancellation (so a record is
never half-written) that :meth:`Pump.abort` and the pump's end still cancel
(so a stuck transport cannot hold the caller past an abort). The shield covers
only bytes already taken from the core. If the slot is busy the writer task is
woken instead. This saves the two task switches of handing the write to the
writer. Other state changes (stream writes, which should coalesce) call
:meth:`Pump.wake`, which dispatches new events and wakes (or spawns) the
writer. The reader calls :meth:`Pump.settle` after each receive. A
consumer that just drained an inbox calls :meth:`Pump.settle`, which wakes the
writer only when there is something for it: bytes the core produced (taken at
once and held for the writer, ahead of anything taken later), a closing
connection; and it brings the reader's timer forward if the core's deadline is
earlier. The reader never writes: a reader blocked on a full transport would stop reading
and could deadlock two peers.

Because application tasks only change the Connection synchronously and write
only under the shield, cancelling an application task at any await leaves the
Connection and the byte stream consistent: a record is either entirely in the
core or entirely written. Backpressure toward the application is the
``flushed`` signal: it fires each time bytes were taken from the core, which
is when queued stream data moves (the session waits on it while a stream's
send buffer is above its high-water mark). A blocked transport therefore
blocks senders, and credit-starved streams stay queued in the core; outside
the core there is at most one batch held for the writer and one being written.

After the core reports the connection closed, the writer flushes what is left
(the CLOSE frame), half-closes the transport, and the reader lingers for the
peer's EOF for at most ``linger`` seconds, so that closing never resets a TCP
connection with unread data in flight.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream, SocketStream, TaskGroup

from ..errors import ErrorCode, M2MError
from ..events import Event

__all__ = ["ConnectionDriver", "Flag", "Pump", "Signal", "receive_cancel_safe"]


class ConnectionDriver(Protocol):
    """What the pump needs of a sans-IO connection: exactly these five calls.

    :class:`~m2mproto.connection.Connection` implements it; another protocol
    core (a QUIC or NATS binding) that speaks in :mod:`m2mproto.events` can be
    pumped by implementing it. ``next_event`` returns the ``need_data``
    sentinel given to the :class:`Pump` when it needs more input. Every call
    may raise :class:`~m2mproto.errors.M2MError` once the connection is over.
    """

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """Feed bytes read from the transport (``b""``: end of stream)."""

    def next_event(self) -> object:
        """The next event, or the ``need_data`` sentinel."""

    def data_to_send(self) -> bytes:
        """Take the bytes to write (``b""``: nothing)."""

    def get_timer(self) -> float | None:
        """The next deadline on the transport's clock, or None."""

    def handle_timer(self, now: float) -> None:
        """Act on expired deadlines."""


#: Bytes asked of the transport per receive call. Larger than one record
#: (65537 bytes on the wire), so a busy reader takes several records per wakeup
#: instead of needing two receives for each full record.
RECEIVE_SIZE = 262144


#: Seconds an idle writer task waits for more work before it ends.
WRITER_IDLE = 0.5


def receive_cancel_safe(transport: ByteStream) -> bool:
    """Whether a cancelled ``transport.receive()`` is known to consume nothing.

    True for anyio's own socket streams (TCP and Unix, every backend) and for
    streams that say so with a true ``m2m_receive_cancel_safe`` class attribute
    (the memory and NATS streams). Unknown streams are assumed unsafe.
    """
    if getattr(type(transport), "m2m_receive_cancel_safe", False) is True:
        return True
    return isinstance(transport, SocketStream) and type(transport).__module__.startswith(
        "anyio._backends."
    )


class Signal:
    """A re-armable broadcast: ``wait()`` returns at the next ``notify()``.

    The underlying event exists only while someone waits, so a notify with no
    waiter (the common case on the hot path) costs one attribute test, and an
    idle signal holds no event object.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def notify(self) -> None:
        """Wake every current waiter."""
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self) -> None:
        """Wait for the next :meth:`notify`."""
        event = self._event
        if event is None:
            event = self._event = anyio.Event()
        try:
            await event.wait()
        finally:
            _drop_if_unwaited(self, event)


class Flag:
    """A one-shot event (``set``/``is_set``/``wait``, re-armable with ``clear``).

    Like ``anyio.Event``, but the event object exists only while a task waits,
    so the many flags of an idle connection cost a few bytes each.
    """

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        if not self._set:
            self._set = True
            event = self._event
            if event is not None:
                self._event = None
                event.set()

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._set

    def clear(self) -> None:
        """Re-arm a set flag (waiters from before were already woken)."""
        self._set = False

    async def wait(self) -> None:
        """Return once the flag is set (a checkpoint if it already is)."""
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        event = self._event
        if event is None:
            event = self._event = anyio.Event()
        try:
            await event.wait()
        finally:
            _drop_if_unwaited(self, event)


def _drop_if_unwaited(owner: Signal | Flag, event: anyio.Event) -> None:
    """After a wait ended (woken or cancelled): free the event if nobody else waits on it,
    so a wait that was cancelled (a timer, a finished handshake) leaves no event behind."""
    if owner._event is event and not event.statistics().tasks_waiting:
        owner._event = None


class Pump:
    """Moves bytes between ``conn`` and ``transport`` and drives the core's timer.

    ``on_event`` is called (synchronously, in the pump's task) for each event
    the connection produces. ``conn`` is any :class:`ConnectionDriver`; the
    pump has no opinion about events.
    """

    # slotted: one pump per session, and an idle session should stay small
    __slots__ = (
        "_alarm",
        "_alarm_at",
        "_armed",
        "_early_deadline",
        "_eof_fed",
        "_finishing",
        "_held",
        "_linger",
        "_log",
        "_need_data",
        "_processing",
        "_scope",
        "_send_done",
        "_send_scope",
        "_sending",
        "_tg",
        "_timer_scope",
        "_wake",
        "_writer_done",
        "_writer_parked",
        "_writer_running",
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
        transport: ByteStream,
        on_event: Callable[[Event], None],
        need_data: object,
        log: logging.LoggerAdapter[logging.Logger] | logging.Logger,
        *,
        linger: float = 2.0,
    ) -> None:
        self.conn = conn
        self.transport = transport
        #: Called for each event; the session's dispatcher binds it before :meth:`run`.
        self.on_event = on_event
        self._need_data = need_data
        self._log = log
        self._linger = linger
        #: Fires each time the writer drained the outbox (send backpressure).
        self.flushed = Signal()
        #: Set when both tasks have finished and the transport is closed.
        self.finished = Flag()
        #: The transport exception that ended the connection, if any.
        self.transport_error: BaseException | None = None
        self._finishing = False
        self._processing = False
        self._eof_fed = False
        #: The task group's cancel scope once running: the one scope of the pump
        #: (abort cancels it; after the writer is done it bounds the reader's linger).
        self._scope: anyio.CancelScope | None = None
        #: An abort before :meth:`run` entered its scope: the deadline to apply.
        self._early_deadline = math.inf
        #: The send slot: a task (writer or :meth:`flush` caller) is writing.
        self._sending = False
        #: Fires when the send slot is released.
        self._send_done = Signal()
        #: The scope of a :meth:`flush` caller's shielded write (abort cancels it).
        self._send_scope: anyio.CancelScope | None = None
        #: Bytes :meth:`settle` took from the core for the writer (written first).
        self._held = b""
        #: The deadline of the reader's timer scope (-inf: not armed).
        self._armed = -math.inf
        #: The reader's timer scope: expires at the core's deadline (or earlier).
        self._timer_scope: anyio.CancelScope | None = None
        #: The pump's task group while it runs (the writer is spawned in it on demand).
        self._tg: TaskGroup | None = None
        #: A writer task runs now.
        self._writer_running = False
        #: The writer waits (at most ``WRITER_IDLE`` seconds) for more work.
        self._writer_parked = False
        #: Wakes the parked writer.
        self._wake = Signal()
        #: The writer half-closed the transport or failed: none is spawned again.
        self._writer_done = False
        self.bytes_sent = 0
        self.bytes_received = 0
        #: Times the timer scope expired (the core's deadline, or an early re-arm).
        self.timer_wakeups = 0
        #: The owner's alarm (:meth:`set_alarm`): when, and what to call.
        self._alarm_at = math.inf
        self._alarm: Callable[[], None] | None = None

    # -- called by the session ---------------------------------------------------

    def wake(self) -> None:
        """Process new events and let the writer flush and re-arm the timer."""
        self.process()
        self._kick()
        self._check_timer()

    def settle(self) -> None:
        """Like :meth:`wake`, but wake the writer only if there is work for it.

        Work is: bytes the core has to send (taken now and held for the
        writer, ahead of anything taken later) or a closing connection; a
        core deadline earlier than the reader's timer brings it forward. For paths
        that rarely produce output (the reader after each receive, the
        application taking an item): an idle writer is not woken for nothing.
        Senders use :meth:`wake` or :meth:`flush`, which leave the sealing to
        the writer or do it at once, so that their frames coalesce.
        """
        self.process()
        if self._finishing or self._sending or self._held:
            self._kick()  # the writer re-checks once the slot is free
            return
        data = self.conn.data_to_send()
        if data:
            self._held = data
            self.flushed.notify()
            self._kick()
            return
        self._check_timer()

    def _kick(self) -> None:
        """There may be work for the writer: spawn it unless it runs (or is done)."""
        if self._writer_running or self._writer_done or self._tg is None:
            if self._writer_parked:
                self._wake.notify()
            return
        self._writer_running = True
        self._tg.start_soon(self._writer_task)

    @staticmethod
    def now() -> float:
        """The clock of :meth:`set_alarm` (anyio's)."""
        return anyio.current_time()

    def set_alarm(self, when: float, callback: Callable[[], None] | None) -> None:
        """Call *callback* (synchronously, in the pump's task) at *when* on anyio's
        clock, replacing the previous alarm (``None``: no alarm). It runs on the
        reader's timer, so a watch of the session costs no task and no scope."""
        self._alarm = callback
        self._alarm_at = when if callback is not None else math.inf
        self._arm(self._alarm_at)

    def _check_timer(self) -> None:
        """Bring the reader's timer scope forward if the core's deadline is earlier.
        (A later deadline is left alone: the scope expires early and re-arms.)"""
        timer = self.conn.get_timer()
        if timer is not None:
            self._arm(timer)

    def _arm(self, deadline: float) -> None:
        if deadline < self._armed:
            self._armed = deadline
            scope = self._timer_scope
            if scope is not None:
                scope.deadline = deadline

    def _take(self) -> bytes:
        """The bytes to write next: those held for the writer, then the core's."""
        held, self._held = self._held, b""
        data: bytes = self.conn.data_to_send()
        return held + data if held else data

    async def flush(self) -> None:
        """Process new events and write what the core has queued, from this task.

        If the send slot is taken (or the pump is not running, or closing),
        the writer task is woken instead. The write is shielded from this
        task's cancellation (a record is never half-written) but not from
        :meth:`abort`.
        """
        if self._sending or self._finishing or self._tg is None:
            self.wake()
            return
        self.process()
        data = self._take()
        if not data:
            self.wake()  # the timer or the close may still need the writer
            return
        self.flushed.notify()
        self._sending = True
        try:
            with anyio.CancelScope(shield=True) as scope:
                self._send_scope = scope
                await self._write(data)
        finally:
            self._send_scope = None
            self._sending = False
            self._send_done.notify()
        if self._finishing:
            self._kick()
        else:
            self._check_timer()

    async def _write(self, data: bytes) -> bool:
        """Write *data* (the caller holds the send slot); False if the transport failed."""
        try:
            await self.transport.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            if not self._finishing:
                self.transport_error = exc
                self._log.info("transport failed while writing: %r", exc)
            self._finishing = True
            self._feed_eof()
            self._stop_reader(-math.inf)
            return False
        self.bytes_sent += len(data)
        return True

    def process(self) -> None:
        """Pull every pending event from the core and dispatch it, in order.

        Re-entrant calls (an event handler changing the connection) return at
        once: the outer loop picks up whatever the change produced.
        """
        if self._processing:
            return
        self._processing = True
        try:
            while True:  # ends at NEED_DATA or a closed core; each event consumes input
                try:
                    event = self.conn.next_event()
                except M2MError as exc:  # the core is closed; nothing more to parse
                    if exc.code != ErrorCode.CONNECTION_CLOSED:
                        self._log.warning("connection failed: %s", exc)
                    self.finish()
                    return
                if event is self._need_data:
                    return
                assert isinstance(event, Event)
                self.on_event(event)
        finally:
            self._processing = False

    def finish(self) -> None:
        """The core is closed: flush what is left, half-close, linger, stop."""
        if not self._finishing:
            self._finishing = True
            self._kick()

    def abort(self, grace: float = 0.0) -> None:
        """Stop both tasks and close the transport; *grace* seconds may flush a CLOSE."""
        if self.finished.is_set():
            return
        self._finishing = True
        deadline = -math.inf if grace <= 0 else anyio.current_time() + grace
        send_scope = self._send_scope
        if send_scope is not None:
            send_scope.deadline = min(send_scope.deadline, deadline)
        scope = self._scope
        if scope is None:
            self._early_deadline = min(self._early_deadline, deadline)
        elif grace <= 0:
            scope.cancel()
        else:
            scope.deadline = min(scope.deadline, deadline)
        self._kick()

    def _stop_reader(self, deadline: float) -> None:
        """The writer is done: let the reader run until *deadline* at most."""
        scope = self._scope
        if scope is not None:
            scope.deadline = min(scope.deadline, deadline)

    # -- the tasks -----------------------------------------------------------------

    async def run(self) -> None:
        """Run the reader and writer until the connection is over. Never raises
        (except cancellation of the enclosing scope)."""
        try:
            # One cancel scope for both tasks (an idle connection holds fewer
            # scopes): the reader runs in this task, the writer as a child
            # spawned when there is something to write.
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                tg.cancel_scope.deadline = self._early_deadline
                self._tg = tg
                try:
                    self._kick()  # what the core queued before the pump ran
                    if receive_cancel_safe(self.transport):
                        await self._timed(self._read)
                    else:
                        # the timer in a task of its own; the receive is never cancelled
                        # before the end (the flag ends the timer task with the reader)
                        read_done = Flag()
                        tg.start_soon(self._timed, read_done.wait)
                        try:
                            await self._read()
                        finally:
                            read_done.set()
                finally:
                    if not self._writer_running:
                        self._tg = None
        except Exception:  # pragma: no cover - defensive: the pump must never crash the session
            self._log.exception("transport pump failed")
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                if self._send_scope is not None:  # a caller's write must not outlive the pump
                    self._send_scope.cancel()
                with contextlib.suppress(Exception):  # closing a broken transport
                    await anyio.aclose_forcefully(self.transport)
                self._feed_eof()
                self.finished.set()
                self.flushed.notify()

    def _feed_eof(self) -> None:
        if not self._eof_fed:
            self._eof_fed = True
            with contextlib.suppress(M2MError):
                self.conn.receive_data(b"", anyio.current_time())
            self.process()

    async def _writer_task(self) -> None:
        try:
            done = await self._writer()
        except BaseException:
            self._writer_done = True  # cancelled: the pump is ending
            raise
        finally:
            self._writer_running = False
        if done:
            self._writer_done = True
            # writer done: the reader lingers for the peer's EOF, bounded
            self._stop_reader(anyio.current_time() + self._linger)

    async def _timed(self, wait: Callable[[], Awaitable[None]]) -> None:
        """Await *wait()* until it returns; at each of the core's deadlines (the
        timer scope, which cancels it) act on the timer and await it again."""
        while True:  # ends when *wait* returns; each turn is one timer period
            timer = self.conn.get_timer()
            self._armed = min(self._alarm_at, math.inf if timer is None else float(timer))
            ended = False
            with anyio.CancelScope(deadline=self._armed) as scope:
                self._timer_scope = scope
                await wait()
                ended = True
            self._timer_scope = None
            self._armed = -math.inf
            if ended:
                return
            # The scope expired: a deadline passed, or it was armed for one that
            # has moved later since (then the core does nothing and we re-arm).
            self.timer_wakeups += 1
            now = anyio.current_time()
            with contextlib.suppress(M2MError):
                self.conn.handle_timer(now)
            alarm = self._alarm
            if alarm is not None and now >= self._alarm_at:
                self._alarm, self._alarm_at = None, math.inf
                try:
                    alarm()  # may set the next alarm
                except Exception:  # pragma: no cover - the owner's bug must not stop the reader
                    self._log.exception("alarm failed")
            self.settle()

    async def _read(self) -> None:
        while True:  # ends at EOF, a transport failure, or a deadline (the caller's scope)
            try:
                data = await self.transport.receive(RECEIVE_SIZE)
            except anyio.EndOfStream:
                data = b""
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                if not self._finishing:
                    self.transport_error = exc
                    self._log.info("transport failed while reading: %r", exc)
                data = b""
            if not data:
                self._feed_eof()
                self.finish()
                return
            self.bytes_received += len(data)
            try:
                self.conn.receive_data(data, anyio.current_time())
            except M2MError as exc:  # data after the core closed: ignore
                self._log.debug("dropped %d bytes: %s", len(data), exc)
            self.settle()  # the writer only if the input produced work for it

    async def _writer(self) -> bool:
        """Write until there is nothing to write; True once the transport is
        half-closed (or failed), False when idle (the next :meth:`_kick` spawns
        a writer again)."""
        idle_once = False
        while True:  # ends when idle, once the core closed and was flushed, or on failure
            if self._sending:  # a flush() caller holds the send slot
                await self._send_done.wait()
                continue
            data = self._take()
            if data:
                self.flushed.notify()
                self._sending = True
                try:
                    ok = await self._write(data)
                finally:
                    self._sending = False
                    self._send_done.notify()
                if not ok:
                    return True
                continue
            if self._finishing:
                try:
                    await self.transport.send_eof()
                except Exception:
                    self._stop_reader(-math.inf)
                return True
            if idle_once:
                return False
            # Nothing to write: wait a little for more (a busy connection keeps
            # its writer), then end (an idle connection holds no writer task).
            self._writer_parked = True
            try:
                with anyio.move_on_after(WRITER_IDLE) as scope:
                    await self._wake.wait()
            finally:
                self._writer_parked = False
            idle_once = scope.cancelled_caught
