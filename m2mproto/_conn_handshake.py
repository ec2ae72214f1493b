"""Phase objects of a Connection: HANDSHAKING, then the transport phase.

Theory of operation
-------------------
A connection holds exactly one phase object at a time (snow's
``into_transport_mode``): :class:`Handshaking` while the Noise handshake runs,
:class:`Transport` once it produced keys. A field that exists in one phase
only lives in that phase's object, so "is the handshake over?" is "which
phase object is there?", never a flag.

:meth:`Handshaking.step` runs the sans-IO
:class:`~m2mproto.handshake.Handshake`: a failure there produces its
cleartext ABORT (queued in the outbox) and reports how the connection ended;
the peer's ABORT ends it with the peer's code; an exception that is not an
``M2MError`` (a fault of the ``authenticate_peer`` callback) is contained and
ends it with ``INTERNAL_ERROR``. :meth:`Handshaking.into_transport` turns the
result into a :class:`Transport`: the Split() CipherStates become the record
writer and reader (the reader accepts a cleartext ABORT as the first
post-handshake bytes, spec/handshake.md §2.7) and the handshake's trailing
bytes are fed to the reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ._conn_outbox import FrameOutbox
from ._conn_state import NEED_DATA, NeedData
from .config import Configuration
from .errors import ErrorCode, M2MError
from .handshake import Handshake, HandshakeAborted, HandshakeResult
from .records import RecordReader, RecordWriter
from .streams import SendCredit

__all__ = ["Ended", "Handshaking", "Transport"]


class Ended(NamedTuple):
    """How a handshake ended without a result."""

    code: int
    message: str
    remote: bool


@dataclass(slots=True)
class Transport:
    """The transport phase: the record layer, present once the handshake is done."""

    #: Decrypts the peer's records.
    reader: RecordReader
    #: Encrypts ours.
    writer: RecordWriter
    #: Our credit for the whole connection (the peer grants it; 0 until its
    #: transport parameters are accepted).
    conn_send: SendCredit


class Handshaking:
    """The HANDSHAKING phase: the handshake and what waits for its result."""

    __slots__ = ("hs", "late_tokens")

    def __init__(self, hs: Handshake, late_tokens: Sequence[bytes]) -> None:
        self.hs = hs
        #: A responder's own tokens: sent in TOKEN frames once the session is reported.
        self.late_tokens = tuple(late_tokens)

    def step(self, outbox: FrameOutbox) -> HandshakeResult | Ended | Literal[NeedData.NEED_DATA]:
        """Advance the handshake: its result, how it ended, or :data:`NEED_DATA`."""
        hs = self.hs
        try:
            result = hs.next_event()
        except HandshakeAborted as aborted:  # one name per exception type (mypyc)
            outbox.raw += hs.data_to_send()
            return Ended(aborted.code, "peer aborted the handshake", True)
        except M2MError as exc:
            remote = exc.code is ErrorCode.TRUNCATED
            if not remote:  # after the peer's EOF nobody is left to tell (handshake.md 2.8)
                outbox.raw += hs.abort(exc.code)
            return Ended(exc.code, exc.message, remote)
        except Exception as fault:  # a fault of a callback (authenticate_peer): fail closed
            outbox.raw += hs.abort(ErrorCode.INTERNAL_ERROR)
            message = f"handshake callback failed: {type(fault).__name__}"
            return Ended(ErrorCode.INTERNAL_ERROR, message, False)
        if result is None:
            return NEED_DATA
        return result

    def abort(self, outbox: FrameOutbox, code: ErrorCode) -> None:
        """Queue the handshake's ABORT with *code* (and any unsent output before it)."""
        outbox.raw += self.hs.abort(code)

    def into_transport(
        self, res: HandshakeResult, cfg: Configuration, outbox: FrameOutbox
    ) -> Transport:
        """The transport phase for *res*; the handshake's last output is queued first."""
        outbox.raw += self.hs.data_to_send()
        writer = RecordWriter(
            res.send_cipher,
            key_update_after=cfg.key_update_after_records,
            max_records_per_key=cfg.max_records_per_key,
        )
        reader = RecordReader(
            res.recv_cipher, max_records_per_key=cfg.max_records_per_key, accept_abort=True
        )
        reader.feed(res.trailing_data)
        return Transport(reader, writer, SendCredit(0))
