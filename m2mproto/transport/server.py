"""Server: authenticate each connection and dispatch its streams to handlers.

Theory of operation
-------------------
A :class:`Server` owns a :class:`~.routing.Router` (its ``@server.request``,
``@server.message``, ``@server.stream`` and ``@server.message_stream``
decorators register there) and a :class:`~._keys.StaticKeys` cache. It wraps
a listener (like anyio's ``TLSListener``): each accepted byte stream is
handshaken with a fresh :class:`~m2mproto.tokens.TokenAuthorizer` (one per
connection, so a peer's grants never leak across connections) and routes
handshake failures to :meth:`Server.handshake_failed`, which subclasses
may override.

Admission limits (all counted in :attr:`Server.stats`, all logged):

* ``max_connections`` (live sessions plus pending handshakes): a connection
  beyond it is closed at once, unless a pending handshake can be evicted;
* ``max_pending_handshakes`` (unauthenticated connections in total) and
  ``max_pending_per_source`` (per remote IP address): when either is full,
  the *oldest* pending handshake (of that source, for the per-source limit) is
  evicted to make room. Honest handshakes take milliseconds and attackers hold
  theirs until the deadline, so evicting the oldest keeps the server reachable
  for good clients while a flood churns through the table (bounded memory);
* ``handshake_timeout``: every handshake has a deadline in the core
  (``HANDSHAKE_TIMEOUT``) and a backstop here one second later, so a peer
  sending one byte per second is dropped at the deadline whatever it sends.

Per-connection budgets for non-productive traffic (pings, window updates,
key updates, stream churn, queued control responses) are enforced by the
core from the :class:`~m2mproto.config.Configuration`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import Listener, SocketAttribute, TaskGroup, TaskStatus

from ..config import Authorizer, Configuration
from ..errors import ErrorCode, LocalProtocolError
from ..identity import AgentId, Identity
from ..tokens import RevocationStore, TokenAuthorizer
from ._errors import network_error
from ._keys import StaticKeys
from ._link import remote_address
from ._native import AnyTransport, NativeListener, use_native
from ._pump import Flag
from ._throttle import LogThrottle
from .routing import (
    Handler,
    MessageHandler,
    MessageStreamHandler,
    RequestHandler,
    Route,
    RouteKind,
    Router,
    StreamHandler,
)
from .session import DEFAULT_HIGH_WATER, EventHook, Session

__all__ = ["Server", "ServerStats"]

logger = logging.getLogger("m2mproto.server")


@dataclass(slots=True)
class ServerStats:
    """Counters of a :class:`Server`'s admission decisions (monotonic)."""

    #: Connections accepted from the listener.
    accepted: int = 0
    #: Connections closed at once because ``max_connections`` live sessions exist.
    refused: int = 0
    #: Pending handshakes evicted to admit a newer one (a pending-handshake limit).
    evicted: int = 0
    #: Handshakes that failed (including timeouts).
    failed: int = 0
    #: Handshakes that did not finish before the deadline.
    timed_out: int = 0
    #: Handshakes completed.
    established: int = 0
    #: Connections refused (or sessions closed at once) because their source
    #: address already held ``max_sessions_per_source`` established sessions.
    source_limited: int = 0
    #: Sessions closed (``UNAUTHORIZED``) for holding no valid grant at a check.
    grantless_closed: int = 0
    #: Sessions closed (``IDLE_TIMEOUT``) with no productive activity and no open stream.
    idle_closed: int = 0


@dataclass(eq=False, slots=True)
class _Handshaking:
    """One connection in its handshake (an admission slot)."""

    order: int
    source: str
    #: The connection's session once created (an eviction cuts it).
    session: Session | None = None
    evicted: bool = False


