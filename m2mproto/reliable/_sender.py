"""The sending side of reliable delivery (spec/reliability.md §3).

Theory of operation
-------------------
:class:`ReliableSender` owns an :class:`~._store.Outbox` and one background
task. The application queues messages (``queue``: stored, numbered, returns
the sequence number) and may wait for their acknowledgement (``send`` /
``wait_delivered`` / ``flush``): a message is reported delivered only when the
receiver's cumulative ``ack`` (or ``welcome``) covers it.

The task loops over connections: connect with a fresh handshake, open a
message stream on the resource, ``hello`` -> ``welcome``, drop what the
receiver already has, then a writer sends ``data`` for every held message in
order (at most ``max_in_flight`` unacknowledged) while a reader applies
``ack``s. Any transient failure (closed session, reset stream, idle timeout,
refused connection) ends the connection (aborted at once) and the loop waits
a jittered exponential backoff before the next attempt. Authentication and
authorization failures are permanent: they stop the task and are raised to
whoever waits.

The outbox is bound to the receiver's agent ID: to *peer* when given, else to
the first peer a session authenticates. Every later connection requires that
identity in the handshake, so an impostor at the address can neither receive
the queued messages nor empty the outbox with acks (``AUTH_UNEXPECTED_PEER``,
permanent; the messages stay queued).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from typing import Any

import anyio

from ..config import Configuration
from ..errors import (
    AuthenticationError,
    AuthorizationError,
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    M2MError,
    RemoteProtocolError,
)
from ..identity import AgentId, Identity
from ..transport import connect
from ..transport._pump import Signal
from ..transport.session import AnyPeer
from ._store import MemoryOutbox, Outbox
from ._wire import Ack, Data, Hello, Welcome, parse

__all__ = ["DEFAULT_CONFIG", "ReliableSender"]

logger = logging.getLogger("m2mproto.reliable")

#: Connection settings that detect a dead path within seconds (keepalive + idle timeout).
DEFAULT_CONFIG = Configuration(keepalive_interval=1.0, idle_timeout=4.0, close_timeout=1.0)

_PERMANENT = (AuthenticationError, AuthorizationError)
_TRANSIENT = (M2MError, anyio.BrokenResourceError, anyio.EndOfStream, OSError, TimeoutError)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of a task group's exception group (else the group)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first_error(exc)
        if isinstance(exc, Exception):
            return exc
    return group


class ReliableSender:
    """Sends messages to one resource of one peer, exactly once, across reconnects.

    Use as an async context manager (it runs a background task)::

        async with ReliableSender(("127.0.0.1", 7000), identity=me, tokens=[tok],
                                  peer=server_id, resource="log",
                                  outbox=SqliteOutbox(path)) as sender:
            await sender.send({"n": 1})     # returns once the peer acknowledged it

    *peer* names the receiver (its agent ID). An outbox already bound to a
    receiver may omit it; ``peer=ANY_PEER`` binds a fresh outbox to the first
    receiver that authenticates (trust on first use).

    Raises (from ``send``/``wait_delivered``/``flush``): the permanent error that
    stopped the sender (``AuthenticationError``, ``AuthorizationError``).
    """

    def __init__(
        self,
        address: Any,
        *,
        identity: Identity,
        resource: str,
        outbox: Outbox | None = None,
        tokens: Sequence[bytes] = (),
        peer: AgentId | str | AnyPeer | None = None,
        trust_roots: Iterable[AgentId | str] | None = None,
        config: Configuration | None = None,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        max_in_flight: int = 1024,
        connect_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial or max_in_flight < 1:
            raise LocalProtocolError("bad backoff or window", ErrorCode.INVALID_ARGUMENT)
        self.address = address
        self.identity = identity
        self.resource = resource
        self.outbox = outbox if outbox is not None else MemoryOutbox()
        self.tokens = tuple(tokens)
        self.peer = peer
        if peer is None and self.outbox.receiver is None:
            raise LocalProtocolError(
                "a reliable sender needs its receiver: peer=AGENT_ID, or peer=ANY_PEER to "
                "bind the outbox to the first receiver that authenticates",
                ErrorCode.INVALID_ARGUMENT,
            )
        if peer is not None and not isinstance(peer, AnyPeer):
            expected = peer.text if isinstance(peer, AgentId) else AgentId.parse(peer).text
            if self.outbox.receiver not in (None, expected):
                raise LocalProtocolError(
                    f"outbox is bound to receiver {self.outbox.receiver}, not {expected}",
                    ErrorCode.INVALID_ARGUMENT,
                )
            self.outbox.bind(expected)
        self.trust_roots = trust_roots
        self.config = config if config is not None else DEFAULT_CONFIG
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_in_flight = max_in_flight
        self.connect_timeout = connect_timeout
        self._rng = rng or random.Random()
        self._acked_below = self.outbox.first_unacked
        self._changed = Signal()  # new message queued, ack, or stop
        self._tg: anyio.abc.TaskGroup | None = None
        #: The permanent error that stopped the sender, if any.
        self.error: M2MError | None = None
        #: Sessions established.
        self.connections = 0
        #: Connection attempts or sessions that failed (each followed by a backoff).
        self.failures = 0
        #: ``data`` messages sent again after a reconnect.
        self.resent = 0
        #: Messages acknowledged.
        self.acked = 0
        self._sent_before = self.outbox.first_unacked  # highest seq ever sent + 1

    # -- application API ---------------------------------------------------------------

    def queue(self, body: Any) -> int:
        """Store *body* in the outbox (durably for a persistent outbox); return its seq.

        Raises:
            LocalProtocolError: *body* is not encodable, or the sender stopped.
        """
        if self.error is not None:
            raise self.error
        seq = self.outbox.put(body)
        self._changed.notify()
        return seq

    async def send(self, body: Any) -> int:
        """Queue *body* and wait until the peer acknowledged it; return its seq."""
        seq = self.queue(body)
        await self.wait_delivered(seq)
        return seq

    async def wait_delivered(self, seq: int) -> None:
        """Wait until message *seq* is acknowledged.

        Raises:
            AuthenticationError / AuthorizationError: the sender stopped for good.
        """
        while True:  # until acknowledged or stopped
            if self._acked_below > seq:
                return
            if self.error is not None:
                raise self.error
            await self._changed.wait()

    async def flush(self) -> None:
        """Wait until every queued message is acknowledged."""
        if self.outbox.next_seq:
            await self.wait_delivered(self.outbox.next_seq - 1)

    @property
    def delivered_below(self) -> int:
        """Every message with a lower sequence number was acknowledged."""
        return self._acked_below

    async def __aenter__(self) -> ReliableSender:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._run)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    # -- the connection loop -------------------------------------------------------------

    def _on_ack(self, next_expected: int) -> None:
        if next_expected > self.outbox.next_seq:
            raise RemoteProtocolError("ack beyond what was sent", ErrorCode.PROTOCOL_ERROR)
        if next_expected > self._acked_below:
            self.acked += len(self.outbox.ack(next_expected))
            self._acked_below = next_expected
            self._changed.notify()

    async def _run(self) -> None:
        attempt = 0
        while True:  # until cancelled or a permanent error
            try:
                await self._connection()
            except _PERMANENT as exc:
                logger.warning("reliable sender stopped: %s", exc)
                self.error = exc
                self._changed.notify()
                return
            except _TRANSIENT as exc:
                logger.info("reliable connection lost: %r", exc)
            else:
                attempt = 0
            self.failures += 1
            delay = min(self.backoff_max, self.backoff_initial * 2**attempt)
            attempt = min(attempt + 1, 30)
            await anyio.sleep(delay * self._rng.random())

    def _check_receiver(self, authenticated: str) -> None:
        """Bind the outbox to the first authenticated receiver; refuse any other."""
        bound = self.outbox.receiver
        if bound is None:
            self.outbox.bind(authenticated)
        elif bound != authenticated:
            raise AuthenticationError(
                f"outbox is bound to receiver {bound}; the peer authenticated as "
                f"{authenticated}: refusing to deliver to it or accept its acks",
                ErrorCode.AUTH_UNEXPECTED_PEER,
            )

    async def _connection(self) -> None:
        # the handshake deadline is the core's (config.handshake_timeout); the session's
        # task group must not nest inside a scope of ours, hence no fail_after here
        bound = self.outbox.receiver
        try:
            await self._session(peer=bound if bound is not None else self.peer)
        except AuthenticationError as exc:
            if bound is None or exc.code != ErrorCode.AUTH_UNEXPECTED_PEER:
                raise
            if exc.message.startswith("outbox is bound"):
                raise
            raise AuthenticationError(
                f"outbox is bound to receiver {bound}; refusing another peer ({exc.message})",
                ErrorCode.AUTH_UNEXPECTED_PEER,
            ) from None

    async def _session(self, peer: AgentId | str | AnyPeer | None) -> None:
        async with connect(
            self.address,
            identity=self.identity,
            tokens=self.tokens,
            peer=peer,
            trust_roots=self.trust_roots,
            config=self.config,
            connect_timeout=self.connect_timeout,
        ) as session:
            try:
                self._check_receiver(session.peer.agent_id.text)
                self.connections += 1
                with anyio.fail_after(self.connect_timeout):
                    stream = await session.open_message_stream(self.resource)
                    await stream.send(Hello(self.outbox.epoch, self.outbox.first_unacked).to_wire())
                    welcome = parse(await stream.receive())
                if not isinstance(welcome, Welcome):
                    raise DecodeError("expected welcome", ErrorCode.PROTOCOL_ERROR)
                self._on_ack(welcome.next_expected)
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._read_acks, stream)
                        await self._write(stream)
                except BaseExceptionGroup as group:
                    raise _first_error(group) from None
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await session.abort()
                raise

    async def _write(self, stream: Any) -> None:
        next_to_send = self._acked_below
        while True:  # until the connection fails (an exception)
            progressed = False
            for seq, body in self.outbox.items_from(next_to_send):
                while seq - self._acked_below >= self.max_in_flight:  # window full
                    await self._changed.wait()
                if seq < self._acked_below:
                    continue  # acknowledged meanwhile
                await stream.send(Data(seq, body).to_wire())
                if seq < self._sent_before:
                    self.resent += 1
                self._sent_before = max(self._sent_before, seq + 1)
                next_to_send = seq + 1
                progressed = True
            if not progressed:
                await self._changed.wait()

    async def _read_acks(self, stream: Any) -> None:
        while True:  # until the stream fails
            msg = parse(await stream.receive())
            if not isinstance(msg, Ack):
                raise RemoteProtocolError("expected ack", ErrorCode.PROTOCOL_ERROR)
            self._on_ack(msg.next_expected)
