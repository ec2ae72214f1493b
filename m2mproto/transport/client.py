"""connect(): open a session to an m2mproto peer over TCP, a Unix socket or any ByteStream.

``connect(...)`` returns an opener usable both ways::

    async with m2mproto.connect(("127.0.0.1", 7000), identity=me) as session: ...
    async with await m2mproto.connect(("127.0.0.1", 7000), identity=me) as session: ...

Either form must be entered and left in one task (the session owns a task
group in it), and not under a cancel scope shorter than the session: bound
the handshake with ``Configuration.handshake_timeout`` and the transport with
``connect_timeout``, or put the whole ``async with`` block in the scope (see
:class:`~m2mproto.transport.Session`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

import anyio
from anyio.abc import ByteStream

from ..config import Configuration
from ..errors import ErrorCode, LocalProtocolError, M2MError
from ..identity import AgentId, Identity
from ..tokens import RevocationStore, TokenAuthorizer
from .server import Router
from .session import DEFAULT_HIGH_WATER, Session

__all__ = ["Address", "SessionOpener", "connect"]

#: ``(host, port)``, a Unix socket path, or an already connected anyio byte stream.
Address = tuple[str, int] | str | os.PathLike[str] | ByteStream


async def open_transport(address: Address, *, connect_timeout: float | None) -> ByteStream:
    """Open the byte stream for *address*.

    Raises:
        OSError: the connection could not be made (as anyio raises it).
        TimeoutError: *connect_timeout* expired.
        LocalProtocolError: (``INVALID_ARGUMENT``) an address of the wrong form.
    """
    if isinstance(address, ByteStream):
        return address
    with anyio.fail_after(connect_timeout):
        if isinstance(address, tuple):
            if len(address) != 2 or not isinstance(address[1], int):
                raise LocalProtocolError("address must be (host, port)", ErrorCode.INVALID_ARGUMENT)
            return await anyio.connect_tcp(address[0], address[1])
        if isinstance(address, str | os.PathLike):
            return await anyio.connect_unix(address)
    raise LocalProtocolError(
        f"cannot connect to a {type(address).__name__}", ErrorCode.INVALID_ARGUMENT
    )


class SessionOpener:
    """What :func:`connect` returns: await it, or use it as an async context manager."""

    def __init__(self, address: Address, kwargs: dict[str, Any]) -> None:
        self._address = address
        self._kwargs = kwargs
        self._session: Session | None = None

    async def _open(self) -> Session:
        connect_timeout = self._kwargs.pop("connect_timeout")
        try:
            return await self._attempt(self._kwargs, connect_timeout)
        except M2MError as exc:
            cfg = self._kwargs["config"] or Configuration()
            code = getattr(exc, "close_code", exc.code)  # the peer's ABORT code
            if (
                code != ErrorCode.VERSION_MISMATCH
                or not cfg.post_quantum
                or cfg.require_post_quantum
                or cfg.post_quantum_fallback
                or isinstance(self._address, ByteStream)
            ):
                raise
        # The peer refused the hybrid offer (a classical-only peer): one classical
        # retry whose offer still prefers the hybrid suite (spec/handshake.md 2.11).
        retry = dict(self._kwargs, config=dataclasses.replace(cfg, post_quantum_fallback=True))
        return await self._attempt(retry, connect_timeout)

    async def _attempt(self, kwargs: dict[str, Any], connect_timeout: float | None) -> Session:
        transport = await open_transport(self._address, connect_timeout=connect_timeout)
        try:
            return await Session.wrap(transport, **kwargs)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(transport)
            raise

    def __await__(self) -> Generator[Any, None, Session]:
        return self._open().__await__()

    async def __aenter__(self) -> Session:
        self._session = await self._open()
        return self._session

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._session is not None
        await self._session.__aexit__(exc_type, exc, tb)


def connect(
    address: Address,
    *,
    identity: Identity,
    tokens: Sequence[bytes] = (),
    peer: AgentId | str | None = None,
    trust_roots: Iterable[AgentId | str] | None = None,
    revocations: RevocationStore | None = None,
    config: Configuration | None = None,
    router: Router | None = None,
    authenticate_peer: Callable[[AgentId], None] | None = None,
    connect_timeout: float | None = 30.0,
    high_water: int = DEFAULT_HIGH_WATER,
) -> SessionOpener:
    """Connect to *address* and authenticate as *identity*.

    The session must be entered and left in the calling task, inside every
    cancel scope open at this call: never ``with fail_after(t): s = await
    connect(...)`` with ``s`` used after the scope (see
    :class:`~m2mproto.transport.Session`).

    Args:
        address: ``(host, port)`` for TCP, a Unix socket path, or any connected
            ``anyio.abc.ByteStream`` (TLS, QUIC, a memory stream...).
        tokens: capability tokens to present in the handshake.
        peer: the agent ID the server must have (recommended); another peer
            fails the handshake with ``AUTH_UNEXPECTED_PEER``.
        trust_roots: token issuers whose capabilities the *server* must hold to
            open streams to us. ``None`` (the default) lets the authenticated
            server open streams and send messages freely.
        router: handlers for streams the server opens to us; messages with no
            route are delivered by ``async for incoming in session``.

    The handshake offers the hybrid post-quantum suite first (``config.post_quantum``);
    if the server refuses it as a classical-only peer does (``VERSION_MISMATCH``), the
    connection is retried once with the classical suite, except for a ``ByteStream``
    address (which cannot be reopened) or under ``config.require_post_quantum``.

    Raises (when awaited or entered):
        AuthenticationError: the server is not *peer*, or its identity proof failed.
        TokenError: the server rejected our tokens (``code`` says why).
        ConnectionClosedError: the handshake failed or timed out.
        OSError / TimeoutError: the transport could not be opened.
    """
    authorizer = None
    if trust_roots is not None:
        authorizer = TokenAuthorizer(
            trust_roots=[AgentId.parse(r) if isinstance(r, str) else r for r in trust_roots],
            audience=identity.agent_id,
            revocations=revocations,
        )
    kwargs: dict[str, Any] = {
        "identity": identity,
        "server_side": False,
        "config": config,
        "authorizer": authorizer,
        "tokens": tuple(tokens),
        "expected_peer": peer,
        "authenticate_peer": authenticate_peer,
        "router": router,
        "accept_incoming": True,
        "high_water": high_water,
        "connect_timeout": connect_timeout,
    }
    return SessionOpener(address, kwargs)