class _Watch:
    """One accepted connection once its session exists: the ready hook (the end of the
    handshake), then the idle and grant checks of the established session, run on its
    pump's alarm (:meth:`~._pump.Pump.set_alarm`): no task and no cancel scope of their
    own. See :class:`Server` for what they close."""

    __slots__ = (
        "authorizer",
        "entry",
        "established",
        "every",
        "grant_check",
        "idle",
        "idle_base",
        "live",
        "server",
        "session",
        "source",
    )

    def __init__(
        self,
        server: Server,
        session: Session,
        authorizer: Authorizer | None,
        source: str,
        entry: _Handshaking,
    ) -> None:
        self.server = server
        self.session = session
        self.source = source
        self.authorizer = authorizer
        #: The admission slot while the handshake runs.
        self.entry: _Handshaking | None = entry
        #: The handshake completed.
        self.established = False
        #: The session counts in ``server.sessions`` (until :meth:`closed`).
        self.live = False
        self.idle = (server.config or Configuration()).idle_timeout
        lister = getattr(authorizer, "grants", None)
        self.every = server.grantless_timeout if callable(lister) else None
        self.grant_check = math.inf
        #: Open streams count as activity (their own traffic is the core's).
        self.idle_base = 0.0
        session._link.on_ready = self.ready

    def ready(self) -> None:
        """The handshake completed (``Link.on_ready``, called in the session's task):
        lift the backstop, free the admission slot, count the session, arm the checks."""
        server, session, entry = self.server, self.session, self.entry
        session._link.on_ready = None
        if entry is None or entry.evicted or session.closed:
            return
        session._lift_deadline()  # only the handshake has the backstop
        server._release(entry)
        self.entry = None
        self.established = True
        source = self.source
        if server._established[source] >= server.max_sessions_per_source:
            # handshakes from this source finished together past the cap
            server.stats.source_limited += 1
            server.log_throttle.log(logger, logging.WARNING, "refused connections", source,
                                    "session from %s closed: source limit",
                                    session.remote_address or source)  # fmt: skip
            session.request_close(ErrorCode.ENHANCE_YOUR_CALM, "too many sessions")
            return
        server.stats.established += 1
        server.sessions.add(session)
        server._established[source] += 1
        self.live = True
        session._link.on_closed = self.closed
        now = session._pump.now()  # runs in a callback on the native path
        self.grant_check = math.inf if self.every is None else now + self.every
        self.idle_base = now
        self.arm()

    def closed(self) -> None:
        """The session is over (or its task ends): it no longer counts (idempotent)."""
        if self.live:
            self.live = False
            server, source = self.server, self.source
            server.sessions.discard(self.session)
            server._established[source] -= 1
            if server._established[source] <= 0:
                del server._established[source]

    def arm(self) -> None:
        """Set the session's alarm to the next check (none if nothing is checked)."""
        session = self.session
        idle_at = (
            math.inf
            if self.idle is None
            else max(session.last_activity, self.idle_base) + self.idle
        )
        when = min(self.grant_check, idle_at)
        if when < math.inf:
            session._pump.set_alarm(when, self.check)

    def check(self) -> None:
        """The alarm: close the session if it holds no valid grant or is idle, else re-arm."""
        session, server = self.session, self.server
        if session.closed:
            return
        now = session._pump.now()  # the alarm is a loop callback on the native path
        if now >= self.grant_check:
            assert self.every is not None
            if not _holds_grant(self.authorizer, session.peer.agent_id):
                server.stats.grantless_closed += 1
                logger.info("session %s@%s closed: no valid grant", session.peer.short_id,
                            session.remote_address)  # fmt: skip
                session.request_close(ErrorCode.UNAUTHORIZED, "no valid capability")
                return
            self.grant_check = now + self.every
        idle = self.idle
        if idle is not None and now >= max(session.last_activity, self.idle_base) + idle:
            if session.open_streams:
                self.idle_base = now
            else:
                server.stats.idle_closed += 1
                logger.info("session %s@%s closed: idle", session.peer.short_id,
                            session.remote_address)  # fmt: skip
                session.request_close(ErrorCode.IDLE_TIMEOUT, "no activity")
                return
        self.arm()


def _holds_grant(authorizer: object, peer: AgentId) -> bool:
    """Whether *authorizer* holds a live grant for *peer* (expired ones are pruned)."""
    prune = getattr(authorizer, "prune", None)
    if callable(prune):
        prune(peer, time.time())
    grants = getattr(authorizer, "grants", None)
    return bool(grants(peer)) if callable(grants) else True


