"""Shared helpers for the m2mproto fuzz targets (atheris) and their pytest replay.

Theory of operation
-------------------
Every target file ``fuzz/fuzz_<name>.py`` defines ``check_<name>(data: bytes) -> None``:
it feeds *data* to one entry point that takes untrusted bytes and returns when
the input was accepted or rejected with an ``m2mproto.errors.M2MError``. Any
other exception (``KeyError``, ``RecursionError``, ``AssertionError`` from an
invariant check, ...) escapes and is a crash. Time and memory are bounded by
libFuzzer (``-timeout``, ``-rss_limit_mb``) under atheris and by a per-input
deadline in ``tests/test_fuzz_regressions.py``.

This module imports nothing from ``m2mproto`` at import time, so that a
target can import the package inside :func:`instrumented` and have atheris
instrument every m2mproto module. Fixtures that need m2mproto import it
lazily (by then the target has already imported it, instrumented).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "FUZZ_DIR",
    "ByteReader",
    "DeterministicEntropy",
    "corpus_dir",
    "fuzz_main",
    "instrumented",
]

FUZZ_DIR = Path(__file__).resolve().parent


def corpus_dir(target: str) -> Path:
    """The seed corpus directory of *target* (e.g. ``"cbor"``)."""
    return FUZZ_DIR / "corpus" / target


@contextlib.contextmanager
def instrumented(module_name: str) -> Iterator[None]:
    """Instrument the m2mproto imports of a target when it runs as the fuzz main.

    Under pytest (module imported, not run) this does nothing.
    """
    if module_name != "__main__":
        yield
        return
    import atheris

    with atheris.instrument_imports(include=["m2mproto"]):
        yield


def fuzz_main(check: Callable[[bytes], None]) -> None:
    """Run *check* under atheris with the libFuzzer flags from ``sys.argv``."""
    import os

    import atheris

    if os.environ.get("M2M_EXPECT_COMPILED") == "1":
        import m2mproto

        if not m2mproto.COMPILED:
            raise SystemExit(f"M2M_EXPECT_COMPILED=1 but {m2mproto.__file__} is pure Python")
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


class DeterministicEntropy:
    """``entropy(n)``: a SHA-256 counter stream from a fixed label (reproducible keys)."""

    def __init__(self, label: bytes) -> None:
        self._label = label
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(self._label + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        return bytes(out[:n])


class ByteReader:
    """A tiny FuzzedDataProvider that needs no atheris (so pytest can replay inputs).

    Every method is total: once the input is used up it returns zeros/empty
    values, so a grammar built on it always terminates.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        """Bytes not consumed yet."""
        return len(self._data) - self._pos

    def u8(self) -> int:
        """One byte (0 when exhausted)."""
        if self._pos >= len(self._data):
            return 0
        self._pos += 1
        return self._data[self._pos - 1]

    def u16(self) -> int:
        """Two bytes, big-endian."""
        return (self.u8() << 8) | self.u8()

    def uint(self, nbytes: int) -> int:
        """*nbytes* bytes, big-endian."""
        value = 0
        for _ in range(nbytes):
            value = (value << 8) | self.u8()
        return value

    def choice(self, options: Any) -> Any:
        """One element of the non-empty sequence *options*."""
        return options[self.u8() % len(options)]

    def take(self, n: int) -> bytes:
        """Up to *n* bytes (fewer when exhausted)."""
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def blob(self, limit: int) -> bytes:
        """A length byte-pair (capped at *limit*) then that many bytes."""
        return self.take(self.u16() % (limit + 1))

    def rest(self) -> bytes:
        """Everything not consumed yet."""
        return self.take(self.remaining)


def split_points(data: bytes, reader: ByteReader, max_pieces: int = 16) -> list[bytes]:
    """Cut *data* into pieces whose sizes come from *reader* (bounded count)."""
    pieces: list[bytes] = []
    pos = 0
    for _ in range(max_pieces - 1):
        if pos >= len(data):
            break
        size = 1 + reader.u8() % 64 if reader.remaining else len(data) - pos
        pieces.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        pieces.append(data[pos:])
    return pieces


# --------------------------------------------------------------------------
# Deterministic peers (m2mproto imported lazily: see the module docstring)
# --------------------------------------------------------------------------

#: Fixed Unix time of the fuzz world (tokens are issued relative to it).
NOW = 1_700_000_000.0
_SEEDS = {"alice": 1, "bob": 2, "authority": 3, "mallory": 4}


