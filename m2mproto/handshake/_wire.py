"""Cleartext wire pieces of the handshake: magic, frames, offer, ABORT.

See spec/handshake.md sections 2.1, 2.2 and 2.7.

Everything here is pure functions over bytes; the state machine lives in ``_handshake``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import cbor
from ..errors import DecodeError, ErrorCode, LocalProtocolError, RemoteProtocolError

__all__ = [
    "ABORT_LENGTH",
    "HYBRID",
    "MAGIC",
    "MAX_OFFER_SIZE",
    "MIN_NOISE_MESSAGE",
    "PATTERNS",
    "SUPPORTED_VERSIONS",
    "Offer",
    "decode_abort_code",
    "decode_offer",
    "encode_abort",
    "encode_offer",
    "frame",
    "wire_code",
]

#: The 8 bytes that open both directions of every m2mproto connection.
MAGIC = b"\x8bM2M\r\n\x1a\n"
#: Largest offer frame body.
MAX_OFFER_SIZE = 256
#: Shortest Noise handshake message (a bare ``e``).
MIN_NOISE_MESSAGE = 32
#: Length field value that marks an ABORT frame.
ABORT_LENGTH = 2
#: Protocol versions this implementation speaks, highest first.
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
#: Noise patterns by their offer name (spec 2.2, 2.13).
PATTERNS: dict[str, str] = {
    "XX": "Noise_XX_25519_ChaChaPoly_SHA256",
    "IK": "Noise_IK_25519_ChaChaPoly_SHA256",
    "XXhfs": "Noise_XXhfs_25519+ML-KEM-768_ChaChaPoly_SHA256",
    "IKhfs": "Noise_IKhfs_25519+ML-KEM-768_ChaChaPoly_SHA256",
}
#: Classical pattern -> its hybrid post-quantum variant (spec 2.13).
HYBRID: dict[str, str] = {"XX": "XXhfs", "IK": "IKhfs"}
#: Any offer name -> the classical pattern it extends (the message flow it follows).
BASE: dict[str, str] = {"XX": "XX", "IK": "IK", "XXhfs": "XX", "IKhfs": "IK"}
#: The KEM tokens' bytes in the hybrid messages that carry them: ML-KEM-768
#: encapsulation key (1184) or ciphertext (1088), plus the AEAD tag when encrypted.
KEM_MESSAGE_OVERHEAD = 1184 + 16
#: XXhfs message 1: ``e`` (32) and the cleartext ML-KEM-768 encapsulation key (1184).
XXHFS_MESSAGE_1 = 32 + 1184
_MAX_VERSIONS = 16
_MAX_PREFERENCE = 8
_EXT_MIN, _EXT_MAX = 256, 65535
_OFFER_VERSIONS, _OFFER_PATTERN = 1, 2
#: Extension key: the initiator's patterns, most preferred first (spec 2.13).
OFFER_PREFERENCE = 512

#: The only codes a handshake ABORT carries (spec 2.6).
_WIRE_PASS = frozenset(
    {
        ErrorCode.VERSION_MISMATCH,
        ErrorCode.DECODE_ERROR,
        ErrorCode.DECRYPT_ERROR,
        ErrorCode.HANDSHAKE_FAILURE,
        ErrorCode.UNAUTHORIZED,
    }
)
_WIRE_VERSION = frozenset({ErrorCode.POST_QUANTUM_REQUIRED, ErrorCode.DOWNGRADE_DETECTED})
_WIRE_UNAUTHORIZED = frozenset(
    {ErrorCode.AUTH_UNTRUSTED, ErrorCode.AUTH_UNEXPECTED_PEER, ErrorCode.UNAUTHORIZED}
)


def frame(body: bytes) -> bytes:
    """Prefix *body* with its 2-byte big-endian length.

    Raises:
        LocalProtocolError: (``MESSAGE_TOO_LONG``) if *body* exceeds 65535 bytes.
    """
    if len(body) > 0xFFFF:
        raise LocalProtocolError("frame body exceeds 65535 bytes", ErrorCode.MESSAGE_TOO_LONG)
    return len(body).to_bytes(2, "big") + body


def wire_code(code: ErrorCode) -> ErrorCode:
    """Map a local failure code to the code an ABORT may carry (spec 2.6 table)."""
    if code in _WIRE_UNAUTHORIZED:
        return ErrorCode.UNAUTHORIZED
    if code in _WIRE_PASS:
        return code
    if code in _WIRE_VERSION:
        return ErrorCode.VERSION_MISMATCH
    return ErrorCode.HANDSHAKE_FAILURE


def encode_abort(code: ErrorCode) -> bytes:
    """The 4-byte ABORT frame for *code* (mapped through :func:`wire_code`)."""
    return ABORT_LENGTH.to_bytes(2, "big") + int(wire_code(code)).to_bytes(2, "big")


def decode_abort_code(body: bytes) -> ErrorCode:
    """The code to report for a received ABORT body (2 bytes).

    Registered connection-level codes are reported as themselves, anything else as
    ``HANDSHAKE_FAILURE``.
    """
    raw = int.from_bytes(body, "big")
    if raw < 0x40:
        try:
            return ErrorCode(raw)
        except ValueError:
            pass
    return ErrorCode.HANDSHAKE_FAILURE


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """The initiator's version/option offer (spec 2.2)."""

    versions: tuple[int, ...]
    pattern: str
    #: Key 512: the initiator's patterns, most preferred first (omitted when empty).
    preference: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        v = self.versions
        if not 1 <= len(v) <= _MAX_VERSIONS:
            raise LocalProtocolError("offer needs 1..16 versions", ErrorCode.INVALID_ARGUMENT)
        if any(type(x) is not int or not 1 <= x <= 0xFFFF for x in v) or any(
            a <= b for a, b in itertools.pairwise(v)
        ):
            raise LocalProtocolError(
                "offer versions must be 1..65535, strictly descending", ErrorCode.INVALID_ARGUMENT
            )
        if self.pattern not in PATTERNS:
            raise LocalProtocolError(
                f"unsupported pattern {self.pattern!r}", ErrorCode.INVALID_ARGUMENT
            )
        if self.preference and (
            self.pattern not in self.preference
            or len(self.preference) > _MAX_PREFERENCE
            or len(set(self.preference)) != len(self.preference)
        ):
            raise LocalProtocolError(
                "offer preference must list the offered pattern, at most 8, no repeats",
                ErrorCode.INVALID_ARGUMENT,
            )


