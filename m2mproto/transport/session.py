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
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import ByteStream

from ..config import Configuration
from ..connection import Connection, Role
from ..errors import (
    AuthenticationError,
    ErrorCode,
    M2MError,
)
from ..handshake import StaticKey
from ..identity import AgentId, Identity
from ._channels import DataStream, Incoming, MessageStream
from ._dispatch import _Dispatcher
from ._errors import ConnectionClosedError, RequestTimeout, StreamResetError
from ._session_core import DEFAULT_HIGH_WATER as DEFAULT_HIGH_WATER
from ._session_core import Context, Peer, logger
from .attributes import M2MAttribute

if TYPE_CHECKING:
    from .server import Router

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


class Session(_Dispatcher):
    """One authenticated, encrypted connection to a peer.

    Create it with :func:`~m2mproto.transport.connect`, :meth:`wrap`, a
    :class:`~m2mproto.transport.Server`, or
    :func:`~m2mproto.transport.memory_pair`, and use it as an async context
    manager in the task that created it: it owns a task group there, which only
    ``__aexit__`` leaves. ``aclose``/``abort`` may be called from any task.

    Warning:
        The session's task group is entered by the call that returns the
        session (``await connect(...)``, :meth:`wrap`, ``await memory_pair()``),
        so the session must be entered and left in that same task and inside
        every cancel scope that was open at that call. Do not bound only the
        connect with a shorter scope while the session outlives it::

            with anyio.fail_after(5):
                session = await connect(...)   # wrong: the scope ends first
            async with session: ...

        anyio then fails when the scope exits (a cancel scope left out of
        order). Put the timeout in ``Configuration.handshake_timeout`` (the
        handshake then fails with ``HANDSHAKE_TIMEOUT``), use
        ``connect(..., connect_timeout=...)`` for the transport, or put the
        whole ``async with`` block inside the scope.
    """

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
        ``accept_incoming``, ``high_water``). The session must then be left
        (``async with session``) in the same task and inside the same cancel
        scopes as this call (see the class docstring). On failure the
        transport is closed.

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
        # The core failed the handshake (closed itself): its ABORT gets the same short
        # chance to reach the peer as an abort's CLOSE. Otherwise (cancelled, our own
        # failure) cut at once.
        self._pump.abort(grace=0.1 if self._closed.is_set() else 0.0)
        self._exited = True
        tg = self._tg
        with anyio.CancelScope(shield=True):
            await self._pump.finished.wait()
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    async def _wait_handshake(self) -> None:
        # one flag for "completed or closed": no watcher task and task group per handshake
        await self._handshake_done.wait()
        if self._peer is None:
            raise self._handshake_error()

    async def _run_pump(self) -> None:
        await self._pump.run()
        self._mark_closed(ErrorCode.TRUNCATED, "transport ended", remote=True)

    @property
    def handshake_hash(self) -> bytes:
        """The Noise handshake hash: a channel binding unique to this connection."""
        return self._handshake_hash

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
        if callable(grants) and self._peer is not None:
            return grants(self._peer.agent_id)
        return self._capabilities

    @property
    def local_agent_id(self) -> AgentId:
        """Our own agent ID."""
        return self._identity.agent_id

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
        chan = await self._open(resource, wake=False)
        done = False
        try:
            await self._queue_send(chan.stream_id, value, message=True, end_stream=True, flush=True)
            if timeout is None:  # no scope to enter and leave per request
                got, reply = await self._next_item(chan, want_message=True)
            else:
                with anyio.fail_after(timeout):
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
                item = self._incoming.pop(0)
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
