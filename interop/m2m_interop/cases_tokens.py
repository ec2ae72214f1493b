"""Conformance cases for spec/tokens.md (§6): every token of ``mint.token_catalog``
presented in the handshake, plus enforcement details."""

from __future__ import annotations

from collections.abc import Callable

from m2mproto import cbor
from m2mproto.errors import ErrorCode
from m2mproto.frames import Frame, MessageFrame, OpenFrame, PingFrame, PongFrame, TokenFrame

from . import mint
from .framework import Actual, Ctx, case, conn, gone, ok, stream
from .inprocess import IUTProfile
from .peer import Received


def _message_of(size: int) -> bytes:
    """A CBOR byte string whose encoding is exactly *size* bytes (size >= 1)."""
    for pad in range(size, -1, -1):
        enc = cbor.encode(b"\x00" * pad)
        if len(enc) == size:
            return enc
    raise ValueError(size)  # pragma: no cover


#: Token rule (vector flag) -> spec/tokens.md section.
_SECTION = {
    "Encoding": "6.1",
    "HeaderProfile": "6.1",
    "Crit": "6.1",
    "Alg": "6.1",
    "Claims": "6.2",
    "Capability": "6.3",
    "Caveat": "6.4",
    "Linkage": "6.5",
    "Attenuation": "6.5",
    "SizeLimit": "6.6",
    "DepthLimit": "6.6",
    "TrustRoot": "6.6",
    "Signature": "6.6",
    "SignatureMalleability": "6.6",
    "Time": "6.6",
    "Audience": "6.6",
    "HolderBinding": "6.6",
    "Revocation": "6.7",
    "CheckOrder": "6.6",
}


def _present(name: str) -> Callable[[Ctx], Actual]:
    """Present the catalog token *name* (minted under the current root at run time)."""

    def run(ctx: Ctx) -> Actual:
        return ctx.run_handshake(tokens=[mint.token_named(name).token])

    return run


def _register() -> None:
    counters: dict[str, int] = {}
    for tc in mint.token_catalog():
        section = "6.6" if tc.result == "valid" else _SECTION[tc.flags[0]]
        counters[section] = counters.get(section, 0) + 1
        cid = f"{section}/{counters[section]}"
        needs = set()
        if tc.name in ("RootWithAudience",):
            needs.add("iut-identity")
        if tc.name == "Revoked":
            needs.add("revocations")
        if tc.name in ("ExpiredWithinSkew", "NotBeforeWithinSkew", "Expired", "NotYetValid"):
            needs.add("frozen-clock")  # boundaries at the second: the IUT's clock must be ours
        if tc.result == "valid":
            case(
                cid,
                f"Token-{tc.name}-Pass",
                f"6.6: a valid token ({tc.comment}) is accepted in the handshake.",
                ok(),
                needs=needs,
            )(_present(tc.name))
        else:
            assert tc.code is not None
            case(
                cid,
                f"Token-{tc.name}",
                f"{section}: a token with {tc.comment} fails verification with "
                f"{tc.code.name}; the wire carries TOKEN_INVALID.",
                conn("TOKEN_INVALID", tc.code.name),
                needs=needs,
            )(_present(tc.name))


_register()


case(
    "6.8/1",
    "Token-WireReasonConfigured",
    "errors/6.6: a peer configured to send the reason puts the precise code on the wire.",
    conn("EXPIRED"),
    profile=IUTProfile(config={"wire_token_reason": True}),
)(_present("Expired"))


@case(
    "6.8/2",
    "Token-SeveralOneBad",
    "6.8: all tokens in a payload are verified; one bad token fails the connection.",
    conn("TOKEN_INVALID", "EXPIRED"),
)
def _several(ctx: Ctx) -> Actual:
    from .framework import holder_token

    return ctx.run_handshake(tokens=[holder_token(), mint.token_named("Expired").token])


# ---------------------------------------------------------------- 6.12 verification cost

