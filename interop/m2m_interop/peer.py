"""The hostile peer: a second m2mproto implementation that can be wrong on purpose.

Theory of operation
-------------------
The conformance runner talks to the implementation under test (IUT) through a
:class:`Link` (bytes both ways, end of stream, and, where the attachment
allows it, the IUT's local view). :class:`HostilePeer` is built from the
project's codec (``noise``, ``handshake`` wire pieces, ``frames``, ``cbor``)
but not from its state machines: every step of the handshake and the record
layer is spelled out here so that a :class:`Bugs` knob can break it (a wrong
offer, a flipped bit, a forged signature, a record under the old key ...).
Production modules have no such switches; they live only in this package.

After the handshake a :class:`Session` seals records with the peer's own
CipherStates (no limits, no checks) and decodes whatever the IUT sends back,
so that a case can assert the IUT's exact wire behaviour: the CLOSE or
ABORT code, RESET frames, PONGs, KEY_UPDATEs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from m2mproto import cbor
from m2mproto.errors import ErrorCode, M2MError
from m2mproto.frames import (
    CloseFrame,
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
    decode_frames,
    encode_frame,
)
from m2mproto.handshake import MAGIC, binding_message
from m2mproto.identity import Identity
from m2mproto.noise import CipherState, HandshakeState, NoiseProtocol, x25519_public_key

from . import mint

__all__ = [
    "Bugs",
    "HostilePeer",
    "Link",
    "LocalView",
    "PeerError",
    "Received",
    "Session",
]

_PROTOCOLS = {
    "XX": "Noise_XX_25519_ChaChaPoly_SHA256",
    "IK": "Noise_IK_25519_ChaChaPoly_SHA256",
    "XXhfs": "Noise_XXhfs_25519+ML-KEM-768_ChaChaPoly_SHA256",
    "IKhfs": "Noise_IKhfs_25519+ML-KEM-768_ChaChaPoly_SHA256",
}
_IK = frozenset({"IK", "IKhfs"})
DEFAULT_PARAMS: dict[int, Any] = {1: 100, 2: 262144, 3: 1048576, 4: 1048576}


class PeerError(Exception):
    """The IUT did something the hostile peer cannot continue from (reported as actual)."""


@dataclass(frozen=True, slots=True)
class LocalView:
    """What the IUT reported locally (only where the attachment exposes it)."""

    #: Code of the IUT's ConnectionClosed (its local error), if closed.
    closed_code: int | None
    #: ``(stream_id, code, remote)`` of every StreamReset the IUT reported.
    resets: tuple[tuple[int, int, bool], ...]
    #: Names of every event the IUT's application saw, in order.
    events: tuple[str, ...]
    #: The peer's agent ID as the IUT authenticated it (text), if known.
    peer: str | None = None
    #: Reason codes of TOKEN frames the IUT rejected (reported locally only).
    token_rejected: tuple[int, ...] = ()


class Link(Protocol):
    """Bytes between the runner and one IUT connection."""

    def write(self, data: bytes) -> None:
        """Deliver *data* to the IUT."""

    def read(self) -> bytes:
        """Return whatever the IUT has sent since the last call (may be empty)."""

    def write_eof(self) -> None:
        """End the runner's direction (TCP FIN)."""

    @property
    def iut_closed(self) -> bool:
        """True once the IUT has closed its side."""

    def advance(self, seconds: float) -> None:
        """Let *seconds* pass on the IUT's clock (and fire its timers)."""

    def local(self) -> LocalView | None:
        """The IUT's local view, or None if the attachment cannot see it."""


@dataclass
class Bugs:
    """Knobs that make the hostile peer deviate from the protocol (default: none)."""

    #: Our long-term identity.
    identity: Identity = field(default_factory=lambda: mint.HOLDER)
    #: Tokens in our initiator payload.
    tokens: Sequence[bytes] = ()
    #: Noise pattern we ask for (initiator).
    pattern: str = "XX"
    #: Transport parameters we advertise.
    params: Mapping[Any, Any] = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    #: Our Noise static private key (default: fixed per identity).
    static_key: bytes | None = None
    #: Raw bytes sent instead of MAGIC (initiator) / before everything (responder).
    magic: bytes = MAGIC
    #: Raw offer CBOR instead of ``{1: [1], 2: pattern}``.
    offer: bytes | None = None
    #: Offer bytes bound into OUR prologue (simulates an on-path rewrite of the offer).
    prologue_offer: bytes | None = None
    #: Raw message-1 body instead of the Noise message (initiator).
    msg1: bytes | None = None
    #: Bytes appended to the message-1 body (inside its frame).
    msg1_extra: bytes = b""
    #: Payload bytes instead of our encoded payload (message 1 for IK, 3 for XX, 2 as responder).
    payload: bytes | None = None
    #: Mutates the payload map before it is encoded.
    payload_edit: Callable[[dict[int, Any]], None] | None = None
    #: Bytes appended after the payload map (inside the encrypted plaintext).
    payload_trailing: bytes = b""
    #: Rewrites our identity signature.
    signature: Callable[[bytes], bytes] | None = None
    #: Sign this static public key instead of ours.
    sign_static: bytes | None = None
    #: XOR mask applied to byte ``flip[0]`` of our last handshake message body.
    flip: tuple[int, int] | None = None
    #: Bytes appended inside the frame of our last handshake message.
    last_extra: bytes = b""
    #: The responder's static key an IK initiator uses (default: the IUT's real one).
    ik_remote_static: bytes | None = None
    #: Version the hostile responder announces in message 2.
    version: int = 1
    #: Pattern the hostile responder runs (default: the one the IUT offered).
    responder_pattern: str | None = None


