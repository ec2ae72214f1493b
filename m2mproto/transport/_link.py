"""The session's state and the synchronous operations its streams and handlers use.

Theory of operation
-------------------
A :class:`Link` holds what one session knows: its sans-IO ``Connection``, the
:class:`~._pump.Pump` that binds it to the byte stream, one :class:`Channel`
per open stream, and the close state. Its helpers change the Connection
synchronously and then wake the pump; the few that wait (:meth:`Link.queue_send`,
:meth:`Link.wait_drained`, :meth:`Link.open`, :meth:`Link.next_item`) wait
only on signals the pump fires as the core makes progress and re-check the
state after every wakeup, so cancelling them at any await leaves the session
consistent.

A :class:`Channel` is the local status of one stream. Its fields change in
two places only: the dispatcher applies the core's events to it
(:mod:`._dispatch`), and the local operations here record what we did
(ended our half, reset it, stopped reading).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from .. import cbor
from .. import events as ev
from ..connection import NEED_DATA, Connection, ConnectionState
from ..errors import (
    AuthenticationError,
    ErrorCode,
    LocalProtocolError,
    M2MError,
    SendBufferFull,
    StreamLimitReached,
    TokenError,
    code_name,
)
from ..identity import AgentId
from ._errors import ConnectionClosedError, address_text, reset_error
from ._native import NativePump, NativeStream
from ._pump import Flag, Pump, Signal

__all__ = ["DEFAULT_HIGH_WATER", "Channel", "Link", "Peer"]

logger = logging.getLogger("m2mproto.transport")

#: Default bytes a sender may leave queued in the core per stream before ``send`` waits.
DEFAULT_HIGH_WATER = 64 * 1024

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Peer:
    """The authenticated peer of a session."""

    #: The peer's self-certifying agent ID.
    agent_id: AgentId
    #: The peer's Noise static public key (32 bytes), authenticated by the
    #: handshake's identity binding: a client can reconnect with IK to it
    #: (spec/handshake.md 2.11; :class:`~m2mproto.transport.PeerStaticKeys`).
    static_key: bytes | None = None
    #: The Noise pattern this session was authenticated with (``"XX"`` or ``"IK"``; whether
    #: its hybrid post-quantum variant ran is in :attr:`Session.suite`).
    pattern: str = "XX"

    @property
    def identity_key(self) -> bytes:
        """The peer's raw Ed25519 public key."""
        return self.agent_id.public_key

    @property
    def short_id(self) -> str:
        """The short agent ID, for logs only."""
        return self.agent_id.short


@dataclass(eq=False, slots=True)
class Channel:
    """Local status of one stream: its inbox, who consumes it, and what ended it."""

    stream_id: int
    resource: str
    local: bool
    grant: object = None
    #: ``(is_message, value, credit)`` items the application has not taken yet.
    inbox: deque[tuple[bool, Any, int]] = dataclasses.field(default_factory=deque)
    #: The peer ended its half (``StreamEnded``).
    recv_ended: bool = False
    #: We ended our half.
    send_ended: bool = False
    #: ``(code, remote)`` once reset by either side.
    reset: tuple[int, bool] | None = None
    #: Nobody reads any more: arriving bytes are acknowledged and dropped.
    discard: bool = False
    #: What takes the stream's first message (set by the dispatcher; None: the inbox).
    first: object = None
    changed: Signal = dataclasses.field(default_factory=Signal)

    @property
    def done(self) -> bool:
        """Both halves are over and nothing is left to read: the channel can go."""
        return self.reset is not None or (self.recv_ended and self.send_ended and not self.inbox)

    def push(self, is_message: bool, value: Any, size: int) -> None:
        self.inbox.append((is_message, value, size))
        self.changed.notify()


def _unbound(event: ev.Event) -> None:  # pragma: no cover - the dispatcher binds first
    raise AssertionError("no dispatcher bound")


