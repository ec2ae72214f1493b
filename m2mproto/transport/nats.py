"""NATS binding: m2mproto sessions carried over NATS subjects (spec/transports.md).

Theory of operation
-------------------
The broker carries bytes only: the Noise handshake, tokens and the encrypted
record layer run end to end exactly as over TCP, so the broker sees ciphertext.
A :class:`NatsByteStream` presents the anyio ``ByteStream`` contract to the
session pump; a :class:`NatsListener` is an anyio ``Listener`` that
:meth:`Server.serve <m2mproto.transport.Server.serve>` accepts.

* A client publishes ``OPEN`` on ``PREFIX.connect.SERVICE`` with its own
  random reply subject; every replica serving SERVICE subscribes there in one
  queue group, so NATS hands the session to exactly one of them. That replica
  subscribes a fresh subject of its own and answers ``ACCEPT`` (naming it) on
  the client's subject; from then on each side publishes to the other's subject.
* Every NATS message starts with a 9-byte header: a type byte and a 64-bit
  big-endian per-direction sequence number (OPEN and ACCEPT are 0, the first
  data message 1). A receiver that sees any other number than the next one
  (a message lost, duplicated or reordered) ends the stream with
  :class:`NatsSequenceError` before the bytes reach the record layer.
* Writes are cut into messages of at most the server's ``max_payload``.
* ``EOF`` ends one direction, ``CLOSE`` both. Each side publishes an
  unsequenced ``PING`` when it has sent nothing for ``keepalive`` seconds; a
  side that hears nothing for ``liveness`` seconds ends the stream with
  :class:`NatsLivenessError` (a dead replica or client is noticed in bounded time).

nats-py is asyncio-only. On asyncio it runs in the caller's event loop; on trio
(or with ``thread=True``) a :class:`NatsLink` runs it on a dedicated asyncio
event loop thread and hands messages over with the host loop's thread-safe
scheduling, so the binding works on both anyio backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import anyio
from anyio.abc import ByteStream, Listener, SocketAttribute, TaskGroup

from ..errors import ErrorCode, LocalProtocolError, M2MError, TokenError
from ..identity import AgentId

__all__ = [
    "DEFAULT_PREFIX",
    "FeedRevocationStore",
    "NatsByteStream",
    "NatsLink",
    "NatsListener",
    "NatsLivenessError",
    "NatsSequenceError",
    "NatsTransportError",
    "RevocationFeed",
    "connect_nats",
    "open_nats_stream",
    "publish_revocation",
    "serve_nats",
]

logger = logging.getLogger("m2mproto.nats")

T = TypeVar("T")

#: Subject prefix of every m2mproto subject.
DEFAULT_PREFIX = "m2m"
#: Seconds without sending after which a keepalive PING goes out.
DEFAULT_KEEPALIVE = 2.0
#: Seconds without hearing anything after which a stream fails.
DEFAULT_LIVENESS = 10.0
#: Bytes a stream buffers for a reader that does not read (then it fails closed).
MAX_RECEIVE_BUFFER = 32 * 1024 * 1024
#: Bytes handed to the NATS client and not yet written before ``send`` waits.
MAX_OUTSTANDING = 4 * 1024 * 1024
#: Version carried in OPEN.
BINDING_VERSION = 1

HEADER = struct.Struct(">BQ")
OPEN, ACCEPT, REFUSE, DATA, EOF, CLOSE, PING = 1, 2, 3, 4, 5, 6, 7
_NAMES = {OPEN: "OPEN", ACCEPT: "ACCEPT", REFUSE: "REFUSE", DATA: "DATA", EOF: "EOF",
          CLOSE: "CLOSE", PING: "PING"}  # fmt: skip

_HEX32 = re.compile(r"[0-9a-f]{32}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,3}")


class NatsTransportError(M2MError, anyio.BrokenResourceError):
    """The NATS transport of a session failed (the session then closes)."""

    default_code = ErrorCode.CONNECTION_CLOSED


class NatsSequenceError(NatsTransportError):
    """A NATS message was lost, duplicated or reordered: the stream failed closed."""

    default_code = ErrorCode.PROTOCOL_ERROR


class NatsLivenessError(NatsTransportError):
    """Nothing was heard from the peer for the liveness bound."""

    default_code = ErrorCode.IDLE_TIMEOUT


def check_name(kind: str, value: str) -> str:
    """Validate a service name (one subject token: letters, digits, ``_``, ``-``)."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise LocalProtocolError(
            f"{kind} {value!r}: 1-128 letters, digits, '_' or '-'", ErrorCode.INVALID_ARGUMENT
        )
    return value


def _check_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix):
        raise LocalProtocolError(f"bad subject prefix {prefix!r}", ErrorCode.INVALID_ARGUMENT)
    return prefix


def connect_subject(prefix: str, service: str) -> str:
    """The subject clients publish OPEN on to reach *service*."""
    return f"{_check_prefix(prefix)}.connect.{check_name('service', service)}"


