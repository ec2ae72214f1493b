"""The m2mproto handshake driver: a sans-IO Noise XX / IK handshake with identity binding.

The hybrid post-quantum suites (``XXhfs``, ``IKhfs``: the same flows with the
ML-KEM-768 tokens of the Noise HFS extension) are offered with
``post_quantum=True``; spec/handshake.md 2.13 has the negotiation.

Theory of operation
-------------------
:class:`Handshake` is bytes in, bytes and one event out (spec/handshake.md).
``receive_data`` only appends to a buffer; ``next_event`` parses as many
complete items (magic, offer, Noise frames) as the buffer holds, moving along
the table in ``_state``, and returns a :class:`HandshakeResult` when the
handshake completes, or ``None`` when it needs more bytes. Output (the
initiator's first flight at construction, message 2, message 3) is queued and
pulled with ``data_to_send``.

A frame's 2-byte length is checked as soon as it arrives, so at most one
bounded frame of an incomplete message is ever buffered. Every failure moves
the side to ``FAILED`` before the error propagates; ``abort`` then yields the
cleartext ABORT to send. Bytes after the final handshake message are handed to
the record layer untouched in ``HandshakeResult.trailing_data``.

All randomness (a default static key, ephemeral keys, the ML-KEM key pair's
seed) comes from the injected ``entropy`` callable, with one exception: the
32 random bytes of an ML-KEM-768 encapsulation (hybrid responder) come from
OpenSSL, because ``cryptography`` has no deterministic encapsulation. Nothing
here reads a clock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import (
    AuthenticationError,
    DecodeError,
    ErrorCode,
    LimitExceeded,
    LocalProtocolError,
    M2MError,
    RemoteProtocolError,
)
from ..identity import AgentId, Identity
from ..noise import CipherState, HandshakeState, NoiseProtocol
from ..noise._crypto import Encapsulate
from . import _payload, _wire
from ._state import Role, State, next_state
from ._static import StaticKey

__all__ = ["Handshake", "HandshakeAborted", "HandshakeResult"]

_MIN_MAX_MESSAGE = 1024
# Largest Noise overhead around a payload: XX message 2 (e 32 + encrypted s 48 + tag 16).
_NOISE_OVERHEAD = 96


@functools.lru_cache(maxsize=16)
def _preface(versions: tuple[int, ...], pattern: str, preference: tuple[str, ...] = ()) -> bytes:
    """MAGIC and the offer frame: the same bytes for every connection (spec 2.1-2.2)."""
    offer = _wire.encode_offer(
        _wire.Offer(versions=versions, pattern=pattern, preference=preference)
    )
    return _wire.MAGIC + _wire.frame(offer)


class HandshakeAborted(RemoteProtocolError):
    """The peer sent an ABORT. ``code`` is the code it carried; do not answer it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeResult:
    """A completed handshake: who the peer is and the keys for the record layer."""

    #: Negotiated protocol version.
    version: int
    #: ``"XX"``, ``"IK"``, or the hybrid post-quantum ``"XXhfs"`` / ``"IKhfs"``.
    pattern: str
    #: True on the side that sent the preface.
    initiator: bool
    #: The peer's authenticated agent ID.
    peer: AgentId
    #: The peer's Noise static X25519 public key.
    peer_static: bytes
    #: Our Noise static X25519 *public* key.
    local_static: bytes
    #: The Noise handshake hash: the channel binding (32 bytes).
    handshake_hash: bytes
    #: Encrypts our records.
    send_cipher: CipherState
    #: Decrypts the peer's records.
    recv_cipher: CipherState
    #: The peer's transport parameters (opaque here; the connection validates them).
    peer_params: dict[int, Any]
    #: The peer's capability tokens (opaque here; always empty from a responder).
    peer_tokens: tuple[bytes, ...]
    #: Bytes received after the last handshake message (records for the record layer).
    trailing_data: bytes

    def __post_init__(self) -> None:
        if self.pattern not in _wire.PATTERNS:
            raise LocalProtocolError(
                f"unknown pattern {self.pattern!r}", ErrorCode.INVALID_ARGUMENT
            )
        if len(self.peer_static) != 32 or len(self.local_static) != 32:
            raise LocalProtocolError("static keys are 32 bytes", ErrorCode.INVALID_ARGUMENT)
        if len(self.handshake_hash) != 32:
            raise LocalProtocolError("handshake hash is 32 bytes", ErrorCode.INVALID_ARGUMENT)

    @property
    def suite(self) -> str:
        """The Noise protocol name, e.g. ``Noise_XXhfs_25519+ML-KEM-768_ChaChaPoly_SHA256``."""
        return _wire.PATTERNS[self.pattern]

    @property
    def post_quantum(self) -> bool:
        """True if the hybrid (X25519 + ML-KEM-768) suite was negotiated."""
        return self.pattern not in _wire.HYBRID


