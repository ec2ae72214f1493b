"""Noise protocol names (Noise rev 34, §8): ``Noise_<pattern>_<DH>_<cipher>_<hash>``.

With the ``hfs`` modifier (Noise HFS extension) the DH part names the KEM too:
``Noise_XXhfs_25519+ML-KEM-768_ChaChaPoly_SHA256``. ``hfs`` without a KEM, or a
KEM without ``hfs``, is unsupported.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import ErrorCode, LocalProtocolError
from ._crypto import (
    CIPHERS,
    DH_FUNCTIONS,
    HASHES,
    KEM_FUNCTIONS,
    CipherFunctions,
    DHFunctions,
    HashFunctions,
    KEMFunctions,
)
from .patterns import HandshakePattern, apply_modifiers, get_pattern

__all__ = ["NoiseProtocol"]

_PATTERN_RE = re.compile(r"([A-Z][A-Z0-9]*)([a-z][a-z0-9+]*)?")


class NoiseProtocol:
    """A concrete Noise protocol: handshake pattern (with modifiers) plus DH, cipher and hash.

    Instances are immutable and shared (``from_name`` caches them).
    """

    __slots__ = (
        "cipher",
        "dh",
        "handshake_pattern",
        "hash",
        "initial_h",
        "kem",
        "modifiers",
        "name",
        "pattern",
    )

    name: str
    pattern: str
    modifiers: tuple[str, ...]
    handshake_pattern: HandshakePattern
    dh: DHFunctions
    cipher: CipherFunctions
    hash: HashFunctions
    #: The KEM of the ``hfs`` modifier, else None.
    kem: KEMFunctions | None
    initial_h: bytes

    def __init__(
        self,
        pattern: str,
        modifiers: tuple[str, ...],
        dh: DHFunctions,
        cipher: CipherFunctions,
        hash: HashFunctions,
        kem: KEMFunctions | None = None,
    ) -> None:
        base = get_pattern(pattern)
        if ("hfs" in modifiers) != (kem is not None):
            raise _unsupported("the hfs modifier and a KEM (25519+ML-KEM-768) go together")
        self.pattern = pattern
        self.modifiers = modifiers
        self.handshake_pattern = apply_modifiers(base, modifiers) if modifiers else base
        self.dh = dh
        self.cipher = cipher
        self.hash = hash
        self.kem = kem
        dh_part = dh.name if kem is None else f"{dh.name}+{kem.name}"
        self.name = f"Noise_{pattern}{'+'.join(modifiers)}_{dh_part}_{cipher.name}_{hash.name}"
        raw = self.name.encode("ascii")
        # InitializeSymmetric: h = name padded with zeros, or HASH(name) if longer than HASHLEN.
        if len(raw) <= hash.hashlen:
            self.initial_h = raw.ljust(hash.hashlen, b"\x00")
        else:
            self.initial_h = hash.hash(raw)

    @classmethod
    def from_name(cls, name: str) -> NoiseProtocol:
        """Parse a protocol name such as ``"Noise_XXpsk3_25519_ChaChaPoly_SHA256"``.

        Raises:
            LocalProtocolError: (UNSUPPORTED) malformed name, or an unknown
                pattern, modifier, DH, cipher or hash function; the message names it.
        """
        if not isinstance(name, str):
            raise LocalProtocolError("protocol name must be a str", ErrorCode.UNSUPPORTED)
        return _from_name(name)

    @property
    def psk_count(self) -> int:
        """The number of PSKs each side must supply."""
        return self.handshake_pattern.psk_count

    @property
    def one_way(self) -> bool:
        """True for the one-way patterns N, K, X (with or without modifiers)."""
        return self.handshake_pattern.one_way

    def __repr__(self) -> str:
        return f"NoiseProtocol({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoiseProtocol) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def _unsupported(reason: str) -> LocalProtocolError:
    return LocalProtocolError(reason, ErrorCode.UNSUPPORTED)


@lru_cache(maxsize=256)
def _from_name(name: str) -> NoiseProtocol:
    parts = name.split("_")
    if len(parts) != 5 or parts[0] != "Noise":
        raise _unsupported(
            f"not a Noise protocol name: {name[:80]!r} (want Noise_PATTERN_DH_CIPHER_HASH)"
        )
    _, pattern_part, dh_name, cipher_name, hash_name = parts
    match = _PATTERN_RE.fullmatch(pattern_part)
    if match is None:
        raise _unsupported(f"malformed handshake pattern {pattern_part[:40]!r}")
    pattern, mods = match.group(1), match.group(2)
    modifiers = tuple(mods.split("+")) if mods else ()
    dh_name, plus, kem_name = dh_name.partition("+")
    kem = KEM_FUNCTIONS.get(kem_name) if plus else None
    if plus and kem is None:
        raise _unsupported(f"KEM {kem_name[:40]!r} is not supported")
    dh = DH_FUNCTIONS.get(dh_name)
    if dh is None:
        raise _unsupported(f"DH function {dh_name[:40]!r} is not supported")
    cipher = CIPHERS.get(cipher_name)
    if cipher is None:
        raise _unsupported(f"cipher {cipher_name[:40]!r} is not supported")
    hash_fn = HASHES.get(hash_name)
    if hash_fn is None:
        raise _unsupported(f"hash function {hash_name[:40]!r} is not supported")
    return NoiseProtocol(pattern, modifiers, dh, cipher, hash_fn, kem)
