"""Session: one authenticated m2mproto connection, as agents use it.

Theory of operation
-------------------
A :class:`Session` owns one sans-IO ``Connection`` and one :class:`~._pump.Pump`
that binds it to an anyio byte stream. Application calls change the
Connection synchronously and wake the pump; the pump turns the Connection's
events into per-stream state (:class:`_Channel`) that application tasks wait
on. Nothing here touches the transport directly.

* ``request(resource, value)`` opens a stream, sends one message with
  end-of-stream and waits for one reply message; ``send(resource, value)``
  does the same without waiting for a reply (``confirm=True`` waits for the
  peer to end the stream, which it does after its handler ran).
* ``open_stream`` / ``open_message_stream`` return anyio streams
  (:class:`DataStream` is a ``ByteStream``, :class:`MessageStream` an
  ``ObjectStream``). ``send`` queues into the core, then waits while the
  stream's queued bytes exceed ``high_water`` (they leave the queue only as
  the peer grants credit and the pump writes). ``receive`` returns credit to
  the peer (``conn.consume``) only when the application takes the bytes, so a
  reader that does not read makes the peer wait.
* Streams the peer opens go to the session's :class:`~.server.Router` (server
  handlers), or, for messages with no route, to ``async for incoming in
  session`` when the session accepts incoming messages.

Errors: a closed session raises :class:`ConnectionClosedError`
(``CONNECTION_CLOSED``, also an ``anyio.BrokenResourceError``); a stream the
peer refused for lack of a capability raises
:class:`~m2mproto.errors.AuthorizationError` (``UNAUTHORIZED``); other resets
raise :class:`StreamResetError` with the reset code; ``request(timeout=)``
raises :class:`RequestTimeout` (``TIMEOUT``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import ByteStream, ObjectStream, TaskGroup

from .. import cbor
from .. import events as ev
from ..config import Configuration
from ..connection import NEED_DATA, Connection, Role
from ..errors import (
    AuthenticationError,
    AuthorizationError,
    ErrorCode,
    LocalProtocolError,
    M2MError,
    code_name,
)
from ..handshake import StaticKey
from ..identity import AgentId, Identity
from ._pump import Flag, Pump, Signal
from .attributes import M2MAttribute

if TYPE_CHECKING:
    from .server import Route, Router

__all__ = [
    "ConnectionClosedError",
    "Context",
    "DataStream",
    "Incoming",
    "MessageStream",
    "Peer",
    "RequestTimeout",
    "Session",
    "StreamResetError",
]

logger = logging.getLogger("m2mproto.transport")

#: Default bytes a sender may leave queued in the core per stream before ``send`` waits.
DEFAULT_HIGH_WATER = 64 * 1024


class ConnectionClosedError(M2MError, anyio.BrokenResourceError):
    """The session is closed (``CONNECTION_CLOSED``).

    ``close_code`` is the code the connection closed with (``NO_ERROR`` for a
    graceful close, ``TRUNCATED`` if the transport ended without a CLOSE
    frame), ``remote`` whether the peer closed it, ``reason`` the peer's reason.
    The transport exception, if one ended the connection, is ``__cause__``.
    """

    default_code = ErrorCode.CONNECTION_CLOSED

    def __init__(self, message: str, close_code: int, reason: str = "", remote: bool = False):
        super().__init__(message, ErrorCode.CONNECTION_CLOSED)
        self.close_code = close_code
        self.reason = reason
        self.remote = remote


class StreamResetError(M2MError, anyio.BrokenResourceError):
    """A stream was reset; ``code`` is the registry code (``APPLICATION_ERROR``
    for application codes), ``reset_code`` the code on the wire."""

    def __init__(self, message: str, reset_code: int, remote: bool):
        try:
            code = ErrorCode(reset_code)
        except ValueError:
            code = ErrorCode.APPLICATION_ERROR
        super().__init__(message, code)
        self.reset_code = reset_code
        self.remote = remote


class RequestTimeout(M2MError, TimeoutError):
    """A request got no reply in time (``TIMEOUT``); its stream was cancelled."""

    default_code = ErrorCode.TIMEOUT


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


@dataclass(eq=False, slots=True)
class _Channel:
    """Local view of one stream: the inbox and what ended it."""

    stream_id: int
    resource: str
    local: bool
    grant: object = None
    inbox: deque[tuple[bool, Any, int]] = dataclasses.field(default_factory=deque)
    inbox_bytes: int = 0
    recv_ended: bool = False
    send_ended: bool = False
    reset: tuple[int, bool] | None = None
    detached: bool = False
    #: A request/message route waiting for the stream's first message.
    route: Route | None = None
    #: The first message goes to ``async for incoming in session``.
    to_incoming: bool = False
    #: The handler task serving this stream (cancelled when the peer resets it).
    handler_scope: anyio.CancelScope | None = None
    changed: Signal = dataclasses.field(default_factory=Signal)

    def push(self, is_message: bool, value: Any, size: int) -> None:
        self.inbox.append((is_message, value, size))
        self.inbox_bytes += size
        self.changed.notify()


class Incoming:
    """A message the peer sent to this session with no handler registered for it.

    ``reply(value)`` answers it (a request); if the application does not reply,
    the stream is ended without a reply when the next message is taken.
    """

    __slots__ = ("_answered", "_session", "grant", "peer", "resource", "stream_id", "value")

    def __init__(
        self, session: Session, stream_id: int, resource: str, value: Any, grant: object
    ) -> None:
        self._session = session
        self._answered = False
        self.stream_id = stream_id
        self.resource = resource
        self.value = value
        self.grant = grant
        self.peer = session.peer

    async def reply(self, value: Any) -> None:
        """Send *value* as the reply and end the stream.

        Raises:
            LocalProtocolError: (``INVALID_STATE``) if already answered.
            ConnectionClosedError: the session is closed.
        """
        if self._answered:
            raise LocalProtocolError("this message was already answered", ErrorCode.INVALID_STATE)
        self._answered = True
        await self._session._queue_send(self.stream_id, value, message=True, end_stream=True)

    def _finish(self) -> None:
        if not self._answered:
            self._answered = True
            self._session._end_quietly(self.stream_id)

    def __repr__(self) -> str:
        return f"Incoming(resource={self.resource!r}, peer={self.peer.short_id!r})"


#: Static keys made by this process, by identity key (bounded: oldest dropped first).
_STATIC_KEYS: dict[bytes, StaticKey] = {}
_MAX_STATIC_KEYS = 64


def process_static_key(identity: Identity, config: Configuration) -> StaticKey:
    """The Noise static key this process uses for *identity* (made on first use).

    spec/handshake.md 2.3 lets a process keep one static key: the identity
    binding is signed once here instead of once per connection, and the key is
    parsed once. Ephemeral keys stay fresh per handshake. The key is drawn from
    ``config.entropy`` of the first session of *identity*.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) the entropy source is broken.
    """
    key = _STATIC_KEYS.get(identity.public_key)
    if key is None:
        key = StaticKey.generate(identity, config.entropy)
        if len(_STATIC_KEYS) >= _MAX_STATIC_KEYS:
            del _STATIC_KEYS[next(iter(_STATIC_KEYS))]
        _STATIC_KEYS[identity.public_key] = key
    return key


class _PeerLog(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra.get('peer', '?')}] {msg}", kwargs


class Session:
    """One authenticated, encrypted connection to a peer.

    Create it with :func:`~m2mproto.transport.connect`, :meth:`wrap`, a
    :class:`~m2mproto.transport.Server`, or
    :func:`~m2mproto.transport.memory_pair`, and use it as an async context
    manager in the task that created it: it owns a task group there, which only
    ``__aexit__`` leaves. ``aclose``/``abort`` may be called from any task.
    """

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
        self._incoming: deque[Incoming] = deque()
        self._incoming_signal = Signal()
        self._current_incoming: Incoming | None = None
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

    # -- construction ------------------------------------------------------------

    @classmethod
    def create(
        cls,
        transport: ByteStream,
        *,
        identity: Identity,
        server_side: bool = False,
        config: Configuration | None = None,
        authorizer: Any = None,
        tokens: Sequence[bytes] = (),
        expected_peer: AgentId | str | None = None,
        authenticate_peer: Callable[[AgentId], None] | None = None,
        router: Router | None = None,
        accept_incoming: bool = True,
        high_water: int = DEFAULT_HIGH_WATER,
    ) -> Session:
        """Build a session (and its Connection) without starting it; see :meth:`wrap`."""
        expected = AgentId.parse(expected_peer) if isinstance(expected_peer, str) else expected_peer
        check = _peer_check(expected, authenticate_peer)
        base = config if config is not None else Configuration()
        cfg = dataclasses.replace(
            base, clock_offset=time.time() - anyio.current_time(), auto_window_update=False
        )
        conn = Connection(
            Role.RESPONDER if server_side else Role.INITIATOR,
            identity,
            cfg,
            authorizer=authorizer,
            tokens=tokens,
            authenticate_peer=check,
            static_key=None if cfg.static_key is not None else process_static_key(identity, cfg),
        )
        return cls(
            transport,
            conn,
            server_side=server_side,
            identity=identity,
            router=router,
            accept_incoming=accept_incoming,
            high_water=high_water,
            linger=cfg.close_timeout,
            authorizer=authorizer,
        )

    @classmethod
    async def wrap(cls, transport: ByteStream, **kwargs: Any) -> Session:
        """Run the m2mproto handshake over *transport* and return the live session.

        Takes the keyword arguments of :meth:`create` (``identity``,
        ``server_side``, ``config``, ``authorizer``, ``tokens``,
        ``expected_peer``, ``authenticate_peer``, ``router``,
        ``accept_incoming``, ``high_water``). The session must then be closed
        (``async with session`` or :meth:`aclose`) in the same task. On
        failure the transport is closed.

        Raises:
            AuthenticationError: the peer is not who it must be (``code`` says why).
            TokenError: tokens were refused at the handshake (``code`` says why).
            ConnectionClosedError: the transport or the peer ended the handshake,
                or it timed out (``close_code`` ``HANDSHAKE_TIMEOUT``).
        """
        session = cls.create(transport, **kwargs)
        await session._start()
        return session

    async def _start(self) -> None:
        await self._begin()
        await self._finish_handshake()

    async def _begin(self) -> None:
        """Enter the session's task group (in the caller's task) and start the pump."""
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            self._conn.start(anyio.current_time())
        except BaseException as exc:
            await self._fail_start(exc)
            raise
        tg.start_soon(self._run_pump)
        self._pump.wake()

    async def _finish_handshake(self) -> None:
        """Wait for the handshake; on failure close everything and raise."""
        try:
            await self._wait_handshake()
        except BaseException as exc:
            await self._fail_start(exc)
            raise

    async def _fail_start(self, exc: BaseException) -> None:
        self._pump.abort()
        self._exited = True
        tg = self._tg
        with anyio.CancelScope(shield=True):
            await self._pump.finished.wait()
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    async def _wait_handshake(self) -> None:
        async with anyio.create_task_group() as waiter:

            async def _closed() -> None:
                await self._closed.wait()
                waiter.cancel_scope.cancel()

            waiter.start_soon(_closed)
            await self._handshake_done.wait()
            waiter.cancel_scope.cancel()
        if not self._handshake_done.is_set() or self._peer is None:
            raise self._handshake_error()

    async def _run_pump(self) -> None:
        await self._pump.run()
        self._mark_closed(ErrorCode.TRUNCATED, "transport ended", remote=True)

    # -- properties ----------------------------------------------------------------

    @property
    def peer(self) -> Peer:
        """The authenticated peer."""
        if self._peer is None:
            raise LocalProtocolError("the handshake is not complete", ErrorCode.INVALID_STATE)
        return self._peer

    @property
    def handshake_hash(self) -> bytes:
        """The Noise handshake hash: a channel binding unique to this connection."""
        return self._handshake_hash

    @property
    def capabilities(self) -> object:
        """The peer's verified grants (a tuple of :class:`~m2mproto.tokens.Grant`
        with a ``TokenAuthorizer``; the last accepted summary otherwise)."""
        grants = getattr(self._authorizer, "grants", None)
        if callable(grants) and self._peer is not None:
            return grants(self._peer.agent_id)
        return self._capabilities

    @property
    def local_agent_id(self) -> AgentId:
        """Our own agent ID."""
        return self._identity.agent_id

    @property
    def closed(self) -> bool:
        """Whether the connection is over."""
        return self._closed.is_set()

    @property
    def close_info(self) -> tuple[int, str, bool] | None:
        """``(code, reason, remote)`` once closed, else None."""
        return self._closed_info

    @property
    def connection(self) -> Connection:
        """The underlying sans-IO connection (for inspection and tests; do not drive it)."""
        return self._conn

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """Typed attributes (:class:`M2MAttribute`) plus the transport's."""
        return {
            **self._transport.extra_attributes,
            M2MAttribute.agent_id: lambda: self.peer.agent_id,
            M2MAttribute.identity_key: lambda: self.peer.identity_key,
            M2MAttribute.handshake_hash: lambda: self._handshake_hash,
            M2MAttribute.capabilities: lambda: self.capabilities,
            M2MAttribute.local_agent_id: lambda: self._identity.agent_id,
            M2MAttribute.server_side: lambda: self._server_side,
        }

    def extra(self, attribute: Any, default: Any = ...) -> Any:
        """Return a typed attribute (see :class:`M2MAttribute`).

        Raises:
            anyio.TypedAttributeLookupError: unknown attribute and no default.
        """
        getter = self.extra_attributes.get(attribute)
        if getter is None:
            if default is ...:
                raise anyio.TypedAttributeLookupError("attribute not found")
            return default
        return getter()

    # -- event dispatch (runs in the pump task) -----------------------------------------

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
            self._incoming.append(Incoming(self, sid, chan.resource, event.value, grant))
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

    # -- handlers (tasks in the session's task group) --------------------------------------

    def _context(self, chan: _Channel, grant: object) -> Context:
        return Context(self, self.peer, grant, chan.resource, chan.stream_id)

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
                await self._queue_send(chan.stream_id, result, message=True, end_stream=True)
            except M2MError as exc:
                self._log.warning("reply to %r not sent: %s", chan.resource, exc)
                self._reset_quietly(chan.stream_id, ErrorCode.APPLICATION_ERROR)
        else:
            self._end_quietly(chan.stream_id)

    async def _serve_stream(self, chan: _Channel, route: Route) -> None:
        ctx = self._context(chan, chan.grant)
        stream: DataStream | MessageStream
        stream = (
            MessageStream(self, chan) if route.kind == "message_stream" else DataStream(self, chan)
        )
        try:
            await route.serve_stream(stream, ctx)
        except Exception:
            self._log.exception("stream handler for %r failed", chan.resource)
            await stream.reset(ErrorCode.APPLICATION_ERROR)
            return
        await stream.aclose()

    def _maybe_forget(self, chan: _Channel) -> None:
        if chan.recv_ended and chan.send_ended and not chan.inbox:
            self._channels.pop(chan.stream_id, None)

    def _mark_closed(self, code: int, reason: str, remote: bool) -> None:
        if self._closed_info is None:
            self._closed_info = (code, reason, remote)
            who = "peer" if remote else "we"
            self._log.info("connection closed (%s, %s)", code_name(code), who)
        self._closed.set()
        for chan in self._channels.values():
            chan.changed.notify()
        self._incoming_signal.notify()
        for waiter in self._pings.values():
            waiter.set()
        self._pump.flushed.notify()

    # -- helpers used by streams and handlers ------------------------------------------------

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
        """Call a Connection method, mapping "not established" to the closed error."""
        self._check_open()
        try:
            result = method(*args, **kwargs)
        except LocalProtocolError as exc:
            if exc.code == ErrorCode.INVALID_STATE and self._conn.state.name != "ESTABLISHED":
                raise self._closed_error() from None
            raise
        self._pump.wake()
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
        self, sid: int, data: Any, *, message: bool, end_stream: bool = False
    ) -> None:
        """Queue bytes or one message in the core, waiting while its send buffer is full."""
        method = self._conn.send_message if message else self._conn.send
        for _ in iter(int, 1):  # until queued; each retry follows progress in the core
            try:
                self._call(method, sid, data, end_stream=end_stream)
                break
            except LocalProtocolError as exc:
                if exc.code != ErrorCode.FLOW_CONTROL_ERROR or self._conn.send_buffered() == 0:
                    raise
            await self._pump.flushed.wait()
        chan = self._channels.get(sid)
        if chan is not None and end_stream:
            chan.send_ended = True
            self._maybe_forget(chan)

    async def _wait_drained(self, sid: int) -> None:
        """Wait while stream *sid* has more than ``high_water`` bytes queued in the core."""
        for _ in iter(int, 1):  # until drained, closed or reset
            self._check_open()
            chan = self._channels.get(sid)
            if chan is not None and chan.reset is not None:
                raise _reset_error(sid, *chan.reset)
            if self._conn.send_buffered(sid) <= self._high_water:
                return
            await self._pump.flushed.wait()

    async def _open(self, resource: str) -> _Channel:
        """Open a stream, waiting for a free slot under the peer's stream limit."""
        for _ in iter(int, 1):  # until a slot is free; each retry follows an event
            try:
                sid = self._call(self._conn.open_stream, resource)
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
                self._pump.wake()
                return True, value
            if chan.recv_ended:  # a reset after the peer's end only affects sending
                self._maybe_forget(chan)
                return False, None
            self._check_open()  # a closed session wins over the resets the close caused
            if chan.reset is not None:
                raise _reset_error(chan.stream_id, *chan.reset)
            await chan.changed.wait()
        raise AssertionError("unreachable")  # pragma: no cover

    def _cancel_stream(self, chan: _Channel) -> None:
        if self._channels.get(chan.stream_id) is chan and not self._closed.is_set():
            self._reset_quietly(chan.stream_id, ErrorCode.CANCELLED)
            chan.reset = (ErrorCode.CANCELLED, False)

    # -- the public API --------------------------------------------------------------------

    async def request(self, resource: str, value: Any, *, timeout: float | None = None) -> Any:
        """Send *value* to *resource* and return the peer's reply.

        If cancelled or timed out, the request's stream is reset (``CANCELLED``)
        and the session stays usable.

        Raises:
            RequestTimeout: no reply within *timeout* seconds.
            AuthorizationError: (``UNAUTHORIZED``) the peer refused the call.
            StreamResetError: the peer reset the stream (``REFUSED``: no handler;
                ``APPLICATION_ERROR``: the handler failed).
            ConnectionClosedError: the session is closed.
        """
        chan = await self._open(resource)
        done = False
        try:
            await self._queue_send(chan.stream_id, value, message=True, end_stream=True)
            with anyio.fail_after(math.inf if timeout is None else timeout):
                got, reply = await self._next_item(chan, want_message=True)
            if not got:
                raise StreamResetError(f"stream {chan.stream_id}: ended without a reply", 0, True)
            done = True
            return reply
        except TimeoutError:
            raise RequestTimeout(
                f"no reply from {resource!r} within {timeout} s", ErrorCode.TIMEOUT
            ) from None
        finally:
            if not done:
                self._cancel_stream(chan)
            else:
                chan.detached = True
                self._maybe_forget(chan)

    async def send(self, resource: str, value: Any, *, confirm: bool = False) -> None:
        """Send a one-way message to *resource*.

        Returns once the message is queued for the peer; with
        ``confirm=True``, once the peer's handler has run. Each message is its
        own stream, so the peer may handle messages concurrently: use
        :meth:`open_message_stream` when order matters.

        Raises:
            AuthorizationError: (with ``confirm``) the peer refused the message.
            StreamResetError: (with ``confirm``) no handler, or the handler failed.
            ConnectionClosedError: the session is closed.
        """
        chan = await self._open(resource)
        try:
            await self._queue_send(chan.stream_id, value, message=True, end_stream=True)
        except BaseException:
            self._cancel_stream(chan)
            raise
        if not confirm:
            chan.detached = True
            await self._wait_drained(chan.stream_id)
            return
        done = False
        try:
            for _ in iter(int, 1):  # until the peer's end of stream
                got, _value = await self._next_item(chan, want_message=True)
                if not got:
                    done = True
                    return
        finally:
            if not done:
                self._cancel_stream(chan)

    async def open_stream(self, resource: str) -> DataStream:
        """Open a byte stream to *resource* (an ``anyio.abc.ByteStream``).

        Raises:
            ConnectionClosedError: the session is closed.
            LimitExceeded: (``STREAM_LIMIT_ERROR``) too many open streams.
        """
        chan = await self._open(resource)
        return DataStream(self, chan)

    async def open_message_stream(self, resource: str) -> MessageStream:
        """Open a stream of CBOR messages to *resource* (an ``anyio.abc.ObjectStream``).

        Raises:
            ConnectionClosedError: the session is closed.
        """
        chan = await self._open(resource)
        return MessageStream(self, chan)

    async def receive(self) -> Incoming:
        """Return the next message the peer sent without a matching handler.

        Raises:
            anyio.EndOfStream: the session closed gracefully and nothing is left.
            ConnectionClosedError: the session closed with an error.
        """
        if self._current_incoming is not None:
            self._current_incoming._finish()
            self._current_incoming = None
        for _ in iter(int, 1):  # until a message or the close
            if self._incoming:
                item = self._incoming.popleft()
                self._current_incoming = item
                return item
            if self._closed.is_set():
                info = self._closed_info
                if info is not None and info[0] == ErrorCode.NO_ERROR:
                    raise anyio.EndOfStream
                raise self._closed_error()
            await self._incoming_signal.wait()
        raise AssertionError("unreachable")  # pragma: no cover

    def __aiter__(self) -> AsyncIterator[Incoming]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Incoming]:
        for _ in iter(int, 1):  # until the session ends
            try:
                yield await self.receive()
            except anyio.EndOfStream:
                return

    async def present_token(self, token: bytes) -> None:
        """Present a (fresh) capability token on the live session.

        The peer verifies it before any stream or message queued after this
        call, so a request made next is authorized by it. The protocol has no
        acknowledgement: a rejected token simply grants nothing (the peer logs
        the reason).

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) a token over 16 KiB.
            ConnectionClosedError: the session is closed.
        """
        self._call(self._conn.present_token, token)

    def reauthorize(self) -> list[int]:
        """Re-check the peer's open streams against its grants now.

        Call it after the revocation store changed (or to enforce expiry at
        once): streams the peer opened that its grants no longer cover are reset
        with ``UNAUTHORIZED``. New streams and messages are always checked as
        they arrive. Returns the IDs of the streams reset.
        """
        if self._closed.is_set() or self._closing:
            return []
        reset = self._conn.reauthorize(anyio.current_time())
        if reset:
            logger.info("[%s] %d stream(s) no longer authorized: reset", self.peer.short_id,
                        len(reset))  # fmt: skip
        self._pump.wake()
        return reset

    async def update_keys(self) -> None:
        """Switch to the next sending key and ask the peer to do the same.

        Raises:
            ConnectionClosedError: the session is closed.
        """
        self._call(self._conn.update_keys)

    async def ping(self, *, timeout: float = 10.0) -> float:
        """Measure the round-trip time to the peer, in seconds.

        Raises:
            RequestTimeout: no answer within *timeout*.
            ConnectionClosedError: the session is closed.
        """
        start = anyio.current_time()
        payload = self._call(self._conn.ping)
        waiter = self._pings[payload] = anyio.Event()
        try:
            with anyio.move_on_after(timeout):
                await waiter.wait()
                self._check_open()
                return anyio.current_time() - start
        finally:
            self._pings.pop(payload, None)
        raise RequestTimeout("no answer to ping", ErrorCode.TIMEOUT)

    async def wait_closed(self) -> None:
        """Wait until the connection is over (closed by either side or failed)."""
        await self._closed.wait()

    def request_close(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Start a close from any task (the owner's ``aclose``/``async with`` finishes it)."""
        if self._closing or self._closed.is_set():
            return
        self._closing = True
        with contextlib.suppress(M2MError):
            self._conn.close(code, reason)
        self._pump.wake()

    async def aclose(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close gracefully: everything already queued is delivered, then CLOSE.

        Waits (at most ``config.close_timeout``) for the peer to confirm; handler
        tasks still running after that are cancelled. Safe to call twice.
        """
        self.request_close(code, reason)
        await self._exit()

    async def abort(self, code: int = ErrorCode.CANCELLED, reason: str = "") -> None:
        """Close at once: queued data is dropped, the transport is cut."""
        if not self._closed.is_set():
            self._closing = True
            with contextlib.suppress(M2MError):
                self._conn.close(
                    code if code != ErrorCode.NO_ERROR else ErrorCode.CANCELLED, reason
                )
            self._mark_closed(code, reason, remote=False)
        self._pump.abort(grace=0.1)  # the CLOSE frame gets one short chance
        await self._exit()

    async def _exit(self) -> None:
        """Wait for the pump, let handlers finish (graceful close only), stop them."""
        with anyio.CancelScope(shield=True):
            # the pump ends by itself after the close handshake (bounded by the
            # core's close timeout and the pump's linger); this is a backstop
            with anyio.move_on_after(2 * self._conn.config.close_timeout + 1):
                await self._pump.finished.wait()
            self._pump.abort()
            await self._pump.finished.wait()
            graceful = self._closed_info is not None and self._closed_info[0] == ErrorCode.NO_ERROR
            if graceful and self._handlers:
                with anyio.move_on_after(self._conn.config.close_timeout):
                    await self._handlers_idle.wait()
        for scope in list(self._handler_scopes):
            scope.cancel()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Close (gracefully, or by abort if the block was cancelled) and leave the
        session's task group: the only place it is left, so ``aclose``/``abort``
        may be called from anywhere inside the block."""
        try:
            if exc is not None and not isinstance(exc, Exception):
                await self.abort()  # cancelled or interrupted: do not linger
            else:
                await self.aclose()
        finally:
            tg, self._tg = self._tg, None
            if tg is not None and not self._exited:
                self._exited = True
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)

    def __repr__(self) -> str:
        who = self._peer.short_id if self._peer else "?"
        return f"<Session peer={who} {'closed' if self.closed else 'open'}>"


def _reset_error(sid: int, code: int, remote: bool) -> M2MError:
    if code == ErrorCode.UNAUTHORIZED:
        return AuthorizationError(f"stream {sid}: refused by the peer", ErrorCode.UNAUTHORIZED)
    who = "peer" if remote else "local"
    return StreamResetError(f"stream {sid} reset ({code_name(code)}, {who})", code, remote)


def _token_error(code: object) -> M2MError:
    from ..errors import TokenError

    try:
        reason = ErrorCode(int(code))  # type: ignore[call-overload]
    except (ValueError, TypeError):
        reason = ErrorCode.TOKEN_INVALID
    return TokenError("token rejected by the peer", reason)


def _peer_check(
    expected: AgentId | None, custom: Callable[[AgentId], None] | None
) -> Callable[[AgentId], None] | None:
    if expected is None:
        return custom

    def check(peer: AgentId) -> None:
        if peer != expected:
            raise AuthenticationError(
                f"expected peer {expected.short}, got {peer.short}",
                ErrorCode.AUTH_UNEXPECTED_PEER,
            )
        if custom is not None:
            custom(peer)

    return check


class _StreamBase:
    """Shared lifecycle of :class:`DataStream` and :class:`MessageStream`."""

    def __init__(self, session: Session, chan: _Channel) -> None:
        self._session = session
        self._chan = chan

    @property
    def stream_id(self) -> int:
        """The stream's ID on the wire."""
        return self._chan.stream_id

    @property
    def resource(self) -> str:
        """The resource the stream was opened on."""
        return self._chan.resource

    @property
    def grant(self) -> object:
        """The grant that allowed the peer to open it (incoming streams)."""
        return self._chan.grant

    def _check_send(self) -> None:
        chan = self._chan
        self._session._check_open()
        if chan.reset is not None:
            raise _reset_error(chan.stream_id, *chan.reset)
        if chan.send_ended:
            raise anyio.ClosedResourceError

    async def send_eof(self) -> None:
        """End our half of the stream (the peer's reads then end)."""
        chan = self._chan
        if chan.send_ended or chan.reset is not None or self._session.closed:
            return
        self._session._end_quietly(chan.stream_id)

    async def reset(self, code: int = ErrorCode.CANCELLED) -> None:
        """Abort the stream in both directions with *code*."""
        chan = self._chan
        if chan.reset is None and not self._session.closed:
            self._session._reset_quietly(chan.stream_id, code)
            chan.reset = (code, False)

    async def aclose(self) -> None:
        """End our half and stop reading; whatever we queued is still delivered."""
        await self.send_eof()
        chan = self._chan
        chan.detached = True
        while chan.inbox:
            _m, _v, size = chan.inbox.popleft()
            self._session._acknowledge(chan.stream_id, size)
        chan.inbox_bytes = 0
        self._session._pump.wake()
        self._session._maybe_forget(chan)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._session.extra_attributes


class DataStream(_StreamBase, ByteStream):
    """A byte stream over one m2mproto stream (an ``anyio.abc.ByteStream``).

    ``send`` waits for flow-control credit; ``receive`` raises
    ``anyio.EndOfStream`` at the peer's end of stream.
    """

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return up to *max_bytes* bytes.

        Raises:
            anyio.EndOfStream: the peer ended the stream.
            AuthorizationError: the peer refused the stream (``UNAUTHORIZED``).
            StreamResetError: the stream was reset.
            ConnectionClosedError: the session closed.
        """
        chan = self._chan
        if chan.inbox and not chan.inbox[0][0]:
            _m, data, size = chan.inbox[0]
            if size > max_bytes:
                chan.inbox[0] = (False, data[max_bytes:], size - max_bytes)
                chan.inbox_bytes -= max_bytes
                self._session._acknowledge(chan.stream_id, max_bytes)
                self._session._pump.wake()
                return bytes(data[:max_bytes])
        got, value = await self._session._next_item(chan, want_message=False)
        if not got:
            raise anyio.EndOfStream
        if len(value) > max_bytes:  # pragma: no cover - handled above
            raise AssertionError("oversized chunk")
        return bytes(value)

    async def send(self, item: bytes) -> None:
        """Send bytes; waits while more than the high-water mark is queued.

        If cancelled while waiting, the bytes are already queued (the stream
        stays consistent).

        Raises:
            anyio.ClosedResourceError: we already ended or closed the stream.
            AuthorizationError / StreamResetError / ConnectionClosedError.
        """
        self._check_send()
        session, sid = self._session, self._chan.stream_id
        view = memoryview(bytes(item))
        step = max(session._high_water, 1)
        for offset in range(0, len(view), step):
            await session._queue_send(sid, view[offset : offset + step], message=False)
            await session._wait_drained(sid)


class MessageStream(_StreamBase, ObjectStream[Any]):
    """A stream of CBOR messages (an ``anyio.abc.ObjectStream``)."""

    async def receive(self) -> Any:
        """Return the next message.

        Raises:
            anyio.EndOfStream: the peer ended the stream.
            AuthorizationError / StreamResetError / ConnectionClosedError.
        """
        got, value = await self._session._next_item(self._chan, want_message=True)
        if not got:
            raise anyio.EndOfStream
        return value

    async def send(self, item: Any) -> None:
        """Send one message (any value the CBOR profile encodes).

        Raises:
            LocalProtocolError: the value cannot be encoded or is too large.
            anyio.ClosedResourceError / AuthorizationError / StreamResetError /
            ConnectionClosedError.
        """
        self._check_send()
        await self._session._queue_send(self._chan.stream_id, item, message=True)
        await self._session._wait_drained(self._chan.stream_id)
