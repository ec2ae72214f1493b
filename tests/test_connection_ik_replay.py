"""IK first-message replay: the responder acts on nothing before the initiator proves liveness."""

from __future__ import annotations

import pytest
from helpers import ALICE, BOB, FakeClock, Pair, seeded_entropy

from m2mproto.config import Configuration
from m2mproto.connection import NEED_DATA, Connection, ConnectionState, Role
from m2mproto.errors import ErrorCode
from m2mproto.events import (
    ConnectionClosed,
    Event,
    HandshakeCompleted,
    MessageReceived,
    StreamOpened,
    TokenAccepted,
)
from m2mproto.noise import x25519_public_key

STATIC_B = bytes(range(40, 72))


class _Authz:
    def __init__(self) -> None:
        self.accepted: list[object] = []

    def accept_tokens(self, peer: object, tokens: object, now: float) -> object:
        self.accepted.append(tokens)
        return "grant"

    def authorize(self, peer: object, resource: str, ability: str, now: float) -> object:
        return None


def _events(c: Connection) -> list[Event]:
    got: list[Event] = []
    for _ in range(1000):
        try:
            ev = c.next_event()
        except Exception:
            assert c.state is ConnectionState.CLOSED
            return got
        if ev is NEED_DATA:
            return got
        got.append(ev)
    raise AssertionError("unbounded")


def _initiator(seed: int = 1) -> Connection:
    return Connection(
        Role.INITIATOR,
        ALICE,
        Configuration(entropy=seeded_entropy(seed)),
        tokens=[b"alice-token"],
        remote_static=x25519_public_key(STATIC_B),
    )


def _responder(authz: _Authz, seed: int = 2) -> Connection:
    return Connection(
        Role.RESPONDER,
        BOB,
        Configuration(entropy=seeded_entropy(seed), static_key=STATIC_B),
        authorizer=authz,
    )


def test_ik_completes_after_the_initiators_first_record() -> None:
    clock = FakeClock()
    authz = _Authz()
    a, b = _initiator(), _responder(authz)
    a.start(clock.now)
    b.start(clock.now)
    b.receive_data(a.data_to_send(), clock.now)  # IK message 1
    assert _events(b) == []  # keys ready, nothing reported yet
    assert b.state is ConnectionState.HANDSHAKING and b.peer is None
    assert authz.accepted == []
    a.receive_data(b.data_to_send(), clock.now)  # message 2
    got_a = _events(a)
    assert isinstance(got_a[0], HandshakeCompleted) and got_a[0].pattern in ("IK", "IKhfs")
    first = a.data_to_send()  # the initiator's first record: proof of liveness
    assert len(first) >= 18
    b.receive_data(first, clock.now)
    got_b = _events(b)
    assert isinstance(got_b[0], HandshakeCompleted) and got_b[0].peer == ALICE.agent_id
    assert TokenAccepted(grant="grant") in got_b
    assert authz.accepted == [(b"alice-token",)]
    assert b.state is a.state is ConnectionState.ESTABLISHED


@pytest.mark.parametrize("replays", [1, 3])
def test_replayed_ik_message_1_is_never_reported(replays: int) -> None:
    """A recorded flight 1 sent to fresh responders: no session, no tokens, then a timeout."""
    clock = FakeClock()
    a = _initiator()
    a.start(clock.now)
    flight1 = a.data_to_send()
    for i in range(replays):
        authz = _Authz()
        victim = _responder(authz, seed=10 + i)
        victim.start(clock.now)
        victim.receive_data(flight1, clock.now)
        assert _events(victim) == []
        victim.data_to_send()  # message 2 goes to the attacker, who cannot use it
        # The attacker has no keys: anything it sends fails to decrypt.
        victim.receive_data(b"\x00\x20" + bytes(32), clock.now)
        got = _events(victim)
        assert not any(isinstance(e, (HandshakeCompleted, TokenAccepted)) for e in got)
        assert authz.accepted == [] and victim.peer is None
        assert isinstance(got[-1], ConnectionClosed) and got[-1].code == ErrorCode.DECRYPT_ERROR


