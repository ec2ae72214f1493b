"""Shared helpers for the Noise engine tests (imported by the test modules of this folder)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator

from m2mproto.noise import CipherState, HandshakeState, NoiseProtocol

VECTOR_DIR = "interop/vectors/third_party/noise"


def det_entropy(seed: int | str) -> Callable[[int], bytes]:
    """A deterministic entropy source (SHA-256 in counter mode) for reproducible tests."""
    counter: Iterator[int] = itertools.count()

    def entropy(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(f"{seed}/{next(counter)}".encode()).digest()
        return out[:n]

    return entropy


def static_key(label: str, dhlen: int = 32) -> bytes:
    """A deterministic static private key."""
    return det_entropy(f"static/{label}")(dhlen)


def psk(i: int) -> bytes:
    return hashlib.sha256(f"psk{i}".encode()).digest()


def make_pair(
    name: str, *, prologue: bytes = b"m2m-test", seed: int | str = 0
) -> tuple[HandshakeState, HandshakeState]:
    """An initiator and a responder for *name* with exactly the keys the pattern needs."""
    proto = NoiseProtocol.from_name(name)
    hp = proto.handshake_pattern
    dhlen = proto.dh.dhlen
    keys = {True: static_key(f"i{seed}", dhlen), False: static_key(f"r{seed}", dhlen)}
    pubs = {role: proto.dh.keypair_from_private(k).public for role, k in keys.items()}
    psks = [psk(i) for i in range(hp.psk_count)]
    states = []
    for initiator in (True, False):
        states.append(
            HandshakeState(
                proto,
                initiator=initiator,
                prologue=prologue,
                s=keys[initiator] if hp.needs_local_static(initiator) else None,
                rs=pubs[not initiator] if hp.knows_remote_static(initiator) else None,
                psks=psks,
                entropy=det_entropy(f"{seed}/{initiator}"),
            )
        )
    return states[0], states[1]


def run_handshake(
    init: HandshakeState, resp: HandshakeState, payload: Callable[[int], bytes] = lambda i: b""
) -> list[bytes]:
    """Drive both sides to completion; return the handshake messages sent."""
    messages = []
    for i in range(init.message_count):
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        msg = sender.write_message(payload(i))
        assert receiver.read_message(msg) == payload(i)
        messages.append(msg)
    assert init.is_complete and resp.is_complete
    return messages


def transports(
    init: HandshakeState, resp: HandshakeState
) -> tuple[CipherState, CipherState, CipherState, CipherState]:
    """(initiator send, initiator receive, responder send, responder receive)."""
    i_i2r, i_r2i = init.split()
    r_i2r, r_r2i = resp.split()
    return i_i2r, i_r2i, r_r2i, r_i2r
