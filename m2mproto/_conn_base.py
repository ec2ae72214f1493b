"""Shared state of a Connection: lifecycle enums, the internal failure, termination.

Theory of operation
-------------------
:class:`ConnectionCore` declares every attribute a
:class:`~m2mproto.connection.Connection` holds and the few operations that
several parts need: queueing control frames, resetting a stream, and the
one-way path to ``CLOSED`` (``_fail`` for our verdict on the peer,
``_terminate`` for any end). The parts (``_conn_handshake``, ``_conn_frames``,
``_conn_outbox``) are mixins over this core; ``connection`` composes them and
holds the public driver API. Nothing here touches a clock or the OS.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum, auto
from typing import Final

from ._conn_budgets import Budgets, _Fail
from .config import Authorizer, Configuration, TransportParameters
from .errors import AuthorizationError, ErrorCode, TokenError
from .events import ConnectionClosed, Event, StreamReset
from .frames import CloseFrame, Frame, KeyUpdateFrame, ResetFrame
from .handshake import Handshake
from .identity import AgentId
from .records import RecordReader, RecordWriter
from .streams import RecvWindow, SendCredit, Stream, StreamInput, StreamState, StreamTable

__all__ = ["NEED_DATA", "ConnectionCore", "ConnectionState", "NeedData", "Role"]


class Role(Enum):
    """Which side of the handshake this connection plays."""

    #: Dials, sends the preface; uses even stream IDs.
    INITIATOR = auto()
    #: Accepts; uses odd stream IDs.
    RESPONDER = auto()


class ConnectionState(Enum):
    """Connection lifecycle."""

    #: The Noise handshake is running.
    HANDSHAKING = auto()
    #: Records flow; streams may be opened.
    ESTABLISHED = auto()
    #: We sent CLOSE and wait for the peer's CLOSE or end of stream.
    CLOSING = auto()
    #: Terminal.
    CLOSED = auto()


class NeedData(Enum):
    """Sentinel type of :data:`NEED_DATA`."""

    NEED_DATA = "NEED_DATA"


#: Returned by ``next_event`` when more bytes (or a timer) are needed.
NEED_DATA: Final = NeedData.NEED_DATA


class ConnectionCore:
    """Attributes and shared operations of a Connection (internal)."""

    role: Role
    config: Configuration
    state: ConnectionState
    peer: AgentId | None
    handshake_hash: bytes | None
    suite: str | None
    peer_parameters: TransportParameters | None
    _authorizer: Authorizer | None
    _late_tokens: tuple[bytes, ...]
    _hs: Handshake | None
    _reader: RecordReader | None
    _writer: RecordWriter | None
    _table: StreamTable
    _order: list[int]
    _control: list[Frame]
    _raw_out: bytearray
    _frames: list[Frame]
    _events: list[Event]
    _eof: bool
    _now: float | None
    _started: bool
    _hs_deadline: float | None
    _last_rx: float
    _last_tx: float
    _close_deadline: float | None
    _close_pending: tuple[int, str] | None
    _close_code: int
    _close_reason: str
    _conn_send: SendCredit
    _conn_recv: RecvWindow
    _send_buffered: int
    _reassembly_total: int
    _budgets: Budgets
    _key_update_queued: bool
    _ping_counter: int
    _pings_out: set[bytes]
    _closed_event_sent: bool
    _pending_fail: _Fail | None
    _rx_pending: bool

    def _unix(self) -> float:
        return (self._now if self._now is not None else 0.0) + self.config.clock_offset

    def _accept_tokens(self, tokens: Sequence[bytes], *, at_handshake: bool) -> object:
        if self._authorizer is None:
            return None
        assert self.peer is not None
        try:
            return self._authorizer.accept_tokens(self.peer, tokens, self._unix())
        except AuthorizationError as exc:
            if not at_handshake:
                raise
            wire = exc.code if self.config.wire_token_reason else ErrorCode.TOKEN_INVALID
            if not isinstance(exc, TokenError):
                wire = ErrorCode.TOKEN_INVALID
            # The handshake is complete: report it, then the close.
            self._pending_fail = _Fail(exc.code, "token rejected", wire=wire)
            return None

    def _maybe_finish(self, s: Stream) -> None:
        if s.state is StreamState.RESET or (s.state is StreamState.CLOSED and not s.has_pending()):
            self._table.finish(s)

    def _reset_local(self, s: Stream, code: ErrorCode) -> Event:
        """Reset a stream because of the peer's fault or a refusal (stream-level error)."""
        self._do_reset(s, code)
        return StreamReset(stream_id=s.stream_id, code=code, remote=False)

    def _do_reset(self, s: Stream, code: int) -> None:
        self._send_buffered -= s.drop_pending()
        self._reassembly_total -= len(s.reassembly)
        s.reassembly = bytearray()
        if s.open_pending:
            s.open_pending = False  # never announced: nothing to tell the peer
        else:
            self._control.append(ResetFrame(s.stream_id, code, s.send_credit.sent))
        s.apply(StreamInput.SEND_RESET)
        self._table.finish(s)

    def _fail(self, fail: _Fail) -> None:
        if self.state is ConnectionState.CLOSED:
            return
        if self._hs is not None:
            self._raw_out += self._hs.abort(fail.wire)
            self._hs = None
        elif self._writer is not None and self.state is not ConnectionState.CLOSING:
            self._send_close(fail.wire, _terse(fail.wire))
        self._terminate(fail.code, fail.message, remote=False)

    def _send_close(self, code: int, reason: str) -> None:
        # An abortive close drops queued stream data; control frames before it still go.
        for s in list(self._table.streams.values()):
            self._send_buffered -= s.drop_pending()
        self._control.append(CloseFrame(code, reason))

    def _terminate(self, code: int, reason: str, *, remote: bool) -> None:
        """Enter CLOSED, queue StreamReset for unfinished streams, then ConnectionClosed."""
        if self.state is ConnectionState.CLOSED:
            return
        self.state = ConnectionState.CLOSED
        self._frames.clear()
        stream_code = code if code != ErrorCode.NO_ERROR else ErrorCode.CANCELLED
        for s in list(self._table.streams.values()):
            if s.state in (StreamState.CLOSED, StreamState.RESET):
                continue
            self._events.append(StreamReset(stream_id=s.stream_id, code=stream_code, remote=remote))
            s.state = StreamState.RESET
        self._events.append(ConnectionClosed(code=code, reason=reason, remote=remote))

    def _queue_control(self, frame: Frame, *, response: bool = False) -> None:
        if response and len(self._control) >= self.config.max_queued_control:
            raise _Fail(ErrorCode.ENHANCE_YOUR_CALM, "too many queued control responses")
        self._control.append(frame)

    def _queue_key_update(self, request: bool) -> None:
        self._control.append(KeyUpdateFrame(request))
        self._key_update_queued = True


def _terse(code: ErrorCode) -> str:
    """Wire reasons stay terse: the code name only."""
    return code.name.lower() if isinstance(code, ErrorCode) else ""
