"""Token verification cost at the connection: handshake token cap, TOKEN floods, the budget.

A real :class:`~m2mproto.tokens.TokenAuthorizer` and real tokens; signature
verifications are counted by the verifier itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from helpers import ALICE, BOB, Pair, seeded_entropy

from m2mproto import cbor
from m2mproto.config import Configuration
from m2mproto.connection import ConnectionState
from m2mproto.errors import ErrorCode, LocalProtocolError
from m2mproto.events import ConnectionClosed, TokenAccepted, TokenRejected
from m2mproto.frames import Frame, MessageFrame, TokenFrame, encode_frame
from m2mproto.identity import Identity
from m2mproto.tokens import TokenAuthorizer, TokenLimits, delegate, issue
from m2mproto.tokens.cose import signature_verifications

NOW = 1_767_225_600
ROOT = Identity.from_seed(b"\x41" * 32)
MIDDLE = [Identity.from_seed(bytes([0x50 + i]) * 32) for i in range(7)]
MALLORY = Identity.from_seed(b"\x42" * 32)


def entropy(seed: int):  # type: ignore[no-untyped-def]
    counter = iter(range(seed, seed + 1000))
    return lambda n: next(counter).to_bytes(n, "big")


def chain8(seed: int, holder: Identity = ALICE) -> bytes:
    """A valid 8-link chain ROOT -> MIDDLE[0] -> ... -> MIDDLE[6] -> *holder*, caps ``*=*``."""
    holders = [*MIDDLE, holder]
    token = issue(ROOT, holders[0].agent_id, ["*=*"], now=NOW, ttl=3600, entropy=entropy(seed))
    for i in range(1, 8):
        token = delegate(
            holders[i - 1],
            token,
            holders[i].agent_id,
            ["*=*"],
            now=NOW,
            ttl=3600,
            entropy=entropy(seed * 100 + i),
        )
    return token


LEAF = chain8(1)


def cfg(seed: int, **kw: object) -> Configuration:
    # The fake clock starts at 1000: Unix time NOW at the start.
    return Configuration(entropy=seeded_entropy(seed), clock_offset=NOW - 1000.0, **kw)  # type: ignore[arg-type]


def pair(tokens: Sequence[bytes] = (), limits: TokenLimits | None = None, **kw: object) -> Pair:
    authz = TokenAuthorizer(trust_roots=[ROOT.agent_id], audience=BOB.agent_id, limits=limits)
    p = Pair(cfg(1), cfg(2, **kw), a={"tokens": list(tokens)}, b={"authorizer": authz})
    return p.handshake()


def inject(p: Pair, frames: Sequence[Frame]) -> list[object]:
    """Seal frames with the initiator's real keys and deliver them to the responder."""
    raw = b"".join(encode_frame(f) for f in frames)
    assert p.a._writer is not None
    p.b.receive_data(p.a._writer.seal(raw), p.clock.now)
    return list(p.drain(p.b))


def closed(p: Pair) -> tuple[ErrorCode, int]:
    """(local code at the responder, code the initiator received on the wire)."""
    local = [e for e in p.events[p.b] if isinstance(e, ConnectionClosed)]
    p.run()
    wire = [e for e in p.events[p.a] if isinstance(e, ConnectionClosed)]
    assert local and wire and wire[-1].remote
    return local[-1].code, wire[-1].code


# ---------------------------------------------------------------- handshake cap


def test_handshake_token_cap_boundary_pair() -> None:
    before = signature_verifications()
    p = pair([LEAF] * 8)
    assert p.b.state is ConnectionState.ESTABLISHED
    assert any(isinstance(e, TokenAccepted) for e in p.events[p.b])
    assert signature_verifications() - before == 8  # eight copies, each link verified once

    before = signature_verifications()
    p = pair([LEAF] * 9)
    assert closed(p) == (ErrorCode.TOO_LARGE, ErrorCode.TOKEN_INVALID)
    assert signature_verifications() - before == 0


