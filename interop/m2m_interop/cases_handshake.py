"""Conformance cases for spec/identity.md (§1) and spec/handshake.md (§2)."""

from __future__ import annotations

from typing import Any

from m2mproto import cbor
from m2mproto.handshake import MAGIC
from m2mproto.identity import AgentId

from . import mint
from .framework import Actual, Ctx, case, conn, gone, ok
from .inprocess import IUT_STATIC, IUTProfile, iut_tokens
from .peer import Session

_L = 2**252 + 27742317777372353535851937790883648493
IUT_INIT = IUTProfile(initiator=True, tokens=iut_tokens())


def _s_plus_l(sig: bytes) -> bytes:
    return sig[:32] + (int.from_bytes(sig[32:], "little") + _L).to_bytes(32, "little")


def _hs(**bugs: Any) -> Any:
    def run(ctx: Ctx) -> Actual:
        return ctx.run_handshake(**bugs)

    return run


def _raw(data: bytes, *, eof: bool = False) -> Any:
    """Send raw bytes as the initiator; observe what comes back."""

    def run(ctx: Ctx) -> Actual:
        link = ctx.link()
        link.write(data)
        if eof:
            link.write_eof()
        out = link.read()
        local = ctx.local_code(link)
        if out == MAGIC + b"\x00\x02" + out[10:12] and len(out) == 12:
            from m2mproto.errors import code_name

            return Actual("conn_error", code_name(int.from_bytes(out[10:12], "big")), local)
        if not out and link.iut_closed:
            return Actual("abort", None, local)
        return Actual("fail", None, local, f"IUT sent {len(out)} bytes: {out[:16].hex()}")

    return run


def _offer(obj: Any) -> bytes:
    body = cbor.encode(obj)
    return MAGIC + len(body).to_bytes(2, "big") + body


# ------------------------------------------------------------------ §1 identity

case(
    "1.1/1",
    "Identity-SignatureSPlusL",
    "1.1: signatures MUST be verified per RFC 8032 §5.1.7 (non-canonical S rejected).",
    conn("HANDSHAKE_FAILURE", "AUTH_SIGNATURE"),
)(_hs(signature=_s_plus_l))

case(
    "1.1/2",
    "Identity-KeyNotOnCurve",
    "2.5 steps 2-3: a 32-byte identity key that is not a curve point verifies nothing: "
    "AUTH_SIGNATURE.",
    conn("HANDSHAKE_FAILURE", "AUTH_SIGNATURE"),
)(_hs(payload_edit=lambda p: p.__setitem__(1, bytes.fromhex("02" + "00" * 30 + "80"))))

case(
    "1.1/3",
    "Identity-Key31Bytes",
    "2.5 step 2: an identity key that is not 32 bytes is AUTH_IDENTITY_KEY.",
    conn("HANDSHAKE_FAILURE", "AUTH_IDENTITY_KEY"),
)(_hs(payload_edit=lambda p: p.__setitem__(1, p[1][:31])))


@case(
    "1.2/1",
    "AgentId-Derived",
    "1.2: both sides name each other by the agent ID derived from the authenticated key.",
    ok(),
    needs={"iut-identity"},
)
def _agent_id(ctx: Ctx) -> Actual:
    s = ctx.session()
    view = s.link.local()
    assert s.peer.peer_payload is not None
    iut_id = AgentId(s.peer.peer_payload[1]).text
    if iut_id != mint.VERIFIER.agent_id.text:
        return Actual("fail", detail=f"IUT presented {iut_id}")
    if view is not None and view.peer != mint.HOLDER.agent_id.text:
        return Actual("fail", detail=f"IUT saw peer {view.peer}")
    return ctx.observe(s)


# ------------------------------------------------------------------ §2.1 framing

case(
    "2.1/1",
    "Preface-Garbage",
    "2.1: the magic is compared byte by byte; `GET / HTTP/1.1` fails at once with "
    "MAGIC || ABORT(VERSION_MISMATCH).",
    conn("VERSION_MISMATCH"),
)(_raw(b"GET / HTTP/1.1\r\n\r\n"))

