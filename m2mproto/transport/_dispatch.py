"""Event dispatch: turns the Connection's events into channel state and handler tasks.

Theory of operation
-------------------
The pump calls :meth:`_Dispatcher._on_event` synchronously, in its own task,
for every event the core produces, in order. Data and messages go to their
stream's :class:`~._channels._Channel` inbox (credit is returned only when the
application takes them); streams the peer opens go to the session's router
(a handler task in the session's task group) or to ``async for incoming in
session``; resets, the end of streams and the close wake whoever waits. After
every event the ``flushed`` signal fires, since any event may have moved
flow-control credit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import anyio

from .. import events as ev
from ..errors import (
    ErrorCode,
    M2MError,
    code_name,
)
from ._channels import DataStream, Incoming, MessageStream, _Channel
from ._session_core import Context, Peer, _SessionCore

if TYPE_CHECKING:
    from .server import Route
    from .session import Session

__all__: list[str] = []


class _Dispatcher(_SessionCore):
    """Event handling and handler tasks of a session."""

    @property
    def _session(self) -> Session:
        """This object as the public :class:`~.session.Session` it is part of."""
        return cast("Session", self)

    def _on_event(self, event: object) -> None:
        if isinstance(event, ev.DataReceived):
            self._on_data(event.stream_id, event.data)
        elif isinstance(event, ev.MessageReceived):
            self._on_message(event)
        elif isinstance(event, ev.StreamOpened):
            self._on_stream_opened(event)
        elif isinstance(event, ev.StreamEnded):
            self._on_stream_ended(event.stream_id)
        elif isinstance(event, ev.StreamReset):
            self._on_reset(event.stream_id, event.code, event.remote)
        elif isinstance(event, ev.HandshakeCompleted):
            self._peer = Peer(event.peer)
            self._handshake_hash = event.handshake_hash
            self._log.extra = {"peer": event.peer.short}
            self._log.info("handshake complete (%s)", "server" if self._server_side else "client")
            self._handshake_done.set()
        elif isinstance(event, ev.ConnectionClosed):
            self._mark_closed(event.code, event.reason, event.remote)
            self._pump.finish()
        elif isinstance(event, ev.TokenAccepted):
            self._capabilities = event.grant
            self._log.info("peer tokens accepted")
        elif isinstance(event, ev.TokenRejected):
            self._log.info("peer token rejected: %s", event.code.name)
        elif isinstance(event, ev.PingAcknowledged):
            waiter = self._pings.pop(event.payload, None)
            if waiter is not None:
                waiter.set()
        # any event may have moved credit: let waiting senders re-check
        self._pump.flushed.notify()

    def _on_stream_opened(self, event: ev.StreamOpened) -> None:
        chan = _Channel(event.stream_id, event.resource, local=False, grant=event.grant)
        route = self._router.find(event.resource) if self._router is not None else None
        if route is None and not self._accept_incoming:
            self._log.info("no handler for %r: refused", event.resource)
            self._reset_quietly(event.stream_id, ErrorCode.REFUSED)
            return
        self._channels[event.stream_id] = chan
        if route is None:
            chan.to_incoming = True
        elif route.takes_stream:
            self._spawn(self._serve_stream, chan, route)
        else:
            chan.route = route

    def _on_data(self, sid: int, data: bytes) -> None:
        chan = self._channels.get(sid)
        if chan is None or chan.detached:
            self._acknowledge(sid, len(data))
            return
        if chan.route is not None or chan.to_incoming:
            self._acknowledge(sid, len(data))
            self._reset_quietly(sid, ErrorCode.PROTOCOL_ERROR)
            return
        chan.push(False, data, len(data))

    def _on_message(self, event: ev.MessageReceived) -> None:
        sid = event.stream_id
        size = self._message_size(event)
        chan = self._channels.get(sid)
        if chan is None or chan.detached:
            self._acknowledge(sid, size)
            return
        grant = event.grant if event.grant is not None else chan.grant
        if chan.route is not None:
            route, chan.route = chan.route, None
            self._acknowledge(sid, size)
            chan.detached = True
            self._spawn(self._serve_call, chan, route, event.value, grant)
        elif chan.to_incoming:
            chan.to_incoming = False
            chan.detached = True
            self._acknowledge(sid, size)
            self._incoming.append(Incoming(self._session, sid, chan.resource, event.value, grant))
            self._incoming_signal.notify()
        else:
            chan.push(True, event.value, size)

    def _on_stream_ended(self, sid: int) -> None:
        chan = self._channels.get(sid)
        if chan is None:
            return
        chan.recv_ended = True
        if chan.route is not None or chan.to_incoming:  # ended before its message
            chan.route = None
            chan.to_incoming = False
            self._end_quietly(sid)
        chan.changed.notify()
        self._maybe_forget(chan)

    def _on_reset(self, sid: int, code: int, remote: bool) -> None:
        if not remote and code == ErrorCode.UNAUTHORIZED:
            # the Connection refused the peer's stream or message: no capability covers it
            self._log.info("refused stream %d: %s", sid, code_name(code))
        chan = self._channels.pop(sid, None)
        if chan is not None:
            chan.reset = (code, remote)
            chan.route = None
            if remote and chan.handler_scope is not None:
                chan.handler_scope.cancel()  # nobody waits for this handler's result
            chan.changed.notify()
            self._log.debug(
                "stream %d reset (%s, %s)", sid, code_name(code), "peer" if remote else "local"
            )

    def _context(self, chan: _Channel, grant: object) -> Context:
        return Context(self._session, self.peer, grant, chan.resource, chan.stream_id)

    async def _serve_call(self, chan: _Channel, route: Route, value: Any, grant: object) -> None:
        ctx = self._context(chan, grant)
        try:
            result = await route.call(value, ctx)
        except Exception:
            self._log.exception("handler for %r failed", chan.resource)
            self._reset_quietly(chan.stream_id, ErrorCode.APPLICATION_ERROR)
            return
        if self._closed.is_set() or chan.reset is not None:
            return
        if route.kind == "request":
            try:
                await self._queue_send(
                    chan.stream_id, result, message=True, end_stream=True, flush=True
                )
            except M2MError as exc:
                self._log.warning("reply to %r not sent: %s", chan.resource, exc)
                self._reset_quietly(chan.stream_id, ErrorCode.APPLICATION_ERROR)
        else:
            self._end_quietly(chan.stream_id)

    async def _serve_stream(self, chan: _Channel, route: Route) -> None:
        ctx = self._context(chan, chan.grant)
        stream: DataStream | MessageStream
        stream = (
            MessageStream(self._session, chan)
            if route.kind == "message_stream"
            else DataStream(self._session, chan)
        )
        try:
            await route.serve_stream(stream, ctx)
        except Exception:
            self._log.exception("stream handler for %r failed", chan.resource)
            await stream.reset(ErrorCode.APPLICATION_ERROR)
            return
        await stream.aclose()

    def _spawn(self, func: Callable[..., Any], chan: _Channel, *args: Any) -> None:
        if self._tg is None or self._closed.is_set():
            return
        self._handlers += 1
        self._handlers_idle.clear()
        self._tg.start_soon(self._handler_task, func, chan, *args)

    async def _handler_task(self, func: Callable[..., Any], chan: _Channel, *args: Any) -> None:
        scope = chan.handler_scope = anyio.CancelScope()
        self._handler_scopes.add(scope)
        try:
            with scope:
                await func(chan, *args)
        finally:
            self._handler_scopes.discard(scope)
            self._handlers -= 1
            if not self._handlers:
                self._handlers_idle.set()
