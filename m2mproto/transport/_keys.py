"""A bounded cache of Noise static keys, owned by whoever opens many sessions."""

from __future__ import annotations

from ..config import Configuration
from ..handshake import StaticKey
from ..identity import Identity

__all__ = ["StaticKeys"]


class StaticKeys:
    """Noise static keys by identity, made on first use (spec/handshake.md 2.3).

    An owner that opens many sessions for one identity (a
    :class:`~m2mproto.transport.Server`, a client's connection pool) keeps one
    of these, so the identity binding is signed once instead of once per
    connection, and the key is parsed once. Ephemeral keys stay fresh per
    handshake. Holds at most *limit* keys (the oldest is dropped first).
    """

    __slots__ = ("_keys", "_limit")

    def __init__(self, limit: int = 64) -> None:
        self._keys: dict[bytes, StaticKey] = {}
        self._limit = max(1, limit)

    def get(self, identity: Identity, config: Configuration) -> StaticKey:
        """The static key for *identity*, drawn from ``config.entropy`` on first use.

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) the entropy source is broken.
        """
        key = self._keys.get(identity.public_key)
        if key is None:
            key = StaticKey.generate(identity, config.entropy)
            if len(self._keys) >= self._limit:
                del self._keys[next(iter(self._keys))]
            self._keys[identity.public_key] = key
        return key

    def __len__(self) -> int:
        return len(self._keys)
