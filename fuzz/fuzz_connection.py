"""A full Connection after a completed handshake, fed validly encrypted frames.

Theory of operation
-------------------
The target is a real :class:`m2mproto.connection.Connection` (role from the
first input byte) with small limits, a real ``TokenAuthorizer`` and fixed
entropy, static key and clock. The peer is the harness: a sans-IO
``Handshake`` with fixed keys whose flights are recorded once and replayed,
so every input starts from the same established connection in about a
millisecond. The rest of the input is a program (``_common.ByteReader``):

* peer records of 1-3 frames from a grammar biased toward live stream IDs
  and plausible sizes, sealed with the peer's real sending CipherState
  (a KEY_UPDATE frame goes last and ratchets the peer's key), delivered
  whole or split;
* local API calls (open, send, send_message, reset, ping, update_keys,
  acknowledge_data, close, present_token) — their ``LocalProtocolError``
  is allowed;
* clock advances with ``handle_timer``; unencrypted junk; end of stream.

Invariants, checked after every event: ``next_event`` never raises except
``CONNECTION_CLOSED`` after ``ConnectionClosed``; windows never negative and
received bytes within the credit granted; open streams within both limits;
reassembly and send buffers within their limits; every byte the target
sends decrypts and decodes, and its stream bytes stay within the credit the
peer granted.
"""

from __future__ import annotations

import copy
from typing import Any

from _common import (
    NOW,
    ByteReader,
    DeterministicEntropy,
    fuzz_main,
    identity,
    instrumented,
    new_handshake,
    static_key,
    token_set,
)

with instrumented(__name__):
    from m2mproto import cbor
    from m2mproto.config import Configuration
    from m2mproto.connection import NEED_DATA, Connection, ConnectionState, Role
    from m2mproto.errors import AuthenticationError, ErrorCode, LocalProtocolError
    from m2mproto.events import ConnectionClosed, HandshakeCompleted, PingAcknowledged
    from m2mproto.frames import (
        CloseFrame,
        ExtensionFrame,
        Frame,
        KeyUpdateFrame,
        MessageFrame,
        OpenFrame,
        PingFrame,
        PongFrame,
        ReplyFrame,
        RequestFrame,
        ResetFrame,
        StreamFrame,
        TokenFrame,
        WindowUpdateFrame,
        decode_frames,
        encode_frame,
    )
    from m2mproto.records import RecordReader, RecordWriter
    from m2mproto.tokens import TokenAuthorizer

#: What the peer advertises (small, so the target's send side hits its limits).
PEER_PARAMS = {1: 3, 2: 1024, 3: 4096, 4: 4096, 5: 1}  # 5: REQUEST/REPLY negotiated
T0 = 100.0  # the target's monotonic clock at the start
RESOURCES = ("echo", "files/a", "files/b/c", "nope", "x" * 256)
MAX_OPS = 48


def target_config(me: str) -> Any:
    """The target's configuration: small limits so every budget can be reached."""
    return Configuration(
        entropy=DeterministicEntropy(b"conn:" + me.encode()),
        static_key=static_key(me),
        clock_offset=NOW - T0,
        max_message_size=2048,
        max_concurrent_streams=4,
        initial_stream_window=4096,
        initial_connection_window=16384,
        handshake_timeout=10.0,
        idle_timeout=60.0,
        keepalive_interval=20.0,
        close_timeout=5.0,
        max_queued_control=16,
        max_no_progress_frames=8,
        max_key_updates_without_data=4,
        stream_churn_burst=8,
        stream_churn_rate=1.0,
        key_update_after_records=64,
        max_records_per_key=4096,
        max_token_size=2048,
        max_reassembly_bytes=4096,
        max_send_buffer=65536,
        # The recorded handshake is replayed per input and must be deterministic: the
        # hybrid suite's ML-KEM encapsulation draws OpenSSL randomness, so classical here.
        post_quantum=False,
    )


