"""Test harness: fixed-key ciphers, a fake clock, and two Connections over an in-memory link."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from m2mproto.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

_MAX_NONCE = 2**64 - 1


class FixedKeyCipher:
    """A Noise CipherState (ChaChaPoly) built from a 32-byte key, for record-layer tests.

    Used until/unless m2mproto.noise exposes a constructor with the same shape; it follows
    the Noise spec: 96-bit nonce = 4 zero bytes || 64-bit little-endian counter, and
    REKEY(k) = first 32 bytes of ENCRYPT(k, 2^64-1, "", 32 zero bytes).
    """

    def __init__(self, key: bytes, nonce: int = 0) -> None:
        self._key = key
        self._aead = ChaCha20Poly1305(key)
        self.nonce = nonce

    def _n(self, n: int) -> bytes:
        return b"\x00" * 4 + n.to_bytes(8, "little")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.nonce >= _MAX_NONCE:
            raise LocalProtocolError("nonce exhausted", ErrorCode.NONCE_EXHAUSTED)
        out = self._aead.encrypt(self._n(self.nonce), plaintext, ad)
        self.nonce += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.nonce >= _MAX_NONCE:
            raise LocalProtocolError("nonce exhausted", ErrorCode.NONCE_EXHAUSTED)
        try:
            out = self._aead.decrypt(self._n(self.nonce), ciphertext, ad)
        except InvalidTag:
            raise RemoteProtocolError("decrypt failed", ErrorCode.DECRYPT_ERROR) from None
        self.nonce += 1
        return out

    def rekey(self) -> None:
        self._key = self._aead.encrypt(self._n(_MAX_NONCE), b"\x00" * 32, b"")[:32]
        self._aead = ChaCha20Poly1305(self._key)


def cipher_pair(seed: int = 1) -> tuple[FixedKeyCipher, FixedKeyCipher]:
    """Two CipherStates with the same key: (sender, receiver)."""
    key = bytes([seed]) * 32
    return FixedKeyCipher(key), FixedKeyCipher(key)


class FakeClock:
    """A monotonic clock driven by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


# --------------------------------------------------------------------------
# Connection pair over an in-memory link
# --------------------------------------------------------------------------

import random  # noqa: E402

from m2mproto.config import Configuration  # noqa: E402
from m2mproto.connection import NEED_DATA, Connection, Role  # noqa: E402
from m2mproto.events import Event  # noqa: E402
from m2mproto.identity import Identity  # noqa: E402

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(1, 33)))


def seeded_entropy(seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


class Pair:
    """Two Connections (a = initiator, b = responder) over a link that splits writes.

    ``chunks`` (optional) is a list of sizes that cuts each transfer into pieces
    (cycled), down to one byte. ``events[a|b]`` collects everything delivered.
    """

    def __init__(
        self,
        config_a: Configuration | None = None,
        config_b: Configuration | None = None,
        *,
        chunks: list[int] | None = None,
        clock: FakeClock | None = None,
        **kwargs,  # type: ignore[no-untyped-def]
    ) -> None:
        self.clock = clock or FakeClock()
        self.a = Connection(
            Role.INITIATOR,
            ALICE,
            config_a or Configuration(entropy=seeded_entropy(1)),
            **kwargs.get("a", {}),
        )
        self.b = Connection(
            Role.RESPONDER,
            BOB,
            config_b or Configuration(entropy=seeded_entropy(2)),
            **kwargs.get("b", {}),
        )
        self.a.start(self.clock.now)
        self.b.start(self.clock.now)
        self.chunks = chunks or []
        self._ci = 0
        self.events: dict[Connection, list[Event]] = {self.a: [], self.b: []}
        self.wire: dict[Connection, list[bytes]] = {self.a: [], self.b: []}

    def _cut(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        if not self.chunks:
            return [data]
        out = []
        pos = 0
        while pos < len(data):
            size = max(1, self.chunks[self._ci % len(self.chunks)])
            self._ci += 1
            out.append(data[pos : pos + size])
            pos += size
        return out

    def other(self, c: Connection) -> Connection:
        return self.b if c is self.a else self.a

    def drain(self, c: Connection) -> list[Event]:
        got = []
        for _ in range(100_000):
            try:
                ev = c.next_event()
            except Exception:
                if c.state.name == "CLOSED":
                    break
                raise
            if ev is NEED_DATA:
                break
            got.append(ev)
        self.events[c].extend(got)
        return got

    def transfer(self, src: Connection) -> int:
        data = src.data_to_send()
        dst = self.other(src)
        self.wire[src].append(data)
        for piece in self._cut(data):
            dst.receive_data(piece, self.clock.now)
            self.drain(dst)
        return len(data)

    def run(self, rounds: int = 200) -> None:
        """Shuttle bytes both ways until quiet (bounded)."""
        for _ in range(rounds):
            moved = self.transfer(self.a) + self.transfer(self.b)
            self.drain(self.a)
            self.drain(self.b)
            if not moved:
                return
        raise AssertionError("link did not go quiet")

    def handshake(self) -> Pair:
        self.run()
        return self
