"""In-memory Noise_XX_25519_ChaChaPoly_SHA256 handshakes per second: m2mproto vs noiseprotocol.

Each handshake uses fresh static and ephemeral keys, runs the 3 messages and
split(), with both peers in this process. Also reports 64-byte transport
messages per second (encrypt + decrypt) for both engines. The two engines are
measured in alternating rounds and the best round of each is reported.

    python bench/inmem_noise.py [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable

from noise.connection import Keypair, NoiseConnection

from m2mproto.noise import HandshakeState, NoiseProtocol, x25519_public_key

NAME = "Noise_XX_25519_ChaChaPoly_SHA256"
PROTO = NoiseProtocol.from_name(NAME)


def ours_handshake() -> None:
    init = HandshakeState(PROTO, True, s=os.urandom(32))
    resp = HandshakeState(PROTO, False, s=os.urandom(32))
    resp.read_message(init.write_message(b""))
    init.read_message(resp.write_message(b""))
    resp.read_message(init.write_message(b""))
    init.split()
    resp.split()


def theirs_handshake() -> None:
    init = NoiseConnection.from_name(NAME.encode())
    resp = NoiseConnection.from_name(NAME.encode())
    init.set_as_initiator()
    resp.set_as_responder()
    init.set_keypair_from_private_bytes(Keypair.STATIC, os.urandom(32))
    resp.set_keypair_from_private_bytes(Keypair.STATIC, os.urandom(32))
    init.start_handshake()
    resp.start_handshake()
    resp.read_message(init.write_message(b""))
    init.read_message(resp.write_message(b""))
    resp.read_message(init.write_message(b""))
    assert init.handshake_finished and resp.handshake_finished


def ours_transport() -> Callable[[], None]:
    init = HandshakeState(PROTO, True, s=os.urandom(32))
    resp = HandshakeState(PROTO, False, s=os.urandom(32))
    resp.read_message(init.write_message(b""))
    init.read_message(resp.write_message(b""))
    resp.read_message(init.write_message(b""))
    send, _ = init.split()
    recv, _ = resp.split()
    data = b"x" * 64

    def step() -> None:
        recv.decrypt_with_ad(b"", send.encrypt_with_ad(b"", data))

    return step


def theirs_transport() -> Callable[[], None]:
    init = NoiseConnection.from_name(NAME.encode())
    resp = NoiseConnection.from_name(NAME.encode())
    init.set_as_initiator()
    resp.set_as_responder()
    init.set_keypair_from_private_bytes(Keypair.STATIC, os.urandom(32))
    resp.set_keypair_from_private_bytes(Keypair.STATIC, os.urandom(32))
    init.start_handshake()
    resp.start_handshake()
    resp.read_message(init.write_message(b""))
    init.read_message(resp.write_message(b""))
    resp.read_message(init.write_message(b""))
    data = b"x" * 64

    def step() -> None:
        resp.decrypt(init.encrypt(data))

    return step


def rate(fn: Callable[[], None], seconds: float) -> float:
    """Calls per second of *fn*, measured for about *seconds* after a short warm-up."""
    for _ in range(20):
        fn()
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            fn()
        n += 50
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def compare(a: Callable[[], None], b: Callable[[], None], seconds: float) -> tuple[float, float]:
    """Best rate of each of *a* and *b* over alternating rounds (fairer on a busy machine)."""
    rounds = 5
    best_a = best_b = 0.0
    for _ in range(rounds):
        best_a = max(best_a, rate(a, seconds / rounds))
        best_b = max(best_b, rate(b, seconds / rounds))
    return best_a, best_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    assert len(x25519_public_key(os.urandom(32))) == 32
    ours, theirs = compare(ours_handshake, theirs_handshake, args.seconds)
    print(f"{NAME}, in memory, fresh keys, 3 messages + split")
    print(f"  m2mproto       {ours:10.0f} handshakes/s")
    print(f"  noiseprotocol  {theirs:10.0f} handshakes/s")
    print(f"  ratio          {ours / theirs:10.2f}x")
    ours_t, theirs_t = compare(ours_transport(), theirs_transport(), args.seconds)
    print("64-byte transport messages (encrypt + decrypt)")
    print(f"  m2mproto       {ours_t:10.0f} msgs/s")
    print(f"  noiseprotocol  {theirs_t:10.0f} msgs/s")
    print(f"  ratio          {ours_t / theirs_t:10.2f}x")


if __name__ == "__main__":
    main()
