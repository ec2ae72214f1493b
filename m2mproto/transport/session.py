"""Session: one authenticated m2mproto connection, as agents use it.

Theory of operation
-------------------
A :class:`Session` is composed of three objects it owns:

* a :class:`~._link.Link`: the sans-IO ``Connection``, the
  :class:`~._pump.Pump` that binds it to an anyio byte stream, one
  :class:`~._link.Channel` per open stream, and the close state;
* a :class:`~._dispatch.Dispatcher`: applies the Connection's events to the
  channels and runs handlers for the streams the peer opens;
* its lifetime (:meth:`Session._lifetime`; a server runs it in the
  connection's own task with :meth:`Session._serve`): the one task that owns
  the session's task group (the pump's tasks and the handler workers) from the
  handshake until the connection is over.

Application calls change the Connection synchronously and wake the pump;
they wait only on signals the pump fires as the core makes progress.

* ``request(resource, value)`` opens a stream, sends one message with
  end-of-stream and waits for one reply message; ``send(resource, value)``
  does the same without waiting for a reply (``confirm=True`` waits for the
  peer to end the stream, which it does after its handler ran).
* ``open_stream`` / ``open_message_stream`` return anyio streams
  (:class:`DataStream` is a ``ByteStream``, :class:`MessageStream` an
  ``ObjectStream``). ``send`` queues into the core, then waits while the
  stream's queued bytes exceed ``high_water``. ``receive`` returns credit to
  the peer only when the application takes the bytes, so a reader that does
  not read makes the peer wait.
* Streams the peer opens go to the session's routes (server handlers), or,
  for messages with no route, to ``async for incoming in session`` when the
  session accepts incoming messages.

Lifetimes: ``async with connect(...) as session`` (and ``async with
Session.wrap(...)``, ``async with memory_pair(...)``) runs the lifetime in a
task group of the caller, entered and left by that ``async with``: ordinary
structured concurrency. ``session = await connect(...)`` runs it outside the
caller's cancel scopes (see :mod:`._detach`), so the call may sit under
``fail_after`` and the session may be used and closed from any task; it ends
when the session closes (``aclose``, ``async with session``, the peer).

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
import math
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar, overload

import anyio
from anyio.abc import ByteStream, TaskGroup

from .. import events as ev
from ..config import Authorizer, Configuration
from ..connection import Connection, Role
from ..errors import (
    AuthenticationError,
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    M2MError,
)
from ..identity import AgentId, Identity
from ._detach import start_detached
from ._dispatch import Dispatcher, Plan
from ._errors import ConnectionClosedError, RequestTimeout, StreamResetError
from ._keys import StaticKeys
from ._link import DEFAULT_HIGH_WATER, Channel, Link, Peer, logger
from ._native import AnyTransport
from ._pump import Flag
from ._streams import DataStream, Incoming, MessageStream
from .attributes import M2MAttribute

__all__ = [
    "ANY_PEER",
    "DEFAULT_HIGH_WATER",
    "AnyPeer",
    "ConnectionClosedError",
    "Context",
    "DataStream",
    "EventHook",
    "Incoming",
    "MessageStream",
    "Peer",
    "RequestTimeout",
    "RouteKind",
    "RouteLike",
    "RouteTable",
    "Session",
    "SessionOpener",
    "StreamResetError",
]


class AnyPeer:
    """The type of :data:`ANY_PEER`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ANY_PEER"


#: ``connect(peer=ANY_PEER)``: accept *any* server that authenticates (insecure: any
#: agent that holds tokens from the same root can impersonate the server).
ANY_PEER: Final = AnyPeer()


def require_peer(
    peer: AgentId | str | AnyPeer | None, custom: Callable[[AgentId], None] | None
) -> AgentId | str | None:
    """The peer a client requires: *peer*, or None for :data:`ANY_PEER` or a *custom* check.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) neither *peer* nor *custom* was given.
    """
    if isinstance(peer, AnyPeer):
        logger.warning("connecting with peer=ANY_PEER: the server is not authenticated")
        return None
    if peer is None and custom is None:
        raise LocalProtocolError(
            "name the server: peer=<its agent ID> (or peer=ANY_PEER to accept any server"
            " that authenticates: insecure)",
            ErrorCode.INVALID_ARGUMENT,
        )
    return peer


_R = TypeVar("_R")