def revocation_subject(prefix: str) -> str:
    """The subject revocation statements are published on."""
    return f"{_check_prefix(prefix)}.revocations"


def revocation_stream_name(prefix: str) -> str:
    """The JetStream stream holding revocation statements."""
    return _check_prefix(prefix).upper().replace(".", "_").replace("-", "_") + "_REVOCATIONS"


def _session_subject(prefix: str) -> str:
    return f"{prefix}.s.{secrets.token_hex(16)}"


def is_session_subject(prefix: str, subject: str) -> bool:
    """Whether *subject* has the form of a session subject (``PREFIX.s.<32 hex>``).

    A server replies, and a client sends, only to such subjects: a hostile OPEN
    or ACCEPT cannot aim them at another subject (e.g. a JetStream API subject).
    """
    head, sep, tail = subject.rpartition(".s.")
    return bool(sep) and head == prefix and _HEX32.fullmatch(tail) is not None


# ---------------------------------------------------------------------------- link


class _Sub:
    __slots__ = ("sub",)

    def __init__(self, sub: Any) -> None:
        self.sub = sub


class NatsLink:
    """One NATS connection shared by any number of streams (asyncio or trio).

    Open with ``await NatsLink.open(url, **nats_options)`` (options go to
    ``nats.connect``: ``user_credentials``, ``tls``, ``token``, ...) or
    ``async with NatsLink.connect(...)``; close with :meth:`aclose`.
    """

    def __init__(self) -> None:
        self._nc: Any = None
        self._threaded = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._host_soon: Callable[..., None] = lambda f, *a: f(*a)
        self._queue: asyncio.Queue[Any] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._outstanding = 0
        self._drained: anyio.Event | None = None
        self._streams: set[NatsByteStream] = set()
        self._closed = False
        #: Publish failures seen by the publisher (e.g. the connection was closed).
        self.publish_errors = 0

    @classmethod
    async def open(
        cls, servers: str | list[str], *, thread: bool | None = None, **nats_options: Any
    ) -> NatsLink:
        """Connect to NATS at *servers* (``nats://host:port``; a list for a cluster).

        *thread*: run nats-py on a dedicated asyncio thread (the default on
        trio, where it is required; on asyncio the caller's loop is used).

        Raises:
            OSError: the NATS server could not be reached.
        """
        import nats  # optional dependency: pip install 'm2mproto[nats]'

        link = cls()
        try:
            host_loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # trio
            host_loop = None
        link._threaded = host_loop is None if thread is None else thread
        if host_loop is not None:
            host_soon: Callable[..., Any] = host_loop.call_soon_threadsafe
        else:
            import trio

            host_soon = trio.lowlevel.current_trio_token().run_sync_soon

        def safe_soon(fn: Callable[..., None], *args: Any) -> None:
            with contextlib.suppress(Exception):  # the host loop has ended
                host_soon(fn, *args)

        if link._threaded:
            link._host_soon = safe_soon
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(started.set)
                loop.run_forever()
                loop.close()

            link._thread = threading.Thread(target=run, name="m2m-nats", daemon=True)
            link._thread.start()
            await anyio.to_thread.run_sync(started.wait)
            link._loop = loop
        else:
            link._loop = asyncio.get_running_loop()
        options: dict[str, Any] = {"allow_reconnect": True, "max_reconnect_attempts": -1,
                   "reconnect_time_wait": 0.5, "connect_timeout": 5}  # fmt: skip
        options.update(nats_options)

        async def errcb(exc: Exception) -> None:
            logger.debug("nats: %r", exc)

        options.setdefault("error_cb", errcb)

        async def start() -> None:
            link._nc = await nats.connect(servers, **options)
            link._queue = asyncio.Queue()
            link._publisher = asyncio.get_running_loop().create_task(link._publish_loop())
            link._keepalive_task = asyncio.get_running_loop().create_task(link._keepalive_loop())

        try:
            await link._call(start)
        except BaseException as exc:
            await link._stop_thread()
            if isinstance(exc, Exception) and not isinstance(exc, OSError):
                raise ConnectionRefusedError(f"cannot reach NATS at {servers}: {exc!r}") from exc
            raise
        return link

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, servers: str | list[str], *, thread: bool | None = None, **nats_options: Any
    ) -> AsyncIterator[NatsLink]:
        """``async with NatsLink.connect(url) as link:`` (closed on exit)."""
        link = await cls.open(servers, thread=thread, **nats_options)
        try:
            yield link
        finally:
            with anyio.CancelScope(shield=True):
                await link.aclose()

    # -- bridging

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` in the NATS loop and return its result."""
        if not self._threaded:
            return await fn(*args)
        assert self._loop is not None
        fut: Any = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)  # type: ignore[arg-type]
        done = anyio.Event()
        fut.add_done_callback(lambda _f: self._host_soon(done.set))
        try:
            await done.wait()
        except BaseException:
            fut.cancel()
            raise
        result: T = fut.result()
        return result

    def _to_nats_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if self._threaded:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(fn, *args)
        else:
            fn(*args)

    async def _stop_thread(self) -> None:
        if self._threaded and self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await anyio.to_thread.run_sync(self._thread.join, 5.0)
            self._thread = None

    # -- in the NATS loop

    async def _publish_loop(self) -> None:
        assert self._queue is not None
        while True:
            subject, payload, reply, owner = await self._queue.get()
            try:
                await self._nc.publish(subject, payload, reply=reply)
            except Exception as exc:  # the connection is closed or the payload too large
                self.publish_errors += 1
                if owner is not None:
                    error = NatsTransportError(f"NATS publish failed: {exc!r}")
                    self._host_soon(owner._fail, error)
            self._host_soon(self._written, len(payload))

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for stream in list(self._streams):
                if stream._wants_ping(now):
                    stream._last_sent = now
                    with contextlib.suppress(Exception):
                        await self._nc.publish(stream._send_subject, HEADER.pack(PING, 0))

    # -- in the host loop

    def _written(self, n: int) -> None:
        self._outstanding -= n
        if self._outstanding <= MAX_OUTSTANDING and self._drained is not None:
            self._drained.set()
            self._drained = None

    def publish_nowait(
        self, subject: str, payload: bytes, reply: str = "", owner: NatsByteStream | None = None
    ) -> None:
        """Queue one message; messages go out in the order of these calls."""
        if self._closed:
            raise anyio.ClosedResourceError
        assert self._queue is not None
        self._outstanding += len(payload)
        self._to_nats_loop(self._queue.put_nowait, (subject, payload, reply, owner))

    async def wait_writable(self) -> None:
        """Wait while more than ``MAX_OUTSTANDING`` bytes are queued."""
        while self._outstanding > MAX_OUTSTANDING and not self._closed:
            if self._drained is None:
                self._drained = anyio.Event()
            await self._drained.wait()

    async def subscribe(
        self, subject: str, deliver: Callable[[Any], None], *, queue: str = ""
    ) -> _Sub:
        """Subscribe *subject*; *deliver(msg)* runs in the caller's loop, in order."""
        threaded = self._threaded
        soon = self._host_soon

        async def cb(msg: Any) -> None:
            if threaded:
                soon(deliver, msg)
            else:
                deliver(msg)

        async def sub() -> Any:
            return await self._nc.subscribe(
                subject, queue=queue, cb=cb, pending_msgs_limit=1 << 20,
                pending_bytes_limit=MAX_RECEIVE_BUFFER * 2,
            )  # fmt: skip

        return _Sub(await self._call(sub))

    async def unsubscribe(self, sub: _Sub) -> None:
        """End a subscription (errors of a closed connection are ignored)."""

        async def unsub() -> None:
            with contextlib.suppress(Exception):
                await sub.sub.unsubscribe()

        if not self._closed:
            await self._call(unsub)

    async def flush(self, timeout: float = 2.0) -> None:
        """Round trip to the NATS server (raises ``TimeoutError`` or a NATS error)."""

        async def flush() -> None:
            await self._nc.flush(timeout=timeout)

        await self._call(flush)

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(nats_client)`` in the NATS loop (for JetStream and other extras)."""

        async def call() -> T:
            return await fn(self._nc)

        return await self._call(call)

    @property
    def max_payload(self) -> int:
        """The server's ``max_payload``."""
        return int(self._nc.max_payload)

    @property
    def is_connected(self) -> bool:
        """Whether the NATS connection is up now."""
        return bool(self._nc is not None and self._nc.is_connected)

    async def abort(self) -> None:
        """Drop the NATS connection at once: no CLOSE or EOF for any stream (like a crash)."""
        self._closed = True
        await self._shutdown(drain=False)

    async def aclose(self) -> None:
        """Flush queued messages and close the NATS connection."""
        if self._closed:
            return
        self._closed = True
        await self._shutdown(drain=True)

    async def _shutdown(self, *, drain: bool) -> None:
        """Stop the publisher and keepalive (after draining the queue, with *drain*) and
        close the NATS connection, shielded from cancellation."""

        async def stop() -> None:
            if drain:
                assert self._queue is not None
                for _ in range(200):  # at most about 1 s for the publisher to drain
                    if self._queue.empty():
                        break
                    await asyncio.sleep(0.005)
            for task in (self._publisher, self._keepalive_task):
                if task is not None:
                    task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 5)

        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self._call(stop)
            await self._stop_thread()


# ---------------------------------------------------------------------------- stream


class NatsByteStream(ByteStream):
    """One end of an m2mproto session carried over NATS (see the module docstring)."""

    #: A cancelled ``receive`` consumes nothing (the pump may cancel it at a timer).
    m2m_receive_cancel_safe: ClassVar[bool] = True

    def __init__(
        self,
        link: NatsLink,
        receive_subject: str,
        *,
        send_subject: str = "",
        keepalive: float = DEFAULT_KEEPALIVE,
        liveness: float = DEFAULT_LIVENESS,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if not 0 < keepalive < liveness:
            raise LocalProtocolError(
                "need 0 < keepalive < liveness", ErrorCode.INVALID_ARGUMENT
            )
        self._link = link
        self._prefix = prefix
        self._receive_subject = receive_subject
        self._send_subject = send_subject
        self._keepalive = keepalive
        self._liveness = liveness
        self._sub: _Sub | None = None
        self._seq_in = 0
        self._seq_out = 1
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._event: anyio.Event | None = None
        self._accepted: anyio.Event = anyio.Event()
        self._refused: str | None = None
        self._error: NatsTransportError | None = None
        self._eof_in = False
        self._peer_closed = False
        self._eof_out = False
        self._closed = False
        self._last_heard = time.monotonic()
        self._last_sent = time.monotonic()
        self._chunk = max(1024, link.max_payload - HEADER.size)
        #: Messages received / sent (data, control and keepalive).
        self.messages_in = 0
        self.messages_out = 0

    # -- receiving (called in the host loop, in NATS delivery order)

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    def _fail(self, error: NatsTransportError) -> None:
        if self._error is None and not self._closed:
            self._error = error
            logger.info("NATS stream %s failed: %s", self._receive_subject, error)
        self._wake()
        self._accepted.set()

    def _deliver(self, msg: Any) -> None:
        if self._closed or self._error is not None:
            return
        self._last_heard = time.monotonic()
        self.messages_in += 1
        data: bytes = msg.data
        if not self._accepted.is_set():
            headers = msg.headers or {}
            if not data and headers.get("Status") == "503":
                self._refused = "no server is serving that service (NATS: no responders)"
                self._accepted.set()
                return
        if len(data) < HEADER.size:
            self._fail(NatsSequenceError(f"malformed NATS message on {self._receive_subject}"))
            return
        kind, seq = HEADER.unpack_from(data)
        if kind == PING:
            return
        if kind in (ACCEPT, REFUSE):
            if seq != 0 or self._accepted.is_set() or self._send_subject:
                self._fail(NatsSequenceError(f"unexpected {_NAMES[kind]} (seq {seq})"))
                return
            body = data[HEADER.size :].decode("utf-8", "replace")
            if kind == REFUSE:
                self._refused = body[:200] or "refused"
            elif not is_session_subject(self._prefix, body):
                self._fail(NatsSequenceError("ACCEPT names a subject that is not a session's"))
            else:
                self._send_subject = body
            self._accepted.set()
            return
        if kind not in (DATA, EOF, CLOSE) or not self._accepted.is_set():
            self._fail(NatsSequenceError(f"unexpected message type {kind}"))
            return
        if seq != self._seq_in + 1:
            self._fail(NatsSequenceError(
                f"NATS message lost or reordered on {self._receive_subject}: "
                f"expected sequence {self._seq_in + 1}, got {seq}"))  # fmt: skip
            return
        self._seq_in = seq
        if kind == CLOSE and self._eof_in and not self._peer_closed:
            self._peer_closed = True
            return
        if self._eof_in:
            self._fail(NatsSequenceError(f"{_NAMES[kind]} after the end of the stream"))
            return
        if kind == DATA:
            chunk = data[HEADER.size :]
            if chunk:
                self._chunks.append(chunk)
                self._buffered += len(chunk)
                if self._buffered > MAX_RECEIVE_BUFFER:
                    self._fail(NatsTransportError("NATS receive buffer overflow (reader stalled)"))
                    return
        else:
            self._eof_in = True
            self._peer_closed = kind == CLOSE
        self._wake()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return up to *max_bytes* bytes.

        Raises:
            anyio.EndOfStream: the peer ended its direction (EOF or CLOSE).
            NatsSequenceError: a message was lost, duplicated or reordered.
            NatsLivenessError: nothing heard for ``liveness`` seconds.
            anyio.ClosedResourceError: this end was closed.
        """
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._error is not None:
                raise self._error
            if self._chunks:
                break
            if self._eof_in:
                raise anyio.EndOfStream
            silent = time.monotonic() - self._last_heard
            if silent >= self._liveness:
                self._fail(NatsLivenessError(
                    f"nothing heard on {self._receive_subject} for {silent:.1f} s"))  # fmt: skip
                continue
            self._event = event = anyio.Event()
            with anyio.move_on_after(self._liveness - silent + 0.01):
                await event.wait()
        chunk = self._chunks[0]
        if len(chunk) <= max_bytes:
            self._chunks.popleft()
        else:
            self._chunks[0], chunk = chunk[max_bytes:], chunk[:max_bytes]
        self._buffered -= len(chunk)
        return chunk

    # -- sending

    def _wants_ping(self, now: float) -> bool:
        return (
            bool(self._send_subject)
            and not self._closed
            and now - self._last_sent >= self._keepalive
        )

    def _publish(self, kind: int, body: bytes | memoryview = b"") -> None:
        payload = HEADER.pack(kind, self._seq_out) + body
        self._seq_out += 1
        self._last_sent = time.monotonic()
        self.messages_out += 1
        self._link.publish_nowait(self._send_subject, payload, owner=self)

    def _check_send(self) -> None:
        if self._closed or self._eof_out:
            raise anyio.ClosedResourceError
        if self._error is not None:
            raise self._error
        if self._peer_closed:
            raise anyio.BrokenResourceError("the peer closed the NATS session")

    async def send(self, item: bytes) -> None:
        """Send *item*, cut into messages of at most the server's ``max_payload``.

        Raises:
            anyio.ClosedResourceError: this end was closed or EOF was sent.
            anyio.BrokenResourceError: the peer closed, or the transport failed.
        """
        self._check_send()
        view = memoryview(item)
        for start in range(0, len(view), self._chunk):
            self._publish(DATA, view[start : start + self._chunk])
        await self._link.wait_writable()

    async def send_eof(self) -> None:
        """End the sending direction (the peer's ``receive`` raises ``EndOfStream``)."""
        if self._closed or self._eof_out:
            return
        self._eof_out = True
        if self._send_subject and self._error is None:
            self._publish(EOF)

    async def aclose(self) -> None:
        """Close both directions and unsubscribe."""
        if self._closed:
            return
        if self._send_subject and self._error is None and not self._link._closed:
            with contextlib.suppress(Exception):
                self._publish(CLOSE)
        self._closed = True
        self._link._streams.discard(self)
        self._wake()
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with anyio.CancelScope(shield=True):
                await self._link.unsubscribe(sub)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        # One "source" per session: behind a broker the client's address is unknown.
        return {SocketAttribute.remote_address: lambda: (f"nats:{self._send_subject}", 0)}

    async def _start(self) -> None:
        self._sub = await self._link.subscribe(self._receive_subject, self._deliver)
        self._link._streams.add(self)


async def open_nats_stream(
    link: NatsLink,
    service: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = 10.0,
    keepalive: float = DEFAULT_KEEPALIVE,
    liveness: float = DEFAULT_LIVENESS,
) -> NatsByteStream:
    """Open a byte stream to one server of *service* (its agent ID or a service name).

    Raises:
        ConnectionRefusedError: nobody serves *service*, or the server refused.
        TimeoutError: no server answered within *timeout*.
    """
    subject = connect_subject(prefix, service)
    stream = NatsByteStream(
        link, _session_subject(prefix), keepalive=keepalive, liveness=liveness, prefix=prefix
    )
    try:
        await stream._start()
        open_msg = HEADER.pack(OPEN, 0) + bytes([BINDING_VERSION])
        link.publish_nowait(subject, open_msg, reply=stream._receive_subject, owner=stream)
        with anyio.fail_after(timeout):
            await stream._accepted.wait()
        if stream._refused is not None:
            raise ConnectionRefusedError(f"NATS service {service!r}: {stream._refused}")
        if stream._error is not None:
            raise stream._error
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise
    stream._last_heard = time.monotonic()
    return stream


# ---------------------------------------------------------------------------- listener


class NatsListener(Listener[NatsByteStream]):
    """Accept NATS sessions for one or more service names (a queue group per name).

    Every replica with the same *services* and *prefix* joins the same queue
    groups, so NATS spreads new sessions over them. *gate*, if given, is
    called for each OPEN: a string it returns refuses the session with that
    reason (e.g. the revocation feed is stale).
    """

    def __init__(
        self,
        link: NatsLink,
        services: Iterable[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        keepalive: float = DEFAULT_KEEPALIVE,
        liveness: float = DEFAULT_LIVENESS,
        gate: Callable[[], str | None] | None = None,
        max_pending: int = 256,
    ) -> None:
        self._link = link
        self._services = list(dict.fromkeys(services))
        if not self._services:
            raise LocalProtocolError("no service to serve", ErrorCode.INVALID_ARGUMENT)
        self._subjects = [connect_subject(prefix, s) for s in self._services]
        self._prefix = prefix
        self._keepalive = keepalive
        self._liveness = liveness
        self._gate = gate
        self._send, self._receive = anyio.create_memory_object_stream[Any](max_pending)
        self._subs: list[_Sub] = []
        #: The revocation feed :func:`serve_nats` runs beside this listener, if any.
        self.feed: RevocationFeed | None = None
        #: Sessions accepted, and OPENs refused (gate, backlog full, bad version).
        self.accepted = 0
        self.refused = 0

    @property
    def subjects(self) -> list[str]:
        """The connect subjects this listener serves."""
        return list(self._subjects)

    def _refuse(self, reply: str, reason: str) -> None:
        self.refused += 1
        if reply:
            with contextlib.suppress(Exception):
                self._link.publish_nowait(reply, HEADER.pack(REFUSE, 0) + reason.encode())

    def _on_open(self, msg: Any) -> None:
        data: bytes = msg.data
        reply: str = msg.reply or ""
        if len(data) < HEADER.size + 1 or HEADER.unpack_from(data) != (OPEN, 0):
            return  # not an OPEN: ignore
        if not is_session_subject(self._prefix, reply):
            return  # nobody to answer, or a reply aimed at another subject: ignore
        if data[HEADER.size] != BINDING_VERSION:
            self._refuse(reply, f"unsupported NATS binding version {data[HEADER.size]}")
            return
        reason = self._gate() if self._gate is not None else None
        if reason is not None:
            self._refuse(reply, reason)
            return
        try:
            self._send.send_nowait(reply)
        except anyio.WouldBlock:
            self._refuse(reply, "server busy")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def start(self) -> None:
        """Subscribe the connect subjects (``serve`` does it if not done)."""
        if self._subs:
            return
        for subject in self._subjects:
            queue = "q." + subject
            self._subs.append(await self._link.subscribe(subject, self._on_open, queue=queue))
        await self._link.flush()

    async def _accept(self, reply: str) -> NatsByteStream:
        stream = NatsByteStream(
            self._link, _session_subject(self._prefix), send_subject=reply,
            keepalive=self._keepalive, liveness=self._liveness, prefix=self._prefix,
        )  # fmt: skip
        stream._accepted.set()
        await stream._start()  # subscribed before ACCEPT goes out on the same connection
        stream.messages_out += 1
        self._link.publish_nowait(
            reply, HEADER.pack(ACCEPT, 0) + stream._receive_subject.encode(), owner=stream
        )
        self.accepted += 1
        return stream

    async def accept(self) -> NatsByteStream:
        """Wait for the next session."""
        await self.start()
        reply = await self._receive.receive()
        return await self._accept(reply)

    async def serve(
        self,
        handler: Callable[[NatsByteStream], Any],
        task_group: TaskGroup | None = None,
    ) -> None:
        """Accept sessions until cancelled, each handled in its own task."""
        await self.start()

        async def run(reply: str) -> None:
            try:
                stream = await self._accept(reply)
            except Exception as exc:  # e.g. the NATS connection closed meanwhile
                logger.warning("NATS session not accepted: %r", exc)
                return
            await handler(stream)

        async with contextlib.AsyncExitStack() as stack:
            if task_group is None:
                task_group = await stack.enter_async_context(anyio.create_task_group())
            async for reply in self._receive:
                task_group.start_soon(run, reply)

    async def aclose(self) -> None:
        """Stop accepting (live sessions go on)."""
        subs, self._subs = self._subs, []
        with anyio.CancelScope(shield=True):
            for sub in subs:
                await self._link.unsubscribe(sub)
        self._send.close()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


# ---------------------------------------------------------------------------- revocations


async def _ensure_stream(link: NatsLink, prefix: str) -> bool:
    """Create the revocation stream if JetStream is there; False without JetStream."""
    name, subject = revocation_stream_name(prefix), revocation_subject(prefix)

    async def ensure(nc: Any) -> bool:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import BadRequestError, NoStreamResponseError, ServiceUnavailableError

        js = nc.jetstream(timeout=2.0)
        try:
            await js.stream_info(name)
            return True
        except (NoRespondersError, ServiceUnavailableError, NoStreamResponseError, NatsTimeout):
            return False
        except Exception:  # not found: create it
            pass
        try:
            await js.add_stream(name=name, subjects=[subject], max_msg_size=64 * 1024)
        except BadRequestError:  # created concurrently
            pass
        except (NoRespondersError, ServiceUnavailableError, NatsTimeout):
            return False
        return True

    return await link.run(ensure)


async def publish_revocation(
    target: NatsLink | str, statement: bytes, *, prefix: str = DEFAULT_PREFIX,
    **nats_options: Any,
) -> str:  # fmt: skip
    """Publish a signed revocation statement to every replica.

    With JetStream the statement is stored (replicas that start later replay
    it); without, it is published on the core subject only. Returns
    ``"jetstream"`` or ``"core"``.

    Raises:
        TokenError: *statement* is not a well-signed revocation statement.
    """
    from ..tokens.revocation import parse_statement

    parse_statement(statement)  # never publish something replicas would reject
    if isinstance(target, str):
        async with NatsLink.connect(target, **nats_options) as link:
            return await publish_revocation(link, statement, prefix=prefix)
    link = target
    subject = revocation_subject(prefix)
    if await _ensure_stream(link, prefix):

        async def js_publish(nc: Any) -> None:
            await nc.jetstream(timeout=5.0).publish(subject, statement)

        await link.run(js_publish)
        return "jetstream"

    async def core(nc: Any) -> None:
        await nc.publish(subject, statement)
        await nc.flush()

    await link.run(core)
    return "core"


class FeedRevocationStore:
    """Statements received from the feed, in memory, consulted beside an optional *base*
    store (e.g. a ``FileRevocationStore`` that is reloaded from its file): what the
    feed adds is never written to, nor lost by a reload of, the base."""

    def __init__(self, base: Any = None) -> None:
        from ..tokens import InMemoryRevocationStore

        self.base = base
        self._memory = InMemoryRevocationStore()

    def is_revoked(self, token_id: bytes, authorities: Any) -> bool:
        """True if the feed or the base store revokes *token_id*."""
        if self._memory.is_revoked(token_id, authorities):
            return True
        return self.base is not None and bool(self.base.is_revoked(token_id, authorities))

    def add(self, statement: bytes) -> Any:
        """Verify and record *statement* (in memory).

        Raises:
            TokenError: the statement is malformed or its signature fails.
        """
        return self._memory.add(statement)

    def __len__(self) -> int:
        return len(self._memory) + (len(self.base) if self.base is not None else 0)


class RevocationFeed:
    """Receive revocation statements from NATS into a store, for one replica.

    Each statement is verified by ``store.add`` (the broker cannot forge one);
    then *on_change* runs (e.g. ``Session.reauthorize`` on every session).
    With JetStream the feed first replays the stored statements (``run``
    reports started once caught up); without, it takes live ones only.
    A feed that cannot reach NATS for more than *max_silence* seconds logs a
    WARNING (once per silence) and :attr:`stale` becomes true.
    """

    def __init__(
        self,
        link: NatsLink,
        store: Any,
        on_change: Callable[[], None],
        *,
        prefix: str = DEFAULT_PREFIX,
        max_silence: float = 10.0,
        check_interval: float = 1.0,
    ) -> None:
        self._link = link
        self._store = store
        self._on_change = on_change
        self._prefix = prefix
        self.max_silence = max_silence
        self._check_interval = check_interval
        self.last_contact = time.monotonic()
        self.stale = False
        self.jetstream = False
        #: Statements applied, and rejected (bad signature, malformed).
        self.applied = 0
        self.rejected = 0
        #: monotonic time of the last statement applied
        self.last_applied: float | None = None
        self._seen_seq = 0
        self._caught_up = anyio.Event()
        self._target_seq = 0

    def refusal(self) -> str | None:
        """A reason to refuse new sessions while the feed is stale, else None."""
        return "revocation feed unreachable" if self.stale else None

    def _apply(self, data: bytes, seq: int) -> None:
        self._seen_seq = max(self._seen_seq, seq)
        try:
            statement = self._store.add(data)
        except (TokenError, M2MError) as exc:
            self.rejected += 1
            logger.warning("revocation statement from NATS rejected: %s", exc)
        else:
            self.applied += 1
            self.last_applied = time.monotonic()
            logger.info("revocation from %s applied (%d token IDs)",
                        statement.revoker.short, len(statement.token_ids))  # fmt: skip
            try:
                self._on_change()
            except Exception:
                logger.exception("revocation callback failed")
        if self._seen_seq >= self._target_seq:
            self._caught_up.set()

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe and watch the feed until cancelled."""
        subject = revocation_subject(self._prefix)
        self.jetstream = await _ensure_stream(self._link, self._prefix)
        sub: Any = None
        if self.jetstream:
            name = revocation_stream_name(self._prefix)
            soon = self._link._host_soon if self._link._threaded else (lambda f, *a: f(*a))

            async def js_sub(nc: Any) -> tuple[Any, int]:
                from nats.js.api import DeliverPolicy

                js = nc.jetstream(timeout=5.0)
                info = await js.stream_info(name)

                async def cb(msg: Any) -> None:
                    soon(self._apply, msg.data, msg.metadata.sequence.stream)

                s = await js.subscribe(subject, cb=cb, ordered_consumer=True,
                                       deliver_policy=DeliverPolicy.ALL)  # fmt: skip
                return s, int(info.state.last_seq)

            sub, self._target_seq = await self._link.run(js_sub)
            if self._seen_seq >= self._target_seq:
                self._caught_up.set()
            with anyio.move_on_after(30):
                await self._caught_up.wait()
        else:
            logger.warning(
                "JetStream unavailable: revocations published before this replica started "
                "are not replayed (give it a current --revocations file)"
            )
            sub = (await self._link.subscribe(subject, lambda m: self._apply(m.data, 0)),)
        task_status.started()
        try:
            warned = False
            while True:
                await anyio.sleep(self._check_interval)
                try:
                    await self._link.flush(timeout=max(0.5, self._check_interval))
                except Exception:
                    pass
                else:
                    if self._link.is_connected:
                        self.last_contact = time.monotonic()
                        if self.stale:
                            logger.warning("revocation feed reachable again")
                        self.stale, warned = False, False
                        continue
                silent = time.monotonic() - self.last_contact
                if silent > self.max_silence:
                    self.stale = True
                    if not warned:
                        warned = True
                        logger.warning(
                            "revocation feed unreachable for %.1f s (limit %.1f s): revocations "
                            "may be missed", silent, self.max_silence)  # fmt: skip
        finally:
            with anyio.CancelScope(shield=True):
                if isinstance(sub, tuple):
                    await self._link.unsubscribe(sub[0])
                elif sub is not None:

                    async def unsub(_nc: Any) -> None:
                        with contextlib.suppress(Exception):
                            await sub.unsubscribe()

                    with contextlib.suppress(Exception):
                        await self._link.run(unsub)


# ---------------------------------------------------------------------------- entry points


@contextlib.asynccontextmanager
async def connect_nats(
    target: NatsLink | str,
    *,
    identity: Any,
    peer: AgentId | str,
    service: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    open_timeout: float = 10.0,
    keepalive: float = DEFAULT_KEEPALIVE,
    liveness: float = DEFAULT_LIVENESS,
    nats_options: Mapping[str, Any] | None = None,
    **session_options: Any,
) -> AsyncIterator[Any]:
    """``async with connect_nats(url, identity=me, peer=ID) as session:``.

    Reaches *service* (default: *peer*'s agent ID) through NATS at *target*
    (a URL, or a :class:`NatsLink` shared by many sessions), then runs the
    ordinary handshake: the server must be *peer*. *session_options* go to
    :func:`~m2mproto.transport.connect` (tokens, trust_roots, config, ...);
    *nats_options* to ``nats.connect`` (credentials, TLS).

    Raises (when entered): what ``connect`` raises, plus
    ``ConnectionRefusedError`` (nobody serves it) and ``TimeoutError``.
    """
    peer_text = peer.text if isinstance(peer, AgentId) else AgentId.parse(peer).text
    name = service if service is not None else peer_text
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(target, str):
            link = await stack.enter_async_context(
                NatsLink.connect(target, **dict(nats_options or {}))
            )
        else:
            link = target
        stream = await open_nats_stream(
            link, name, prefix=prefix, timeout=open_timeout,
            keepalive=keepalive, liveness=liveness,
        )  # fmt: skip
        stack.push_async_callback(stream.aclose)
        async with _session_over(stream, identity, peer_text, session_options) as session:
            yield session


def _session_over(
    stream: NatsByteStream, identity: Any, peer: str, options: dict[str, Any]
) -> Any:
    """The one call into the session API (keep it here for the lead to adapt)."""
    from .client import connect

    return connect(stream, identity=identity, peer=peer, connect_timeout=None, **options)


async def serve_nats(
    server: Any,
    target: NatsLink | str,
    *,
    service: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    keepalive: float = DEFAULT_KEEPALIVE,
    liveness: float = DEFAULT_LIVENESS,
    revocation_feed: bool = False,
    max_feed_silence: float = 10.0,
    refuse_when_stale: bool = False,
    nats_options: Mapping[str, Any] | None = None,
    task_status: Any = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *server* (a :class:`~m2mproto.transport.Server`) over NATS until cancelled.

    It answers on its agent ID's connect subject and, with *service*, on that
    name's too, in queue groups shared with every replica. With
    *revocation_feed* it follows the revocation subject into
    ``server.revocations`` (replaying JetStream first) and re-checks live
    sessions on each statement; with *refuse_when_stale* new sessions are
    refused while the feed is unreachable for more than *max_feed_silence*.
    ``task_status.started`` receives the :class:`NatsListener`.
    """
    services = [server.identity.agent_id.text] + ([service] if service else [])
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(target, str):
            link = await stack.enter_async_context(
                NatsLink.connect(target, **dict(nats_options or {}))
            )
        else:
            link = target
        async with anyio.create_task_group() as tg:
            feed: RevocationFeed | None = None
            if revocation_feed:
                if server.revocations is None:
                    raise LocalProtocolError(
                        "revocation_feed needs a Server with a revocation store",
                        ErrorCode.INVALID_ARGUMENT,
                    )

                def reauthorize() -> None:
                    for session in list(server.sessions):
                        session.reauthorize()

                feed = RevocationFeed(link, server.revocations, reauthorize, prefix=prefix,
                                      max_silence=max_feed_silence)  # fmt: skip
                await tg.start(feed.run)
            gate = feed.refusal if (feed is not None and refuse_when_stale) else None
            listener = NatsListener(link, services, prefix=prefix, keepalive=keepalive,
                                    liveness=liveness, gate=gate)  # fmt: skip
            listener.feed = feed
            await listener.start()
            tg.start_soon(server.serve, listener)
            task_status.started(listener)
