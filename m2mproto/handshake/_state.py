"""Handshake lifecycle: states and the transition table (spec/handshake.md 2.9).

Theory of operation
-------------------
A side's state names the item it waits for next. ``next_event`` consumes one
complete item at a time and moves along ``TRANSITIONS``; the table is the only
place that says which item follows which, and the spec's table in section 2.9
is this dictionary written out. ``FAILED`` is terminal and reachable from every
state (fail closed); ``COMPLETE`` is terminal too. Writing a message is part of
the transition that consumed the item which made it possible (responder
message 2 after message 1, initiator message 3 after message 2).
"""

from __future__ import annotations

from enum import Enum

from ..errors import ErrorCode, LocalProtocolError

__all__ = ["TRANSITIONS", "Role", "State", "next_state"]


class Role(Enum):
    """Which side of the handshake (and of the connection built on it)."""

    #: Dials: sends the preface and Noise message 1; uses even stream IDs.
    INITIATOR = "initiator"
    #: Accepts: answers with the magic and Noise message 2; uses odd stream IDs.
    RESPONDER = "responder"


class State(Enum):
    """What a side waits for next."""

    #: The peer's 8-byte magic.
    MAGIC = "MAGIC"
    #: The initiator's offer frame (responder only).
    OFFER = "OFFER"
    #: Noise message 1 (responder only).
    MESSAGE_1 = "MESSAGE_1"
    #: Noise message 2 (initiator only).
    MESSAGE_2 = "MESSAGE_2"
    #: Noise message 3 (XX responder only).
    MESSAGE_3 = "MESSAGE_3"
    #: Done; the result has been produced. Terminal.
    COMPLETE = "COMPLETE"
    #: An error occurred or an ABORT was sent or received. Terminal.
    FAILED = "FAILED"


_I, _R = Role.INITIATOR, Role.RESPONDER

#: (role, pattern or None for "before the pattern is known", state) -> next state.
TRANSITIONS: dict[tuple[Role, str | None, State], State] = {
    (_I, "XX", State.MAGIC): State.MESSAGE_2,
    (_I, "IK", State.MAGIC): State.MESSAGE_2,
    (_I, "XX", State.MESSAGE_2): State.COMPLETE,
    (_I, "IK", State.MESSAGE_2): State.COMPLETE,
    (_R, None, State.MAGIC): State.OFFER,
    (_R, None, State.OFFER): State.MESSAGE_1,
    (_R, "XX", State.MESSAGE_1): State.MESSAGE_3,
    (_R, "IK", State.MESSAGE_1): State.COMPLETE,
    (_R, "XX", State.MESSAGE_3): State.COMPLETE,
}


def next_state(role: Role, pattern: str | None, state: State) -> State:
    """The state after *state* consumed its item.

    Raises:
        LocalProtocolError: (``INVALID_STATE``) for a pair not in the table.
    """
    try:
        return TRANSITIONS[(role, pattern, state)]
    except KeyError:
        raise LocalProtocolError(
            f"{role.value} ({pattern or 'no pattern yet'}) has no transition from {state.value}",
            ErrorCode.INVALID_STATE,
        ) from None
