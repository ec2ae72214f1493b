"""Test harness: real fixed-key Noise CipherStates, a fake clock, a Connection pair."""

from __future__ import annotations

from typing import Any

from m2mproto.noise import CipherState, NoiseProtocol

#: The mandatory suite; its ChaChaPoly CipherState is what the record layer runs on.
NOISE_XX = NoiseProtocol.from_name("Noise_XX_25519_ChaChaPoly_SHA256")


def cipher_pair(seed: int = 1) -> tuple[CipherState, CipherState]:
    """Two real Noise CipherStates with the same key: (sender, receiver)."""
    key = bytes([seed]) * 32
    return CipherState(NOISE_XX, key), CipherState(NOISE_XX, key)


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


# --------------------------------------------------------------------------
# A spy on sealed records
# --------------------------------------------------------------------------


class _SpyCipher:
    """Wraps a writer's sending CipherState and logs each record plaintext it seals (a
    spy: the real encryption runs). Works on the compiled build too, where the record
    layer's methods cannot be patched."""

    def __init__(self, inner: Any, writer: object, log: list[tuple[int, bytes]]) -> None:
        self._inner, self._writer, self._log = inner, id(writer), log

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
        self._log.append((self._writer, bytes(plaintext)))
        return self._inner.encrypt_with_ad(ad, plaintext)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class SealLog(list[tuple[int, bytes]]):
    """Record plaintexts sealed by the watched connections: (id of the writer, plaintext)."""

    def watch(self, *connections: Any) -> int:
        """Spy on each connection's writer from now on; return the log's current length."""
        for connection in connections:
            writer = connection._writer
            assert writer is not None, "spy installed before the handshake ended"
            if not isinstance(writer._cipher, _SpyCipher):
                writer._cipher = _SpyCipher(writer._cipher, writer, self)
        return len(self)