#: ``on_event(session, event)``: an application's per-session observer of the core's
#: events (:mod:`m2mproto.events`: handshake completed, streams opened, data and
#: messages received with their sizes, resets, pings, key updates, token verdicts,
#: the close). Called synchronously in the session's I/O task, in order, before the
#: session acts on the event: it must not block, and must treat events as read-only.
#: An exception it raises is logged and ignored.
EventHook = Callable[["Session", ev.Event], None]

#: What a handler receives and returns (see :class:`~m2mproto.transport.Router`).
RouteKind = Literal["request", "message", "stream", "message_stream"]

_STREAM_KINDS = ("stream", "message_stream")


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


class RouteLike(Protocol):
    """One handler as a session runs it (:class:`~m2mproto.transport.Route`)."""

    @property
    def kind(self) -> RouteKind: ...

    async def call(self, value: Any, ctx: Context) -> Any:
        """Run a request or message handler."""

    async def serve_stream(self, stream: DataStream | MessageStream, ctx: Context) -> None:
        """Run a stream handler."""


class RouteTable(Protocol):
    """Where a session finds the handler for a stream the peer opened
    (:class:`~m2mproto.transport.Router`)."""

    def find(self, resource: str) -> RouteLike | None:
        """The most specific route for *resource*, or None."""


