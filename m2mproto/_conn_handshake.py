"""Handshake driver of a Connection: run the Handshake, then set up the record layer.

Theory of operation
-------------------
While ``_hs`` is set, input goes to the sans-IO :class:`~m2mproto.handshake.Handshake`.
A failure there produces its cleartext ABORT and ends the connection; the
peer's ABORT ends it with the peer's code. On success the Split() CipherStates
become the record writer and reader (the reader accepts a cleartext ABORT as
the first post-handshake bytes, spec/handshake.md §2.7), the handshake's
trailing bytes are fed to the reader, the peer's transport parameters set the
send credit, and tokens are checked (a responder's own tokens go out in TOKEN
frames).
"""

from __future__ import annotations

from typing import Literal

from ._conn_base import NEED_DATA, ConnectionCore, ConnectionState, NeedData
from ._conn_budgets import _Fail
from .config import TransportParameters
from .errors import ErrorCode, M2MError, RemoteProtocolError
from .events import Event, HandshakeCompleted, TokenAccepted
from .frames import TokenFrame
from .handshake import HandshakeAborted, HandshakeResult
from .records import RecordReader, RecordWriter
from .streams import SendCredit

__all__ = ["HandshakeDriver"]


class HandshakeDriver(ConnectionCore):
    """The HANDSHAKING part of a Connection (internal mixin)."""

    def _step_handshake(self) -> Event | Literal[NeedData.NEED_DATA] | None:
        hs = self._hs
        assert hs is not None
        try:
            result = hs.next_event()
        except HandshakeAborted as exc:
            self._raw_out += hs.data_to_send()
            self._terminate(exc.code, "peer aborted the handshake", remote=True)
            return None
        except M2MError as exc:
            remote = exc.code is ErrorCode.TRUNCATED
            if not remote:  # after the peer's EOF nobody is left to tell (handshake.md 2.8)
                self._raw_out += hs.abort(exc.code)
            self._terminate(exc.code, exc.message, remote=remote)
            return None
        if result is None:
            return NEED_DATA
        return self._establish(result)

    def _establish(self, res: HandshakeResult) -> Event | None:
        hs = self._hs
        assert hs is not None
        self._raw_out += hs.data_to_send()
        self._hs = None
        cfg = self.config
        self._writer = RecordWriter(
            res.send_cipher,
            key_update_after=cfg.key_update_after_records,
            max_records_per_key=cfg.max_records_per_key,
        )
        self._reader = RecordReader(
            res.recv_cipher, max_records_per_key=cfg.max_records_per_key, accept_abort=True
        )
        self._reader.feed(res.trailing_data)
        if self._eof:
            pass  # the EOF flag is seen after the trailing records are consumed
        self.state = ConnectionState.ESTABLISHED
        self.peer = res.peer
        self.handshake_hash = res.handshake_hash
        self.suite = res.suite
        try:
            params = TransportParameters.from_params(res.peer_params)
        except RemoteProtocolError as exc:
            raise _Fail(exc.code, exc.message) from None
        self.peer_parameters = params
        self._conn_send = SendCredit(params.initial_connection_window)
        for token in self._late_tokens:
            self._control.append(TokenFrame(token))
        if res.peer_tokens:
            grant = self._accept_tokens(res.peer_tokens, at_handshake=True)
            if self._pending_fail is None:
                self._events.append(TokenAccepted(grant=grant))
        return HandshakeCompleted(
            peer=res.peer,
            identity_key=res.peer.public_key,
            handshake_hash=res.handshake_hash,
            peer_params=dict(res.peer_params),
            pattern=res.pattern,
            version=res.version,
        )
