"""The session's state and the synchronous operations its streams and handlers use.

Theory of operation
-------------------
:class:`_SessionCore` holds everything one session knows: its sans-IO
``Connection``, the :class:`~._pump.Pump`, one :class:`~._channels._Channel`
per open stream, the incoming-message queue and the close state. Its helpers
change the Connection synchronously and then wake the pump; the few that
wait (``_queue_send``, ``_wait_drained``, ``_open``, ``_next_item``) wait only
on signals the pump fires as the core makes progress, and re-check the state
after every wakeup, so cancelling them at any await leaves the session
consistent. Event dispatch lives in :mod:`._dispatch`; the public API in
:mod:`.session`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import ByteStream, TaskGroup

from .. import cbor
from .. import events as ev
from ..connection import NEED_DATA, Connection
from ..errors import (
    AuthenticationError,
    ErrorCode,
    LocalProtocolError,
    M2MError,
    code_name,
)
from ..identity import AgentId, Identity
from ._channels import Incoming, _Channel
from ._errors import ConnectionClosedError, reset_error
from ._pump import Flag, Pump, Signal

if TYPE_CHECKING:
    from .server import Router
    from .session import Session

__all__ = ["DEFAULT_HIGH_WATER", "Context", "Peer"]

logger = logging.getLogger("m2mproto.transport")

#: Default bytes a sender may leave queued in the core per stream before ``send`` waits.
DEFAULT_HIGH_WATER = 64 * 1024


@dataclass(frozen=True, slots=True)
class Peer:
    """The authenticated peer of a session."""

    #: The peer's self-certifying agent ID.
    agent_id: AgentId

    @property
    def identity_key(self) -> bytes:
        """The peer's raw Ed25519 public key."""
        return self.agent_id.public_key

    @property
    def short_id(self) -> str:
        """The short agent ID, for logs only."""
        return self.agent_id.short


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler knows about the call it serves."""

    #: The session the call arrived on.
    session: Session
    #: The authenticated caller.
    peer: Peer
    #: The grant that allowed the call (``None`` without an authorizer).
    grant: object
    #: The resource the caller named.
    resource: str
    #: The stream carrying the call.
    stream_id: int


class _PeerLog(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra.get('peer', '?')}] {msg}", kwargs


class _SessionCore:
    """State and synchronous helpers shared by the session's parts (see the module doc)."""

    def __init__(
        self,
        transport: ByteStream,
        conn: Connection,
        *,
        server_side: bool,
        identity: Identity,
        router: Router | None = None,
        accept_incoming: bool = True,
        high_water: int = DEFAULT_HIGH_WATER,
        linger: float = 2.0,
        authorizer: Any = None,
    ) -> None:
        self._transport = transport
        self._conn = conn
        self._server_side = server_side
        self._identity = identity
        self._router = router
        self._accept_incoming = accept_incoming
        self._high_water = high_water
        self._log: _PeerLog = _PeerLog(logger, {"peer": "handshake"})
        self._pump = Pump(conn, transport, self._on_event, NEED_DATA, self._log, linger=linger)
        self._channels: dict[int, _Channel] = {}
        self._incoming: list[Incoming] = []  # short; a list is 700 bytes smaller idle
        self._incoming_signal = Signal()
        self._current_incoming: Incoming | None = None
        #: Set when the handshake is over either way: completed (``_peer`` is
        #: then set) or the session closed first.
        self._handshake_done = Flag()
        self._closed = Flag()
        self._closed_info: tuple[int, str, bool] | None = None
        self._close_error: M2MError | None = None
        self._authorizer = authorizer
        self._closing = False
        self._handlers = 0
        self._handlers_idle = Flag()
        self._handler_scopes: set[anyio.CancelScope] = set()
        self._pings: dict[bytes, anyio.Event] = {}
        self._tg: TaskGroup | None = None
        self._peer: Peer | None = None
        self._handshake_hash = b""
        self._capabilities: object = None
        self._exited = False

    @property
    def peer(self) -> Peer:
        """The authenticated peer."""
        if self._peer is None:
            raise LocalProtocolError("the handshake is not complete", ErrorCode.INVALID_STATE)
        return self._peer

    @property
    def closed(self) -> bool:
        """Whether the connection is over."""
        return self._closed.is_set()

    def _maybe_forget(self, chan: _Channel) -> None:
        if chan.recv_ended and chan.send_ended and not chan.inbox:
            self._channels.pop(chan.stream_id, None)

    def _mark_closed(self, code: int, reason: str, remote: bool) -> None:
        if self._closed_info is None:
            self._closed_info = (code, reason, remote)
            who = "peer" if remote else "we"
            self._log.info("connection closed (%s, %s)", code_name(code), who)
        self._closed.set()
        self._handshake_done.set()  # a handshake still waited for has failed
        for chan in self._channels.values():
            chan.changed.notify()
        self._incoming_signal.notify()
        for waiter in self._pings.values():
            waiter.set()
        self._pump.flushed.notify()

    def _closed_error(self) -> ConnectionClosedError:
        code, reason, remote = self._closed_info or (ErrorCode.NO_ERROR, "closing", False)
        error = ConnectionClosedError(
            f"session closed ({code_name(code)}{', by peer' if remote else ''})",
            code,
            reason,
            remote,
        )
        if self._pump.transport_error is not None:
            error.__cause__ = self._pump.transport_error
        return error

    def _handshake_error(self) -> M2MError:
        if self._close_error is not None:
            return self._close_error
        failure = getattr(self._conn, "error", None)
        if isinstance(failure, M2MError):
            return failure
        code = self._closed_info[0] if self._closed_info else ErrorCode.TRUNCATED
        if code in (ErrorCode.AUTH_UNEXPECTED_PEER, ErrorCode.AUTH_UNTRUSTED):
            return AuthenticationError("peer not accepted", ErrorCode(code))
        return self._closed_error()

    def _check_open(self) -> None:
        if self._closed.is_set() or self._closing:
            raise self._closed_error()

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a Connection method, mapping "not established" to the closed error;
        then wake the pump."""
        result = self._apply(method, *args, **kwargs)
        self._pump.wake()
        return result

    def _apply(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """:meth:`_call` without waking the pump (the caller flushes next)."""
        self._check_open()
        try:
            result = method(*args, **kwargs)
        except LocalProtocolError as exc:
            if exc.code == ErrorCode.INVALID_STATE and self._conn.state.name != "ESTABLISHED":
                raise self._closed_error() from None
            raise
        return result

    def _acknowledge(self, sid: int, size: int) -> None:
        """Return *size* bytes of credit: the application took them."""
        if size:
            # An unknown stream (already finished in the core) is refused; the
            # connection-level credit of its last bytes is then not returned.
            with contextlib.suppress(M2MError):
                self._conn.acknowledge_data(sid, size)

    @staticmethod
    def _message_size(event: ev.MessageReceived) -> int:
        if event.size is not None:
            return event.size
        # An event without its size: the deterministic profile re-encodes to
        # exactly the bytes received (the decoder rejects any other encoding).
        return len(cbor.encode(event.value))

    def _reset_quietly(self, sid: int, code: int) -> None:
        with contextlib.suppress(M2MError):
            self._conn.reset_stream(sid, code)
        self._channels.pop(sid, None)
        self._pump.wake()

    def _end_quietly(self, sid: int) -> None:
        chan = self._channels.get(sid)
        if chan is not None:
            chan.send_ended = True
            self._maybe_forget(chan)
        try:
            self._conn.send(sid, b"", end_stream=True)
        except M2MError:
            return
        self._pump.wake()

    async def _queue_send(
        self, sid: int, data: Any, *, message: bool, end_stream: bool = False, flush: bool = False
    ) -> None:
        """Queue bytes or one message in the core, waiting while its send buffer is full.

        With ``flush`` (a request or a reply: someone waits for it), write it
        from this task at once if the transport is idle (see
        :meth:`~._pump.Pump.flush`: the write is shielded, so a cancellation
        arriving now takes effect at the caller's next await). Otherwise the
        writer task sends it, coalesced with whatever else is queued by then.
        """
        method = self._conn.send_message if message else self._conn.send
        for _ in iter(int, 1):  # until queued; each retry follows progress in the core
            try:
                self._apply(method, sid, data, end_stream=end_stream)
                break
            except LocalProtocolError as exc:
                if exc.code != ErrorCode.FLOW_CONTROL_ERROR or self._conn.send_buffered() == 0:
                    raise
            await self._pump.flushed.wait()
        chan = self._channels.get(sid)
        if chan is not None and end_stream:
            chan.send_ended = True
            self._maybe_forget(chan)
        if flush:
            await self._pump.flush()
        else:
            self._pump.wake()

    async def _wait_drained(self, sid: int) -> None:
        """Wait while stream *sid* has more than ``high_water`` bytes queued in the core."""
        for _ in iter(int, 1):  # until drained, closed or reset
            self._check_open()
            chan = self._channels.get(sid)
            if chan is not None and chan.reset is not None:
                raise reset_error(sid, *chan.reset)
            if self._conn.send_buffered(sid) <= self._high_water:
                return
            await self._pump.flushed.wait()

    async def _open(self, resource: str, *, wake: bool = True) -> _Channel:
        """Open a stream, waiting for a free slot under the peer's stream limit
        (``wake=False``: the caller queues on it and flushes next)."""
        for _ in iter(int, 1):  # until a slot is free; each retry follows an event
            try:
                sid = self._apply(self._conn.open_stream, resource)
                if wake:
                    self._pump.wake()
                break
            except LocalProtocolError as exc:
                if exc.code != ErrorCode.STREAM_LIMIT_ERROR:
                    raise
            await self._pump.flushed.wait()
        chan = _Channel(sid, resource, local=True)
        self._channels[sid] = chan
        return chan

    async def _next_item(self, chan: _Channel, want_message: bool) -> tuple[bool, Any]:
        """Return ``(True, value)`` for the next inbox item, ``(False, None)`` at end."""
        for _ in iter(int, 1):  # until an item, the end, a reset or the close
            if chan.inbox:
                is_message, value, size = chan.inbox.popleft()
                chan.inbox_bytes -= size
                if is_message != want_message:
                    self._reset_quietly(chan.stream_id, ErrorCode.PROTOCOL_ERROR)
                    raise LocalProtocolError(
                        f"stream {chan.stream_id} carries {'messages' if is_message else 'bytes'}",
                        ErrorCode.PROTOCOL_ERROR,
                    )
                self._acknowledge(chan.stream_id, size)
                if chan.inbox:  # more to take: the writer coalesces what this freed
                    self._pump.wake()
                else:  # drained: wake the writer only if the credit produced output
                    self._pump.settle()
                return True, value
            if chan.recv_ended:  # a reset after the peer's end only affects sending
                self._maybe_forget(chan)
                return False, None
            self._check_open()  # a closed session wins over the resets the close caused
            if chan.reset is not None:
                raise reset_error(chan.stream_id, *chan.reset)
            await chan.changed.wait()
        raise AssertionError("unreachable")  # pragma: no cover

    def _cancel_stream(self, chan: _Channel) -> None:
        if self._channels.get(chan.stream_id) is chan and not self._closed.is_set():
            self._reset_quietly(chan.stream_id, ErrorCode.CANCELLED)
            chan.reset = (ErrorCode.CANCELLED, False)

    def _on_event(self, event: object) -> None:  # pragma: no cover - see _dispatch
        """Handle one event from the core (implemented by the dispatcher)."""
        raise NotImplementedError