class Session:
    """One authenticated, encrypted connection to a peer.

    Get one from :func:`~m2mproto.transport.connect`, :meth:`wrap`, a
    :class:`~m2mproto.transport.Server`, or
    :func:`~m2mproto.transport.memory_pair`. ``async with connect(...) as
    session`` keeps it in a task group of the caller; ``session = await
    connect(...)`` gives a session that may be used and closed from any task
    (``async with session`` or ``aclose`` ends it). ``aclose``/``abort`` may be
    called from any task either way.
    """

    # slotted: one per connection, and an idle server holds many
    __slots__ = (
        "__weakref__",
        "_accept_incoming",
        "_authorizer",
        "_await_token_verdict",
        "_conn",
        "_current_incoming",
        "_dispatch",
        "_finished",
        "_identity",
        "_launched",
        "_link",
        "_pump",
        "_routes",
        "_scope",
        "_server_side",
        "_start_error",
        "_transport",
    )

    def __init__(
        self,
        transport: AnyTransport,
        conn: Connection,
        *,
        server_side: bool,
        identity: Identity,
        routes: RouteTable | None = None,
        accept_incoming: bool = True,
        high_water: int = DEFAULT_HIGH_WATER,
        linger: float = 2.0,
        authorizer: Authorizer | None = None,
        on_event: EventHook | None = None,
        await_token_verdict: bool = False,
    ) -> None:
        self._transport = transport
        self._conn = conn
        self._server_side = server_side
        self._identity = identity
        self._routes = routes
        self._accept_incoming = accept_incoming
        self._authorizer = authorizer
        self._link = Link(conn, transport, high_water=high_water, linger=linger)
        self._pump = self._link.pump
        self._dispatch: Dispatcher[RouteLike] = Dispatcher(
            self._link, self._admit, self._serve_stream, self._serve_call, server_side=server_side
        )
        self._current_incoming: Incoming | None = None
        #: The lifetime was started (:meth:`_launch`).
        self._launched = False
        #: Set when the lifetime is over: the pump and every handler finished.
        self._finished = Flag()
        #: The lifetime's cancel scope while it runs (its task group's).
        self._scope: anyio.CancelScope | None = None
        self._start_error: M2MError | None = None
        self._dispatch.on_session_event = self._hook(on_event) if on_event is not None else None
        #: A client that presented tokens waits for the server's verdict in _wait_ready.
        self._await_token_verdict = await_token_verdict

    # -- construction ---------------------------------------------------------------

    @classmethod
    def create(
        cls,
        transport: AnyTransport,
        *,
        identity: Identity,
        server_side: bool = False,
        config: Configuration | None = None,
        authorizer: Authorizer | None = None,
        tokens: Sequence[bytes] = (),
        expected_peer: AgentId | str | None = None,
        authenticate_peer: Callable[[AgentId], None] | None = None,
        routes: RouteTable | None = None,
        accept_incoming: bool = True,
        high_water: int = DEFAULT_HIGH_WATER,
        static_keys: StaticKeys | None = None,
        on_event: EventHook | None = None,
        remote_static: bytes | None = None,
    ) -> Session:
        """Build a session (and its Connection) without starting it; see :meth:`wrap`.

        *on_event* is called as ``on_event(session, event)`` for every event of
        the core (:mod:`m2mproto.events`), in order, before the session acts on
        it; see :data:`EventHook`. A client (``server_side=False``) that presents
        *tokens* waits one round trip after the handshake for the server's
        verdict on them, so a refusal is raised as :class:`TokenError`.

        The transport runs the core on its own clock and returns flow-control
        credit as the application reads, so it sets two fields of *config*
        itself: ``clock_offset`` (from anyio's clock to wall time) and
        ``auto_window_update`` (off). A ``clock_offset`` other than 0 is refused.
        With *static_keys* the session uses (and caches there) one Noise static
        key per identity; without it, a fresh one (unless ``config.static_key``).
        A client given *remote_static* (the server's Noise static key from an
        earlier authenticated handshake, spec/handshake.md 2.11) runs IK.

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) a bad argument.
        """
        expected = AgentId.parse(expected_peer) if isinstance(expected_peer, str) else expected_peer
        check = _peer_check(expected, authenticate_peer)
        base = config if config is not None else Configuration()
        if base.clock_offset != 0.0:
            raise LocalProtocolError(
                "the transport sets clock_offset from its own clock; leave it 0",
                ErrorCode.INVALID_ARGUMENT,
            )
        cfg = dataclasses.replace(
            base, clock_offset=time.time() - anyio.current_time(), auto_window_update=False
        )
        static = None
        if static_keys is not None and cfg.static_key is None:
            static = static_keys.get(identity, cfg)
        conn = Connection(
            Role.RESPONDER if server_side else Role.INITIATOR,
            identity,
            cfg,
            authorizer=authorizer,
            tokens=tokens,
            authenticate_peer=check,
            static_key=static,
            remote_static=remote_static,
        )
        return cls(
            transport,
            conn,
            server_side=server_side,
            identity=identity,
            routes=routes,
            accept_incoming=accept_incoming,
            high_water=high_water,
            linger=cfg.close_timeout,
            authorizer=authorizer,
            on_event=on_event,
            await_token_verdict=bool(tokens) and not server_side,
        )

    @classmethod
    def wrap(
        cls,
        transport: ByteStream,
        *,
        identity: Identity,
        server_side: bool = False,
        config: Configuration | None = None,
        authorizer: Authorizer | None = None,
        tokens: Sequence[bytes] = (),
        expected_peer: AgentId | str | AnyPeer | None = None,
        authenticate_peer: Callable[[AgentId], None] | None = None,
        routes: RouteTable | None = None,
        accept_incoming: bool = True,
        high_water: int = DEFAULT_HIGH_WATER,
        static_keys: StaticKeys | None = None,
        on_event: EventHook | None = None,
    ) -> SessionOpener:
        """Run the m2mproto handshake over *transport*: ``async with`` the result,
        or await it for a session usable from any task (see :class:`SessionOpener`).

        Takes the arguments of :meth:`create`. A client (``server_side=False``)
        must name *expected_peer* (or pass :data:`ANY_PEER`, or an
        *authenticate_peer* check). On failure the transport is closed.

        Raises (when awaited or entered):
            AuthenticationError: the peer is not who it must be (``code`` says why).
            TokenError: tokens were refused at the handshake (``code`` says why).
            ConnectionClosedError: the transport or the peer ended the handshake,
                or it timed out (``close_code`` ``HANDSHAKE_TIMEOUT``).
        """

        expected = require_peer(
            expected_peer if not server_side or expected_peer is not None else ANY_PEER,
            authenticate_peer,
        )

        async def prepare() -> Session:
            return cls.create(
                transport,
                identity=identity,
                server_side=server_side,
                config=config,
                authorizer=authorizer,
                tokens=tokens,
                expected_peer=expected,
                authenticate_peer=authenticate_peer,
                routes=routes,
                accept_incoming=accept_incoming,
                high_water=high_water,
                static_keys=static_keys,
                on_event=on_event,
            )

        return SessionOpener(prepare, transport)

    # -- lifetime ---------------------------------------------------------------------

    def _launch(self, tg: TaskGroup | None) -> None:
        """Start the lifetime in *tg*, or outside every caller scope (``None``)."""
        if self._launched:
            raise LocalProtocolError("session already started", ErrorCode.INVALID_STATE)
        self._launched = True
        if tg is None:
            start_detached(self._lifetime)
        else:
            tg.start_soon(self._lifetime)

    async def _lifetime(self) -> None:
        """Own the session's task group from the handshake to the end. Never raises
        (failures are recorded for :meth:`_wait_ready` and ``close_info``)."""
        await self._run(math.inf)

    def _serve(self, deadline: float = math.inf) -> Coroutine[Any, Any, bool]:
        """Run the lifetime in the calling task: the pump runs here, handlers in the
        session's task group. A server runs it from its connection's task, so an
        idle server connection is that one task.

        *deadline* (anyio's clock) bounds the lifetime's cancel scope: the server's
        handshake backstop, lifted by :meth:`_lift_deadline` once the session is
        ready. The coroutine returns whether that deadline cut the lifetime, and never
        raises except the cancellation of an enclosing scope. (A plain function returning
        the lifetime's coroutine: one coroutine frame less per connection.)"""
        if self._launched:
            raise LocalProtocolError("session already started", ErrorCode.INVALID_STATE)
        self._launched = True
        return self._run(deadline)

    async def _run(self, deadline: float) -> bool:
        link, pump, dispatch = self._link, self._pump, self._dispatch
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                if deadline < math.inf:
                    tg.cancel_scope.deadline = deadline
                dispatch.bind(tg)
                link.log.debug("handshake started (%s)",
                               "responder" if self._server_side else "initiator")  # fmt: skip
                try:
                    self._conn.start(anyio.current_time())
                except M2MError as exc:
                    self._start_error = exc
                    dispatch.mark_closed(exc.code, str(exc), remote=False)
                    pump.abort()
                pump.wake()
                # The pump's reader runs in this task (one task less per session);
                # a failed handshake is cut short by Link.mark_closed.
                await pump.run()
                dispatch.mark_closed(ErrorCode.TRUNCATED, "transport ended", remote=True)
                info = link.closed_info
                if info is not None and info[0] == ErrorCode.NO_ERROR and dispatch.running:
                    with anyio.move_on_after(self._conn.config.close_timeout):
                        await dispatch.idle.wait()
                dispatch.bind(None)
                dispatch.cancel_handlers()
            return tg.cancel_scope.cancelled_caught
        finally:
            self._scope = None
            if not link.closed.is_set():  # cut short (the deadline, a cancellation)
                dispatch.mark_closed(ErrorCode.CANCELLED, "lifetime cancelled", remote=False)
            dispatch.bind(None)
            self._finished.set()

    def _lift_deadline(self) -> None:
        """Remove the deadline of :meth:`_serve` (the handshake is over)."""
        if self._scope is not None:
            self._scope.deadline = math.inf

    def _abort_handshake(self) -> None:
        """Cut a session still in its handshake (an eviction): nothing is sent."""
        self._dispatch.mark_closed(ErrorCode.CANCELLED, "handshake cancelled", remote=False)
        self._pump.abort()

    async def _wait_ready(self) -> None:
        """Wait for the handshake. On failure or cancellation the session is cut and
        its lifetime has ended when this raises."""
        try:
            await self._link.handshake_done.wait()
            if self._await_token_verdict and self._link.peer is not None:
                await self._token_verdict()
        except BaseException:  # cancelled (or evicted): cut the transport, send nothing
            self._dispatch.mark_closed(ErrorCode.CANCELLED, "handshake cancelled", remote=False)
            self._pump.abort()
            with anyio.CancelScope(shield=True):
                await self._finished.wait()
            raise
        if self._link.peer is None:
            with anyio.CancelScope(shield=True):
                await self._finished.wait()
            raise self._start_error or self._link.handshake_error()
        refused = self._link.token_error()
        if refused is not None:
            with anyio.CancelScope(shield=True):
                await self._finished.wait()
            raise refused

    async def _token_verdict(self) -> None:
        """Wait until the server has judged our handshake tokens (bounded by the
        handshake timeout): a PING sent right after the handshake is answered
        only after the server applied its verdict, which is a CLOSE
        (``TOKEN_INVALID``) if it refused them. No answer in time: carry on."""
        link = self._link
        try:
            payload = link.call(self._conn.ping)
        except M2MError:
            return  # already closed: the caller reports how
        waiter = self._dispatch.ping_waiter(payload)
        try:
            with anyio.move_on_after(self._conn.config.handshake_timeout):
                await waiter.wait()  # set by the PONG or by the close
        finally:
            if self._dispatch.pings is not None:
                self._dispatch.pings.pop(payload, None)

    def _hook(self, on_event: EventHook) -> Callable[[ev.Event], None]:
        log = self._link.log

        def call(event: ev.Event) -> None:
            try:
                on_event(self, event)
            except Exception:  # the application's hook never breaks the session
                log.exception("on_event hook failed on %s", type(event).__name__)

        return call

    def _cut(self, code: int, reason: str) -> None:
        link = self._link
        if not link.closed.is_set():
            link.closing = True
            with contextlib.suppress(M2MError):
                self._conn.close(
                    code if code != ErrorCode.NO_ERROR else ErrorCode.CANCELLED, reason
                )
            self._dispatch.mark_closed(code, reason, remote=False)
        self._pump.abort(grace=0.1)  # the CLOSE frame gets one short chance

    async def _wait_finished(self) -> None:
        if not self._launched:  # never started: only the transport to close
            self._launched = True
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._transport)
            self._dispatch.mark_closed(ErrorCode.CANCELLED, "never started", remote=False)
            self._finished.set()
            return
        with anyio.CancelScope(shield=True):
            # the pump ends by itself after the close handshake (bounded by the
            # core's close timeout and the pump's linger); this is a backstop
            with anyio.move_on_after(2 * self._conn.config.close_timeout + 1):
                await self._pump.finished.wait()
            self._pump.abort()
            await self._pump.finished.wait()
        # not shielded: a handler closing its own session is cancelled here once the
        # lifetime gives up waiting for handlers
        await self._finished.wait()

    # -- state ------------------------------------------------------------------------

    @property
    def peer(self) -> Peer:
        """The authenticated peer."""
        if self._link.peer is None:
            raise LocalProtocolError("the handshake is not complete", ErrorCode.INVALID_STATE)
        return self._link.peer

    @property
    def remote_address(self) -> str:
        """The peer's address as text (``host:port``, ``[v6]:port``, a socket path), or
        ``""`` when the transport does not say (memory streams): for logs."""
        return self._link.address

    @property
    def closed(self) -> bool:
        """Whether the connection is over."""
        return self._link.closed.is_set()

    @property
    def handshake_hash(self) -> bytes:
        """The Noise handshake hash: a channel binding unique to this connection."""
        return self._conn.handshake_hash or b""

    @property
    def suite(self) -> str | None:
        """The negotiated Noise protocol name, e.g.
        ``Noise_XXhfs_25519+ML-KEM-768_ChaChaPoly_SHA256`` (hybrid post-quantum) or
        ``Noise_XX_25519_ChaChaPoly_SHA256`` (classical); None before the handshake."""
        return self._conn.suite

    @property
    def capabilities(self) -> object:
        """The peer's verified grants (a tuple of :class:`~m2mproto.tokens.Grant`
        with a ``TokenAuthorizer``; the last accepted summary otherwise)."""
        grants = getattr(self._authorizer, "grants", None)
        if callable(grants) and self._link.peer is not None:
            return grants(self._link.peer.agent_id)
        return self._dispatch.capabilities

    @property
    def local_agent_id(self) -> AgentId:
        """Our own agent ID."""
        return self._identity.agent_id

    @property
    def close_info(self) -> tuple[int, str, bool] | None:
        """``(code, reason, remote)`` once closed, else None."""
        return self._link.closed_info

    @property
    def connection(self) -> Connection:
        """The underlying sans-IO connection (for inspection and tests; do not drive it)."""
        return self._conn

    @property
    def last_activity(self) -> float:
        """When the peer last did something productive, on anyio's clock (an admitted
        stream, data, a message, accepted tokens, a ping answer; refusals never count)."""
        return self._dispatch.last_activity

    @property
    def open_streams(self) -> int:
        """Streams open on this session (either side opened them)."""
        return len(self._link.channels)

    @property
    def running_handlers(self) -> int:
        """Handler tasks running now for streams the peer opened."""
        return self._dispatch.running

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """Typed attributes (:class:`M2MAttribute`) plus the transport's."""
        return {
            **self._transport.extra_attributes,
            M2MAttribute.agent_id: lambda: self.peer.agent_id,
            M2MAttribute.identity_key: lambda: self.peer.identity_key,
            M2MAttribute.handshake_hash: lambda: self.handshake_hash,
            M2MAttribute.capabilities: lambda: self.capabilities,
            M2MAttribute.local_agent_id: lambda: self._identity.agent_id,
            M2MAttribute.server_side: lambda: self._server_side,
        }

    def _attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.extra_attributes

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

    # -- calls ------------------------------------------------------------------------

    @overload
    async def request(self, resource: str, value: Any, *, timeout: float | None = None) -> Any: ...

    @overload
    async def request(
        self, resource: str, value: Any, *, timeout: float | None = None, expect: type[_R]
    ) -> _R: ...

    async def request(
        self,
        resource: str,
        value: Any,
        *,
        timeout: float | None = None,
        expect: type[Any] | None = None,
    ) -> Any:
        """Send *value* to *resource* and return the peer's reply (a decoded CBOR value).

        With *expect* (``dict``, ``list``, ``str``, ``bytes``, ``int``, ...), the
        reply must be an instance of it, and the result is typed as such.
        If cancelled or timed out, the request's stream is reset (``CANCELLED``)
        and the session stays usable.

        Raises:
            DecodeError: (``DECODE_ERROR``) the reply is not an *expect*.
            RequestTimeout: no reply within *timeout* seconds.
            AuthorizationError: (``UNAUTHORIZED``) the peer refused the call.
            StreamResetError: the peer reset the stream (``REFUSED``: no handler;
                ``APPLICATION_ERROR``: the handler failed).
            ConnectionClosedError: the session is closed.
        """
        link = self._link
        chan = await link.open(resource, wake=False)
        done = False
        try:
            await link.queue_send(chan.stream_id, value, message=True, end_stream=True, flush=True)
            if timeout is None:  # no scope to enter and leave per request
                got, reply = await link.next_item(chan, want_message=True)
            else:
                with anyio.fail_after(timeout):
                    got, reply = await link.next_item(chan, want_message=True)
            if not got:
                raise StreamResetError(
                    f"{resource!r} (stream {chan.stream_id}): the peer ended it without a reply",
                    0,
                    True,
                )
            done = True
            if expect is not None and not isinstance(reply, expect):
                raise DecodeError(
                    f"reply from {resource!r} is a {type(reply).__name__}, not a {expect.__name__}",
                    ErrorCode.DECODE_ERROR,
                )
            return reply
        except TimeoutError:
            raise RequestTimeout(
                f"no reply from {resource!r} within {timeout} s", ErrorCode.TIMEOUT
            ) from None
        finally:
            if not done:
                link.cancel(chan)
            else:
                chan.discard = True
                link.forget_if_done(chan)

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
        link = self._link
        chan = await link.open(resource)
        try:
            await link.queue_send(chan.stream_id, value, message=True, end_stream=True)
        except BaseException:
            link.cancel(chan)
            raise
        if not confirm:
            chan.discard = True
            await link.wait_drained(chan.stream_id)
            return
        done = False
        try:
            while True:  # until the peer's end of stream (or a reset, the close: raised)
                got, _value = await link.next_item(chan, want_message=True)
                if not got:
                    done = True
                    return
        finally:
            if not done:
                link.cancel(chan)

    async def open_stream(self, resource: str) -> DataStream:
        """Open a byte stream to *resource* (an ``anyio.abc.ByteStream``).

        Raises:
            ConnectionClosedError: the session is closed.
        """
        chan = await self._link.open(resource)
        return DataStream(self._link, chan, self._attributes)

    async def open_message_stream(self, resource: str) -> MessageStream:
        """Open a stream of CBOR messages to *resource* (an ``anyio.abc.ObjectStream``).

        Raises:
            ConnectionClosedError: the session is closed.
        """
        chan = await self._link.open(resource)
        return MessageStream(self._link, chan, self._attributes)

    async def receive(self) -> Incoming:
        """Return the next message the peer sent without a matching handler.

        Raises:
            anyio.EndOfStream: the session closed gracefully and nothing is left.
            ConnectionClosedError: the session closed with an error.
        """
        if self._current_incoming is not None:
            self._current_incoming._finish()
            self._current_incoming = None
        dispatch, link = self._dispatch, self._link
        while True:  # until a message or the close; each retry follows a delivery
            if dispatch.incoming:
                item = self._current_incoming = dispatch.incoming.popleft()
                return item
            if link.closed.is_set():
                info = link.closed_info
                if info is not None and info[0] == ErrorCode.NO_ERROR:
                    raise anyio.EndOfStream
                raise link.closed_error()
            await dispatch.incoming_signal.wait()

    def __aiter__(self) -> AsyncIterator[Incoming]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Incoming]:
        while True:  # until the session ends
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
        self._link.call(self._conn.present_token, token)

    def reauthorize(self) -> list[int]:
        """Re-check the peer's open streams against its grants now.

        Call it after the revocation store changed (or to enforce expiry at
        once): streams the peer opened that its grants no longer cover are reset
        with ``UNAUTHORIZED``. New streams and messages are always checked as
        they arrive. Returns the IDs of the streams reset.
        """
        link = self._link
        if link.closed.is_set() or link.closing:
            return []
        reset = self._conn.reauthorize(anyio.current_time())
        if reset:
            link.log.info("%d stream(s) no longer authorized: reset", len(reset))
        self._pump.wake()
        return reset

    async def update_keys(self) -> None:
        """Switch to the next sending key and ask the peer to do the same.

        Raises:
            ConnectionClosedError: the session is closed.
        """
        self._link.call(self._conn.update_keys)

    async def ping(self, *, timeout: float = 10.0) -> float:
        """Measure the round-trip time to the peer, in seconds.

        Raises:
            RequestTimeout: no answer within *timeout*.
            ConnectionClosedError: the session is closed.
        """
        start = anyio.current_time()
        payload = self._link.call(self._conn.ping)
        waiter = self._dispatch.ping_waiter(payload)
        try:
            with anyio.move_on_after(timeout):
                await waiter.wait()
                self._link.check_open()
                return anyio.current_time() - start
        finally:
            if self._dispatch.pings is not None:
                self._dispatch.pings.pop(payload, None)
        raise RequestTimeout("no answer to ping", ErrorCode.TIMEOUT)

    # -- close --------------------------------------------------------------------------

    async def wait_closed(self) -> None:
        """Wait until the connection is over (closed by either side or failed)."""
        await self._link.closed.wait()

    def request_close(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Start a graceful close from any task, without waiting for it."""
        link = self._link
        if link.closing or link.closed.is_set():
            return
        link.closing = True
        with contextlib.suppress(M2MError):
            self._conn.close(code, reason)
        self._pump.wake()

    async def aclose(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close gracefully: everything already queued is delivered, then CLOSE.

        Waits (at most ``config.close_timeout``) for the peer to confirm; handler
        tasks still running after that are cancelled. Safe to call twice, and
        from any task.
        """
        self.request_close(code, reason)
        await self._wait_finished()

    async def abort(self, code: int = ErrorCode.CANCELLED, reason: str = "") -> None:
        """Close at once: queued data is dropped, the transport is cut."""
        self._cut(code, reason)
        await self._wait_finished()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Close: gracefully, or by abort if the block was cancelled or interrupted."""
        if exc is not None and not isinstance(exc, Exception):
            await self.abort()
        else:
            await self.aclose()

    def __repr__(self) -> str:
        peer = self._link.peer
        who = peer.short_id if peer else "?"
        return f"<Session peer={who} {'closed' if self.closed else 'open'}>"

    # -- handlers for streams the peer opens --------------------------------------------

    def _admit(self, chan: Channel) -> tuple[Plan, RouteLike | None] | None:
        route = self._routes.find(chan.resource) if self._routes is not None else None
        if route is None:
            return (Plan.INCOMING, None) if self._accept_incoming else None
        return (Plan.STREAM if route.kind in _STREAM_KINDS else Plan.CALL), route

    def _context(self, chan: Channel, grant: object) -> Context:
        return Context(self, self.peer, grant, chan.resource, chan.stream_id)

    async def _serve_call(self, chan: Channel, route: RouteLike, value: Any, grant: object) -> None:
        link = self._link
        try:
            result = await route.call(value, self._context(chan, grant))
        except Exception:
            link.log.exception("handler for %r failed", chan.resource)
            link.reset(chan, ErrorCode.APPLICATION_ERROR)
            return
        if link.closed.is_set() or chan.reset is not None:
            return
        if route.kind == "request":
            try:
                await link.queue_send(
                    chan.stream_id, result, message=True, end_stream=True, flush=True
                )
            except M2MError as exc:
                link.log.warning("reply to %r not sent: %s", chan.resource, exc)
                link.reset(chan, ErrorCode.APPLICATION_ERROR)
        else:
            link.end(chan.stream_id)

    async def _serve_stream(self, chan: Channel, route: RouteLike) -> None:
        stream: DataStream | MessageStream
        if route.kind == "message_stream":
            stream = MessageStream(self._link, chan, self._attributes)
        else:
            stream = DataStream(self._link, chan, self._attributes)
        try:
            await route.serve_stream(stream, self._context(chan, chan.grant))
        except Exception:
            self._link.log.exception("stream handler for %r failed", chan.resource)
            await stream.reset(ErrorCode.APPLICATION_ERROR)
            return
        await stream.aclose()


class SessionOpener:
    """A session about to start: ``async with`` it, or await it.

    ``async with opener as session`` runs the session in a task group of the
    caller and closes it at the end of the block (by abort if the block was
    cancelled). ``session = await opener`` runs it outside the caller's cancel
    scopes: the call may sit under ``fail_after``, and the session may be used
    and closed from any task (``async with session``, ``aclose``); it ends when
    closed. An opener starts one session.
    """

    def __init__(
        self,
        prepare: Callable[[], Awaitable[Session]],
        transport: AnyTransport | None,
        *,
        retry: Callable[[M2MError], Callable[[], Awaitable[Session]] | None] | None = None,
        ready: Callable[[Session], None] | None = None,
    ) -> None:
        self._prepare = prepare
        self._transport = transport
        #: Asked after a failed handshake: how to prepare one more session, or None
        #: (``connect``'s classical retry and its fallback from a stale IK key to XX).
        self._retry = retry
        #: Called with the session once its handshake completed.
        self._ready = ready
        self._cm: contextlib.AbstractAsyncContextManager[Session] | None = None

    async def _made(self) -> Session:
        try:
            return await self._prepare()
        except BaseException:
            if self._transport is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.aclose_forcefully(self._transport)
            raise

    async def _until_ready(self, session: Session, launch: Callable[[Session], None]) -> Session:
        """Launch *session* and wait for its handshake; where *retry* says so, try again."""
        for _ in range(2):  # at most two retries: a stale IK key, then a classical-only peer
            launch(session)
            try:
                await session._wait_ready()
            except M2MError as exc:
                again = self._retry(exc) if self._retry is not None else None
                if again is None:
                    raise
                session = await again()  # closes its own transport if it fails
            else:
                break
        else:
            launch(session)
            await session._wait_ready()
        if self._ready is not None:
            self._ready(session)
        return session

    async def _detached(self) -> Session:
        return await self._until_ready(await self._made(), lambda s: s._launch(None))

    def __await__(self) -> Generator[Any, None, Session]:
        return self._detached().__await__()

    @contextlib.asynccontextmanager
    async def _structured(self) -> AsyncIterator[Session]:
        session = await self._made()
        # Errors are raised after the task group is left, so they are not wrapped
        # in an exception group (the lifetime never raises; only we could).
        error: BaseException | None = None
        async with anyio.create_task_group() as tg:
            try:
                session = await self._until_ready(session, lambda s: s._launch(tg))
            except (M2MError, OSError) as exc:  # the lifetime is over already
                error = exc
            else:
                try:
                    yield session
                except BaseException as exc:
                    error = exc
                    await session.__aexit__(type(exc), exc, exc.__traceback__)
                else:
                    await session.aclose()
        if error is not None:
            raise error

    async def __aenter__(self) -> Session:
        if self._cm is not None:
            raise LocalProtocolError("this opener was already used", ErrorCode.INVALID_STATE)
        self._cm = self._structured()
        return await self._cm.__aenter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        assert self._cm is not None
        return await self._cm.__aexit__(exc_type, exc, tb)


def _peer_check(
    expected: AgentId | None, custom: Callable[[AgentId], None] | None
) -> Callable[[AgentId], None] | None:
    if expected is None:
        return custom

    def check(peer: AgentId) -> None:
        if peer != expected:
            raise AuthenticationError(
                f"expected agent {expected.text}, got {peer.text}",
                ErrorCode.AUTH_UNEXPECTED_PEER,
            )
        if custom is not None:
            custom(peer)

    return check