class Established:
    """Recorded handshake for one target role, replayed per input."""

    def __init__(self, target_is_initiator: bool) -> None:
        self.initiator = target_is_initiator
        self.me, self.peer_name = ("alice", "bob") if target_is_initiator else ("bob", "alice")
        self.tokens = token_set(self.peer_name, self.me)
        peer_tokens = () if target_is_initiator else (self.tokens["valid"],)
        conn = self.new_target()
        peer = new_handshake(not target_is_initiator, tokens=peer_tokens, params=PEER_PARAMS)
        self.peer_flights: list[bytes] = []
        self.target_flights: list[bytes] = []
        result = None
        for _ in range(4):
            out = conn.data_to_send()
            self.target_flights.append(out)
            if out:
                peer.receive_data(out)
                result = result or peer.next_event()
            back = peer.data_to_send()
            self.peer_flights.append(back)
            if back:
                conn.receive_data(back, T0)
            while conn.next_event() is not NEED_DATA:
                pass
            if result is not None and conn.state is ConnectionState.ESTABLISHED:
                break
        assert result is not None and conn.state is ConnectionState.ESTABLISHED, conn.state
        self.send_cipher = copy.copy(result.send_cipher)
        self.recv_cipher = copy.copy(result.recv_cipher)
        self.trailing_out = conn.data_to_send()

    def new_target(self) -> Any:
        expected = identity(self.peer_name).agent_id

        def authenticate(agent: Any) -> None:
            if agent != expected:
                raise AuthenticationError("unexpected peer", ErrorCode.AUTH_UNTRUSTED)

        conn = Connection(
            Role.INITIATOR if self.initiator else Role.RESPONDER,
            identity(self.me),
            target_config(self.me),
            authorizer=TokenAuthorizer(
                trust_roots=[identity("authority").agent_id],
                audience=identity(self.me).agent_id,
            ),
            authenticate_peer=authenticate,
        )
        conn.start(T0)
        return conn

    def replay(self) -> Any:
        """A fresh target, established by replaying the recorded peer flights."""
        conn = self.new_target()
        for expected, back in zip(self.target_flights, self.peer_flights, strict=True):
            out = conn.data_to_send()
            assert out == expected, "the target's handshake is not deterministic"
            if back:
                conn.receive_data(back, T0)
            while conn.next_event() is not NEED_DATA:
                pass
        assert conn.state is ConnectionState.ESTABLISHED
        return conn


_ESTABLISHED: dict[bool, Established] = {}


def established(target_is_initiator: bool) -> Established:
    """The cached handshake for one role."""
    if target_is_initiator not in _ESTABLISHED:
        _ESTABLISHED[target_is_initiator] = Established(target_is_initiator)
    return _ESTABLISHED[target_is_initiator]