class Handshake:
    """One side of an m2mproto handshake (spec/handshake.md). Sans-IO.

    Args:
        initiator: True for the side that opens the connection.
        identity: our long-term Ed25519 identity.
        entropy: ``entropy(n) -> n random bytes``; the only source of randomness.
        params: our transport parameters (``{uint: any}``, carried opaquely).
        tokens: our capability tokens (initiator only; a responder presents its
            tokens after the handshake, spec 2.4).
        static_key: our Noise static X25519 key: a :class:`StaticKey` made once for
            *identity* and shared by its handshakes (no per-handshake parse or
            signature), or the raw 32-byte private key; default: fresh from *entropy*.
        remote_static: initiator only: the responder's Noise static public key; selects IK.
        authenticate_peer: called with the peer's agent ID once its binding is
            proven, before we reveal anything more; raise an ``M2MError``
            (e.g. ``AuthenticationError(..., AUTH_UNTRUSTED)``) to refuse.
        max_message_size: largest Noise handshake message accepted (1024..65535).
        post_quantum: initiator: offer the hybrid suite (``XXhfs`` / ``IKhfs``) on this
            connection, preferring it to the classical one (offer key 512);
            responder: accept hybrid offers (off: refuse them like a classical-only peer).
        require_post_quantum: initiator: offer only the hybrid suite; a refusal
            fails with ``POST_QUANTUM_REQUIRED``. Responder: refuse classical offers
            (``POST_QUANTUM_REQUIRED``, wire ``VERSION_MISMATCH``).
        classical_fallback: initiator with *post_quantum*: this connection retries
            after a peer refused the hybrid offer; run the classical pattern and say
            in the offer that the hybrid one is preferred (a hybrid-capable responder
            then fails with ``DOWNGRADE_DETECTED``: someone suppressed the first offer).
        fixed_ephemeral_key_for_testing_only: hazmat; a fixed ephemeral private key for
            test vectors. Never set it in production: it destroys forward secrecy.
        fixed_kem_seed_for_testing_only: hazmat; a fixed 64-byte ML-KEM seed (test vectors).
        dangerous_kem_encapsulate_for_testing_only: hazmat; replaces ML-KEM
            encapsulation (test vectors with fixed encapsulation randomness).

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) for bad arguments,
            (``MESSAGE_TOO_LONG``) if params and tokens cannot fit one message.
    """

    def __init__(
        self,
        initiator: bool,
        identity: Identity,
        *,
        entropy: Callable[[int], bytes],
        params: Mapping[int, Any] | None = None,
        tokens: Sequence[bytes] = (),
        static_key: StaticKey | bytes | None = None,
        remote_static: bytes | None = None,
        authenticate_peer: Callable[[AgentId], None] | None = None,
        max_message_size: int = 65535,
        fixed_ephemeral_key_for_testing_only: bytes | None = None,
        post_quantum: bool = False,
        require_post_quantum: bool = False,
        classical_fallback: bool = False,
        fixed_kem_seed_for_testing_only: bytes | None = None,
        dangerous_kem_encapsulate_for_testing_only: Encapsulate | None = None,
    ) -> None:
        self._role = Role.INITIATOR if initiator else Role.RESPONDER
        if require_post_quantum:
            post_quantum = True
        if classical_fallback and (not initiator or not post_quantum or require_post_quantum):
            raise LocalProtocolError(
                "classical_fallback is for a post-quantum initiator without require_post_quantum",
                ErrorCode.INVALID_ARGUMENT,
            )
        self._post_quantum = bool(post_quantum)
        self._require_pq = bool(require_post_quantum)
        self._classical_fallback = bool(classical_fallback)
        self._fixed_kem_seed = fixed_kem_seed_for_testing_only
        self._encapsulate = dangerous_kem_encapsulate_for_testing_only
        self._identity = identity
        self._entropy = entropy
        self._params, self._params_cbor = _payload.encode_params(params or {})
        if not all(isinstance(t, bytes) for t in tokens):
            raise LocalProtocolError("tokens must be bytes", ErrorCode.INVALID_ARGUMENT)
        self._tokens = tuple(tokens)
        if not initiator and self._tokens:
            raise LocalProtocolError(
                "a responder presents its tokens after the handshake, not in message 2",
                ErrorCode.INVALID_ARGUMENT,
            )
        if not initiator and remote_static is not None:
            raise LocalProtocolError(
                "remote_static (IK) is for the initiator only", ErrorCode.INVALID_ARGUMENT
            )
        if remote_static is not None and (
            not isinstance(remote_static, bytes) or len(remote_static) != 32
        ):
            raise LocalProtocolError(
                "remote_static must be a 32-byte X25519 public key", ErrorCode.INVALID_ARGUMENT
            )
        if not _MIN_MAX_MESSAGE <= max_message_size <= 0xFFFF:
            raise LocalProtocolError(
                f"max_message_size must be {_MIN_MAX_MESSAGE}..65535", ErrorCode.INVALID_ARGUMENT
            )
        self._max_message = max_message_size
        if static_key is None:
            static_key = StaticKey.generate(identity, entropy)
        elif isinstance(static_key, StaticKey):
            if static_key.identity_key != identity.public_key:
                raise LocalProtocolError(
                    "static_key is bound to another identity", ErrorCode.INVALID_ARGUMENT
                )
        else:
            static_key = StaticKey(identity, static_key)
        self._static = static_key
        self._static_public = static_key.public
        self._signature = static_key.signature
        self._authenticate_peer = authenticate_peer
        self._fixed_e = fixed_ephemeral_key_for_testing_only

        # The initiator's payload is fixed now (used for the size check and sent
        # later); the size check adds the 4 bytes of the largest version (5: 0xFFFF).
        self._initiator_payload = b""
        if initiator:
            self._initiator_payload = _payload.assemble_payload(
                static_key.binding_cbor, self._params_cbor, self._tokens, None
            )
            probe_len = len(self._initiator_payload) + 4
        else:
            probe_len = len(
                _payload.assemble_payload(static_key.binding_cbor, self._params_cbor, None, 0xFFFF)
            )
        overhead = _NOISE_OVERHEAD + (_wire.KEM_MESSAGE_OVERHEAD if self._post_quantum else 0)
        if probe_len + overhead > 0xFFFF:
            raise LocalProtocolError(
                f"handshake payload of {probe_len} bytes does not fit one Noise message",
                ErrorCode.MESSAGE_TOO_LONG,
            )

        self._in = bytearray()
        self._out = bytearray()
        self._eof = False
        self._state = State.MAGIC
        self._error: M2MError | None = None
        self._peer_aborted = False
        self._abort_sent = False
        self._sent_magic = False
        self._pattern: str | None = None
        self._version: int | None = None
        self._offered: tuple[int, ...] = ()
        self._noise: HandshakeState | None = None
        self._peer: _payload.Payload | None = None

        if initiator:
            self._start_initiator(remote_static)

    # ------------------------------------------------------------------ public

    @property
    def is_complete(self) -> bool:
        """True once the result has been produced."""
        return self._state is State.COMPLETE

    @property
    def failed(self) -> bool:
        """True after any failure, a sent ABORT or a received one (terminal)."""
        return self._state is State.FAILED

    @property
    def state(self) -> State:
        """What this side waits for next (for diagnostics)."""
        return self._state

    @property
    def error(self) -> M2MError | None:
        """The error that failed the handshake, if any."""
        return self._error

    @property
    def local_static_public(self) -> bytes:
        """Our Noise static public key (what an IK initiator needs to know about us)."""
        return self._static_public

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` signals end of stream. Parses nothing.

        Raises:
            LocalProtocolError: (``INVALID_STATE``) after completion, failure or EOF.
        """
        if self._state in (State.COMPLETE, State.FAILED):
            raise LocalProtocolError(
                f"receive_data in state {self._state.value}", ErrorCode.INVALID_STATE
            )
        if self._eof:
            raise LocalProtocolError("receive_data after EOF", ErrorCode.INVALID_STATE)
        if data:
            self._in += data
        else:
            self._eof = True

    def data_to_send(self) -> bytes:
        """Return and clear the queued output."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> HandshakeResult | None:
        """Process buffered bytes.

        Returns:
            The :class:`HandshakeResult` when the handshake completes (exactly once),
            or ``None`` when more bytes are needed.

        Raises:
            RemoteProtocolError: (``DecodeError``, ``HandshakeAborted``) the peer broke
                the protocol, sent an ABORT, or the stream ended (``TRUNCATED``).
            AuthenticationError: the peer's identity binding failed or was refused.
            LimitExceeded: (``FRAME_SIZE_ERROR``) a frame over ``max_message_size``.
            LocalProtocolError: (``INVALID_STATE``) called after completion or failure.
            After any of the first three the handshake is terminal; see :meth:`abort`.
        """
        if self._state in (State.COMPLETE, State.FAILED):
            raise LocalProtocolError(
                f"next_event in state {self._state.value}", ErrorCode.INVALID_STATE
            )
        try:
            return self._advance()
        except M2MError as exc:
            self._state = State.FAILED
            self._error = exc
            raise
        except BaseException:
            self._state = State.FAILED  # e.g. a bug in authenticate_peer: still fail closed
            raise

    def abort(self, code: ErrorCode) -> bytes:
        """Fail the handshake (if not already) and return the bytes to send before closing.

        The result is any unsent output, the responder's magic if not yet sent, and
        an ABORT carrying ``wire_code(code)`` (spec 2.6-2.7). Returns ``b""`` if the
        peer aborted or an ABORT was already produced.

        Raises:
            LocalProtocolError: (``INVALID_STATE``) after completion (use a CLOSE frame).
        """
        if self._state is State.COMPLETE:
            raise LocalProtocolError(
                "handshake complete: close with an encrypted CLOSE frame",
                ErrorCode.INVALID_STATE,
            )
        self._state = State.FAILED
        if self._peer_aborted or self._abort_sent:
            return b""
        self._abort_sent = True
        out = self.data_to_send()
        if self._role is Role.RESPONDER and not self._sent_magic:
            self._sent_magic = True
            out += _wire.MAGIC
        return out + _wire.encode_abort(code)

    # ----------------------------------------------------------------- private

    def _start_initiator(self, remote_static: bytes | None) -> None:
        classical = "IK" if remote_static is not None else "XX"
        hybrid = _wire.HYBRID[classical]
        preference: tuple[str, ...] = ()
        pattern = classical
        if self._require_pq:
            pattern = hybrid
        elif self._post_quantum:
            preference = (hybrid, classical)
            pattern = classical if self._classical_fallback else hybrid
        self._pattern = pattern
        self._offered = _wire.SUPPORTED_VERSIONS
        preface = _preface(self._offered, pattern, preference)
        self._noise = self._new_noise(pattern, preface, remote_static)
        payload = b""
        if _wire.BASE[pattern] == "IK":
            payload = self._initiator_payload
        try:
            msg1 = self._noise.write_message(payload)
        except M2MError as exc:
            raise LocalProtocolError(
                f"cannot write IK message 1 to this remote_static ({exc.code.name})",
                ErrorCode.INVALID_ARGUMENT,
            ) from None
        self._out += preface + _wire.frame(msg1)

    def _new_noise(self, pattern: str, prologue: bytes, rs: bytes | None) -> HandshakeState:
        proto = NoiseProtocol.from_name(_wire.PATTERNS[pattern])
        hybrid = proto.kem is not None
        return HandshakeState(
            proto,
            initiator=self._role is Role.INITIATOR,
            prologue=prologue,
            s=self._static.keypair,
            rs=rs,
            psks=(),
            entropy=self._entropy,
            fixed_ephemeral_key_for_testing_only=self._fixed_e,
            fixed_kem_seed_for_testing_only=self._fixed_kem_seed if hybrid else None,
            dangerous_kem_encapsulate_for_testing_only=self._encapsulate if hybrid else None,
        )

    def _check_eof(self) -> None:
        if self._eof:
            raise RemoteProtocolError(
                f"end of stream while waiting for {self._state.value}", ErrorCode.TRUNCATED
            )

    def _advance(self) -> HandshakeResult | None:
        while True:
            state = self._state
            if state is State.MAGIC:
                if not self._read_magic():
                    self._check_eof()
                    return None
                self._transition(None if self._role is Role.RESPONDER else self._base)
            elif state is State.OFFER:
                body = self._read_frame(offer=True)
                if body is None:
                    self._check_eof()
                    return None
                self._on_offer(body)
                self._transition(None)
            else:
                body = self._read_frame(offer=False)
                if body is None:
                    self._check_eof()
                    return None
                result = self._on_message(state, body)
                self._transition(self._base)
                if result is not None:
                    return result

    @property
    def _base(self) -> str | None:
        return None if self._pattern is None else _wire.BASE[self._pattern]

    def _transition(self, pattern: str | None) -> None:
        self._state = next_state(self._role, pattern, self._state)

    def _read_magic(self) -> bool:
        n = min(len(self._in), len(_wire.MAGIC))
        if self._in[:n] != _wire.MAGIC[:n]:
            raise RemoteProtocolError(
                "peer did not send the m2mproto magic (not m2mproto traffic)",
                ErrorCode.VERSION_MISMATCH,
            )
        if n < len(_wire.MAGIC):
            return False
        del self._in[:n]
        return True

    def _read_frame(self, *, offer: bool) -> bytes | None:
        if len(self._in) < 2:
            return None
        length = int.from_bytes(self._in[:2], "big")
        if offer:
            if not 1 <= length <= _wire.MAX_OFFER_SIZE:
                raise DecodeError(f"offer frame length {length} outside 1..{_wire.MAX_OFFER_SIZE}")
        elif length > self._max_message + (
            0 if self._pattern in _wire.HYBRID else _wire.KEM_MESSAGE_OVERHEAD
        ):
            raise LimitExceeded(
                f"handshake frame of {length} bytes exceeds max_message_size {self._max_message}",
                ErrorCode.FRAME_SIZE_ERROR,
            )
        elif length < _wire.MIN_NOISE_MESSAGE and length != _wire.ABORT_LENGTH:
            raise DecodeError(f"handshake frame length {length} is neither ABORT nor Noise")
        if len(self._in) < 2 + length:
            return None
        body = bytes(self._in[2 : 2 + length])
        del self._in[: 2 + length]
        if not offer and length == _wire.ABORT_LENGTH:
            self._peer_aborted = True
            code = _wire.decode_abort_code(body)
            if (
                self._require_pq
                and code is ErrorCode.VERSION_MISMATCH
                and self._role is Role.INITIATOR
            ):
                raise HandshakeAborted(
                    "peer refused the hybrid post-quantum suite (require_post_quantum)",
                    ErrorCode.POST_QUANTUM_REQUIRED,
                )
            raise HandshakeAborted(f"peer aborted the handshake ({code.name})", code)
        return body

    def _on_offer(self, body: bytes) -> None:
        versions, pattern, preference = _wire.decode_offer(body)
        self._version = _wire.choose(versions, pattern, _wire.SUPPORTED_VERSIONS)
        _wire.check_pattern(
            pattern,
            preference,
            post_quantum=self._post_quantum,
            require_post_quantum=self._require_pq,
        )
        self._pattern = pattern
        self._noise = self._new_noise(pattern, _wire.MAGIC + _wire.frame(body), None)

    def _read_noise(self, body: bytes) -> bytes:
        assert self._noise is not None
        try:
            return self._noise.read_message(body)
        except M2MError:
            raise
        except (ValueError, TypeError, IndexError) as exc:  # defensive: engine leaked one
            raise DecodeError(f"Noise message rejected ({type(exc).__name__})") from None

    def _on_message(self, state: State, body: bytes) -> HandshakeResult | None:
        assert self._noise is not None
        if state is State.MESSAGE_1:
            if self._base == "XX":
                want = _wire.MIN_NOISE_MESSAGE if self._pattern == "XX" else _wire.XXHFS_MESSAGE_1
                if len(body) != want:
                    raise DecodeError(
                        f"{self._pattern} message 1 must be {want} bytes (empty payload),"
                        f" got {len(body)}"
                    )
                self._read_noise(body)
                self._write_responder_message_2()
                return None
            self._accept_peer(self._read_noise(body), from_initiator=True)
            self._write_responder_message_2()
            return self._finish()
        if state is State.MESSAGE_2:
            peer = self._accept_peer(self._read_noise(body), from_initiator=False)
            self._version = peer.version
            if self._base == "XX":
                self._out += _wire.frame(self._noise.write_message(self._initiator_payload))
            return self._finish()
        # MESSAGE_3
        self._accept_peer(self._read_noise(body), from_initiator=True)
        return self._finish()

    def _write_responder_message_2(self) -> None:
        assert self._noise is not None
        payload = _payload.assemble_payload(
            self._static.binding_cbor, self._params_cbor, None, self._version
        )
        msg2 = self._noise.write_message(payload)
        self._sent_magic = True
        self._out += _wire.MAGIC + _wire.frame(msg2)

    def _accept_peer(self, data: bytes, *, from_initiator: bool) -> _payload.Payload:
        assert self._noise is not None
        peer = _payload.decode_payload(data, from_initiator=from_initiator)
        rs = self._noise.remote_static
        if rs is None:  # pragma: no cover - the patterns always transmit or pre-share s
            raise RemoteProtocolError("Noise did not yield a peer static key")
        _payload.verify_binding(peer, rs)
        if peer.identity_key == self._identity.public_key or rs == self._static_public:
            raise AuthenticationError(
                "peer presented our own identity or static key", ErrorCode.AUTH_REFLECTED
            )
        if not from_initiator and peer.version not in self._offered:
            raise RemoteProtocolError(
                f"responder chose version {peer.version}, which was not offered",
                ErrorCode.VERSION_MISMATCH,
            )
        if self._authenticate_peer is not None:
            self._authenticate_peer(AgentId(peer.identity_key))
        self._peer = peer
        return peer

    def _finish(self) -> HandshakeResult:
        assert self._noise is not None and self._peer is not None
        assert self._noise.is_complete and self._version is not None and self._pattern
        c1, c2 = self._noise.split()
        initiator = self._role is Role.INITIATOR
        rs = self._noise.remote_static
        assert rs is not None
        trailing = bytes(self._in)
        self._in.clear()
        return HandshakeResult(
            version=self._version,
            pattern=self._pattern,
            initiator=initiator,
            peer=AgentId(self._peer.identity_key),
            peer_static=rs,
            local_static=self._static_public,
            handshake_hash=self._noise.handshake_hash,
            send_cipher=c1 if initiator else c2,
            recv_cipher=c2 if initiator else c1,
            peer_params=self._peer.params,
            peer_tokens=self._peer.tokens,
            trailing_data=trailing,
        )