@pytest.mark.parametrize("wire_reason", [False, True])
def test_twenty_three_copies_in_the_handshake_fail_before_any_signature(wire_reason: bool) -> None:
    before = signature_verifications()
    p = pair([LEAF] * 23, wire_token_reason=wire_reason)
    wire = ErrorCode.TOO_LARGE if wire_reason else ErrorCode.TOKEN_INVALID
    assert closed(p) == (ErrorCode.TOO_LARGE, wire)
    assert signature_verifications() - before == 0


def test_handshake_token_cap_is_configurable() -> None:
    p = pair([LEAF] * 12, max_handshake_tokens=12)
    assert p.b.state is ConnectionState.ESTABLISHED
    with pytest.raises(LocalProtocolError) as info:
        Configuration(max_handshake_tokens=0)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT


def test_handshake_over_budget_closes_with_enhance_your_calm() -> None:
    small = TokenLimits(verification_burst=8, verification_rate=0.0)
    p = pair([chain8(2), chain8(3)], limits=small)
    assert closed(p) == (ErrorCode.ENHANCE_YOUR_CALM, ErrorCode.ENHANCE_YOUR_CALM)


# ---------------------------------------------------------------- TOKEN frames


def _flood(p: Pair, tokens: Sequence[bytes]) -> list[object]:
    """One TOKEN frame per token, each followed by application data (progress)."""
    sid = p.a.open_stream("log")
    p.a.send_message(sid, 0)
    p.run()
    events: list[object] = []
    for i, token in enumerate(tokens):
        events += inject(p, [TokenFrame(token), MessageFrame(sid, cbor.encode(i), True, False)])
        if p.b.state is not ConnectionState.ESTABLISHED:
            break
    return events


def test_same_token_in_many_token_frames_verifies_nothing_more() -> None:
    p = pair([LEAF])
    before = signature_verifications()
    events = _flood(p, [LEAF] * 400)
    assert p.b.state is ConnectionState.ESTABLISHED
    assert sum(isinstance(e, TokenAccepted) for e in events) == 400
    assert signature_verifications() - before == 0


def test_distinct_wrong_holder_tokens_are_rejected_without_a_signature() -> None:
    p = pair([LEAF])
    stolen = [chain8(10 + i, holder=MALLORY) for i in range(12)]  # 96 links, all distinct
    before = signature_verifications()
    events = _flood(p, stolen * 10)
    rejected = [e for e in events if isinstance(e, TokenRejected)]
    assert len(rejected) == 120 and {e.code for e in rejected} == {ErrorCode.CNF_MISMATCH}
    assert p.b.state is ConnectionState.ESTABLISHED
    assert signature_verifications() - before == 0


def test_token_flood_over_the_budget_closes_with_enhance_your_calm() -> None:
    p = pair([LEAF])  # 8 of the 64 verifications of the burst
    before = signature_verifications()
    events = _flood(p, [chain8(100 + i) for i in range(12)])
    assert sum(isinstance(e, TokenAccepted) for e in events) == 7  # 8 + 7 * 8 = 64
    assert not any(isinstance(e, TokenRejected) for e in events)
    assert signature_verifications() - before == 56
    assert closed(p) == (ErrorCode.ENHANCE_YOUR_CALM, ErrorCode.ENHANCE_YOUR_CALM)


def test_token_budget_refills_with_time() -> None:
    p = pair([LEAF])
    events = _flood(p, [chain8(200 + i) for i in range(7)])
    assert sum(isinstance(e, TokenAccepted) for e in events) == 7
    p.clock.advance(0.5)  # 8 verifications regained at 16/s
    events = _flood(p, [chain8(300)])
    assert [type(e) for e in events if isinstance(e, (TokenAccepted, TokenRejected))] == [
        TokenAccepted
    ]
    assert p.b.state is ConnectionState.ESTABLISHED