class _PeerLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with ``[peer@address]`` (the peer is ``handshake`` until known)."""

    # slotted: one per session (LoggerAdapter keeps a __dict__, never filled)
    __slots__ = ("extra", "logger", "merge_extra")

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        address = extra.get("address")
        where = f"@{address}" if address else ""
        return f"[{extra.get('peer', '?')}{where}] {msg}", kwargs


def remote_address(transport: anyio.abc.ByteStream | NativeStream) -> str:
    """The peer's address as text (``host:port``, a socket path), or ``""`` if unknown."""
    from anyio.abc import SocketAttribute

    try:
        address = transport.extra(SocketAttribute.remote_address, None)
    except (OSError, anyio.TypedAttributeLookupError):
        return ""
    return address_text(address) if isinstance(address, tuple | str) and address else ""


class Link:
    """State and synchronous helpers shared by a session's parts (see the module doc)."""

    # slotted: one per session
    __slots__ = (
        "address",
        "channels",
        "closed",
        "closed_info",
        "closing",
        "conn",
        "handshake_done",
        "high_water",
        "log",
        "on_closed",
        "on_ready",
        "peer",
        "pump",
        "source",
    )

    def __init__(
        self,
        conn: Connection,
        transport: anyio.abc.ByteStream | NativeStream,
        *,
        high_water: int = DEFAULT_HIGH_WATER,
        linger: float = 2.0,
    ) -> None:
        self.conn = conn
        self.high_water = high_water
        #: The peer's address as text (empty when the transport does not say).
        self.address = remote_address(transport)
        #: The peer's host (its address without the port): the key of throttled log lines.
        self.source = self.address.rpartition(":")[0] or self.address
        self.log: _PeerLog = _PeerLog(logger, {"peer": "handshake", "address": self.address})
        #: The anyio pump, or the asyncio-native one for a native stream (same interface).
        self.pump: Pump | NativePump
        if isinstance(transport, NativeStream):
            self.pump = NativePump(conn, transport, _unbound, NEED_DATA, self.log, linger=linger)
        else:
            self.pump = Pump(conn, transport, _unbound, NEED_DATA, self.log, linger=linger)
        self.channels: dict[int, Channel] = {}
        #: Set when the handshake is over either way: completed (``peer`` is
        #: then set) or the session closed first.
        self.handshake_done = Flag()
        self.peer: Peer | None = None
        #: Called (synchronously, in the pump's task) when the handshake completed,
        #: before any later event: the server's hook that lifts the handshake deadline.
        self.on_ready: Callable[[], None] | None = None
        #: Called once (synchronously) when the connection is over: the server's hook
        #: that stops counting the session as live.
        self.on_closed: Callable[[], None] | None = None
        #: Set once the connection is over (closed by either side or failed).
        self.closed = Flag()
        self.closed_info: tuple[int, str, bool] | None = None
        #: The application asked to close (``aclose``/``abort``/``request_close``).
        self.closing = False

    # -- close state ----------------------------------------------------------

    def mark_closed(self, code: int, reason: str, remote: bool) -> None:
        if self.closed_info is None:
            self.closed_info = (code, reason, remote)
            who = "peer" if remote else "we"
            self.log.info("connection closed (%s, %s)", code_name(code), who)
        self.closed.set()
        self.handshake_done.set()  # a handshake still waited for has failed
        on_closed = self.on_closed
        if on_closed is not None:
            self.on_closed = None
            on_closed()
        if self.peer is None:
            # The handshake failed (the core closed itself): its ABORT gets the
            # same short chance to reach the peer as an abort's CLOSE.
            self.pump.abort(grace=0.1)
        for chan in self.channels.values():
            chan.changed.notify()
        self.pump.flushed.notify()

    def closed_error(self) -> ConnectionClosedError:
        code, reason, remote = self.closed_info or (ErrorCode.NO_ERROR, "closing", False)
        where = f" with {self.address}" if self.address else ""
        error = ConnectionClosedError(
            f"session{where} closed ({code_name(code)}{', by peer' if remote else ''})",
            code,
            reason,
            remote,
        )
        if self.pump.transport_error is not None:
            error.__cause__ = self.pump.transport_error
        return error

    def handshake_error(self) -> M2MError:
        code, reason, remote = self.closed_info or (ErrorCode.TRUNCATED, "", True)
        if 0x100 <= code < 0x200 and not remote:  # our check of the peer's identity
            detail = f": {reason}" if reason else ""
            return AuthenticationError(f"peer{self.where()} not accepted{detail}", ErrorCode(code))
        return self.closed_error()

    def token_error(self) -> TokenError | None:
        """The server's refusal of our tokens, if that is how the connection closed."""
        code, reason, remote = self.closed_info or (ErrorCode.NO_ERROR, "", False)
        if not remote or not (code == ErrorCode.TOKEN_INVALID or 0x200 <= code < 0x300):
            return None
        detail = f": {reason}" if reason else ""
        return TokenError(
            f"the server{self.where()} rejected our tokens ({code_name(code)}{detail})",
            ErrorCode(code),
        )

    def where(self) -> str:
        """`` at HOST:PORT`` for messages (empty when the address is unknown)."""
        return f" at {self.address}" if self.address else ""

    def check_open(self) -> None:
        if self.closed.is_set() or self.closing:
            raise self.closed_error()

    # -- synchronous operations -------------------------------------------------

    def call(self, method: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Call a Connection method, mapping "not established" to the closed error;
        then wake the pump."""
        result = self.apply(method, *args, **kwargs)
        self.pump.wake()
        return result

    def apply(self, method: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """:meth:`call` without waking the pump (the caller flushes next)."""
        self.check_open()
        try:
            return method(*args, **kwargs)
        except LocalProtocolError as exc:
            if exc.code == ErrorCode.INVALID_STATE and self.conn.state is not (
                ConnectionState.ESTABLISHED
            ):
                raise self.closed_error() from None
            raise

    def acknowledge(self, sid: int, size: int) -> None:
        """Return *size* bytes of credit: the application took them."""
        if size:
            # An unknown stream (already finished in the core) is refused; the
            # connection-level credit of its last bytes is then not returned.
            with contextlib.suppress(M2MError):
                self.conn.acknowledge_data(sid, size)

    @staticmethod
    def message_size(event: ev.MessageReceived) -> int:
        if event.size is not None:
            return event.size
        # An event without its size: the deterministic profile re-encodes to
        # exactly the bytes received (the decoder rejects any other encoding).
        return len(cbor.encode(event.value))

    def forget_if_done(self, chan: Channel) -> None:
        if chan.done and self.channels.get(chan.stream_id) is chan:
            del self.channels[chan.stream_id]
            if not self.channels:  # an emptied dict keeps its table: an idle session drops it
                self.channels = {}

    def reset(self, chan: Channel | int, code: int, *, refuse: bool = False) -> None:
        """Reset a stream we still know (no error if the core already forgot it).

        With *refuse*, the reset is the peer's doing (no route, a protocol
        error in what it sent) and is charged to its churn budget
        (``Connection.refuse_stream``).
        """
        sid = chan if isinstance(chan, int) else chan.stream_id
        with contextlib.suppress(M2MError):
            if refuse:
                self.conn.refuse_stream(sid, code)
            else:
                self.conn.reset_stream(sid, code)
        known = self.channels.pop(sid, None)
        if known is not None and known.reset is None:
            known.reset = (code, False)
            known.changed.notify()
        if isinstance(chan, Channel) and chan.reset is None:
            chan.reset = (code, False)
        self.pump.wake()

    def end(self, sid: int) -> None:
        """End our half of stream *sid* (nothing if it is already over)."""
        chan = self.channels.get(sid)
        if chan is not None:
            chan.send_ended = True
            self.forget_if_done(chan)
        try:
            self.conn.send(sid, b"", end_stream=True)
        except M2MError:
            return
        self.pump.wake()

    def detach(self, chan: Channel) -> None:
        """Stop reading *chan*: give back the credit of what is queued, drop the rest."""
        chan.discard = True
        while chan.inbox:
            _m, _v, size = chan.inbox.popleft()
            self.acknowledge(chan.stream_id, size)
        self.pump.settle()
        self.forget_if_done(chan)

    def cancel(self, chan: Channel) -> None:
        """Reset *chan* with ``CANCELLED`` unless it is already over."""
        if self.channels.get(chan.stream_id) is chan and not self.closed.is_set():
            self.reset(chan, ErrorCode.CANCELLED)

    # -- operations that wait on the pump -----------------------------------------

    async def queue_send(
        self, sid: int, data: Any, *, message: bool, end_stream: bool = False, flush: bool = False
    ) -> None:
        """Queue bytes or one message in the core, waiting while its send buffer is full.

        With ``flush`` (a request or a reply: someone waits for it), write it
        from this task at once if the transport is idle (see
        :meth:`~._pump.Pump.flush`: the write is shielded, so a cancellation
        arriving now takes effect at the caller's next await). Otherwise the
        writer task sends it, coalesced with whatever else is queued by then.
        """
        method = self.conn.send_message if message else self.conn.send
        while True:  # until queued; each retry follows the writer taking bytes from the core
            try:
                self.apply(method, sid, data, end_stream=end_stream)
                break
            except SendBufferFull:
                if self.conn.send_buffered() == 0:
                    raise
            await self.pump.flushed.wait()
        chan = self.channels.get(sid)
        if chan is not None and end_stream:
            chan.send_ended = True
            self.forget_if_done(chan)
        if flush:
            await self.pump.flush()
        else:
            self.pump.wake()

    async def wait_drained(self, sid: int) -> None:
        """Wait while stream *sid* has more than ``high_water`` bytes queued in the core."""
        while True:  # until drained, reset or closed; each retry follows the writer's progress
            self.check_open()
            chan = self.channels.get(sid)
            if chan is not None and chan.reset is not None:
                raise reset_error(sid, *chan.reset, chan.resource)
            if self.conn.send_buffered(sid) <= self.high_water:
                return
            await self.pump.flushed.wait()

    async def open(self, resource: str, *, wake: bool = True) -> Channel:
        """Open a stream, waiting for a free slot under the peer's stream limit
        (``wake=False``: the caller queues on it and flushes next)."""
        while True:  # until a slot is free or the session closes; each retry follows an event
            try:
                sid = self.apply(self.conn.open_stream, resource)
                if wake:
                    self.pump.wake()
                break
            except StreamLimitReached:
                pass
            await self.pump.flushed.wait()
        chan = Channel(sid, resource, local=True)
        self.channels[sid] = chan
        return chan

    async def next_item(self, chan: Channel, want_message: bool) -> tuple[bool, Any]:
        """Return ``(True, value)`` for the next inbox item, ``(False, None)`` at end."""
        while True:  # until an item, the end, a reset or the close; each retry follows an event
            if chan.inbox:
                is_message, value, size = chan.inbox.popleft()
                if is_message != want_message:
                    self.reset(chan, ErrorCode.PROTOCOL_ERROR, refuse=True)
                    raise LocalProtocolError(
                        f"stream {chan.stream_id} carries {'messages' if is_message else 'bytes'}",
                        ErrorCode.PROTOCOL_ERROR,
                    )
                self.acknowledge(chan.stream_id, size)
                if chan.inbox:  # more to take: the writer coalesces what this freed
                    self.pump.wake()
                else:  # drained: wake the writer only if the credit produced output
                    self.pump.settle()
                return True, value
            if chan.recv_ended:  # a reset after the peer's end only affects sending
                self.forget_if_done(chan)
                return False, None
            self.check_open()  # a closed session wins over the resets the close caused
            if chan.reset is not None:
                raise reset_error(chan.stream_id, *chan.reset, chan.resource)
            await chan.changed.wait()