def encode_offer(offer: Offer) -> bytes:
    """Deterministic CBOR of *offer*."""
    obj: dict[int, Any] = {_OFFER_VERSIONS: list(offer.versions), _OFFER_PATTERN: offer.pattern}
    if offer.preference:
        obj[OFFER_PREFERENCE] = list(offer.preference)
    return cbor.encode(obj)


def _check_ext_keys(obj: dict[Any, Any], known: frozenset[int], what: str) -> None:
    for key in obj:
        if type(key) is not int or key < 0:
            raise DecodeError(f"{what}: key {key!r} is not an unsigned integer")
        if key in known or _EXT_MIN <= key <= _EXT_MAX:
            continue
        raise DecodeError(f"{what}: key {key} is reserved or out of range")


def decode_offer(body: bytes) -> tuple[tuple[int, ...], str, tuple[str, ...]]:
    """Parse an offer frame body; return ``(versions, pattern, preference)`` without choosing.

    Raises:
        DecodeError: if *body* is not the offer CDDL in deterministic CBOR.
    """
    obj = cbor.decode(body)
    if not isinstance(obj, dict):
        raise DecodeError("offer is not a CBOR map")
    _check_ext_keys(obj, frozenset({_OFFER_VERSIONS, _OFFER_PATTERN}), "offer")
    if _OFFER_VERSIONS not in obj or _OFFER_PATTERN not in obj:
        raise DecodeError("offer lacks versions (1) or pattern (2)")
    versions = obj[_OFFER_VERSIONS]
    pattern = obj[_OFFER_PATTERN]
    if not isinstance(versions, list) or not 1 <= len(versions) <= _MAX_VERSIONS:
        raise DecodeError("offer versions must be an array of 1..16 items")
    for v in versions:
        if type(v) is not int or not 1 <= v <= 0xFFFF:
            raise DecodeError("offer version must be an integer 1..65535")
    if any(a <= b for a, b in itertools.pairwise(versions)):
        raise DecodeError("offer versions must be strictly descending")
    if not isinstance(pattern, str):
        raise DecodeError("offer pattern must be a text string")
    preference = obj.get(OFFER_PREFERENCE, [])
    if (
        not isinstance(preference, list)
        or len(preference) > _MAX_PREFERENCE
        or not all(isinstance(p, str) for p in preference)
    ):
        preference = []  # not the form this version defines: an extension ignored
    return tuple(versions), pattern, tuple(preference)


def check_pattern(
    pattern: str,
    preference: Sequence[str],
    *,
    post_quantum: bool,
    require_post_quantum: bool,
) -> None:
    """The responder's pattern rules (spec 2.2, 2.13).

    Raises:
        RemoteProtocolError: ``VERSION_MISMATCH`` for an unknown pattern (or a hybrid
            one with *post_quantum* off); ``POST_QUANTUM_REQUIRED`` for a classical
            pattern under *require_post_quantum*; ``DOWNGRADE_DETECTED`` for a
            classical pattern whose hybrid variant the initiator prefers (key 512)
            and we support: the initiator only does that after a refusal we never sent.
    """
    if pattern not in PATTERNS or (not post_quantum and pattern not in HYBRID):
        raise RemoteProtocolError("offer names an unsupported pattern", ErrorCode.VERSION_MISMATCH)
    hybrid = HYBRID.get(pattern)
    if hybrid is None:
        return
    if require_post_quantum:
        raise RemoteProtocolError(
            f"classical pattern {pattern} refused: post-quantum handshake required",
            ErrorCode.POST_QUANTUM_REQUIRED,
        )
    if (
        post_quantum
        and hybrid in preference
        and (pattern not in preference or preference.index(hybrid) < preference.index(pattern))
    ):
        raise RemoteProtocolError(
            f"offer prefers {hybrid} but runs {pattern}: the hybrid offer was suppressed",
            ErrorCode.DOWNGRADE_DETECTED,
        )


def choose(versions: Sequence[int], pattern: str, supported: Sequence[int]) -> int:
    """The responder's choice: the highest offered version it supports.

    Raises:
        RemoteProtocolError: (``VERSION_MISMATCH``) if there is none or the pattern is unknown.
    """
    if pattern not in PATTERNS:
        raise RemoteProtocolError("offer names an unsupported pattern", ErrorCode.VERSION_MISMATCH)
    for v in versions:
        if v in supported:
            return v
    raise RemoteProtocolError(
        f"no common version (offered {list(versions)}, supported {list(supported)})",
        ErrorCode.VERSION_MISMATCH,
    )