def identity(name: str) -> Any:
    """A fixed Ed25519 identity: ``alice`` (initiator), ``bob`` (responder), ..."""
    from m2mproto.identity import Identity

    return Identity.from_seed(bytes([_SEEDS[name]]) * 32)


def static_key(name: str) -> bytes:
    """A fixed Noise static private key for *name*."""
    return hashlib.sha256(b"static:" + name.encode()).digest()


def ephemeral_key(name: str) -> bytes:
    """A fixed Noise ephemeral private key for *name* (test-only hook)."""
    return hashlib.sha256(b"ephemeral:" + name.encode()).digest()


def new_handshake(
    initiator: bool,
    *,
    ik: bool = False,
    tokens: tuple[bytes, ...] = (),
    params: dict[int, Any] | None = None,
    post_quantum: bool = False,
) -> Any:
    """A sans-IO Handshake with fixed identity, static and ephemeral keys.

    The initiator is alice, the responder bob; each accepts only the other.
    With *post_quantum* the hybrid suite is offered / accepted; the initiator's
    ML-KEM seed comes from the fixed entropy, so its flights stay deterministic
    (the responder's encapsulation does not: OpenSSL draws it).
    """
    from m2mproto.errors import AuthenticationError, ErrorCode
    from m2mproto.handshake import Handshake
    from m2mproto.noise import x25519_public_key

    me, peer = ("alice", "bob") if initiator else ("bob", "alice")
    expected = identity(peer).agent_id

    def authenticate(agent: Any) -> None:
        if agent != expected:
            raise AuthenticationError("not the expected peer", ErrorCode.AUTH_UNTRUSTED)

    return Handshake(
        initiator,
        identity(me),
        entropy=DeterministicEntropy(b"hs:" + me.encode()),
        tokens=tokens,
        params=params,
        static_key=static_key(me),
        remote_static=x25519_public_key(static_key(peer)) if ik and initiator else None,
        authenticate_peer=authenticate,
        fixed_ephemeral_key_for_testing_only=ephemeral_key(me),
        post_quantum=post_quantum,
    )


def run_handshake(ik: bool = False, post_quantum: bool = False) -> dict[str, bytes]:
    """A complete deterministic handshake; returns each flight's bytes.

    Keys: ``init1`` (preface + message 1), ``resp2`` (magic + message 2),
    ``init3`` (message 3, XX only). With *post_quantum* (XXhfs / IKhfs) only
    ``init1`` is deterministic.
    """
    a = new_handshake(True, ik=ik, post_quantum=post_quantum)
    b = new_handshake(False, post_quantum=post_quantum)
    flights = {"init1": a.data_to_send()}
    b.receive_data(flights["init1"])
    done_b = b.next_event()
    flights["resp2"] = b.data_to_send()
    a.receive_data(flights["resp2"])
    assert a.next_event() is not None
    flights["init3"] = a.data_to_send()
    if done_b is None:
        b.receive_data(flights["init3"])
        assert b.next_event() is not None
    return flights


def token_set(holder: str, audience: str) -> dict[str, bytes]:
    """Tokens from the fixed authority, all issued at :data:`NOW` (deterministic IDs).

    ``valid`` grants echo and files/* to *holder* for *audience*; the others
    fail one check each; ``chain`` is a valid two-link delegation.
    """
    from m2mproto.tokens import delegate, issue

    auth = identity("authority")
    hold = identity(holder).agent_id
    aud = identity(audience).agent_id
    caps = ["echo=msg/send", "echo=stream/open", "files/*=stream/open", "files/*=msg/send"]
    ent = DeterministicEntropy(b"tokens:" + holder.encode())
    mallory = identity("mallory")
    to_mallory = issue(auth, mallory.agent_id, caps, now=NOW, ttl=3600, audience=aud, entropy=ent)
    return {
        "valid": issue(auth, hold, caps, now=NOW, ttl=3600, audience=aud, entropy=ent),
        "expired": issue(auth, hold, caps, now=NOW - 7200, ttl=60, audience=aud, entropy=ent),
        "other_holder": to_mallory,
        "other_audience": issue(
            auth, hold, caps, now=NOW, ttl=3600, audience=mallory.agent_id, entropy=ent
        ),
        "untrusted": issue(mallory, hold, caps, now=NOW, ttl=3600, audience=aud, entropy=ent),
        "chain": delegate(
            mallory, to_mallory, hold, ["files/*=msg/send"], now=NOW, ttl=600, entropy=ent
        ),
    }
