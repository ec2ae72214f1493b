"""User callbacks run contained; non-raising queries; the error classes of the core."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from helpers import Pair, seeded_entropy

from m2mproto.config import Configuration
from m2mproto.connection import NEED_DATA, Connection, ConnectionState
from m2mproto.errors import (
    AuthorizationError,
    ErrorCode,
    LocalProtocolError,
    SendBufferFull,
    StreamLimitReached,
)
from m2mproto.events import (
    ConnectionClosed,
    Event,
    HandshakeCompleted,
    StreamOpened,
    StreamReset,
    TokenAccepted,
)
from m2mproto.identity import AgentId


def cfg(seed: int, **kw: object) -> Configuration:
    return Configuration(entropy=seeded_entropy(seed), **kw)  # type: ignore[arg-type]


def strict_drain(c: Connection) -> list[Event]:
    """Every event until NEED_DATA or the close; any exception fails the test."""
    got: list[Event] = []
    for _ in range(10_000):
        ev = c.next_event()
        if ev is NEED_DATA:
            return got
        got.append(ev)
        if isinstance(ev, ConnectionClosed):
            with pytest.raises(LocalProtocolError):
                c.next_event()
            return got
    raise AssertionError("unbounded")


def shuttle(p: Pair, rounds: int = 50) -> dict[Connection, list[Event]]:
    got: dict[Connection, list[Event]] = {p.a: [], p.b: []}
    done = p.__dict__.setdefault("done", set())
    for _ in range(rounds):
        moved = 0
        for src in (p.a, p.b):
            dst = p.other(src)
            data = src.data_to_send()
            moved += len(data)
            if data:
                dst.receive_data(data, p.clock.now)
            if dst not in done:
                got[dst] += strict_drain(dst)
                if got[dst] and isinstance(got[dst][-1], ConnectionClosed):
                    done.add(dst)
        if not moved:
            return got
    raise AssertionError("link did not go quiet")


class _Authz:
    """Allows everything, except that one operation raises *exc*."""

    def __init__(self, fail_on: str, exc: Exception, conn: list[Connection]) -> None:
        self.fail_on = fail_on
        self.exc = exc
        self.conn = conn
        self.seen_in_table: list[bool] = []

    def accept_tokens(self, peer: AgentId, tokens: Sequence[bytes], now: float) -> object:
        if self.fail_on == "tokens":
            raise self.exc
        return "ok"

    def authorize(self, peer: AgentId, resource: str, ability: str, now: float) -> object:
        # Record whether the stream being opened is already in the table.
        if self.conn:
            self.seen_in_table.append(
                any(s.resource == resource for s in self.conn[0].streams.values())
            )
        if self.fail_on == ability:
            raise self.exc
        return None


def _closed(events: Sequence[Event]) -> ConnectionClosed:
    last = events[-1]
    assert isinstance(last, ConnectionClosed), events
    return last


@pytest.mark.parametrize("exc", [RuntimeError("bug"), KeyError("k"), ZeroDivisionError()])
@pytest.mark.parametrize("fail_on", ["stream/open", "msg/send", "tokens"])
def test_authorizer_fault_closes_with_internal_error(fail_on: str, exc: Exception) -> None:
    holder: list[Connection] = []
    authz = _Authz(fail_on, exc, holder)
    p = Pair(cfg(1), cfg(2), a={"tokens": [b"tok"]}, b={"authorizer": authz})
    holder.append(p.b)
    got = shuttle(p)
    if fail_on == "tokens":  # at the handshake: reported, then closed
        assert isinstance(got[p.b][0], HandshakeCompleted)
        closed = _closed(got[p.b])
    else:
        assert TokenAccepted(grant="ok") in got[p.b]
        sid = p.a.open_stream("r")
        p.a.send_message(sid, {"x": 1})
        got = shuttle(p)
        closed = _closed(got[p.b])
    assert closed.code == ErrorCode.INTERNAL_ERROR and not closed.remote
    peer_view = _closed(got[p.a])
    assert peer_view.remote and peer_view.code == ErrorCode.INTERNAL_ERROR
    assert p.b.state is ConnectionState.CLOSED


def test_token_frame_authorizer_fault_closes() -> None:
    authz = _Authz("tokens", RuntimeError("bug"), [])
    p = Pair(cfg(1), cfg(2), b={"authorizer": authz})
    shuttle(p)  # no tokens at the handshake
    assert p.b.state is ConnectionState.ESTABLISHED
    p.a.present_token(b"late")
    got = shuttle(p)
    assert _closed(got[p.b]).code == ErrorCode.INTERNAL_ERROR


def test_reauthorize_fault_closes() -> None:
    authz = _Authz("none", RuntimeError("bug"), [])
    p = Pair(cfg(1), cfg(2), b={"authorizer": authz})
    shuttle(p)
    p.a.open_stream("r")
    shuttle(p)
    authz.fail_on = "stream/open"
    assert p.b.reauthorize(p.clock.now) == []
    assert _closed(strict_drain(p.b)).code == ErrorCode.INTERNAL_ERROR


@pytest.mark.parametrize("exc", [RuntimeError("bug"), ValueError("v")])
def test_authenticate_peer_fault_fails_the_handshake(exc: Exception) -> None:
    def check(peer: AgentId) -> None:
        raise exc

    p = Pair(cfg(1), cfg(2), b={"authenticate_peer": check})
    got = shuttle(p)
    assert _closed(got[p.b]).code == ErrorCode.INTERNAL_ERROR
    assert _closed(got[p.a]).remote
    assert not any(isinstance(e, HandshakeCompleted) for e in got[p.b])


def test_refused_open_never_enters_the_table() -> None:
    holder: list[Connection] = []
    authz = _Authz("stream/open", AuthorizationError("no"), holder)
    p = Pair(cfg(1), cfg(2), b={"authorizer": authz})
    holder.append(p.b)
    shuttle(p)
    sid = p.a.open_stream("secret")
    p.a.send(sid, b"data")
    got = shuttle(p)
    assert StreamReset(stream_id=sid, code=ErrorCode.UNAUTHORIZED, remote=False) in got[p.b]
    assert not any(isinstance(e, StreamOpened) for e in got[p.b])
    assert authz.seen_in_table == [False]  # not in the table while being authorized
    assert sid not in p.b.streams and p.b.state is ConnectionState.ESTABLISHED
    assert StreamReset(stream_id=sid, code=ErrorCode.UNAUTHORIZED, remote=True) in got[p.a]
    # Its ID is used up: a second OPEN of it is a protocol error, late data is ignored.
    assert p.b._table.classify_unknown(sid) == "reset"


def test_accepted_open_is_authorized_before_it_is_added() -> None:
    holder: list[Connection] = []
    authz = _Authz("none", RuntimeError("unused"), holder)
    p = Pair(cfg(1), cfg(2), b={"authorizer": authz})
    holder.append(p.b)
    shuttle(p)
    sid = p.a.open_stream("fine")
    p.a.send(sid, b"x")
    got = shuttle(p)
    assert StreamOpened(stream_id=sid, resource="fine", grant=None) in got[p.b]
    assert authz.seen_in_table == [False] and sid in p.b.streams


# -- non-raising queries and the error classes ----------------------------------------


def test_can_send_matches_send() -> None:
    p = Pair(cfg(1, max_send_buffer=1000), cfg(2)).handshake()
    a = p.a
    assert not a.can_send(0, 1)  # no such stream yet
    sid = a.open_stream("r")
    assert a.can_send(sid, 1000) and not a.can_send(sid, 1001)
    a.send(sid, b"x" * 600)
    assert a.can_send(sid, 400) and not a.can_send(sid, 401)
    with pytest.raises(SendBufferFull) as info:
        a.send(sid, b"y" * 401)
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR  # the code callers compared
    assert isinstance(info.value, LocalProtocolError)
    a.send(sid, b"", end_stream=True)
    assert not a.can_send(sid, 1)  # our half ended
    a.close()
    assert not a.can_send(sid, 0)


def test_can_open_matches_open_stream() -> None:
    p = Pair(cfg(1), cfg(2, max_concurrent_streams=2)).handshake()
    fresh = Pair(cfg(1), cfg(2))
    assert not fresh.a.can_open()  # handshaking
    assert p.a.can_open()
    p.a.open_stream("r")
    p.a.open_stream("r")
    assert not p.a.can_open()
    with pytest.raises(StreamLimitReached) as info:
        p.a.open_stream("r")
    assert info.value.code is ErrorCode.STREAM_LIMIT_ERROR


def test_abortive_close_refuses_further_sends() -> None:
    p = Pair(cfg(1), cfg(2)).handshake()
    sid = p.a.open_stream("r")
    p.a.close(ErrorCode.PROTOCOL_ERROR, "x")
    assert p.a.state is ConnectionState.CLOSING
    with pytest.raises(LocalProtocolError) as info:
        p.a.send(sid, b"late")
    assert info.value.code is ErrorCode.INVALID_STATE


def test_graceful_close_is_established_until_the_close_goes_out() -> None:
    p = Pair(cfg(1), cfg(2)).handshake()
    sid = p.a.open_stream("r")
    p.a.send(sid, b"queued")
    p.a.close()
    assert p.a.state is ConnectionState.ESTABLISHED  # draining
    assert not p.a.can_open() and not p.a.can_send(sid, 1)
    p.a.data_to_send()
    assert p.a.state is ConnectionState.CLOSING
