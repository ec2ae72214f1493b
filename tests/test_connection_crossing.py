"""Frames that legitimately cross a stream's end in flight, replies on our own
streams, and credit for streams the core has already finished."""

from __future__ import annotations

from helpers import Pair
from test_connection import _Authz, cfg, inject

from m2mproto.config import Configuration
from m2mproto.connection import ConnectionState
from m2mproto.errors import ErrorCode
from m2mproto.events import ConnectionClosed, MessageReceived, StreamEnded, StreamReset
from m2mproto.frames import ResetFrame, WindowUpdateFrame


def request_reply(p: Pair) -> int:
    """a asks, b answers with end of stream: the stream ends gracefully on both sides."""
    sid = p.a.open_stream("echo")
    p.a.send_message(sid, {"q": 1}, end_stream=True)
    p.run()
    p.b.send_message(sid, {"a": 1}, end_stream=True)
    p.run()
    assert MessageReceived(stream_id=sid, value={"a": 1}, grant=None) in p.events[p.a]
    assert StreamEnded(stream_id=sid) in p.events[p.a]
    return sid


def test_reset_crossing_a_graceful_end_is_ignored() -> None:
    p = Pair(cfg(1), cfg(2)).handshake()
    sid = request_reply(p)
    # a cancelled the request just as the reply arrived: its RESET reaches b
    # after b already finished the stream.
    events = inject(p, [ResetFrame(sid, ErrorCode.CANCELLED, 9)], to_b=True)
    assert not any(isinstance(e, ConnectionClosed) for e in events), events
    assert p.b.state is ConnectionState.ESTABLISHED
    # The same for a window update that crossed the end.
    events = inject(p, [WindowUpdateFrame(sid, 1000)], to_b=True)
    assert not any(isinstance(e, ConnectionClosed) for e in events), events
    assert p.b.state is ConnectionState.ESTABLISHED


def test_data_after_a_graceful_end_is_still_an_error() -> None:
    from m2mproto.frames import StreamFrame

    p = Pair(cfg(1), cfg(2)).handshake()
    sid = request_reply(p)
    events = inject(p, [StreamFrame(sid, b"late", False)], to_b=True)
    closed = [e for e in events if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == ErrorCode.STREAM_STATE_ERROR


def test_reply_on_our_own_stream_needs_no_capability() -> None:
    # a's authorizer grants b nothing: b may not open streams or send messages
    # of its own, but it may answer on the stream a opened.
    authz = _Authz(set())
    p = Pair(cfg(1), cfg(2), a={"authorizer": authz}).handshake()
    sid = request_reply(p)
    assert not any(isinstance(e, StreamReset) for e in p.events[p.a])
    own = p.b.open_stream("push")
    p.b.send_message(own, 1, end_stream=True)
    p.run()
    assert StreamReset(stream_id=own, code=ErrorCode.UNAUTHORIZED, remote=False) in p.events[p.a]
    assert sid != own


def test_credit_of_a_finished_stream_is_returned() -> None:
    window = 64 * 1024
    manual = {"auto_window_update": False, "initial_connection_window": window}
    p = Pair(cfg(1, **manual), cfg(2, **manual)).handshake()
    reply = b"x" * 8000
    # Far more than one connection window of replies, each consumed only after
    # the stream has finished in the core (its last bytes came after our end).
    for i in range(20):
        sid = p.a.open_stream("echo")
        p.a.send_message(sid, i, end_stream=True)
        p.run()
        p.b.send_message(sid, reply, end_stream=True)
        p.run()
        got = [e for e in p.events[p.a] if isinstance(e, MessageReceived) and e.stream_id == sid]
        assert got and got[0].value == reply, f"reply {i} stalled"
        p.a.acknowledge_data(sid, len(reply) + 3)
        p.run()
    assert p.a.state is ConnectionState.ESTABLISHED


def test_acknowledge_unknown_stream_is_refused() -> None:
    import pytest

    from m2mproto.errors import LocalProtocolError

    p = Pair(Configuration(auto_window_update=False), cfg(2)).handshake()
    with pytest.raises(LocalProtocolError) as info:
        p.a.acknowledge_data(1001, 10)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
