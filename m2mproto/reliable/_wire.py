"""Reliable-delivery messages (spec/reliability.md §2): validation of received values.

Messages travel as CBOR values on a message stream, so encoding is the
stream's; this module builds the arrays and checks received ones against the
CDDL. A value of the wrong shape raises :class:`~m2mproto.errors.DecodeError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import DecodeError, ErrorCode

__all__ = [
    "EPOCH_SIZE",
    "HELLO",
    "MAX_SEQ",
    "Ack",
    "Data",
    "Hello",
    "Welcome",
    "parse",
]

HELLO, WELCOME, DATA, ACK = 1, 2, 3, 4
#: Largest sequence number (2^53-1).
MAX_SEQ = 2**53 - 1
#: Bytes of a sender epoch.
EPOCH_SIZE = 16


@dataclass(frozen=True, slots=True)
class Hello:
    """``[1, epoch, first_unacked]``."""

    epoch: bytes
    first_unacked: int

    def to_wire(self) -> list[Any]:
        return [HELLO, self.epoch, self.first_unacked]


@dataclass(frozen=True, slots=True)
class Welcome:
    """``[2, next_expected]``."""

    next_expected: int

    def to_wire(self) -> list[Any]:
        return [WELCOME, self.next_expected]


@dataclass(frozen=True, slots=True)
class Data:
    """``[3, seq, body]``."""

    seq: int
    body: Any

    def to_wire(self) -> list[Any]:
        return [DATA, self.seq, self.body]


@dataclass(frozen=True, slots=True)
class Ack:
    """``[4, next_expected]`` (cumulative)."""

    next_expected: int

    def to_wire(self) -> list[Any]:
        return [ACK, self.next_expected]


Message = Hello | Welcome | Data | Ack


def _seq(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise DecodeError("sequence number out of range", ErrorCode.DECODE_ERROR)
    return value


def parse(value: Any) -> Message:
    """Check a received value against the CDDL and return the message.

    Raises:
        DecodeError: (``DECODE_ERROR``) not a reliable-delivery message.
    """
    if not isinstance(value, list) or not value or type(value[0]) is not int:
        raise DecodeError("not a reliable-delivery message", ErrorCode.DECODE_ERROR)
    kind, n = value[0], len(value)
    if kind == HELLO and n == 3:
        epoch = value[1]
        if not isinstance(epoch, bytes) or len(epoch) != EPOCH_SIZE:
            raise DecodeError("epoch must be 16 bytes", ErrorCode.DECODE_ERROR)
        return Hello(epoch, _seq(value[2]))
    if kind == WELCOME and n == 2:
        return Welcome(_seq(value[1]))
    if kind == DATA and n == 3:
        return Data(_seq(value[1]), value[2])
    if kind == ACK and n == 2:
        return Ack(_seq(value[1]))
    raise DecodeError(f"unknown reliable message kind {kind} of {n} items", ErrorCode.DECODE_ERROR)