_COST_CHAINS: dict[tuple[bytes, int, str, int], bytes] = {}


def _cost_chain(n: int, holder: str = "holder") -> bytes:
    """The *n*-th distinct valid 8-link chain ROOT -> cost{n}.1 ... -> *holder*, caps ``*=*``.

    ``holder`` is ``"holder"`` (the hostile peer, HOLDER) or ``"other"`` (OTHER: a
    chain the peer presents but does not hold). Minted under the current root.
    """
    key = (mint.ROOT.public_key, mint.NOW, holder, n)
    if key not in _COST_CHAINS:
        leaf = mint.HOLDER if holder == "holder" else mint.OTHER
        holders = [mint.identity(f"cost{n}.{i}") for i in range(1, 8)] + [leaf]
        signer, token = mint.ROOT, None
        for i, h in enumerate(holders):
            cti = f"cost-{holder}-{n}-{i}".encode().ljust(16, b"-")
            token = mint.craft_token(signer, mint.claims_for(signer, h, cti=cti, parent=token))
            signer = h
        assert token is not None
        _COST_CHAINS[key] = token
    return _COST_CHAINS[key]


def _handshake_copies(copies: int) -> Callable[[Ctx], Actual]:
    def run(ctx: Ctx) -> Actual:
        return ctx.run_handshake(tokens=[_cost_chain(0)] * copies)

    return run


case(
    "6.12/1",
    "Cost-HandshakeDuplicates-Pass",
    "6.12: 8 tokens (here one 8-link chain 8 times) in the handshake are accepted "
    "(boundary of 6.12/2).",
    ok(),
)(_handshake_copies(8))
case(
    "6.12/2",
    "Cost-HandshakeDuplicates",
    "6.12: more than max_handshake_tokens (8) tokens in the handshake is TOO_LARGE; "
    "the wire carries TOKEN_INVALID.",
    conn("TOKEN_INVALID", "TOO_LARGE"),
)(_handshake_copies(9))
case(
    "6.12/3",
    "Cost-HandshakeDuplicates23",
    "6.12: 23 copies of an 8-link chain in the handshake are refused by the cap, "
    "before any signature.",
    conn("TOKEN_INVALID", "TOO_LARGE"),
)(_handshake_copies(23))


def _token_flood(tokens: Callable[[], list[bytes]]) -> Callable[[Ctx], Actual]:
    """After the handshake, one TOKEN frame per token, each followed by a message on a
    ``log`` stream (application data: the frames are not a non-productive run)."""

    def run(ctx: Ctx) -> Actual:
        presented = tokens()
        s = ctx.session()
        sid = s.open_stream("log")
        s.send(OpenFrame(sid, "log"))
        for i, token in enumerate(presented):
            if s.link.iut_closed:
                break
            s.send(TokenFrame(token), MessageFrame(sid, cbor.encode(i), True, False))
        # A PING after the flood: its PONG (or a CLOSE before it) shows the IUT read everything.
        s.send(PingFrame(b"cost-barrier"))
        frames: list[Frame] = []
        got = s.receive()
        for _ in range(20):  # bounded: each read waits a little for the IUT
            frames += got.frames
            pong = any(p.payload == b"cost-barrier" for p in got.of(PongFrame))
            if pong or got.close_code() is not None or got.closed or s.link.iut_closed:
                break
            got = s.receive()
        seen = Received(tuple(frames), got.abort, b"", got.closed)
        if seen.close_code() is not None or s.link.iut_closed:
            return ctx.observe(s, seen)
        return ctx.observe(s)

    return run


# ------------------------------------------------------------------ §6.4 caveats, enforced


def _caveat_token(size: int, cti: bytes) -> bytes:
    """HOLDER's token under ROOT for everything, with ``max_message_size`` = *size*."""
    claims = mint.claims_for(
        mint.ROOT, mint.HOLDER, (("*", "*"),), cti=cti, caveats={"max_message_size": size}
    )
    return mint.craft_token(mint.ROOT, claims)