case(
    "2.1/2",
    "Preface-HighBitStripped",
    "2.1: a channel that strips the high bit of the magic is detected at the first byte.",
    conn("VERSION_MISMATCH"),
)(_raw(bytes([MAGIC[0] & 0x7F]) + MAGIC[1:]))

case(
    "2.1/3",
    "Preface-FirstByteOnly",
    "2.1: a receiver fails at the first wrong byte without waiting for more input.",
    conn("VERSION_MISMATCH"),
)(_raw(b"\x16"))

case(
    "2.1/4",
    "Offer-LengthZero",
    "2.1: an offer frame of length 0 is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_raw(MAGIC + b"\x00\x00"))

case(
    "2.1/5",
    "Offer-Length257",
    "2.1: an offer frame longer than 256 bytes is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_raw(MAGIC + b"\x01\x01" + b"\xa0" * 257))


def _padded_offer(total: int) -> bytes:
    for pad in range(total):
        body = cbor.encode({1: [1], 2: "XX", 256: b"\x00" * pad})
        if len(body) == total:
            return body
    raise AssertionError("cannot pad offer")  # pragma: no cover


case(
    "2.1/6",
    "Offer-Length256-Pass",
    "2.1: an offer of exactly 256 bytes is accepted (boundary of 2.1/5; extension key ignored).",
    ok(),
)(_hs(offer=_padded_offer(256)))


@case(
    "2.1/7",
    "HS-FrameLength1to31",
    "2.1: a handshake frame of length 1 or 3..31 is DECODE_ERROR (2 is ABORT).",
    conn("DECODE_ERROR"),
)
def _short_frames(ctx: Ctx) -> Actual:
    first: Actual | None = None
    for n in [1, *range(3, 32)]:
        act = _raw(_offer({1: [1], 2: "XX"}) + n.to_bytes(2, "big") + b"\x00" * n)(ctx)
        if first is None:
            first = act
        elif (act.kind, act.wire, act.local) != (first.kind, first.wire, first.local):
            return Actual(act.kind, act.wire, act.local, f"length {n} differs from length 1")
    assert first is not None
    return first


_SMALL_HS = IUTProfile(config={"max_handshake_message": 1024})


def _msg3_of_size(size: int) -> Any:
    # XX message 3 = encrypted s (48) + encrypted payload (+16): pad with an extension key
    def edit(p: dict[int, Any]) -> None:
        base = len(cbor.encode(p)) + 48 + 16
        for pad in range(size):
            p[300] = b"\x00" * pad
            if len(cbor.encode(p)) + 48 + 16 == size:
                return
        raise AssertionError(f"cannot pad message 3 to {size} from {base}")  # pragma: no cover

    return edit


case(
    "2.1/8",
    "HS-FrameAtMax-Pass",
    "2.1: a handshake message of exactly max_message_size (1024 configured) is accepted.",
    ok(),
    profile=_SMALL_HS,
)(_hs(payload_edit=_msg3_of_size(1024)))

case(
    "2.1/9",
    "HS-FrameOverMax",
    "2.1: a handshake frame over max_message_size fails with FRAME_SIZE_ERROR (wire "
    "HANDSHAKE_FAILURE) as soon as its length is read.",
    conn("HANDSHAKE_FAILURE", "FRAME_SIZE_ERROR"),
    profile=_SMALL_HS,
)(_hs(payload_edit=_msg3_of_size(1025)))

# ------------------------------------------------------------------ §2.2 negotiation

case(
    "2.2/1",
    "Preface-UnknownVersionOnly",
    "2.2: no common version: MAGIC || ABORT(VERSION_MISMATCH).",
    conn("VERSION_MISMATCH"),
)(_raw(_offer({1: [2], 2: "XX"}) + b"\x00\x20" + b"\x09" * 32))

case(
    "2.2/2",
    "Offer-UnknownPattern",
    "2.2: an unsupported pattern (NN) is VERSION_MISMATCH.",
    conn("VERSION_MISMATCH"),
)(_raw(_offer({1: [1], 2: "NN"}) + b"\x00\x20" + b"\x09" * 32))

case(
    "2.2/3",
    "Offer-ReservedKey",
    "2.2: offer keys 0..255 other than 1 and 2 are DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_raw(_offer({1: [1], 2: "XX", 3: 0}) + b"\x00\x20" + b"\x09" * 32))

case(
    "2.2/4",
    "Offer-VersionsAscending",
    "2.2: a version list that is not strictly descending is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_raw(_offer({1: [1, 2], 2: "XX"}) + b"\x00\x20" + b"\x09" * 32))

case(
    "2.2/5",
    "Offer-17Versions",
    "2.2: more than 16 versions is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_raw(_offer({1: list(range(17, 0, -1)), 2: "XX"}) + b"\x00\x20" + b"\x09" * 32))

case(
    "2.2/6",
    "Offer-16Versions-Pass",
    "2.2: 16 versions (boundary of 2.2/5): the responder chooses the highest it supports (1).",
    ok(),
)(_hs(offer=cbor.encode({1: list(range(16, 0, -1)), 2: "XX"})))

case(
    "2.2/7",
    "Offer-NonDeterministic",
    "README CBOR profile: an offer that is not deterministic CBOR (1 as 2 bytes) is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_raw(MAGIC + b"\x00\x09" + bytes.fromhex("a2018118010262") + b"XX" + b"\x00\x20" + b"\x09" * 32))


@case(
    "2.2/8",
    "Downgrade-XX-Responder",
    "2.2: an XX responder binds the offer it received into the prologue, so an initiator "
    "whose offer was changed cannot read message 2; it aborts (DECRYPT_ERROR) and the "
    "responder reports the ABORT's code without answering it.",
    gone("DECRYPT_ERROR"),
)
def _downgrade_responder(ctx: Ctx) -> Actual:
    from m2mproto.errors import M2MError

    p = ctx.peer(prologue_offer=cbor.encode({1: [2, 1], 2: "XX"}))
    try:
        p.handshake()
    except M2MError as exc:
        if exc.code.name != "DECRYPT_ERROR":
            return Actual("fail", detail=f"message 2 failed with {exc.code.name}")
        p.link.write(b"\x00\x02\x00\x06")
        out = p.link.read()
        local = ctx.local_code(p.link)
        if out:
            return Actual("fail", None, local, f"IUT answered the ABORT with {len(out)} bytes")
        return Actual("abort" if p.link.iut_closed else "none", None, local)
    return Actual("fail", detail="message 2 decrypted under a changed prologue")


case(
    "2.2/9",
    "Downgrade-IK-Responder",
    "2.2: with IK the changed offer fails message 1 at the responder (DECRYPT_ERROR).",
    conn("DECRYPT_ERROR"),
    needs={"iut-keys"},
)(_hs(pattern="IK", prologue_offer=cbor.encode({1: [2, 1], 2: "IK"})))

case(
    "2.2/10",
    "Downgrade-XX-Initiator",
    "2.2: an XX initiator whose offer was changed fails on message 2 (DECRYPT_ERROR) and "
    "never sends message 3.",
    conn("DECRYPT_ERROR"),
    profile=IUT_INIT,
)(_hs(prologue_offer=cbor.encode({1: [2, 1], 2: "XX"})))

case(
    "2.2/11",
    "HS-ChosenVersionNotOffered",
    "2.2: the initiator checks the responder's choice (version 7 not offered: VERSION_MISMATCH).",
    conn("VERSION_MISMATCH"),
    profile=IUT_INIT,
)(_hs(version=7))

case(
    "2.2/12",
    "Offer-ExtensionIgnored-Pass",
    "2.2: offer extension keys 256..65535 are ignored.",
    ok(),
)(_hs(offer=cbor.encode({1: [1], 2: "XX", 4000: {"x": 1}})))

# ------------------------------------------------------------------ §2.3 messages

case(
    "2.3/1",
    "HS-Msg1-TrailingBytes",
    "2.3: XX message 1 is exactly 32 bytes; one more byte is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_hs(msg1_extra=b"\x00"))

case(
    "2.3/2",
    "HS-Msg3-TrailingBytes",
    "2.1/2.4: a byte appended inside the message 3 frame breaks the AEAD: DECRYPT_ERROR.",
    conn("DECRYPT_ERROR"),
)(_hs(last_extra=b"\x00"))

case(
    "2.3/3",
    "HS-Msg3-BitFlip",
    "2.6: one flipped bit in message 3 is DECRYPT_ERROR.",
    conn("DECRYPT_ERROR"),
)(_hs(flip=(60, 0x10)))

case(
    "2.3/4",
    "HS-Msg2-BitFlip",
    "2.6: one flipped bit in message 2 is DECRYPT_ERROR at the initiator.",
    conn("DECRYPT_ERROR"),
    profile=IUT_INIT,
)(_hs(flip=(40, 0x01)))

case(
    "2.3/5",
    "HS-LowOrderEphemeral-Zero",
    "2.6: an all-zero ephemeral key is AUTH_LOW_ORDER_KEY (wire HANDSHAKE_FAILURE).",
    conn("HANDSHAKE_FAILURE", "AUTH_LOW_ORDER_KEY"),
)(_hs(msg1=bytes(32)))

case(
    "2.3/6",
    "HS-LowOrderEphemeral-Order8",
    "2.6: an ephemeral key of order 8 (RFC 7748 §6.1 all-zero shared secret) is "
    "AUTH_LOW_ORDER_KEY.",
    conn("HANDSHAKE_FAILURE", "AUTH_LOW_ORDER_KEY"),
)(_hs(msg1=bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")))

case(
    "2.3/7",
    "HS-IK-Pass",
    "2.3: a responder MUST accept IK.",
    ok(),
    needs={"iut-keys"},
)(_hs(pattern="IK"))

case(
    "2.3/8",
    "HS-IK-WrongResponderKey",
    "2.6: IK message 1 to the wrong static key fails to decrypt (DECRYPT_ERROR).",
    conn("DECRYPT_ERROR"),
)(_hs(pattern="IK", ik_remote_static=mint.seed("not the IUT")))

case(
    "2.3/9",
    "HS-IK-Msg1TooShort",
    "2.6: an IK message 1 too short for its tokens is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_raw(_offer({1: [1], 2: "IK"}) + b"\x00\x28" + b"\x09" * 40))


@case(
    "2.3/10",
    "HS-Msg3-CoalescedWithRecords",
    "2.3: bytes after the last handshake message belong to the record layer unchanged.",
    ok(),
)
def _coalesced(ctx: Ctx) -> Actual:
    from m2mproto.frames import MessageFrame, OpenFrame

    link = ctx.link()
    p = ctx.peer(link)
    p.start()
    batch: list[bytes] = []
    p.link = _Capture(link, batch)
    result = p.finish_initiator()
    if not isinstance(result, Session):
        return ctx.after_handshake(p, result)
    data = cbor.encode({"coalesced": 1})
    record = result.seal(result.plaintext(OpenFrame(0, "echo"), MessageFrame(0, data, True, True)))
    p.link = link
    link.write(b"".join(batch) + record)
    got = result.receive()
    if not any(getattr(f, "fragment", None) == data for f in got.frames):
        return Actual("fail", detail="coalesced record not processed")
    result.next_stream = 2
    return ctx.observe(result)


class _Capture:
    """A link wrapper that holds writes back (to coalesce them with later bytes)."""

    def __init__(self, link: Any, batch: list[bytes]) -> None:
        self._link = link
        self._batch = batch

    def write(self, data: bytes) -> None:
        self._batch.append(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)


# ------------------------------------------------------------------ §2.4 payloads

case(
    "2.4/1",
    "Payload-MissingKey",
    "2.4: a payload without a required key (3) is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_hs(payload_edit=lambda p: p.pop(3)))

case(
    "2.4/2",
    "Payload-VersionInInitiator",
    "2.4: key 5 is forbidden in an initiator payload (DECODE_ERROR).",
    conn("DECODE_ERROR"),
)(_hs(payload_edit=lambda p: p.__setitem__(5, 1)))

case(
    "2.4/3",
    "Payload-TrailingBytes",
    "2.4: nothing may follow the payload map (DECODE_ERROR).",
    conn("DECODE_ERROR"),
)(_hs(payload_trailing=b"\x00"))

case(
    "2.4/4",
    "Payload-TokensNotArray",
    "2.4: tokens that are not an array of byte strings are DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_hs(payload_edit=lambda p: p.__setitem__(4, "token")))

case(
    "2.4/5",
    "Payload-Unsorted",
    "2.4/README: a payload map that is not deterministic (unsorted keys) is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(
    _hs(
        payload=bytes.fromhex("a4")
        + bytes.fromhex("0340")  # 3: h''  (wrong type too, but unsorted is seen first)
        + bytes.fromhex("015820")
        + mint.HOLDER.public_key
        + bytes.fromhex("025840")
        + b"\x00" * 64
        + bytes.fromhex("0480")
    )
)

case(
    "2.4/6",
    "Payload-ResponderTokens",
    "2.4: a responder payload carrying tokens (key 4) is DECODE_ERROR.",
    conn("DECODE_ERROR"),
    profile=IUT_INIT,
)(_hs(payload_edit=lambda p: p.__setitem__(4, [])))


def _deep(p: dict[int, Any]) -> None:
    v: Any = 0
    for _ in range(16):
        v = [v]
    p[3] = {9: v}


case(
    "2.4/7",
    "Payload-Depth17",
    "README: nesting deeper than 16 in a handshake payload is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_hs(payload_edit=_deep))

case(
    "2.4/8",
    "Payload-ExtensionIgnored-Pass",
    "2.4: payload keys 256..65535 MUST be ignored.",
    ok(),
)(_hs(payload_edit=lambda p: p.__setitem__(65535, {"future": True})))

# ------------------------------------------------------------------ §2.5 binding

case(
    "2.5/1",
    "HS-IdentitySig-OtherKey",
    "2.5 step 3: the signature must cover the static key Noise authenticated (AUTH_SIGNATURE).",
    conn("HANDSHAKE_FAILURE", "AUTH_SIGNATURE"),
)(_hs(sign_static=mint.seed("some other static key")))

case(
    "2.5/2",
    "HS-IdentitySig-Truncated",
    "2.5 step 3: a 63-byte signature is AUTH_SIGNATURE.",
    conn("HANDSHAKE_FAILURE", "AUTH_SIGNATURE"),
)(_hs(signature=lambda s: s[:63]))

case(
    "2.5/3",
    "HS-IdentitySig-Extended",
    "2.5 step 3: a 65-byte signature is AUTH_SIGNATURE.",
    conn("HANDSHAKE_FAILURE", "AUTH_SIGNATURE"),
)(_hs(signature=lambda s: s + b"\x00"))

case(
    "2.5/4",
    "HS-Reflected-Identity",
    "2.5 step 4: a peer presenting our own identity is AUTH_REFLECTED.",
    conn("HANDSHAKE_FAILURE", "AUTH_REFLECTED"),
    needs={"iut-keys"},
)(_hs(identity=mint.VERIFIER))

case(
    "2.5/5",
    "HS-Reflected-StaticKey",
    "2.5 step 4: a peer presenting our own Noise static key is AUTH_REFLECTED.",
    conn("HANDSHAKE_FAILURE", "AUTH_REFLECTED"),
    needs={"iut-keys"},
)(_hs(static_key=IUT_STATIC))

case(
    "2.5/6",
    "HS-Identity-Untrusted",
    "2.5 step 6: an identity the trust decision refuses is AUTH_UNTRUSTED (wire UNAUTHORIZED).",
    conn("UNAUTHORIZED", "AUTH_UNTRUSTED"),
    needs={"trust-list"},
)(_hs(identity=mint.STRANGER))


@case(
    "2.5/7",
    "HS-UnexpectedPeer",
    "2.5: an XX initiator refuses an unexpected responder (AUTH_UNEXPECTED_PEER, wire "
    "UNAUTHORIZED) before it writes message 3.",
    conn("UNAUTHORIZED", "AUTH_UNEXPECTED_PEER"),
    profile=IUTProfile(initiator=True, tokens=iut_tokens(), expect_peer=mint.HOLDER.agent_id),
)
def _unexpected(ctx: Ctx) -> Actual:
    p = ctx.peer(identity=mint.OTHER)
    result = p.accept()
    if isinstance(result, Session):
        return Actual("fail", detail="IUT wrote message 3 to a peer it refuses")
    return ctx.after_handshake(p, result)


# ------------------------------------------------------------------ §2.6-2.8


@case(
    "2.6/1",
    "HS-FailClosed",
    "2.6: after a failure a side processes no further input and sends nothing more.",
    conn("DECRYPT_ERROR"),
)
def _fail_closed(ctx: Ctx) -> Actual:
    p = ctx.peer(flip=(60, 0x10))
    result = p.handshake()
    act = ctx.after_handshake(p, result)
    p.link.write(b"\x00\x20" + b"\x01" * 32)
    extra = p.link.read()
    if extra:
        act.kind, act.detail = "fail", f"{len(extra)} bytes after the ABORT"
    return act


def _abort_from_responder(code: bytes) -> Any:
    def run(ctx: Ctx) -> Actual:
        link = ctx.link()
        link.read()  # the IUT's flight 1
        link.write(MAGIC + b"\x00\x02" + code)
        out = link.read()
        local = ctx.local_code(link)
        if out:
            return Actual("fail", None, local, f"IUT answered an ABORT with {out.hex()}")
        return Actual("abort" if link.iut_closed else "none", None, local)

    return run


case(
    "2.7/1",
    "Abort-Received",
    "2.7: an ABORT stops the handshake; the received code is reported; never answered.",
    gone("UNAUTHORIZED"),
    profile=IUT_INIT,
)(_abort_from_responder(b"\x00\x05"))

case(
    "2.7/2",
    "Abort-UnknownCode",
    "2.7: an ABORT with an unregistered code is reported as HANDSHAKE_FAILURE.",
    gone("HANDSHAKE_FAILURE"),
    profile=IUT_INIT,
)(_abort_from_responder(b"\x09\x99"))


@case(
    "2.7/3",
    "Abort-AfterInitiatorKeys",
    "2.7: a frame of length 2 as the peer's first post-handshake frame is an ABORT "
    "(the XX initiator already has transport keys).",
    gone("UNAUTHORIZED"),
    profile=IUT_INIT,
)
def _abort_late(ctx: Ctx) -> Actual:
    p = ctx.peer()
    result = p.accept()
    if not isinstance(result, Session):
        return ctx.after_handshake(p, result)
    p.link.write(b"\x00\x02\x00\x05")
    out = p.link.read()
    local = ctx.local_code(p.link)
    if out:
        return Actual("fail", None, local, f"IUT answered the ABORT with {len(out)} bytes")
    return Actual("abort" if p.link.iut_closed else "none", None, local)


@case(
    "2.8/1",
    "HS-Msg1-TruncatedFIN",
    "2.8: end of stream inside message 1 fails with TRUNCATED; no response bytes.",
    gone("TRUNCATED"),
)
def _trunc1(ctx: Ctx) -> Actual:
    run: Any = _raw(_offer({1: [1], 2: "XX"}) + b"\x00\x20" + b"\x09" * 18, eof=True)
    result: Actual = run(ctx)
    return result


@case(
    "2.8/2",
    "HS-EOFBeforeMsg3",
    "2.8: end of stream between frames (after message 2) fails with TRUNCATED.",
    gone("TRUNCATED"),
)
def _trunc3(ctx: Ctx) -> Actual:
    p = ctx.peer()
    p.start()
    out = p.link.read()
    if not out.startswith(MAGIC):
        return Actual("fail", detail="no message 2")
    p.link.write_eof()
    local = ctx.local_code(p.link)
    extra = p.link.read()
    if extra:
        return Actual("fail", None, local, f"{len(extra)} bytes after EOF")
    return Actual("abort" if p.link.iut_closed else "none", None, local)


@case(
    "2.8/3",
    "HS-Timeout",
    "streams §8: the handshake deadline (10 s) fails with HANDSHAKE_TIMEOUT, wire "
    "ABORT(HANDSHAKE_FAILURE).",
    conn("HANDSHAKE_FAILURE", "HANDSHAKE_TIMEOUT"),
)
def _hs_timeout(ctx: Ctx) -> Actual:
    link = ctx.link()
    link.write(MAGIC[:4])
    link.advance(9.9)
    if link.iut_closed:
        return Actual("fail", detail="closed before the deadline")
    link.advance(0.2)
    out = link.read()
    local = ctx.local_code(link)
    if len(out) == 12 and out[:10] == MAGIC + b"\x00\x02":
        from m2mproto.errors import code_name

        wire = code_name(int.from_bytes(out[10:], "big"))
        return Actual("conn_error" if link.iut_closed else "fail", wire, local)
    return Actual("abort" if link.iut_closed else "none", None, local, out.hex())


# ------------------------------------------------------------------ §2.13 hybrid post-quantum

_PQ_ONLY = IUTProfile(config={"require_post_quantum": True})
_CLASSICAL_ONLY = IUTProfile(config={"post_quantum": False})
_PQ_IUT_INIT = IUTProfile(initiator=True, tokens=iut_tokens())


def _suite_session(expected: str, **bugs: Any) -> Any:
    """Complete a handshake and check the Noise protocol both sides ran."""

    def run(ctx: Ctx) -> Actual:
        s = ctx.session(**bugs)
        noise = s.peer.noise
        name = noise.protocol.name if noise is not None else None
        if name != expected:
            return Actual("fail", detail=f"handshake ran {name}, expected {expected}")
        return ctx.observe(s)

    return run


_XXHFS = "Noise_XXhfs_25519+ML-KEM-768_ChaChaPoly_SHA256"
_IKHFS = "Noise_IKhfs_25519+ML-KEM-768_ChaChaPoly_SHA256"

case(
    "2.13/1",
    "PQ-XXhfs-Negotiated",
    "2.13: a responder accepts the hybrid XXhfs offer (X25519 + ML-KEM-768) and completes it.",
    ok(),
)(_suite_session(_XXHFS, pattern="XXhfs", offer=cbor.encode(
    {1: [1], 2: "XXhfs", 512: ["XXhfs", "XX"]})))  # fmt: skip

case(
    "2.13/2",
    "PQ-IKhfs-Negotiated",
    "2.13: a responder accepts the hybrid IKhfs offer (ML-KEM key encrypted in message 1).",
    ok(),
    needs={"iut-keys"},
)(_suite_session(_IKHFS, pattern="IKhfs"))

case(
    "2.13/3",
    "PQ-IUT-Initiator-OffersHybrid",
    "2.13: an initiator offers the hybrid suite first by default and completes it.",
    ok(),
    profile=_PQ_IUT_INIT,
)(_suite_session(_XXHFS))

case(
    "2.13/4",
    "PQ-ClassicalPeer-Interoperates",
    '2.13: a classical-only initiator (offer {1: [1], 2: "XX"}, exactly as before the '
    "hybrid suite) still completes against the hybrid-by-default responder.",
    ok(),
)(_suite_session("Noise_XX_25519_ChaChaPoly_SHA256", offer=cbor.encode({1: [1], 2: "XX"})))

case(
    "2.13/5",
    "PQ-ClassicalFallback-ClassicalOnlyResponder",
    "2.13: the initiator's classical retry (offer preferring XXhfs, running XX) completes "
    "against a responder that does not support the hybrid suite.",
    ok(),
    profile=_CLASSICAL_ONLY,
)(_suite_session("Noise_XX_25519_ChaChaPoly_SHA256", offer=cbor.encode(
    {1: [1], 2: "XX", 512: ["XXhfs", "XX"]})))  # fmt: skip

case(
    "2.13/6",
    "PQ-ClassicalOnly-RefusesHybridLikeAnOldPeer",
    "2.2, 2.13: a responder without the hybrid suite refuses the hybrid offer as an unknown "
    "pattern: MAGIC || ABORT(VERSION_MISMATCH), which is what triggers the classical retry.",
    conn("VERSION_MISMATCH"),
    profile=_CLASSICAL_ONLY,
)(_hs(pattern="XXhfs"))

case(
    "2.13/7",
    "PQ-MITM-StripsHybrid-KeepsPreference",
    "2.13: a classical offer whose preference (key 512) puts XXhfs first reaches a hybrid "
    "responder only if the hybrid offer was suppressed: DOWNGRADE_DETECTED, wire "
    "VERSION_MISMATCH.",
    conn("VERSION_MISMATCH", "DOWNGRADE_DETECTED"),
)(_hs(offer=cbor.encode({1: [1], 2: "XX", 512: ["XXhfs", "XX"]})))

case(
    "2.13/8",
    "PQ-MITM-StripsHybrid-IK-KeepsPreference",
    "2.13: the same for IK: a classical IK offer preferring IKhfs is DOWNGRADE_DETECTED.",
    conn("VERSION_MISMATCH", "DOWNGRADE_DETECTED"),
    needs={"iut-keys"},
)(_hs(pattern="IK", offer=cbor.encode({1: [1], 2: "IK", 512: ["IKhfs", "IK"]})))


@case(
    "2.13/9",
    "PQ-MITM-StripsHybrid-Responder",
    "2.2, 2.13: an attacker rewrites the hybrid offer to a plain classical one (and message 1 "
    "to a bare e): the responder runs XX over the rewritten prologue, so the initiator, whose "
    "prologue is its real hybrid offer, cannot read message 2 and aborts; the responder "
    "reports the ABORT's code without answering it.",
    gone("DECRYPT_ERROR"),
)
def _pq_strip_responder(ctx: Ctx) -> Actual:
    from m2mproto.errors import M2MError

    # We are the initiator after the rewrite: classical offer and message 1 on the wire,
    # the real hybrid offer in our prologue.
    p = ctx.peer(prologue_offer=cbor.encode({1: [1], 2: "XXhfs", 512: ["XXhfs", "XX"]}))
    try:
        p.handshake()
    except M2MError as exc:
        if exc.code.name != "DECRYPT_ERROR":
            return Actual("fail", detail=f"message 2 failed with {exc.code.name}")
        p.link.write(b"\x00\x02\x00\x06")
        out = p.link.read()
        local = ctx.local_code(p.link)
        if out:
            return Actual("fail", None, local, f"IUT answered the ABORT with {len(out)} bytes")
        return Actual("abort" if p.link.iut_closed else "none", None, local)
    return Actual("fail", detail="message 2 decrypted although the hybrid offer was stripped")


case(
    "2.13/10",
    "PQ-MITM-StripsHybrid-Initiator",
    "2.2, 2.13: the initiator's hybrid offer is rewritten to classical XX on the way; the "
    "responder's classical message 2 cannot be read by the hybrid initiator (too short for "
    "its ekem1 token): it fails closed and never sends message 3.",
    conn("DECODE_ERROR"),
    profile=_PQ_IUT_INIT,
)(_hs(prologue_offer=cbor.encode({1: [1], 2: "XX"}), responder_pattern="XX"))

case(
    "2.13/11",
    "PQ-Required-RefusesClassical",
    "2.13: with require_post_quantum a responder refuses a classical offer: "
    "POST_QUANTUM_REQUIRED, wire VERSION_MISMATCH.",
    conn("VERSION_MISMATCH", "POST_QUANTUM_REQUIRED"),
    profile=_PQ_ONLY,
)(_hs())

case(
    "2.13/12",
    "PQ-Required-AcceptsHybrid",
    "2.13: with require_post_quantum the hybrid offer completes.",
    ok(),
    profile=_PQ_ONLY,
)(_suite_session(_XXHFS, pattern="XXhfs"))

case(
    "2.13/13",
    "PQ-XXhfs-Msg1-TrailingBytes",
    "2.13: XXhfs message 1 is exactly e || ML-KEM-768 public key (1216 bytes); more is "
    "DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_hs(pattern="XXhfs", msg1_extra=b"\x00"))

case(
    "2.13/14",
    "PQ-XXhfs-BadEncapsulationKey",
    "2.13: an ML-KEM-768 encapsulation key with coefficients not reduced modulo q (the "
    "FIPS 203 input check) is DECODE_ERROR.",
    conn("DECODE_ERROR"),
)(_hs(pattern="XXhfs", msg1=bytes(range(32)) + b"\xff" * 1184))

case(
    "2.13/15",
    "PQ-XXhfs-Msg3-BitFlip",
    "2.13: a flipped bit in XXhfs message 3 is DECRYPT_ERROR.",
    conn("DECRYPT_ERROR"),
)(_hs(pattern="XXhfs", flip=(40, 0x01)))

case(
    "2.13/16",
    "PQ-IKhfs-Msg1-BitFlip",
    "2.13: a flipped bit inside the encrypted ML-KEM key of IKhfs message 1 is DECRYPT_ERROR.",
    conn("DECRYPT_ERROR"),
    needs={"iut-keys"},
)(_hs(pattern="IKhfs", flip=(100, 0x01)))
