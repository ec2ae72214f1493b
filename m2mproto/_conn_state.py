"""Connection lifecycle: the one transition table, roles, and the internal failure.

Theory of operation
-------------------
The lifecycle of a :class:`~m2mproto.connection.Connection` is an explicit
state machine in the style of h11's ``_state.py``: :class:`State` are the
states, :class:`Input` the named events that move between them, and
:data:`TRANSITIONS` the one table of allowed ``(state, input)`` pairs.
:meth:`Lifecycle.transition` is the only place the state changes; a pair not
in the table is a bug of the caller and raises ``LocalProtocolError``
(``INVALID_STATE``) naming the state and the input. ::

    HANDSHAKING --HANDSHAKE_DONE--> ESTABLISHED --CLOSE_GRACEFULLY--> DRAINING
    HANDSHAKING --KEYS_READY--> CONFIRMING --HANDSHAKE_DONE--> ESTABLISHED
    CONFIRMING, ESTABLISHED, DRAINING --SEND_CLOSE--> CLOSING
    any state but CLOSED --END--> CLOSED

``CONFIRMING`` is the IK responder between writing message 2 and the
initiator's first transport record (spec/handshake.md §2.12): the keys exist
but the initiator has not proven liveness (message 1 may be a replay), so
nothing is reported, accepted or acted on; publicly it is still
``HANDSHAKING``.
``DRAINING`` is a graceful close waiting for queued stream bytes to go out
before its CLOSE; to the public :class:`ConnectionState` it is still
``ESTABLISHED`` (records flow, nothing new may be queued). ``CLOSING``: our
CLOSE is queued or sent and only the peer's CLOSE (or the end of the
transport, or the close timeout) is awaited. ``CLOSED`` is terminal.

:class:`_Fail` is the internal verdict on the peer that every part raises:
the connection catches it and closes with its code.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Final

from .errors import ErrorCode, LocalProtocolError
from .handshake import Role

__all__ = [
    "NEED_DATA",
    "PUBLIC_STATE",
    "TRANSITIONS",
    "ConnectionState",
    "Input",
    "Lifecycle",
    "NeedData",
    "Role",
    "State",
]


class ConnectionState(Enum):
    """Connection lifecycle as the application sees it (public)."""

    #: The Noise handshake is running.
    HANDSHAKING = auto()
    #: Records flow; streams may be opened (unless a graceful close is draining).
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


class State(Enum):
    """States of the lifecycle machine (internal; see :data:`PUBLIC_STATE`)."""

    HANDSHAKING = auto()
    #: IK responder: keys ready, waiting for the initiator's first record (liveness).
    CONFIRMING = auto()
    ESTABLISHED = auto()
    #: close(NO_ERROR) was called: queued stream bytes go out, then CLOSE.
    DRAINING = auto()
    #: Our CLOSE is queued or sent; waiting for the peer's.
    CLOSING = auto()
    CLOSED = auto()


class Input(Enum):
    """Named inputs of the lifecycle machine."""

    #: The handshake produced keys, but the peer has not proven liveness (IK responder).
    KEYS_READY = auto()
    #: The handshake is complete and the peer live: report it (keys, peer, parameters).
    HANDSHAKE_DONE = auto()
    #: The application asked for a graceful close (NO_ERROR).
    CLOSE_GRACEFULLY = auto()
    #: A CLOSE frame was queued (abortive close, drained graceful close, answer, timeout).
    SEND_CLOSE = auto()
    #: The connection ended: peer CLOSE, end of transport, failure, timeout or abort.
    END = auto()


_S, _I = State, Input
#: (state, input) -> next state. Pairs not listed are refused.
TRANSITIONS: dict[tuple[State, Input], State] = {
    (_S.HANDSHAKING, _I.HANDSHAKE_DONE): _S.ESTABLISHED,
    (_S.HANDSHAKING, _I.KEYS_READY): _S.CONFIRMING,
    (_S.HANDSHAKING, _I.END): _S.CLOSED,
    (_S.CONFIRMING, _I.HANDSHAKE_DONE): _S.ESTABLISHED,
    (_S.CONFIRMING, _I.SEND_CLOSE): _S.CLOSING,
    (_S.CONFIRMING, _I.END): _S.CLOSED,
    (_S.ESTABLISHED, _I.CLOSE_GRACEFULLY): _S.DRAINING,
    (_S.ESTABLISHED, _I.SEND_CLOSE): _S.CLOSING,
    (_S.ESTABLISHED, _I.END): _S.CLOSED,
    (_S.DRAINING, _I.SEND_CLOSE): _S.CLOSING,
    (_S.DRAINING, _I.END): _S.CLOSED,
    (_S.CLOSING, _I.END): _S.CLOSED,
}

#: What :attr:`Connection.state` shows for each internal state.
PUBLIC_STATE: dict[State, ConnectionState] = {
    _S.HANDSHAKING: ConnectionState.HANDSHAKING,
    _S.CONFIRMING: ConnectionState.HANDSHAKING,
    _S.ESTABLISHED: ConnectionState.ESTABLISHED,
    _S.DRAINING: ConnectionState.ESTABLISHED,
    _S.CLOSING: ConnectionState.CLOSING,
    _S.CLOSED: ConnectionState.CLOSED,
}
del _S, _I

#: States in which records flow in both directions and streams carry data.
OPEN_STATES: Final = frozenset({State.ESTABLISHED, State.DRAINING})


class Lifecycle:
    """The lifecycle state of one connection; changed only by :meth:`transition`."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = State.HANDSHAKING

    def transition(self, event: Input) -> State:
        """Apply *event* via :data:`TRANSITIONS` and return the new state.

        Raises:
            LocalProtocolError: ``INVALID_STATE`` naming the state and the
                input, for a pair not in the table (the state is unchanged).
        """
        try:
            new = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(
                f"connection: {event.name} not allowed in state {self.state.name}",
                ErrorCode.INVALID_STATE,
            ) from None
        self.state = new
        return new

    @property
    def public(self) -> ConnectionState:
        """The public view of the state."""
        return PUBLIC_STATE[self.state]

    @property
    def closed(self) -> bool:
        """Whether the connection reached its terminal state."""
        return self.state is State.CLOSED


class _Fail(Exception):
    """Internal: close the connection with *code* (the wire code may differ)."""

    def __init__(self, code: ErrorCode, message: str, wire: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.wire = wire if wire is not None else code
        self.message = message
