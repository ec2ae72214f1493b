"""Noise HandshakeState (Noise rev 34, §5.3), driven by pattern data.

Theory of operation
-------------------
A HandshakeState walks the message patterns of its protocol in order.
Message ``i`` is written by the initiator when ``i`` is even and by the
responder when it is odd; each side alternates between :attr:`Phase.WRITE`
and :attr:`Phase.READ` until the last message, then it is
:attr:`Phase.COMPLETE` and ``split()`` hands out the transport CipherStates
(once; the state is then :attr:`Phase.SPLIT`). Legal moves are the table
``_TRANSITIONS``; any other call is a local error.

Every token of a message is processed by one loop for both roles: the role
only decides which of our keys is the "initiator" or "responder" half of a DH
token. Before a message is processed the symmetric state and key slots are
checkpointed; if anything fails (bad input, low-order key, a payload too
long, an out-of-turn call) the checkpoint is restored, so the failed call
changed nothing observable, and the state becomes :attr:`Phase.FAILED`,
which refuses every further call (fail closed).

Randomness: ephemeral keys come from the injected ``entropy`` callable (the
default, ``os.urandom``, is only a default argument) or, for test vectors,
from ``fixed_ephemeral_key_for_testing_only``.

KEM tokens (``hfs`` modifier, Noise HFS extension): ``e1`` makes a single-use
KEM key pair (its 64-byte seed from ``entropy``, or
``fixed_kem_seed_for_testing_only``) and sends ``EncryptAndHash(pk)``;
``ekem1`` encapsulates to the peer's ``e1`` key, sends
``EncryptAndHash(ciphertext)`` and then ``MixKey(shared secret)``. The reader
mirrors both. The KEM private key is dropped once decapsulated, the peer's KEM
key once encapsulated to. Encapsulation randomness comes from OpenSSL (no
deterministic encapsulation in ``cryptography``); test vectors replace the
whole encapsulation with ``dangerous_kem_encapsulate_for_testing_only``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, NamedTuple

from ..errors import DecodeError, ErrorCode, LocalProtocolError, M2MError, RemoteProtocolError
from ._crypto import Encapsulate, KeyPair
from .cipherstate import MAX_MESSAGE_LEN, TAG_LEN, CipherState, SymmetricState
from .patterns import HandshakePattern
from .protocol import NoiseProtocol

__all__ = ["HandshakeState", "Phase"]


class Phase(Enum):
    """Lifecycle of a HandshakeState."""

    #: It is our turn to call ``write_message``.
    WRITE = "write"
    #: It is our turn to call ``read_message``.
    READ = "read"
    #: All handshake messages processed; ``split()`` may be called.
    COMPLETE = "complete"
    #: ``split()`` was called; only the read-only properties remain.
    SPLIT = "split"
    #: A call failed; the state refuses everything (terminal).
    FAILED = "failed"


# (phase, input) -> next phase. Inputs: "write"/"read" for a message that is not the
# last one, "write_last"/"read_last" for the last one, "split".
_TRANSITIONS: dict[tuple[Phase, str], Phase] = {
    (Phase.WRITE, "write"): Phase.READ,
    (Phase.WRITE, "write_last"): Phase.COMPLETE,
    (Phase.READ, "read"): Phase.WRITE,
    (Phase.READ, "read_last"): Phase.COMPLETE,
    (Phase.COMPLETE, "split"): Phase.SPLIT,
}

_Checkpoint = tuple[
    tuple[bytes, bytes, bytes | None, int],
    KeyPair | None,
    bytes | None,
    bytes | None,
    int,
    Any,
    bytes | None,
]


class HandshakeState:
    """Noise HandshakeState for one side of one handshake.

    Args:
        protocol: the :class:`NoiseProtocol` (or its name).
        initiator: True for the initiator role.
        prologue: bytes both sides must agree on (mixed into ``h``).
        s: local static private key if the pattern needs one: raw DHLEN bytes, or a
            :class:`KeyPair` already parsed (a static key reused across handshakes).
        rs: the peer's static public key, if the pattern pre-shares it (``<- s``).
        psks: one 32-byte PSK per ``psk`` token, in token order.
        entropy: ``entropy(n) -> n random bytes``; source of ephemeral keys.
        fixed_ephemeral_key_for_testing_only: a fixed ephemeral private key.
            DANGEROUS: reusing an ephemeral key destroys forward secrecy and,
            with psk patterns, confidentiality. Test vectors only.
        fixed_kem_seed_for_testing_only: a fixed 64-byte ML-KEM seed (``d || z``) for
            the ``e1`` key pair. DANGEROUS, test vectors only.
        dangerous_kem_encapsulate_for_testing_only: replaces ML-KEM encapsulation
            (``pk -> (ciphertext, shared_secret)``), so a vector can fix the
            encapsulation randomness through an independent implementation.
            DANGEROUS: whatever it returns becomes the session key. Test vectors only.

    Raises:
        LocalProtocolError: (UNSUPPORTED) unknown protocol name; (INVALID_ARGUMENT)
            a key the pattern needs is missing, one it cannot use is given, a key
            or PSK has the wrong length, or the number of PSKs is wrong.
    """

    __slots__ = (
        "_dh",
        "_e",
        "_e1",
        "_encapsulate",
        "_entropy",
        "_fixed_e",
        "_fixed_kem_seed",
        "_index",
        "_initiator",
        "_kem",
        "_peer_keys",
        "_phase",
        "_plan",
        "_protocol",
        "_psk_index",
        "_psks",
        "_re",
        "_re1",
        "_rs",
        "_s",
        "_ss",
    )

    def __init__(
        self,
        protocol: NoiseProtocol | str,
        initiator: bool,
        prologue: bytes = b"",
        s: bytes | KeyPair | None = None,
        rs: bytes | None = None,
        psks: Sequence[bytes] = (),
        entropy: Callable[[int], bytes] = os.urandom,
        fixed_ephemeral_key_for_testing_only: bytes | None = None,
        fixed_kem_seed_for_testing_only: bytes | None = None,
        dangerous_kem_encapsulate_for_testing_only: Encapsulate | None = None,
    ) -> None:
        if isinstance(protocol, str):
            protocol = NoiseProtocol.from_name(protocol)
        pattern = protocol.handshake_pattern
        dh = protocol.dh
        self._protocol = protocol
        self._dh = dh
        self._initiator = bool(initiator)
        self._entropy = entropy
        role = "initiator" if initiator else "responder"

        plan = _role_plan(pattern, self._initiator)
        self._plan = plan
        if plan.needs_s:
            if s is None:
                raise _bad_arg(f"{protocol.name}: the {role} needs a static private key (s)")
            self._s: KeyPair | None = (
                dh.check_keypair(s) if isinstance(s, KeyPair) else dh.keypair_from_private(s)
            )
        elif s is not None:
            raise _bad_arg(f"{protocol.name}: the {role} has no static key; do not pass s")
        else:
            self._s = None

        if plan.knows_rs:
            if rs is None:
                raise _bad_arg(
                    f"{protocol.name}: the {role} must know the peer's static public key (rs)"
                )
            if not isinstance(rs, bytes | bytearray) or len(rs) != dh.dhlen:
                raise _bad_arg(f"rs must be a {dh.dhlen}-byte public key")
            self._rs: bytes | None = bytes(rs)
        elif rs is not None:
            raise _bad_arg(
                f"{protocol.name}: the {role} learns the peer's static key in the handshake;"
                " do not pass rs"
            )
        else:
            self._rs = None

        psk_list = list(psks)
        if len(psk_list) != plan.psk_count:
            raise _bad_arg(f"{protocol.name} needs {plan.psk_count} PSK(s), got {len(psk_list)}")
        for psk in psk_list:
            if not isinstance(psk, bytes | bytearray) or len(psk) != 32:
                raise _bad_arg("each PSK must be 32 bytes")
        self._psks = tuple(bytes(p) for p in psk_list)
        self._psk_index = 0

        self._fixed_e = (
            dh.keypair_from_private(fixed_ephemeral_key_for_testing_only)
            if fixed_ephemeral_key_for_testing_only is not None
            else None
        )
        self._kem = protocol.kem
        if self._kem is None and (
            fixed_kem_seed_for_testing_only is not None
            or dangerous_kem_encapsulate_for_testing_only is not None
        ):
            raise _bad_arg(f"{protocol.name} has no KEM; do not pass KEM test hooks")
        if fixed_kem_seed_for_testing_only is not None and self._kem is not None:
            self._kem.keypair_from_seed(fixed_kem_seed_for_testing_only)  # validates
        self._fixed_kem_seed = fixed_kem_seed_for_testing_only
        self._encapsulate = dangerous_kem_encapsulate_for_testing_only
        self._e1: Any = None
        self._re1: bytes | None = None
        self._e: KeyPair | None = None
        self._re: bytes | None = None
        self._peer_keys: dict[bytes, Any] = {}
        self._index = 0
        self._phase = Phase.WRITE if self._initiator else Phase.READ

        if not isinstance(prologue, bytes | bytearray | memoryview):
            raise _bad_arg("prologue must be bytes")
        ss = SymmetricState(protocol)
        ss.mix_hash(bytes(prologue))
        for owner_is_initiator, tokens in (
            (True, pattern.initiator_pre),
            (False, pattern.responder_pre),
        ):
            for token in tokens:
                if token != "s":  # pragma: no cover - no supported pattern pre-shares e
                    raise LocalProtocolError(
                        f"pre-message token {token!r} is not supported", ErrorCode.UNSUPPORTED
                    )
                if owner_is_initiator == self._initiator:
                    assert self._s is not None
                    ss.mix_hash(self._s.public)
                else:
                    assert self._rs is not None
                    ss.mix_hash(self._rs)
        self._ss = ss

    # ------------------------------------------------------------------ properties

    @property
    def protocol(self) -> NoiseProtocol:
        """The protocol being run."""
        return self._protocol

    @property
    def initiator(self) -> bool:
        """True for the initiator role."""
        return self._initiator

    @property
    def phase(self) -> Phase:
        """The lifecycle phase (see :class:`Phase`)."""
        return self._phase

    @property
    def is_complete(self) -> bool:
        """True once every handshake message has been written or read."""
        return self._phase in (Phase.COMPLETE, Phase.SPLIT)

    @property
    def is_my_turn(self) -> bool:
        """True if the next call must be ``write_message``."""
        return self._phase is Phase.WRITE

    @property
    def failed(self) -> bool:
        """True after a failed call (the state is terminal)."""
        return self._phase is Phase.FAILED

    @property
    def message_index(self) -> int:
        """Number of handshake messages processed so far (the next message's index)."""
        return self._index

    @property
    def message_count(self) -> int:
        """Total number of handshake messages in the pattern."""
        return len(self._protocol.handshake_pattern.messages)

    @property
    def handshake_hash(self) -> bytes:
        """The handshake hash ``h`` (the channel binding once the handshake is complete)."""
        return self._ss.h

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once known."""
        return self._rs

    @property
    def remote_ephemeral(self) -> bytes | None:
        """The peer's ephemeral public key, once received."""
        return self._re

    @property
    def local_static_public(self) -> bytes | None:
        """Our static public key, if the pattern gives us one."""
        return self._s.public if self._s is not None else None

    @property
    def local_ephemeral_public(self) -> bytes | None:
        """Our ephemeral public key, once generated."""
        return self._e.public if self._e is not None else None

    # ------------------------------------------------------------------ driving

    def write_message(self, payload: bytes = b"") -> bytes:
        """WriteMessage(payload): return the next handshake message.

        Returns:
            The message bytes to send (at most 65535).

        Raises:
            LocalProtocolError: INVALID_STATE if it is not our turn to write, the
                handshake is complete or a previous call failed; MESSAGE_TOO_LONG
                if the message would exceed 65535 bytes.
            AuthenticationError: (AUTH_LOW_ORDER_KEY) a pre-shared peer key is low order.
        """
        nxt = self._enter("write")
        saved = self._checkpoint()
        try:
            if len(payload) > MAX_MESSAGE_LEN:
                raise LocalProtocolError(
                    f"payload of {len(payload)} bytes exceeds the Noise message limit",
                    ErrorCode.MESSAGE_TOO_LONG,
                )
            message = self._write(bytes(payload))
            if len(message) > MAX_MESSAGE_LEN:
                raise LocalProtocolError(
                    f"handshake message of {len(message)} bytes exceeds 65535",
                    ErrorCode.MESSAGE_TOO_LONG,
                )
        except M2MError:
            self._fail(saved)
            raise
        self._index += 1
        self._phase = nxt
        return message

    def read_message(self, message: bytes) -> bytes:
        """ReadMessage(message): process a handshake message from the peer.

        Returns:
            The decrypted payload.

        Raises:
            LocalProtocolError: (INVALID_STATE) it is not our turn to read, the
                handshake is complete, or a previous call failed.
            RemoteProtocolError: FRAME_SIZE_ERROR for a message over 65535 bytes;
                DECRYPT_ERROR if authentication fails.
            DecodeError: the message is too short for the pattern.
            AuthenticationError: (AUTH_LOW_ORDER_KEY) the peer sent a low-order key.
        """
        if self._phase is Phase.READ and len(message) > MAX_MESSAGE_LEN:
            self._phase = Phase.FAILED
            raise RemoteProtocolError(
                f"handshake message of {len(message)} bytes exceeds 65535",
                ErrorCode.FRAME_SIZE_ERROR,
            )
        nxt = self._enter("read")
        saved = self._checkpoint()
        try:
            payload = self._read(bytes(message))
        except M2MError:
            self._fail(saved)
            raise
        self._index += 1
        self._phase = nxt
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """Split(): the transport CipherStates ``(initiator->responder, responder->initiator)``.

        The initiator encrypts with the first and decrypts with the second; the
        responder the other way round. One-way patterns use only the first.
        May be called once.

        Raises:
            LocalProtocolError: (INVALID_STATE) the handshake is not complete, or
                ``split()`` was already called.
        """
        nxt = _TRANSITIONS.get((self._phase, "split"))
        if nxt is None:
            raise LocalProtocolError(
                f"split() in phase {self._phase.value} of the {self._role} "
                f"({self._index}/{self.message_count} messages)",
                ErrorCode.INVALID_STATE,
            )
        self._phase = nxt
        return self._ss.split()

    # ------------------------------------------------------------------ internals

    @property
    def _role(self) -> str:
        return "initiator" if self._initiator else "responder"

    def _enter(self, op: str) -> Phase:
        last = self._index + 1 >= len(self._protocol.handshake_pattern.messages)
        nxt = _TRANSITIONS.get((self._phase, op + "_last" if last else op))
        if nxt is None:
            phase = self._phase
            if phase is not Phase.FAILED:
                self._phase = Phase.FAILED
            raise LocalProtocolError(
                f"{op}_message() in phase {phase.value} of the {self._role}"
                f" (message {self._index} of {self._protocol.name})",
                ErrorCode.INVALID_STATE,
            )
        return nxt

    def _checkpoint(self) -> _Checkpoint:
        return (
            self._ss.checkpoint(),
            self._e,
            self._re,
            self._rs,
            self._psk_index,
            self._e1,
            self._re1,
        )

    def _fail(self, saved: _Checkpoint) -> None:
        ss_saved, self._e, self._re, self._rs, self._psk_index, self._e1, self._re1 = saved
        self._ss.restore(ss_saved)
        self._phase = Phase.FAILED

    def _mix_dh(self, token: str) -> None:
        # The plan turned a DH token "xy" (initiator's key x, responder's key y)
        # into "<our key><their key>" for this role.
        local = self._e if token[0] == "e" else self._s
        remote = self._re if token[1] == "e" else self._rs
        if local is None or remote is None:  # pragma: no cover - excluded by the table
            raise LocalProtocolError(f"token {token}: key not available", ErrorCode.INTERNAL_ERROR)
        self._ss.mix_key(self._dh.dh(local, remote, self._peer_keys))

    def _write(self, payload: bytes) -> bytes:
        ss = self._ss
        psk_mode = bool(self._psks)
        out: list[bytes] = []
        for token in self._plan.messages[self._index]:
            if token == "e":
                if self._fixed_e is not None:
                    self._e = self._fixed_e
                else:
                    self._e = self._dh.generate_keypair(self._entropy)
                pub = self._e.public
                out.append(pub)
                ss.mix_hash(pub)
                if psk_mode:
                    ss.mix_key(pub)
            elif token == "s":
                assert self._s is not None
                out.append(ss.encrypt_and_hash(self._s.public))
            elif token == "psk":
                ss.mix_key_and_hash(self._psks[self._psk_index])
                self._psk_index += 1
            elif token == "e1":
                kem = self._kem
                assert kem is not None
                seed = self._fixed_kem_seed
                self._e1, pub = (
                    kem.keypair_from_seed(seed)
                    if seed is not None
                    else kem.generate_keypair(self._entropy)
                )
                out.append(ss.encrypt_and_hash(pub))
            elif token == "ekem1":
                kem, re1 = self._kem, self._re1
                assert kem is not None and re1 is not None
                if self._encapsulate is not None:
                    ciphertext, shared = self._encapsulate(re1)
                else:
                    ciphertext, shared = kem.encapsulate(re1, self._peer_keys.get(re1))
                if len(ciphertext) != kem.ciphertext_len or len(shared) != kem.shared_len:
                    raise LocalProtocolError(
                        "KEM encapsulation returned the wrong sizes", ErrorCode.INTERNAL_ERROR
                    )
                self._re1 = None  # single use
                out.append(ss.encrypt_and_hash(ciphertext))
                ss.mix_key(shared)
            else:
                self._mix_dh(token)
        out.append(ss.encrypt_and_hash(payload))
        return b"".join(out)

    def _read(self, message: bytes) -> bytes:
        ss = self._ss
        psk_mode = bool(self._psks)
        dhlen = self._dh.dhlen
        pos = 0
        for token in self._plan.messages[self._index]:
            if token == "e":
                if len(message) - pos < dhlen:
                    raise DecodeError(
                        f"handshake message {self._index} too short for an ephemeral key"
                    )
                self._re = message[pos : pos + dhlen]
                pos += dhlen
                ss.mix_hash(self._re)
                if psk_mode:
                    ss.mix_key(self._re)
            elif token == "s":
                n = dhlen + (TAG_LEN if ss.cipher_state.has_key() else 0)
                if len(message) - pos < n:
                    raise DecodeError(f"handshake message {self._index} too short for a static key")
                self._rs = ss.decrypt_and_hash(message[pos : pos + n])
                pos += n
            elif token == "psk":
                ss.mix_key_and_hash(self._psks[self._psk_index])
                self._psk_index += 1
            elif token == "e1" or token == "ekem1":
                kem = self._kem
                assert kem is not None
                n = kem.public_len if token == "e1" else kem.ciphertext_len
                n += TAG_LEN if ss.cipher_state.has_key() else 0
                if len(message) - pos < n:
                    raise DecodeError(f"handshake message {self._index} too short for {token}")
                value = ss.decrypt_and_hash(message[pos : pos + n])
                pos += n
                if token == "e1":
                    self._peer_keys[value] = kem.parse_public(value)
                    self._re1 = value
                else:
                    assert self._e1 is not None
                    shared = kem.decapsulate(self._e1, value)
                    self._e1 = None  # single use
                    ss.mix_key(shared)
            else:
                self._mix_dh(token)
        rest = message[pos:]
        if ss.cipher_state.has_key() and len(rest) < TAG_LEN:
            raise DecodeError(f"handshake message {self._index} too short for its payload tag")
        return ss.decrypt_and_hash(rest)

    def __repr__(self) -> str:
        return (
            f"HandshakeState({self._protocol.name}, {self._role}, "
            f"phase={self._phase.value}, message={self._index})"
        )


class _RolePlan(NamedTuple):
    """What a pattern asks of one role, worked out once per (pattern, role)."""

    needs_s: bool
    knows_rs: bool
    psk_count: int
    #: Message token lists with DH tokens rewritten as "<our key><their key>".
    messages: tuple[tuple[str, ...], ...]


@functools.lru_cache(maxsize=512)
def _role_plan(pattern: HandshakePattern, initiator: bool) -> _RolePlan:
    def ours_first(token: str) -> str:
        if token in ("es", "se") and not initiator:
            return token[1] + token[0]
        return token

    return _RolePlan(
        needs_s=pattern.needs_local_static(initiator),
        knows_rs=pattern.knows_remote_static(initiator),
        psk_count=pattern.psk_count,
        messages=tuple(tuple(ours_first(t) for t in m) for m in pattern.messages),
    )


def _bad_arg(message: str) -> LocalProtocolError:
    return LocalProtocolError(message, ErrorCode.INVALID_ARGUMENT)