def _source_of(transport: AnyTransport) -> str:
    """The remote IP address of *transport* (``"local"`` for Unix sockets and memory)."""
    address = transport.extra(SocketAttribute.remote_address, None)
    if isinstance(address, tuple) and address:
        return str(address[0])
    return "local"


class Server:
    """An m2mproto server: handlers plus listeners (TCP, Unix, any anyio Listener)."""

    def __init__(
        self,
        identity: Identity,
        *,
        trust_roots: Iterable[AgentId | str] = (),
        revocations: RevocationStore | None = None,
        config: Configuration | None = None,
        tokens: Iterable[bytes] = (),
        authorizer_factory: Callable[[], Authorizer | None] | None = None,
        authenticate_peer: Callable[[AgentId], None] | None = None,
        max_connections: int = 1024,
        max_pending_handshakes: int = 64,
        max_pending_per_source: int = 16,
        max_sessions_per_source: int = 128,
        grantless_timeout: float | None = 10.0,
        handshake_timeout: float | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
        on_event: EventHook | None = None,
        native: bool | None = None,
    ) -> None:
        """Create a server.

        *trust_roots* are the token issuers whose capabilities the server
        honours (a peer with no valid token can connect but do nothing).
        *authorizer_factory* replaces the per-connection ``TokenAuthorizer``
        (return ``None`` to allow everything: tests and closed deployments
        only). *authenticate_peer* may reject a peer's agent ID during the
        handshake by raising ``AuthenticationError``.

        *max_connections*, *max_pending_handshakes* and *max_pending_per_source*
        bound live and unauthenticated connections (see the module docstring);
        *handshake_timeout* (seconds) overrides ``config.handshake_timeout``.
        *max_sessions_per_source* bounds the established sessions of one remote
        address. A session whose authorizer can list grants and that holds no
        valid (unexpired, unrevoked) grant is closed with ``UNAUTHORIZED``
        *grantless_timeout* seconds after its handshake, and re-checked at that
        interval (``None``: never). A session with no open stream and no
        productive activity for ``config.idle_timeout`` is closed with
        ``IDLE_TIMEOUT`` even if the peer keeps sending refused opens (the
        core's own idle timer counts every record).

        *on_event* is called as ``on_event(session, event)`` for every event of
        every session's core, from the handshake on (see
        :data:`~m2mproto.transport.EventHook`).

        *native*: on asyncio, :meth:`listen_tcp` and :meth:`listen_unix` accept
        connections driven by ``asyncio.Protocol`` callbacks instead of anyio
        streams (the same behaviour, fewer instructions per record). ``None``
        (the default): native on asyncio unless the environment variable
        ``M2MPROTO_NATIVE`` is ``0``; ``False``: always the anyio path; ``True``:
        native (listening outside asyncio is then an error).

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) bad limits.
        """
        if (
            min(max_connections, max_pending_handshakes, max_pending_per_source) < 1
            or max_sessions_per_source < 1
        ):
            raise LocalProtocolError("limits must be positive", ErrorCode.INVALID_ARGUMENT)
        if grantless_timeout is not None and not grantless_timeout > 0:
            raise LocalProtocolError(
                "grantless_timeout must be positive", ErrorCode.INVALID_ARGUMENT
            )
        if handshake_timeout is not None:
            if not handshake_timeout > 0:
                raise LocalProtocolError(
                    "handshake_timeout must be positive", ErrorCode.INVALID_ARGUMENT
                )
            config = dataclasses.replace(
                config or Configuration(), handshake_timeout=handshake_timeout
            )
        self.identity = identity
        self.trust_roots = frozenset(
            AgentId.parse(r) if isinstance(r, str) else r for r in trust_roots
        )
        self.revocations = revocations
        self.config = config
        self.tokens = tuple(tokens)
        self._authorizer_factory = authorizer_factory
        self.authenticate_peer = authenticate_peer
        self.max_connections = max_connections
        self.max_pending_handshakes = max_pending_handshakes
        self.max_pending_per_source = max_pending_per_source
        self.max_sessions_per_source = max_sessions_per_source
        self.grantless_timeout = grantless_timeout
        self.handshake_timeout = (config or Configuration()).handshake_timeout
        self.high_water = high_water
        self.on_event = on_event
        #: Native listeners on asyncio (see ``native`` above; None: the environment decides).
        self.native = native
        #: Peer address of each connection in its handshake (for handshake_failed).
        self._addresses: dict[AnyTransport, str] = {}
        #: Per-source throttle of handshake-failure lines.
        self.log_throttle = LogThrottle()
        #: Live sessions (after the handshake).
        self.sessions: set[Session] = set()
        #: Admission counters.
        self.stats = ServerStats()
        self._pending: dict[int, _Handshaking] = {}  # insertion order = age
        self._per_source: Counter[str] = Counter()
        self._established: Counter[str] = Counter()  # established sessions per source
        self._order = itertools.count()
        #: The handlers (the decorators below register here).
        self.router = Router()
        #: The server's Noise static key, signed once for all its connections.
        self.static_keys = StaticKeys(limit=1)
        self._stop = Flag()

    # -- handlers (delegated to :attr:`router`) ------------------------------------------

    def add(self, pattern: str, kind: RouteKind, handler: Handler) -> Route:
        """Register *handler* for *pattern* (see :meth:`Router.add`)."""
        return self.router.add(pattern, kind, handler)

    def find(self, resource: str) -> Route | None:
        """The most specific route for *resource*, or None."""
        return self.router.find(resource)

    def request(self, pattern: str) -> Callable[[RequestHandler], RequestHandler]:
        """Decorator: ``async def h(message, ctx) -> reply``."""
        return self.router.request(pattern)

    def message(self, pattern: str) -> Callable[[MessageHandler], MessageHandler]:
        """Decorator: ``async def h(message, ctx) -> None``."""
        return self.router.message(pattern)

    def stream(self, pattern: str) -> Callable[[StreamHandler], StreamHandler]:
        """Decorator: ``async def h(stream: DataStream, ctx) -> None``."""
        return self.router.stream(pattern)

    def message_stream(
        self, pattern: str
    ) -> Callable[[MessageStreamHandler], MessageStreamHandler]:
        """Decorator: ``async def h(stream: MessageStream, ctx) -> None``."""
        return self.router.message_stream(pattern)

    @property
    def pending_handshakes(self) -> int:
        """Connections currently in their handshake."""
        return len(self._pending)

    @property
    def refused_connections(self) -> int:
        """Connections closed at once or evicted because a limit was reached."""
        return self.stats.refused + self.stats.evicted

    @property
    def failed_handshakes(self) -> int:
        """Handshakes that failed (including timeouts)."""
        return self.stats.failed

    def new_authorizer(self) -> Authorizer | None:
        """Return the authorizer for one new connection."""
        if self._authorizer_factory is not None:
            return self._authorizer_factory()
        return TokenAuthorizer(
            trust_roots=self.trust_roots,
            audience=self.identity.agent_id,
            revocations=self.revocations,
        )

    def handshake_failed(self, exc: BaseException, transport: AnyTransport) -> None:
        """Called when an accepted connection fails its handshake (override to customise).

        The default logs one line at INFO naming the peer's address and the
        reason (never key material), at most a few per source address per
        interval (:attr:`log_throttle`: then one "suppressed" line).
        """
        address = self._addresses.get(transport) or remote_address(transport) or "?"
        source = address.rpartition(":")[0] or address
        self.log_throttle.log(logger, logging.INFO, "handshake failures", source,
                              "handshake with %s failed: %s", address, exc)  # fmt: skip

    def _evict(self, source: str | None) -> bool:
        """Cancel the oldest pending handshake (of *source*, if given); False if none."""
        for entry in self._pending.values():  # oldest first
            if not entry.evicted and (source is None or entry.source == source):
                entry.evicted = True
                if entry.session is not None:
                    entry.session._abort_handshake()
                self._release(entry)
                self.stats.evicted += 1
                return True
        return False

    def _release(self, entry: _Handshaking) -> None:
        if self._pending.pop(entry.order, None) is not None:
            self._per_source[entry.source] -= 1
            if self._per_source[entry.source] <= 0:
                del self._per_source[entry.source]

    def _admit(self, source: str) -> _Handshaking | None:
        """Reserve a pending-handshake slot for *source*, evicting if a limit is full."""
        if len(self.sessions) >= self.max_connections:
            return None
        if self._per_source[source] >= self.max_pending_per_source:
            self._evict(source)
        for _ in range(2):  # both global limits may each need one eviction
            if len(self._pending) < min(
                self.max_pending_handshakes, self.max_connections - len(self.sessions)
            ):
                break
            if not self._evict(None):
                return None
        entry = _Handshaking(next(self._order), source)
        self._pending[entry.order] = entry
        self._per_source[source] += 1
        return entry

    async def handle(self, transport: AnyTransport) -> None:
        """Handshake on *transport*, serve the session until it ends, close it.

        Never raises for a failing peer (see :meth:`handshake_failed`).
        """
        self.stats.accepted += 1
        source = _source_of(transport)
        if self._established[source] >= self.max_sessions_per_source:
            self.stats.source_limited += 1
            self.log_throttle.log(logger, logging.WARNING, "refused connections", source,
                                  "connection from %s refused: %d sessions from it",
                                  remote_address(transport) or source,
                                  self._established[source])  # fmt: skip
            await anyio.aclose_forcefully(transport)
            return
        entry = self._admit(source)
        if entry is None:
            self.stats.refused += 1
            self.log_throttle.log(logger, logging.WARNING, "refused connections", source,
                                  "connection from %s refused: %d live, %d handshaking",
                                  remote_address(transport) or source, len(self.sessions),
                                  len(self._pending))  # fmt: skip
            await anyio.aclose_forcefully(transport)
            return
        watch: _Watch | None = None  # once the session exists
        self._addresses[transport] = remote_address(transport)
        try:
            try:
                authorizer = self.new_authorizer()
                session = Session.create(
                    transport,
                    identity=self.identity,
                    server_side=True,
                    config=self.config,
                    authorizer=authorizer,
                    tokens=self.tokens,
                    authenticate_peer=self.authenticate_peer,
                    routes=self.router,
                    accept_incoming=False,
                    high_water=self.high_water,
                    static_keys=self.static_keys,
                    on_event=self.on_event,
                )
            except Exception:  # the server's own set-up (authorizer factory, config)
                logger.exception("cannot serve the connection from %s",
                                 remote_address(transport) or source)  # fmt: skip
                return  # the slot is released and the transport closed below
            entry.session = session
            watch = _Watch(self, session, authorizer, source, entry)
            # Backstop deadline on the lifetime: the core enforces the handshake
            # deadline; this also covers a stuck transport. Lifted by watch.ready().
            cut = await session._serve(anyio.current_time() + self.handshake_timeout + 1.0)
            if not watch.established and not entry.evicted:  # while the address is known
                self._handshake_ended(session, transport, cut)
        finally:
            self._release(entry)  # still pending: failed, cut, or never started
            if watch is not None:
                watch.closed()
            self._addresses.pop(transport, None)
            if watch is None or not watch.established:  # evicted, cut, failed: shut it
                with anyio.CancelScope(shield=True):
                    await anyio.aclose_forcefully(transport)

    def _handshake_ended(self, session: Session, transport: AnyTransport, cut: bool) -> None:
        """Count (and report) a handshake that did not complete; *cut*: by the backstop."""
        self.stats.failed += 1
        if cut:
            self.stats.timed_out += 1
            return
        exc = session._start_error or session._link.handshake_error()
        if getattr(exc, "close_code", None) == ErrorCode.HANDSHAKE_TIMEOUT:
            self.stats.timed_out += 1
        self.handshake_failed(exc, transport)

    # -- listening ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def listen(self, listener: Listener[Any]) -> AsyncIterator[None]:
        """Accept connections from *listener* for the duration of the block.

        The server is ready when the block is entered. Leaving the block
        normally (for example after :meth:`serve_forever` returned because of
        :meth:`aclose`) stops accepting and closes every session gracefully,
        bounded by twice the close timeout; leaving it by an exception or a
        cancellation cuts them at once. The listener is closed either way.
        """
        error: BaseException | None = None  # raised outside the task group: not wrapped
        async with anyio.create_task_group() as tg:
            accepting = anyio.CancelScope()
            tg.start_soon(self._accept, listener, tg, accepting)
            try:
                yield
            except BaseException as exc:
                error = exc
            else:
                accepting.cancel()
                with anyio.CancelScope(shield=True):
                    await self._drain()
            accepting.cancel()
            tg.cancel_scope.cancel()
        if error is not None:
            raise error

    @contextlib.asynccontextmanager
    async def listen_tcp(
        self, host: str = "127.0.0.1", port: int = 0
    ) -> AsyncIterator[tuple[str, int]]:
        """:meth:`listen` on TCP *host*:*port*; the block receives the bound
        ``(host, port)`` (useful with port 0).

        Raises:
            NetworkError: (``LISTEN_FAILED``, also an ``OSError``) the address is in
                use or cannot be bound; the message names it.
        """
        listener: Listener[Any]
        try:
            if use_native(self.native):
                listener = await NativeListener.tcp(host, port)
            else:
                listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as exc:
            raise network_error(exc, listen=True, address=(host, port)) from exc
        address = listener.extra(SocketAttribute.local_address)
        async with self.listen(listener):
            yield str(address[0]), int(address[1])

    @contextlib.asynccontextmanager
    async def listen_unix(self, path: str | os.PathLike[str]) -> AsyncIterator[str]:
        """:meth:`listen` on the Unix socket *path* (removed afterwards)."""
        listener: Listener[Any]
        try:
            if use_native(self.native):
                listener = await NativeListener.unix(path)
            else:
                listener = await anyio.create_unix_listener(path)
        except OSError as exc:
            raise network_error(exc, listen=True, address=path) from exc
        try:
            async with self.listen(listener):
                yield os.fspath(path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def serve_forever(self) -> None:
        """Wait until :meth:`aclose` is called (from any task), then return.

        Use it inside ``async with server.listen_tcp(...)``: the block then
        ends, closing the listener and the sessions gracefully.
        """
        await self._stop.wait()

    async def aclose(self) -> None:
        """Stop serving gracefully, from any task: :meth:`serve_forever` returns,
        and every live session is closed gracefully (waited for, bounded)."""
        self._stop.set()
        with anyio.CancelScope(shield=True):
            await self._drain()

    async def _drain(self) -> None:
        for session in list(self.sessions):
            session.request_close()
        timeout = 2 * (self.config or Configuration()).close_timeout + 2
        with anyio.move_on_after(timeout):
            for session in list(self.sessions):
                await session._finished.wait()

    async def _accept(
        self, listener: Listener[Any], tg: TaskGroup, scope: anyio.CancelScope
    ) -> None:
        with scope:
            async with listener:
                await listener.serve(self.handle, task_group=tg)

    async def serve(
        self,
        listener: Listener[Any],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve *listener* until cancelled or :meth:`aclose` (closes the listener)."""
        async with self.listen(listener):
            task_status.started()
            await self.serve_forever()

    async def serve_tcp(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on TCP *host*:*port* until cancelled or :meth:`aclose`.

        ``task_status.started`` receives the bound ``(host, port)`` (useful with
        port 0).
        """
        async with self.listen_tcp(host, port) as address:
            task_status.started(address)
            await self.serve_forever()

    async def serve_unix(
        self,
        path: str | os.PathLike[str],
        *,
        task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on the Unix socket *path* until cancelled or :meth:`aclose`
        (the socket file is removed after)."""
        async with self.listen_unix(path) as bound:
            task_status.started(bound)
            await self.serve_forever()

    async def aclose_sessions(self) -> None:
        """Close every live session gracefully (e.g. before cancelling ``serve``)."""
        for session in list(self.sessions):
            session.request_close()
        for session in list(self.sessions):
            await session.wait_closed()