class Harness:
    """The peer side of one run: seals frames, reads and checks the target's output."""

    def __init__(self, est: Established, r: ByteReader) -> None:
        self.r = r
        self.est = est
        self.conn = est.replay()
        self.now = T0
        self.writer = RecordWriter(
            copy.copy(est.send_cipher), key_update_after=2**24, max_records_per_key=2**32
        )
        self.reader = RecordReader(copy.copy(est.recv_cipher), max_records_per_key=2**32)
        self.peer_parity = 0 if not est.initiator else 1
        self.sent: dict[int, int] = {}  # bytes the peer sent per stream
        self.granted_conn = PEER_PARAMS[3]
        self.granted: dict[int, int] = {}  # extra stream credit the peer granted
        self.target_sent: dict[int, int] = {}
        self.target_total = 0
        self.pings: list[bytes] = [b""]
        self.closed_seen = False
        self.eof = False
        #: Record plaintexts both ways (record_corpus.py turns them into seeds).
        self.plaintexts: list[bytes] = []
        self.read_output(est.trailing_out)

    # -- grammar ----------------------------------------------------------------

    def sid(self) -> int:
        r = self.r
        mode = r.u8() % 8
        if mode < 5:
            return 2 * (r.u8() % 6) + self.peer_parity
        if mode < 7:
            return 2 * (r.u8() % 6) + (1 - self.peer_parity)
        return int(r.choice((2**62 - 1, 2**62, 1000, 2**32)))

    def size(self) -> int:
        return int(self.r.choice((0, 1, 7, 100, 1000, 2000, 4096, 5000, 20000)))

    def frame(self) -> Frame:
        r = self.r
        kind = r.u8() % 14
        if kind in (0, 1):
            sid = self.sid()
            data = bytes(self.size() if r.u8() & 1 else r.u8())
            return StreamFrame(sid, data, bool(r.u8() & 1))
        if kind == 2:
            return OpenFrame(self.sid(), r.choice(RESOURCES))
        if kind == 3:
            flags = r.u8()
            if flags & 4:
                value: Any = {"n": r.u16(), "b": bytes(r.u8())}
                fragment = cbor.encode(value)
            else:
                fragment = r.blob(3000)
            last = bool(flags & 1)
            return MessageFrame(self.sid(), fragment, last, last and bool(flags & 2))
        if kind == 4:
            sid = self.sid()
            final = self.sent.get(sid, 0) if r.u8() & 1 else r.u16()
            return ResetFrame(sid, r.u16(), final)
        if kind == 5:
            sid = None if r.u8() & 1 else self.sid()
            inc = int(r.choice((1, 100, 4096, 65536, 2**62 - 1)))
            return WindowUpdateFrame(sid, inc)
        if kind == 6:
            return PingFrame(r.blob(70))
        if kind == 7:
            return PongFrame(r.choice(self.pings) if r.u8() & 1 else r.blob(8))
        if kind == 8:
            names = sorted(self.est.tokens)
            token = self.est.tokens[r.choice(names)] if r.u8() % 4 else r.blob(3000)
            return TokenFrame(token)
        if kind == 9:
            return KeyUpdateFrame(bool(r.u8() & 1))
        if kind == 10:
            return CloseFrame(r.u16() % 0x50, r.blob(40).decode("utf-8", "replace"))
        if kind in (12, 13):  # REQUEST / REPLY (negotiated: the peer advertises parameter 5)
            flags = r.u8()
            payload = cbor.encode({"n": r.u16(), "b": bytes(r.u8())}) if flags & 4 else r.blob(3000)
            if kind == 12:
                return RequestFrame(self.sid(), r.choice(RESOURCES), payload)
            return ReplyFrame(self.sid(), payload)
        return ExtensionFrame(64 + r.u8(), (r.blob(16),))

    # -- peer output ---------------------------------------------------------------

    def send_record(self) -> None:
        r = self.r
        frames = [self.frame() for _ in range(1 + r.u8() % 3)]
        frames.sort(key=lambda f: isinstance(f, KeyUpdateFrame))  # KEY_UPDATE goes last
        body = bytearray()
        update = False
        for f in frames:
            try:
                raw = encode_frame(f)
            except LocalProtocolError:
                continue
            if len(body) + len(raw) > 65519 or update:
                break
            body += raw
            update = isinstance(f, KeyUpdateFrame)
            self.note_sent(f)
        self.plaintexts.append(bytes(body))
        record = self.writer.seal(bytes(body))
        if update:
            self.writer.rekey()
        if r.u8() & 1 and len(record) > 1:
            cut = 1 + r.u16() % (len(record) - 1)
            self.deliver(record[:cut])
            self.deliver(record[cut:])
        else:
            self.deliver(record)

    def note_sent(self, f: Frame) -> None:
        if isinstance(f, StreamFrame):
            self.sent[f.stream_id] = self.sent.get(f.stream_id, 0) + len(f.data)
        elif isinstance(f, MessageFrame):
            self.sent[f.stream_id] = self.sent.get(f.stream_id, 0) + len(f.fragment)
        elif isinstance(f, WindowUpdateFrame):
            if f.stream_id is None:
                self.granted_conn += f.increment
            else:
                self.granted[f.stream_id] = self.granted.get(f.stream_id, 0) + f.increment

    def deliver(self, data: bytes) -> None:
        if self.eof:
            return
        self.conn.receive_data(data, self.now)
        self.pump()

    # -- local API -------------------------------------------------------------------

    def local_call(self) -> None:
        r, conn = self.r, self.conn
        op = r.u8() % 10
        live = sorted(conn.streams) or [0]
        sid = live[r.u8() % len(live)]
        try:
            if op == 0:
                conn.open_stream(r.choice(RESOURCES[:4]))
            elif op == 1:
                conn.send(sid, bytes(self.size()), bool(r.u8() & 1))
            elif op == 2:
                conn.send_message(sid, {"v": bytes(self.size())}, bool(r.u8() & 1))
            elif op == 3:
                conn.reset_stream(sid, r.u16())
            elif op == 4:
                self.pings.append(conn.ping(r.blob(8) if r.u8() & 1 else None))
            elif op == 5:
                conn.update_keys(bool(r.u8() & 1))
            elif op == 6:
                conn.acknowledge_data(sid, self.size())
            elif op == 7:
                conn.close(int(r.choice((0, 1, 5, 0x1000))), "bye")
            elif op == 8:
                conn.present_token(self.est.tokens["valid"])
            else:
                conn.reauthorize(self.now)
        except LocalProtocolError:
            pass  # local misuse is the caller's error, allowed
        self.pump()

    # -- checks ------------------------------------------------------------------------

    def pump(self) -> None:
        conn = self.conn
        for _ in range(10_000):
            if self.closed_seen:
                try:
                    conn.next_event()
                except LocalProtocolError as exc:
                    assert exc.code is ErrorCode.CONNECTION_CLOSED, exc
                    break
                raise AssertionError("next_event after ConnectionClosed did not raise")
            ev = conn.next_event()
            if ev is NEED_DATA:
                break
            assert not isinstance(ev, HandshakeCompleted), "second HandshakeCompleted"
            if isinstance(ev, ConnectionClosed):
                self.closed_seen = True
            if isinstance(ev, PingAcknowledged):
                assert ev.payload in self.pings
            self.check_state()
        else:
            raise AssertionError("next_event did not settle")
        self.read_output(conn.data_to_send())
        self.check_state()

    def read_output(self, out: bytes) -> None:
        """Everything the target sends must decrypt, decode and respect our credit."""
        self.reader.feed(out)
        for _ in range(10_000):
            plaintext = self.reader.next_record()
            if plaintext is None:
                break
            self.plaintexts.append(plaintext)
            frames = decode_frames(plaintext, request_reply=True)
            for f in frames:
                if isinstance(f, (StreamFrame, MessageFrame, RequestFrame, ReplyFrame)):
                    if isinstance(f, StreamFrame):
                        n = len(f.data)
                    elif isinstance(f, MessageFrame):
                        n = len(f.fragment)
                    else:
                        n = len(f.payload)
                    total = self.target_sent.get(f.stream_id, 0) + n
                    self.target_sent[f.stream_id] = total
                    self.target_total += n
                    limit = PEER_PARAMS[2] + self.granted.get(f.stream_id, 0)
                    assert total <= limit, f"stream {f.stream_id}: {total} > credit {limit}"
                    assert self.target_total <= self.granted_conn, "connection credit exceeded"
                elif isinstance(f, PingFrame):
                    self.pings.append(f.payload)
            if frames and isinstance(frames[-1], KeyUpdateFrame):
                self.reader.rekey()
        assert self.reader.buffered < 2 + 65535, "target left a partial record"

    def check_state(self) -> None:
        conn, cfg = self.conn, self.conn.config
        streams = conn.streams
        remote = local = 0
        for sid, s in streams.items():
            assert s.send_credit.available >= 0, f"stream {sid} send credit negative"
            assert 0 <= s.recv_window.received <= s.recv_window.limit, f"stream {sid} window"
            assert s.send_buffered >= 0
            assert len(s.reassembly) <= cfg.max_message_size
            if s.local:
                local += 1
            else:
                remote += 1
        assert remote <= cfg.max_concurrent_streams, "peer streams above our limit"
        assert local <= PEER_PARAMS[1], "our streams above the peer's limit"
        assert sum(len(s.reassembly) for s in streams.values()) <= cfg.max_reassembly_bytes
        buffered = conn.send_buffered()
        assert 0 <= buffered <= cfg.max_send_buffer, buffered
        if conn.state is not ConnectionState.CLOSED:
            assert buffered == sum(s.send_buffered for s in streams.values())
        windows = conn.connection_windows()
        assert 0 <= windows.recv_consumed <= windows.recv_received, "consumed above received"
        assert windows.recv_received <= windows.recv_limit, "connection receive window exceeded"
        assert 0 <= windows.send_sent <= windows.send_limit, "connection send credit negative"

    # -- program ---------------------------------------------------------------------

    def run(self) -> None:
        r = self.r
        for _ in range(MAX_OPS):
            if not r.remaining:
                break
            op = r.u8() % 16
            if op < 10:
                self.send_record()
            elif op < 13:
                self.local_call()
            elif op == 13:
                self.now += int(r.choice((0.5, 1, 5, 21, 61)))
                self.conn.handle_timer(self.now)
                self.pump()
            elif op == 14:
                self.deliver(r.blob(40))
            else:
                self.deliver(b"")
                self.eof = True
        if not self.eof:
            self.deliver(b"")
            self.eof = True
        self.now += 1000
        self.conn.handle_timer(self.now)
        self.pump()
        assert self.closed_seen, "connection not closed after end of stream"


def check_connection(data: bytes) -> None:
    """Run one connection program from *data* (first byte: target role)."""
    if not data:
        return
    Harness(established(bool(data[0] & 1)), ByteReader(data[1:])).run()


if __name__ == "__main__":
    fuzz_main(check_connection)
