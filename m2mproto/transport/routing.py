"""Routes: resource pattern -> handler, for the streams a peer opens.

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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ErrorCode, LocalProtocolError
from ..tokens.capabilities import MAX_RESOURCE_LEN, name_error, pattern_matches
from .session import Context, DataStream, MessageStream, RouteKind

__all__ = [
    "Handler",
    "MessageHandler",
    "MessageStreamHandler",
    "RequestHandler",
    "Route",
    "RouteKind",
    "Router",
    "StreamHandler",
]

#: ``async def h(message, ctx) -> reply`` (the reply is any CBOR value).
RequestHandler = Callable[[Any, Context], Awaitable[Any]]
#: ``async def h(message, ctx) -> None``.
MessageHandler = Callable[[Any, Context], Awaitable[None]]
#: ``async def h(stream: DataStream, ctx) -> None``.
StreamHandler = Callable[[DataStream, Context], Awaitable[None]]
#: ``async def h(stream: MessageStream, ctx) -> None``.
MessageStreamHandler = Callable[[MessageStream, Context], Awaitable[None]]
#: Any of the four.
Handler = RequestHandler | MessageHandler | StreamHandler | MessageStreamHandler

_H = TypeVar("_H", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True, slots=True)
class Route:
    """One registered handler."""

    #: The resource pattern (capability syntax).
    pattern: str
    #: What the handler receives and returns.
    kind: RouteKind
    #: The coroutine function (its signature follows *kind*).
    handler: Callable[..., Awaitable[Any]]

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
            LocalProtocolError: (``INVALID_ARGUMENT``) a malformed or duplicate
                pattern, or an unknown *kind*.
        """
        if kind not in ("request", "message", "stream", "message_stream"):
            raise LocalProtocolError(f"unknown route kind {kind!r}", ErrorCode.INVALID_ARGUMENT)
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

    def _decorator(self, pattern: str, kind: RouteKind) -> Callable[[_H], _H]:
        def register(handler: _H) -> _H:
            self.add(pattern, kind, handler)
            return handler

        return register

    def request(self, pattern: str) -> Callable[[RequestHandler], RequestHandler]:
        """Decorator: ``async def h(message, ctx) -> reply``."""
        return self._decorator(pattern, "request")

    def message(self, pattern: str) -> Callable[[MessageHandler], MessageHandler]:
        """Decorator: ``async def h(message, ctx) -> None``."""
        return self._decorator(pattern, "message")

    def stream(self, pattern: str) -> Callable[[StreamHandler], StreamHandler]:
        """Decorator: ``async def h(stream: DataStream, ctx) -> None``."""
        return self._decorator(pattern, "stream")

    def message_stream(
        self, pattern: str
    ) -> Callable[[MessageStreamHandler], MessageStreamHandler]:
        """Decorator: ``async def h(stream: MessageStream, ctx) -> None``."""
        return self._decorator(pattern, "message_stream")
