"""Shared helpers for the handshake tests: deterministic entropy and a pair driver."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from m2mproto.errors import M2MError
from m2mproto.handshake import Handshake, HandshakeResult
from m2mproto.identity import Identity

PREFIX = b"m2mproto-noise-static-key:"


def drbg(seed: bytes) -> Callable[[int], bytes]:
    """A deterministic entropy source (SHA-256 in counter mode)."""
    counter = 0

    def entropy(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
            counter += 1
        return out[:n]

    return entropy


def ident(name: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(b"identity " + name.encode()).digest())


@dataclass
class Side:
    hs: Handshake
    result: HandshakeResult | None = None
    error: M2MError | None = None
    sent: list[bytes] = field(default_factory=list)  # every chunk this side produced


def _pull(side: Side) -> bytes:
    data = side.hs.data_to_send()
    if data:
        side.sent.append(data)
    return data


def _deliver(side: Side, data: bytes, chunks: Sequence[int] | None) -> None:
    """Feed *data* to *side* cut at the given relative split points, polling after each."""
    cuts = sorted({c for c in (chunks or ()) if 0 < c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    for piece in pieces:
        if side.result is not None or side.error is not None:
            return
        side.hs.receive_data(piece)
        try:
            ev = side.hs.next_event()
        except M2MError as exc:
            side.error = exc
            return
        if ev is not None:
            side.result = ev


def run_pair(
    initiator: Handshake,
    responder: Handshake,
    *,
    split_i2r: Sequence[int] | None = None,
    split_r2i: Sequence[int] | None = None,
    max_rounds: int = 8,
) -> tuple[Side, Side]:
    """Drive two handshakes over an in-memory link until nothing moves (bounded)."""
    i, r = Side(initiator), Side(responder)
    for _ in range(max_rounds):
        moved = False
        data = _pull(i)
        if data:
            moved = True
            _deliver(r, data, split_i2r)
        data = _pull(r)
        if data:
            moved = True
            _deliver(i, data, split_r2i)
        if not moved:
            break
    return i, r