def _delegated_caveat_token(parent_size: int, child_size: int) -> bytes:
    """ROOT -> link1 (caveat *parent_size*) -> HOLDER (caveat *child_size*)."""
    link = mint.identity("link1")
    parent = mint.craft_token(
        mint.ROOT,
        mint.claims_for(
            mint.ROOT,
            link,
            (("*", "*"),),
            cti=b"caveat-parent-01",
            caveats={"max_message_size": parent_size},
        ),
    )
    child = mint.claims_for(
        link,
        mint.HOLDER,
        (("*", "*"),),
        cti=b"caveat-child-001",
        parent=parent,
        caveats={"max_message_size": child_size},
    )
    return mint.craft_token(link, child)


def _messages(
    token: Callable[[], bytes], *sizes: int, fragment: int = 0
) -> Callable[[Ctx], Actual]:
    """Messages of *sizes* CBOR bytes on one stream (in fragments of *fragment* if set)."""

    def run(ctx: Ctx) -> Actual:
        s = ctx.session(tokens=[token()])
        s.send(OpenFrame(0, "log"))
        for size in sizes:
            data = _message_of(size)
            step = fragment or len(data)
            for pos in range(0, len(data), step):
                last = pos + step >= len(data)
                s.send(MessageFrame(0, data[pos : pos + step], last, False))
        s.next_stream = 2
        return ctx.observe(s, sid=0)

    return run


case(
    "6.9/1",
    "Caveat-MaxMessageSize-Pass",
    "6.4: a message of exactly the grant's max_message_size caveat (16) is accepted.",
    ok(),
)(_messages(lambda: _caveat_token(16, b"caveat-token-001"), 16))

case(
    "6.9/2",
    "Caveat-MaxMessageSize",
    "6.4: a message one byte over the grant's max_message_size caveat (16) resets the stream "
    "with MESSAGE_TOO_LARGE; the connection stays up.",
    stream("MESSAGE_TOO_LARGE"),
)(_messages(lambda: _caveat_token(16, b"caveat-token-002"), 17))

case(
    "6.9/3",
    "Caveat-MaxMessageSize-Fragmented",
    "6.4: a 20,000-byte message in 1000-byte fragments under a caveat of 16 is refused with "
    "MESSAGE_TOO_LARGE (before it is buffered whole).",
    stream("MESSAGE_TOO_LARGE"),
)(_messages(lambda: _caveat_token(16, b"caveat-token-003"), 20000, fragment=1000))

case(
    "6.9/4",
    "Caveat-MaxMessageSize-Later",
    "6.4: the caveat applies to every message: 10 bytes then 17 bytes under 16, the second "
    "resets the stream.",
    stream("MESSAGE_TOO_LARGE"),
)(_messages(lambda: _caveat_token(16, b"caveat-token-004"), 10, 17))

case(
    "6.9/5",
    "Caveat-MaxMessageSize-Delegated",
    "6.4: a delegated grant's caveat (32, under a parent's 64) is enforced: 33 bytes is "
    "MESSAGE_TOO_LARGE.",
    stream("MESSAGE_TOO_LARGE"),
)(_messages(lambda: _delegated_caveat_token(64, 32), 33))

case(
    "6.9/6",
    "Caveat-MaxMessageSize-Delegated-Pass",
    "6.4: under the delegated caveat of 32, a 32-byte message is accepted (boundary of 6.9/5).",
    ok(),
)(_messages(lambda: _delegated_caveat_token(64, 32), 32))


# ------------------------------------------------------------------ IK message 1 replay


