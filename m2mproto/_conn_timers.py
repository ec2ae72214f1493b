"""Timers of a Connection: the caller's clock, deadlines, and which one expired.

Theory of operation
-------------------
The core never reads a clock. :class:`Timers` keeps the latest ``now`` the
caller passed (never moving backwards), the handshake deadline, the close
deadline and the last receive/send times, and answers two questions for the
connection: the next deadline (:meth:`Timers.next_deadline`) and which
deadline has passed (:meth:`Timers.expired`). Acting on an expiry (failing,
closing, pinging) is the connection's job.

Input received without a ``now`` is stamped with the next ``now`` the caller
passes (:meth:`Timers.received`): a caller that never passes ``now`` to
``receive_data`` still gets a correct idle timer as long as it calls
``handle_timer``.
"""

from __future__ import annotations

from enum import Enum, auto

from ._conn_state import State
from .config import Configuration
from .errors import ErrorCode, LocalProtocolError

__all__ = ["Expiry", "Timers"]


class Expiry(Enum):
    """Which deadline passed."""

    #: The handshake did not complete within ``handshake_timeout``.
    HANDSHAKE = auto()
    #: A close did not finish within ``close_timeout``.
    CLOSE = auto()
    #: No record was received within ``idle_timeout``.
    IDLE = auto()
    #: Quiet for ``keepalive_interval``: time to send a PING.
    KEEPALIVE = auto()


class Timers:
    """The caller's clock as seen by one connection, and its deadlines."""

    __slots__ = (
        "_cfg",
        "_rx_pending",
        "close_deadline",
        "hs_deadline",
        "last_rx",
        "last_tx",
        "now",
        "started",
    )

    def __init__(self, cfg: Configuration) -> None:
        self._cfg = cfg
        #: The latest ``now`` the caller passed (None before the first).
        self.now: float | None = None
        self.started = False
        self.hs_deadline: float | None = None
        self.close_deadline: float | None = None
        self.last_rx = 0.0
        self.last_tx = 0.0
        self._rx_pending = False

    def start(self, now: float) -> None:
        """Arm the handshake deadline.

        Raises:
            LocalProtocolError: ``INVALID_STATE`` if called twice.
        """
        if self.started:
            raise LocalProtocolError("start() called twice", ErrorCode.INVALID_STATE)
        self.started = True
        self.tick(now)
        self.hs_deadline = now + self._cfg.handshake_timeout
        self.last_rx = self.last_tx = now

    def tick(self, now: float) -> None:
        """Advance the clock (never backwards); stamp input that arrived without a time."""
        if self.now is None or now > self.now:
            self.now = now
        if self._rx_pending:
            self._rx_pending = False
            self.last_rx = self.now

    def received(self, now: float | None) -> None:
        """Bytes arrived at *now* (None: at the next time the caller passes)."""
        if now is not None:
            self.last_rx = now
        else:
            self._rx_pending = True

    def sent(self) -> None:
        """Bytes left for the transport (at the latest known time)."""
        if self.now is not None:
            self.last_tx = self.now

    def arm_close(self) -> None:
        """Start the close timeout from the latest known time."""
        now = self.now if self.now is not None else 0.0
        self.close_deadline = now + self._cfg.close_timeout

    def unix(self) -> float:
        """Unix time for token checks: the caller's clock plus ``clock_offset``."""
        return (self.now if self.now is not None else 0.0) + self._cfg.clock_offset

    def next_deadline(self, state: State) -> float | None:
        """The next deadline in *state*, or None."""
        if state is State.CLOSED:
            return None
        if state is State.HANDSHAKING or state is State.CONFIRMING:
            return self.hs_deadline
        cfg = self._cfg
        cands: list[float] = []
        if self.close_deadline is not None:
            cands.append(self.close_deadline)
        if cfg.idle_timeout is not None:
            cands.append(self.last_rx + cfg.idle_timeout)
        if cfg.keepalive_interval is not None and state is State.ESTABLISHED:
            cands.append(max(self.last_rx, self.last_tx) + cfg.keepalive_interval)
        return min(cands) if cands else None

    def expired(self, state: State, now: float) -> Expiry | None:
        """The deadline that passed at *now* in *state* (the most urgent), or None."""
        if state is State.CLOSED:
            return None
        if state is State.HANDSHAKING or state is State.CONFIRMING:
            if self.hs_deadline is not None and now >= self.hs_deadline:
                return Expiry.HANDSHAKE
            return None
        cfg = self._cfg
        if self.close_deadline is not None and now >= self.close_deadline:
            return Expiry.CLOSE
        if cfg.idle_timeout is not None and now >= self.last_rx + cfg.idle_timeout:
            return Expiry.IDLE
        if (
            cfg.keepalive_interval is not None
            and state is State.ESTABLISHED
            and now >= max(self.last_rx, self.last_tx) + cfg.keepalive_interval
        ):
            return Expiry.KEEPALIVE
        return None
