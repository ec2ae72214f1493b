"""connect(): open a session to an m2mproto peer over TCP, a Unix socket or any ByteStream.

``connect(...)`` returns a :class:`~.session.SessionOpener`, usable both ways::

    async with connect(("127.0.0.1", 7000), identity=me, peer=server_id) as session: ...
    session = await connect(("127.0.0.1", 7000), identity=me, peer=server_id)

The first runs the session in a task group of the caller for the block. The
second may sit under ``fail_after`` and gives a session usable and closable
from any task (``async with session`` or ``aclose()`` ends it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import anyio
from anyio.abc import ByteStream

from ..config import Configuration
from ..errors import ErrorCode, LocalProtocolError, M2MError
from ..identity import AgentId, Identity
from ..tokens import RevocationStore, TokenAuthorizer
from ..tokens.held import check_held
from ._errors import ConnectionClosedError, network_error
from ._keys import StaticKeys
from ._link import logger
from ._native import AnyTransport, open_native, use_native
from ._peer_keys import PeerStaticKeys
from .session import (
    DEFAULT_HIGH_WATER,
    AnyPeer,
    EventHook,
    RouteTable,
    Session,
    SessionOpener,
    require_peer,
)

__all__ = ["Address", "connect", "parse_hostport"]

#: ``(host, port)``, a Unix socket path, or an already connected anyio byte stream.
Address = tuple[str, int] | str | os.PathLike[str] | ByteStream


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into a TCP :data:`Address`.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) not ``HOST:PORT`` with a port in 0..65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise LocalProtocolError(f"expected HOST:PORT, got {text!r}", ErrorCode.INVALID_ARGUMENT)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


async def open_transport(
    address: Address, *, connect_timeout: float | None, native: bool | None = None
) -> AnyTransport:
    """Open the byte stream for *address* (a native one on asyncio, see :func:`use_native`).

    Raises:
        NetworkError: (``UNREACHABLE``, an ``OSError``) the connection could not
            be made; the message names the address.
        TimeoutError: *connect_timeout* expired.
        LocalProtocolError: (``INVALID_ARGUMENT``) an address of the wrong form.
    """
    if isinstance(address, ByteStream):
        return address
    native_path = use_native(native)
    with anyio.fail_after(connect_timeout):
        try:
            if isinstance(address, tuple):
                if len(address) != 2 or not isinstance(address[1], int):
                    raise LocalProtocolError(
                        "address must be (host, port)", ErrorCode.INVALID_ARGUMENT
                    )
                if native_path:
                    return await open_native((address[0], address[1]))
                return await anyio.connect_tcp(address[0], address[1])
            if isinstance(address, str | os.PathLike):
                if native_path:
                    return await open_native(os.fspath(address))
                return await anyio.connect_unix(address)
        except OSError as exc:
            raise network_error(exc, listen=False, address=address) from exc
    raise LocalProtocolError(
        f"cannot connect to a {type(address).__name__}", ErrorCode.INVALID_ARGUMENT
    )


def connect(
    address: Address,
    *,
    identity: Identity,
    tokens: Sequence[bytes] = (),
    peer: AgentId | str | AnyPeer | None = None,
    trust_roots: Iterable[AgentId | str] | None = None,
    revocations: RevocationStore | None = None,
    config: Configuration | None = None,
    router: RouteTable | None = None,
    authenticate_peer: Callable[[AgentId], None] | None = None,
    connect_timeout: float | None = 30.0,
    high_water: int = DEFAULT_HIGH_WATER,
    static_keys: StaticKeys | None = None,
    on_event: EventHook | None = None,
    ik: bool | PeerStaticKeys = False,
    native: bool | None = None,
) -> SessionOpener:
    """Connect to *address* and authenticate as *identity*.

    ``async with connect(...) as session`` or ``session = await connect(...)``
    (see :class:`~m2mproto.transport.SessionOpener`).

    Args:
        address: ``(host, port)`` for TCP, a Unix socket path, or any connected
            ``anyio.abc.ByteStream`` (TLS, QUIC, a memory stream...).
        tokens: capability tokens to present in the handshake.
        peer: the agent ID the server must have; another peer fails the
            handshake with ``AUTH_UNEXPECTED_PEER``. Required, unless
            *authenticate_peer* checks the server instead; ``peer=ANY_PEER``
            accepts any server that authenticates (insecure: any agent holding
            tokens from a root we trust could pose as the server).
        trust_roots: token issuers whose capabilities the *server* must hold to
            open streams to us. ``None`` (the default) lets the authenticated
            server open streams and send messages freely.
        router: handlers for streams the server opens to us; messages with no
            route are delivered by ``async for incoming in session``.
        static_keys: a cache of Noise static keys to share across the
            connections of one client (one signature per identity); without
            it each connection makes its own.
        on_event: ``on_event(session, event)`` for every event of the session's
            core, in order (see :data:`~m2mproto.transport.EventHook`).
        ik: reconnect with the IK handshake when the server's Noise static key
            is known (spec/handshake.md 2.11). ``False`` (the default): always
            XX, nothing remembered. ``True``: the process-wide
            :meth:`PeerStaticKeys.process_default` memory; or a
            :class:`PeerStaticKeys` (for example one kept in a file). Only with
            ``peer=`` naming the server and a TCP or Unix-socket *address*: the
            key is looked up by both, remembered after every completed
            handshake (authenticated as *peer*), and forgotten when IK fails
            with ``DECRYPT_ERROR`` (the server restarted with a new key; an
            attacker can cause the same), after which the connection is retried
            **once** with XX on a new transport. No other failure is retried.
            Off by default because it buys no latency: our first request follows
            XX's third message without waiting, so the first reply takes as many
            round trips either way (``python -m bench.ik_bench``), while IK costs
            one more DH per side and encrypts our identity and tokens to the
            server's static key rather than to an ephemeral one.
        native: on asyncio, a TCP or Unix-socket *address* is driven by
            ``asyncio.Protocol`` callbacks instead of an anyio stream (the same
            behaviour, fewer instructions per record). ``None`` (the default):
            native on asyncio unless the environment variable
            ``M2MPROTO_NATIVE`` is ``0``; ``False``: always the anyio path;
            ``True``: native (an error outside asyncio).

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``, at once) no *peer* and no
            *authenticate_peer*.

    The handshake offers the hybrid post-quantum suite first (``config.post_quantum``);
    if the server refuses it as a classical-only peer does (``VERSION_MISMATCH``), the
    connection is retried once with the classical suite, except for a ``ByteStream``
    address (which cannot be reopened) or under ``config.require_post_quantum``.

    Raises (when awaited or entered):
        AuthenticationError: the server is not *peer*, or its identity proof failed.
        TokenError: before connecting, a token in *tokens* is held by another
            agent (``CNF_MISMATCH``), expired (``EXPIRED``) or not yet valid
            (``NOT_YET_VALID``); after the handshake, the server rejected our
            tokens (``TOKEN_INVALID``, or the precise reason if the server sends
            it). With *tokens*, ``connect`` waits one round trip for that verdict.
        ConnectionClosedError: the handshake failed or timed out.
        NetworkError: (``UNREACHABLE``, also an ``OSError``) no connection could
            be made to *address* (the message names it).
        TimeoutError: the transport could not be opened in *connect_timeout*.
    """
    expected = require_peer(peer, authenticate_peer)
    authorizer = None
    if trust_roots is not None:
        authorizer = TokenAuthorizer(
            trust_roots=[AgentId.parse(r) if isinstance(r, str) else r for r in trust_roots],
            audience=identity.agent_id,
            revocations=revocations,
        )
    held = tuple(tokens)
    memory = _key_memory(ik, expected, address)
    target = AgentId.parse(expected) if isinstance(expected, str) else expected
    attempt = _Attempt(config)

    async def prepare() -> Session:
        check_held(held, identity.agent_id, now=time.time())
        remote = None
        if memory is not None and target is not None and not attempt.fell_back:
            remote = memory.get(target, address)
        attempt.remote_static = remote
        transport = await open_transport(address, connect_timeout=connect_timeout, native=native)
        try:
            return Session.create(
                transport,
                identity=identity,
                server_side=False,
                config=attempt.config,
                authorizer=authorizer,
                tokens=held,
                expected_peer=expected,
                authenticate_peer=authenticate_peer,
                routes=router,
                accept_incoming=True,
                high_water=high_water,
                static_keys=static_keys,
                on_event=on_event,
                remote_static=remote,
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(transport)
            raise

    def hybrid_refused(exc: M2MError) -> bool:
        """The server refused the hybrid offer as a classical-only peer does."""
        cfg = attempt.config if attempt.config is not None else Configuration()
        code = getattr(exc, "close_code", exc.code)  # the peer's ABORT code
        return (
            code == ErrorCode.VERSION_MISMATCH
            and cfg.post_quantum
            and not cfg.require_post_quantum
            and not cfg.post_quantum_fallback
            and not isinstance(address, ByteStream)
        )

    def retry(error: M2MError) -> Callable[[], Awaitable[Session]] | None:
        """How to try once more after a failed handshake, or None.

        A classical-only server refused the hybrid offer: one classical retry whose
        offer still prefers the hybrid suite (spec/handshake.md 2.13). IK to a
        remembered key failed with DECRYPT_ERROR: forget the key, retry with XX (2.11).
        """
        if hybrid_refused(error):
            cfg = attempt.config if attempt.config is not None else Configuration()
            attempt.config = dataclasses.replace(cfg, post_quantum_fallback=True)
            return prepare
        return prepare if stale_key(error) else None

    def stale_key(error: M2MError) -> bool:
        """IK to a remembered key failed with DECRYPT_ERROR: forget it (then retry with XX)."""
        stale = attempt.remote_static
        if memory is None or target is None or stale is None:
            return False
        if not isinstance(error, ConnectionClosedError) or error.close_code != (
            ErrorCode.DECRYPT_ERROR
        ):
            return False  # not a symptom of a stale key (handshake.md 2.11)
        attempt.fell_back = True
        with contextlib.suppress(M2MError):  # an unwritable file must not stop the retry
            if memory.get(target, address) == stale:  # not replaced meanwhile
                memory.forget(target, address)
        logger.info("IK to %s failed (DECRYPT_ERROR): stale key forgotten, retrying with XX",
                    target.short)  # fmt: skip
        return True

    def ready(session: Session) -> None:
        static = session.peer.static_key
        if memory is None or target is None or static is None:
            return
        try:
            memory.remember(target, static, address)
        except M2MError as exc:
            logger.warning("cannot remember the server's static key: %s", exc)

    return SessionOpener(prepare, None, retry=retry, ready=ready)


class _Attempt:
    """What the current attempt of one ``connect`` uses."""

    __slots__ = ("config", "fell_back", "remote_static")

    def __init__(self, config: Configuration | None) -> None:
        self.config = config
        self.remote_static: bytes | None = None
        self.fell_back = False


def _key_memory(
    ik: bool | PeerStaticKeys, expected: AgentId | str | None, address: Address
) -> PeerStaticKeys | None:
    """The key memory a ``connect`` uses, or None for XX only.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) *ik* is neither a bool nor a memory.
    """
    if isinstance(ik, PeerStaticKeys):
        memory = ik
    elif ik is True:
        memory = PeerStaticKeys.process_default()
    elif ik is False:
        return None
    else:
        raise LocalProtocolError(
            "ik must be True, False or a PeerStaticKeys", ErrorCode.INVALID_ARGUMENT
        )
    # IK needs the expected server named, and a retry needs an address to reconnect to.
    if expected is None or isinstance(address, ByteStream):
        return None
    return memory