def _ik_replay(then: str, victims: int = 1) -> Callable[[Ctx], Actual]:
    """Record a genuine IK flight 1 and replay it to fresh connections: the IUT must not
    report the session or accept its tokens before the initiator proves liveness
    (handshake 2.12), then give up (*then*: ``silence`` or ``garbage`` record)."""

    def run(ctx: Ctx) -> Actual:
        genuine = ctx.peer(pattern="IK")
        genuine.start()
        flight = b"".join(genuine.sent)
        act = Actual("fail", detail="no victim")
        for _ in range(victims):
            link = ctx.link()
            link.write(flight)
            link.read()  # MAGIC and message 2: useless without the initiator's keys
            view = link.local()
            early = view is not None and (
                view.peer is not None
                or "HandshakeCompleted" in view.events
                or "TokenAccepted" in view.events
            )
            if early:
                seen = view.events if view is not None else ()
                return Actual("fail", detail=f"acted on a replayable message 1: {seen}")
            if then == "garbage":
                link.write(b"\x00\x20" + bytes(32))  # a record nobody holding no keys can forge
            else:
                link.advance(11.0)  # past the 10 s handshake deadline
            link.read()
            view = link.local()
            if view is not None and "HandshakeCompleted" in view.events:
                return Actual("fail", detail=f"reported the replayed session: {view.events}")
            if not link.iut_closed:
                return Actual("fail", detail="the IUT kept the replayed connection")
            act = Actual("abort", None, ctx.local_code(link))
        return act

    return run


case(
    "6.12/4",
    "Cost-TokenFramesSameChain",
    "6.12: the same valid 8-link chain in 200 TOKEN frames verifies each link once: "
    "within the budget, the connection stays up.",
    ok(),
)(_token_flood(lambda: [_cost_chain(0)] * 200))


@case(
    "6.12/5",
    "Cost-TokenFramesWrongHolder",
    "6.12: 96 distinct 8-link chains held by another agent in TOKEN frames are rejected "
    "(CNF_MISMATCH) before any signature: no budget spent, the connection stays up.",
    ok(),
)
def _wrong_holder_flood(ctx: Ctx) -> Actual:
    act = _token_flood(lambda: [_cost_chain(n, "other") for n in range(96)])(ctx)
    view = ctx.links[-1].local() if ctx.links else None
    if act.kind == "ok" and view is not None:
        codes = set(view.token_rejected)
        if len(view.token_rejected) != 96 or codes != {ErrorCode.CNF_MISMATCH}:
            return Actual("fail", detail=f"expected 96 local CNF_MISMATCH, got {codes}")
    return act


case(
    "6.12/6",
    "Cost-TokenFramesBudget-Pass",
    "6.12: 7 distinct valid 8-link chains after a 1-link handshake token (57 signatures) "
    "fit the burst of 64 (boundary of 6.12/7).",
    ok(),
)(_token_flood(lambda: [_cost_chain(n) for n in range(1, 8)]))
case(
    "6.12/7",
    "Cost-TokenFramesBudget",
    "6.12: distinct valid 8-link chains beyond the verification budget (16 chains, 128 "
    "signatures) close the connection with ENHANCE_YOUR_CALM.",
    conn("ENHANCE_YOUR_CALM"),
)(_token_flood(lambda: [_cost_chain(n) for n in range(1, 17)]))


case(
    "6.9/7",
    "Token-IK-Replay-Silent",
    "handshake 2.12/6.6: a replayed IK message 1 is neither reported nor its tokens accepted; "
    "without the initiator's first record the IUT gives up at the handshake deadline.",
    gone("HANDSHAKE_TIMEOUT"),
    needs={"frozen-clock"},
)(_ik_replay("silence"))

case(
    "6.9/8",
    "Token-IK-Replay-Forged",
    "handshake 2.12/6.6: after a replayed IK message 1, a record the replayer forges fails "
    "to decrypt; the session was never reported.",
    gone("DECRYPT_ERROR"),
)(_ik_replay("garbage"))

case(
    "6.9/9",
    "Token-IK-Replay-Many",
    "handshake 2.12/6.6: the same IK message 1 replayed to three fresh connections is "
    "reported by none of them.",
    gone("HANDSHAKE_TIMEOUT"),
    needs={"frozen-clock"},
)(_ik_replay("silence", victims=3))