@dataclass(frozen=True, slots=True)
class Received:
    """What the IUT sent back, decoded."""

    #: Decrypted frames, in order.
    frames: tuple[Frame, ...] = ()
    #: Code of a cleartext ABORT, if one arrived.
    abort: int | None = None
    #: Raw bytes (before decryption) received in this batch.
    raw: bytes = b""
    #: True if the IUT closed its side.
    closed: bool = False

    def close_code(self) -> int | None:
        """The code of the first CLOSE frame, or of the ABORT."""
        for f in self.frames:
            if isinstance(f, CloseFrame):
                return f.code
        return self.abort

    def of(self, kind: type) -> list[Any]:
        """Frames of one class."""
        return [f for f in self.frames if isinstance(f, kind)]


def _static_for(identity: Identity) -> bytes:
    return mint.seed("noise static " + identity.agent_id.text)


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


class _Reader:
    """Parses the IUT's byte stream: magic, handshake frames, then records."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def take(self, n: int) -> bytes | None:
        if len(self.buf) < n:
            return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def frame(self) -> bytes | None:
        if len(self.buf) < 2:
            return None
        n = int.from_bytes(self.buf[:2], "big")
        if len(self.buf) < 2 + n:
            return None
        body = bytes(self.buf[2 : 2 + n])
        del self.buf[: 2 + n]
        return body


class HostilePeer:
    """One connection's worth of hostile peer over *link*.

    Args:
        link: the byte link to the IUT.
        initiator: True if we open the connection (the IUT is the responder).
        bugs: deviations from the protocol.
        iut_static: the IUT's Noise static public key (needed for IK, reflection).
    """

    def __init__(
        self,
        link: Link,
        *,
        initiator: bool = True,
        bugs: Bugs | None = None,
        iut_static: bytes | None = None,
    ) -> None:
        self.link = link
        self.initiator = initiator
        self.bugs = bugs or Bugs()
        self.iut_static = iut_static
        self.static = self.bugs.static_key or _static_for(self.bugs.identity)
        self.entropy = mint.entropy("hostile " + self.bugs.identity.agent_id.text)
        self.reader = _Reader()
        self.noise: HandshakeState | None = None
        self.peer_payload: dict[Any, Any] | None = None
        self.sent: list[bytes] = []

    # ----------------------------------------------------------- handshake pieces

    def _payload(self, *, responder: bool) -> bytes:
        b = self.bugs
        if b.payload is not None:
            return b.payload + b.payload_trailing
        signed = b.sign_static if b.sign_static is not None else x25519_public_key(self.static)
        sig = b.identity.sign(binding_message(signed))
        if b.signature is not None:
            sig = b.signature(sig)
        obj: dict[int, Any] = {1: b.identity.public_key, 2: sig, 3: dict(b.params)}
        if responder:
            obj[5] = b.version
        else:
            obj[4] = [bytes(t) for t in b.tokens]
        if b.payload_edit is not None:
            b.payload_edit(obj)
        return cbor.encode(obj) + b.payload_trailing

    def _last(self, body: bytes) -> bytes:
        b = self.bugs
        if b.flip is not None:
            pos, mask = b.flip
            ba = bytearray(body)
            ba[pos % len(ba)] ^= mask
            body = bytes(ba)
        return body + b.last_extra

    def send(self, data: bytes) -> None:
        """Write raw bytes to the IUT."""
        self.sent.append(data)
        self.link.write(data)

    def offer_bytes(self) -> bytes:
        b = self.bugs
        return b.offer if b.offer is not None else cbor.encode({1: [1], 2: b.pattern})

    def start(self) -> None:
        """Initiator: send the preface and message 1 (with any knob applied)."""
        b = self.bugs
        offer = self.offer_bytes()
        bound = b.prologue_offer if b.prologue_offer is not None else offer
        prologue = MAGIC + _frame(bound)
        rs = None
        if b.pattern in _IK:
            rs = b.ik_remote_static or self.iut_static
        if b.msg1 is not None:
            msg1 = b.msg1
        else:
            self.noise = HandshakeState(
                NoiseProtocol.from_name(_PROTOCOLS.get(b.pattern, _PROTOCOLS["XX"])),
                initiator=True,
                prologue=prologue,
                s=self.static,
                rs=rs,
                entropy=self.entropy,
            )
            payload = self._payload(responder=False) if b.pattern in _IK else b""
            msg1 = self.noise.write_message(payload)
        msg1 += b.msg1_extra
        if b.pattern in _IK:
            msg1 = self._last(msg1)
        self.send(b.magic + _frame(offer) + _frame(msg1))

    def _pull_frame(self, expect_magic: bool) -> tuple[bytes | None, int | None]:
        """Return (frame body, abort code) from the IUT's output."""
        self.reader.buf += self.link.read()
        if expect_magic:
            if len(self.reader.buf) < 8:
                return None, None
            if bytes(self.reader.buf[:8]) != MAGIC:
                raise PeerError("IUT did not send MAGIC")
            del self.reader.buf[:8]
        body = self.reader.frame()
        if body is None:
            return None, None
        if len(body) == 2:
            return None, int.from_bytes(body, "big")
        return body, None

    def finish_initiator(self) -> Received | Session:
        """Initiator: read message 2, send message 3 (XX). Returns the Session or the abort."""
        b = self.bugs
        body, abort = self._pull_frame(expect_magic=True)
        if abort is not None or body is None:
            return Received(abort=abort, closed=self.link.iut_closed)
        assert self.noise is not None
        payload = self.noise.read_message(body)
        self.peer_payload = cbor.decode(payload)
        if b.pattern not in _IK:
            msg3 = self._last(self.noise.write_message(self._payload(responder=False)))
            self.send(_frame(msg3))
        send, recv = self.noise.split()
        return Session(self, send, recv, self.noise.handshake_hash)

    def handshake(self) -> Received | Session:
        """Initiator: the whole handshake. Returns a Session, or what the IUT sent instead."""
        self.start()
        return self.finish_initiator()

    def accept(self) -> Received | Session:
        """Responder: read the IUT's flight 1, answer, read message 3 (XX)."""
        b = self.bugs
        self.reader.buf += self.link.read()
        magic = self.reader.take(8)
        if magic != MAGIC:
            raise PeerError("IUT initiator did not send MAGIC")
        offer = self.reader.frame()
        msg1 = self.reader.frame()
        if offer is None or msg1 is None:
            raise PeerError("IUT initiator sent an incomplete flight 1")
        decoded = cbor.decode(offer)
        pattern = b.responder_pattern or decoded[2]
        bound = b.prologue_offer if b.prologue_offer is not None else offer
        self.noise = HandshakeState(
            NoiseProtocol.from_name(_PROTOCOLS[pattern]),
            initiator=False,
            prologue=MAGIC + _frame(bound),
            s=self.static,
            entropy=self.entropy,
        )
        try:
            p1 = self.noise.read_message(msg1)
        except M2MError as exc:
            raise PeerError(f"cannot read the IUT's message 1 ({exc.code.name})") from None
        if pattern in _IK:
            self.peer_payload = cbor.decode(p1)
        msg2 = self._last(self.noise.write_message(self._payload(responder=True)))
        self.send(b.magic + _frame(msg2))
        if pattern in _IK:
            send, recv = self.noise.split()
            return Session(self, recv, send, self.noise.handshake_hash)
        body, abort = self._pull_frame(expect_magic=False)
        if abort is not None or body is None:
            return Received(abort=abort, closed=self.link.iut_closed)
        try:
            self.peer_payload = cbor.decode(self.noise.read_message(body))
        except M2MError as exc:
            raise PeerError(f"cannot read the IUT's message 3 ({exc.code.name})") from None
        c1, c2 = self.noise.split()
        return Session(self, c2, c1, self.noise.handshake_hash)