def test_replay_with_silence_times_out_at_the_handshake_deadline() -> None:
    clock = FakeClock()
    a = _initiator()
    a.start(clock.now)
    authz = _Authz()
    victim = _responder(authz)
    victim.start(clock.now)
    victim.receive_data(a.data_to_send(), clock.now)
    assert _events(victim) == []
    victim.data_to_send()
    deadline = victim.get_timer()
    assert deadline == clock.now + victim.config.handshake_timeout
    victim.handle_timer(clock.advance(victim.config.handshake_timeout))
    got = _events(victim)
    assert [type(e) for e in got] == [ConnectionClosed]
    assert got[0].code == ErrorCode.HANDSHAKE_TIMEOUT and authz.accepted == []


def test_an_initiator_that_sends_nothing_first_still_interoperates() -> None:
    """A peer following the earlier text sends no record until it has data: the responder
    completes on its first real record (0-RTT data is never acted on before that)."""
    clock = FakeClock()
    authz = _Authz()
    a, b = _initiator(), _responder(authz)
    a.start(clock.now)
    b.start(clock.now)
    b.receive_data(a.data_to_send(), clock.now)
    _events(b)
    a.receive_data(b.data_to_send(), clock.now)
    _events(a)
    a._outbox.liveness_due = False  # behave as the earlier text: no record without data
    assert a.data_to_send() == b""
    assert _events(b) == [] and b.state is ConnectionState.HANDSHAKING
    sid = a.open_stream("r")
    a.send_message(sid, {"hello": 1})
    b.receive_data(a.data_to_send(), clock.now)
    got = _events(b)
    assert isinstance(got[0], HandshakeCompleted)
    assert TokenAccepted(grant="grant") in got
    assert StreamOpened(stream_id=sid, resource="r", grant=None) in got
    assert any(isinstance(e, MessageReceived) and e.value == {"hello": 1} for e in got)
    assert got.index(got[0]) < got.index(StreamOpened(stream_id=sid, resource="r", grant=None))


def test_xx_is_unchanged() -> None:
    """XX message 3 proves the initiator's liveness: no extra record, no wait."""
    p = Pair().handshake()
    for c in (p.a, p.b):
        assert isinstance(p.events[c][0], HandshakeCompleted)
        assert p.events[c][0].pattern in ("XX", "XXhfs")
    assert p.wire[p.a][-1] == b""  # nothing sent after message 3


def test_handshake_completed_reports_the_peers_authenticated_static_key() -> None:
    """What an initiator remembers for IK (handshake.md 2.11): the responder's static key,
    as Noise authenticated it, on both patterns and both sides."""
    clock = FakeClock()
    a, b = _initiator(), _responder(_Authz())
    a.start(clock.now)
    b.start(clock.now)
    b.receive_data(a.data_to_send(), clock.now)
    assert _events(b) == []
    a.receive_data(b.data_to_send(), clock.now)
    got_a = _events(a)
    b.receive_data(a.data_to_send(), clock.now)
    got_b = _events(b)
    assert isinstance(got_a[0], HandshakeCompleted) and isinstance(got_b[0], HandshakeCompleted)
    assert got_a[0].remote_static == x25519_public_key(STATIC_B)
    assert got_b[0].remote_static is not None and len(got_b[0].remote_static) == 32
    assert got_b[0].remote_static != got_a[0].remote_static
    # XX to the same responder: the key arrives in message 2
    xx = Connection(Role.INITIATOR, ALICE, Configuration(entropy=seeded_entropy(3)))
    b2 = _responder(_Authz(), seed=4)
    xx.start(clock.now)
    b2.start(clock.now)
    done: list[Event] = []
    for _ in range(3):  # three flights
        if data := xx.data_to_send():
            b2.receive_data(data, clock.now)
        _events(b2)
        if data := b2.data_to_send():
            xx.receive_data(data, clock.now)
        done += [e for e in _events(xx) if isinstance(e, HandshakeCompleted)]
    assert len(done) == 1 and done[0].pattern in ("XX", "XXhfs")
    assert done[0].remote_static == x25519_public_key(STATIC_B)
