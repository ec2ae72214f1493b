"""Server: authenticate each connection and dispatch its streams to handlers.

Theory of operation
-------------------
A :class:`Router` maps resource patterns to handlers of four kinds:

* ``request``: ``async def h(message, ctx) -> reply``; the reply ends the stream;
* ``message``: ``async def h(message, ctx) -> None``; the stream is ended after
  the handler returns (a sender using ``send(confirm=True)`` learns it ran);
* ``stream``: ``async def h(stream: DataStream, ctx) -> None``;
* ``message_stream``: ``async def h(stream: MessageStream, ctx) -> None``.

Patterns use the capability syntax (``"files/*"`` matches ``"files/a"`` and
``"files/a/b"``); an exact pattern wins over a wildcard, and a longer wildcard
prefix over a shorter one. Authorization happens in the Connection before a
handler is chosen: a refused stream never reaches the router. A stream with
no route is reset with ``REFUSED``; a handler that raises resets its stream
with ``APPLICATION_ERROR`` (the exception is logged, never sent).

:class:`Server` wraps a listener (like anyio's ``TLSListener``): each accepted
byte stream is handshaken with a fresh :class:`~m2mproto.tokens.TokenAuthorizer`
(one per connection, so a peer's grants never leak across connections). It
enforces ``max_connections`` and ``max_pending_handshakes`` by closing excess
connections at once (counted, logged), and routes handshake failures to
:meth:`Server.handshake_failed`, which subclasses may override.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from anyio.abc import ByteStream, Listener, SocketAttribute, TaskStatus

from ..config import Configuration
from ..errors import ErrorCode, LocalProtocolError, M2MError
from ..identity import AgentId, Identity
from ..tokens import RevocationStore, TokenAuthorizer
from ..tokens.capabilities import MAX_RESOURCE_LEN, name_error, pattern_matches
from .session import DEFAULT_HIGH_WATER, Context, DataStream, MessageStream, Session

__all__ = ["Route", "RouteKind", "Router", "Server"]

logger = logging.getLogger("m2mproto.server")

RouteKind = Literal["request", "message", "stream", "message_stream"]
Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Route:
    """One registered handler."""

    #: The resource pattern (capability syntax).
    pattern: str
    #: What the handler receives and returns.
    kind: RouteKind
    #: The coroutine function.
    handler: Handler

    @property
    def takes_stream(self) -> bool:
        """Whether the handler receives a stream (rather than one message)."""
        return self.kind in ("stream", "message_stream")

    async def call(self, value: Any, ctx: Context) -> Any:
        """Run a request or message handler."""
        return await self.handler(value, ctx)

    async def serve_stream(self, stream: DataStream | MessageStream, ctx: Context) -> None:
        """Run a stream handler."""
        await self.handler(stream, ctx)


class Router:
    """Resource pattern -> handler table."""

    def __init__(self) -> None:
        self._exact: dict[str, Route] = {}
        self._wild: list[Route] = []

    def add(self, pattern: str, kind: RouteKind, handler: Handler) -> Route:
        """Register *handler* for *pattern*.

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) a malformed or duplicate pattern.
        """
        problem = name_error(pattern, pattern=True, max_len=MAX_RESOURCE_LEN)
        if problem is not None:
            raise LocalProtocolError(f"route {pattern!r}: {problem}", ErrorCode.INVALID_ARGUMENT)
        if pattern in self._exact or any(r.pattern == pattern for r in self._wild):
            raise LocalProtocolError(
                f"route {pattern!r} registered twice", ErrorCode.INVALID_ARGUMENT
            )
        route = Route(pattern, kind, handler)
        if pattern.endswith("*"):
            self._wild.append(route)
            self._wild.sort(key=lambda r: -len(r.pattern))
        else:
            self._exact[pattern] = route
        return route

    def find(self, resource: str) -> Route | None:
        """Return the most specific route matching *resource*, or None."""
        route = self._exact.get(resource)
        if route is not None:
            return route
        for candidate in self._wild:
            if pattern_matches(candidate.pattern, resource):
                return candidate
        return None

    def _decorator(self, pattern: str, kind: RouteKind) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(pattern, kind, handler)
            return handler

        return register

    def request(self, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator: ``async def h(message, ctx) -> reply``."""
        return self._decorator(pattern, "request")

    def message(self, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator: ``async def h(message, ctx) -> None``."""
        return self._decorator(pattern, "message")

    def stream(self, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator: ``async def h(stream: DataStream, ctx) -> None``."""
        return self._decorator(pattern, "stream")

    def message_stream(self, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator: ``async def h(stream: MessageStream, ctx) -> None``."""
        return self._decorator(pattern, "message_stream")


class Server(Router):
    """An m2mproto server: handlers plus listeners (TCP, Unix, any anyio Listener)."""

    def __init__(
        self,
        identity: Identity,
        *,
        trust_roots: Iterable[AgentId | str] = (),
        revocations: RevocationStore | None = None,
        config: Configuration | None = None,
        tokens: Iterable[bytes] = (),
        authorizer_factory: Callable[[], Any] | None = None,
        authenticate_peer: Callable[[AgentId], None] | None = None,
        max_connections: int = 1024,
        max_pending_handshakes: int = 64,
        high_water: int = DEFAULT_HIGH_WATER,
    ) -> None:
        """Create a server.

        *trust_roots* are the token issuers whose capabilities the server
        honours (a peer with no valid token can connect but do nothing).
        *authorizer_factory* replaces the per-connection ``TokenAuthorizer``
        (return ``None`` to allow everything: tests and closed deployments
        only). *authenticate_peer* may reject a peer's agent ID during the
        handshake by raising ``AuthenticationError``.

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) bad limits.
        """
        super().__init__()
        if max_connections < 1 or max_pending_handshakes < 1:
            raise LocalProtocolError("limits must be positive", ErrorCode.INVALID_ARGUMENT)
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
        self.high_water = high_water
        #: Live sessions (after the handshake).
        self.sessions: set[Session] = set()
        self._pending = 0
        #: Connections closed at once because a limit was reached.
        self.refused_connections = 0
        #: Handshakes that failed.
        self.failed_handshakes = 0

    def new_authorizer(self) -> Any:
        """Return the authorizer for one new connection."""
        if self._authorizer_factory is not None:
            return self._authorizer_factory()
        return TokenAuthorizer(
            trust_roots=self.trust_roots,
            audience=self.identity.agent_id,
            revocations=self.revocations,
        )

    def handshake_failed(self, exc: BaseException, transport: ByteStream) -> None:
        """Called when an accepted connection fails its handshake (override to customise).

        The default logs one line at INFO (the reason code, never key material).
        """
        peer = transport.extra(SocketAttribute.remote_address, "?")
        logger.info("handshake with %s failed: %s", peer, exc)

    async def handle(self, transport: ByteStream) -> None:
        """Handshake on *transport*, serve the session until it ends, close it.

        Never raises for a failing peer (see :meth:`handshake_failed`).
        """
        if len(self.sessions) + self._pending >= self.max_connections or (
            self._pending >= self.max_pending_handshakes
        ):
            self.refused_connections += 1
            logger.warning(
                "connection refused: %d live, %d handshaking", len(self.sessions), self._pending
            )
            await anyio.aclose_forcefully(transport)
            return
        self._pending += 1
        try:
            session = await Session.wrap(
                transport,
                identity=self.identity,
                server_side=True,
                config=self.config,
                authorizer=self.new_authorizer(),
                tokens=self.tokens,
                authenticate_peer=self.authenticate_peer,
                router=self,
                accept_incoming=False,
                high_water=self.high_water,
            )
        except M2MError as exc:
            self.failed_handshakes += 1
            self.handshake_failed(exc, transport)
            return
        finally:
            self._pending -= 1
        self.sessions.add(session)
        try:
            async with session:
                await session.wait_closed()
        finally:
            self.sessions.discard(session)

    async def serve(
        self,
        listener: Listener[Any],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections from *listener* until cancelled (closes the listener)."""
        async with listener:
            task_status.started()
            await listener.serve(self.handle)

    async def serve_tcp(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on TCP *host*:*port* until cancelled.

        ``task_status.started`` receives the bound ``(host, port)`` (useful with
        port 0).
        """
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        address = listener.extra(SocketAttribute.local_address)
        async with listener:
            task_status.started((str(address[0]), int(address[1])))
            await listener.serve(self.handle)

    async def serve_unix(
        self,
        path: str | os.PathLike[str],
        *,
        task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on the Unix socket *path* until cancelled (the socket file is removed after)."""
        listener = await anyio.create_unix_listener(path)
        try:
            async with listener:
                task_status.started(os.fspath(path))
                await listener.serve(self.handle)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def aclose_sessions(self) -> None:
        """Close every live session gracefully (e.g. before cancelling ``serve``)."""
        for session in list(self.sessions):
            session.request_close()
        for session in list(self.sessions):
            await session.wait_closed()