class Session:
    """The transport phase as seen by the hostile peer (no limits, no checks)."""

    def __init__(
        self, peer: HostilePeer, send: CipherState, recv: CipherState, handshake_hash: bytes
    ) -> None:
        self.peer = peer
        self.send_cs = send
        self.recv_cs = recv
        self.handshake_hash = handshake_hash
        self.records_sent: list[bytes] = []
        self.first_record = True
        self.next_stream = 0 if peer.initiator else 1
        self.key_updates_seen = 0
        #: Resource the liveness echo uses (a case with a narrow token may change it).
        self.alive_resource = "echo"
        #: False when the case used up the IUT's receive credit (liveness by PING only).
        self.alive_echo = True

    @property
    def link(self) -> Link:
        return self.peer.link

    @property
    def iut_request_reply(self) -> bool:
        """The IUT advertised request/reply (transport parameter 5 = 1)."""
        payload = self.peer.peer_payload
        params = payload.get(3) if isinstance(payload, dict) else None
        return isinstance(params, dict) and params.get(5) == 1

    @property
    def request_reply(self) -> bool:
        """Both sides advertised request/reply: REQUEST and REPLY frames are core kinds."""
        return self.peer.bugs.params.get(5) == 1 and self.iut_request_reply

    # ------------------------------------------------------------------ sending

    def seal(self, plaintext: bytes, *, length: int | None = None) -> bytes:
        """Encrypt one record (advances our nonce). ``length`` overrides the prefix."""
        ct = self.send_cs.encrypt_with_ad(b"", plaintext)
        n = len(ct) if length is None else length
        record = n.to_bytes(2, "big") + ct
        self.records_sent.append(record)
        return record

    def plaintext(self, *items: Frame | bytes) -> bytes:
        """Concatenate frames (encoded) and raw byte strings.

        An OPEN of one of our stream IDs moves :meth:`open_stream` past it.
        """
        for i in items:
            if (
                isinstance(i, (OpenFrame, RequestFrame))
                and i.stream_id % 2 == self.next_stream % 2
            ):
                self.next_stream = max(self.next_stream, i.stream_id + 2)
        return b"".join(i if isinstance(i, bytes) else encode_frame(i) for i in items)

    def send(self, *items: Frame | bytes) -> None:
        """Seal *items* into one record and write it."""
        record = self.seal(self.plaintext(*items))
        self.link.write(record)

    def send_raw_items(self, *items: Any) -> None:
        """Seal CBOR-encoded raw items (bypassing the frame encoder's checks)."""
        self.send(*(cbor.encode(i) for i in items))

    def write(self, data: bytes) -> None:
        self.link.write(data)

    def rekey_send(self) -> None:
        self.send_cs.rekey()

    def open_stream(self, resource: str = "echo") -> int:
        """Allocate our next stream ID (the caller sends the OPEN)."""
        sid = self.next_stream
        self.next_stream += 2
        _ = resource
        return sid

    # ------------------------------------------------------------------ receiving

    def receive(self) -> Received:
        """Decode everything the IUT sent since the last call."""
        r = self.peer.reader
        data = self.link.read()
        r.buf += data
        frames: list[Frame] = []
        abort = None
        for _ in range(1_000_000):  # bounded by the bytes received
            if len(r.buf) < 2:
                break
            n = int.from_bytes(r.buf[:2], "big")
            if self.first_record and n == 2 and len(r.buf) >= 4:
                abort = int.from_bytes(r.buf[2:4], "big")
                del r.buf[:4]
                break
            if len(r.buf) < 2 + n:
                break
            body = bytes(r.buf[2 : 2 + n])
            del r.buf[: 2 + n]
            self.first_record = False
            try:
                plaintext = self.recv_cs.decrypt_with_ad(b"", body)
                got = decode_frames(plaintext, request_reply=self.request_reply)
            except M2MError as exc:
                raise PeerError(f"IUT sent an invalid record ({exc.code.name})") from None
            frames.extend(got)
            if got and isinstance(got[-1], KeyUpdateFrame):
                self.recv_cs.rekey()
                self.key_updates_seen += 1
        return Received(tuple(frames), abort, data, self.link.iut_closed)

    # ------------------------------------------------------------------ scripts

    def echo(self, value: Any = None, resource: str = "echo") -> tuple[bool, Received]:
        """Open a stream, send one message with end-of-stream, expect it echoed back."""
        value = {"hello": "world"} if value is None else value
        sid = self.open_stream(resource)
        data = cbor.encode(value)
        self.send(OpenFrame(sid, resource), MessageFrame(sid, data, True, True))
        got = self.receive()
        replies = [f for f in got.of(MessageFrame) if f.stream_id == sid]
        ok = any(f.fragment == data and f.last for f in replies) or any(
            f.payload == data for f in got.of(ReplyFrame) if f.stream_id == sid
        )
        return ok, got

    def ping(self, payload: bytes = b"live") -> tuple[bool, Received]:
        self.send(PingFrame(payload))
        got = self.receive()
        return any(p.payload == payload for p in got.of(PongFrame)), got

    def close(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> Received:
        self.send(CloseFrame(code, reason))
        return self.receive()


def stream_bytes(got: Received, sid: int) -> bytes:
    """Concatenated STREAM data the IUT sent on *sid*."""
    return b"".join(f.data for f in got.of(StreamFrame) if f.stream_id == sid)


def resets(got: Received, sid: int | None = None) -> list[ResetFrame]:
    """RESET frames the IUT sent (for *sid*, or all)."""
    return [f for f in got.of(ResetFrame) if sid is None or f.stream_id == sid]
