"""Conformance cases for spec/tokens.md (§6): every token of ``mint.token_catalog``
presented in the handshake, plus enforcement details."""

from __future__ import annotations

from collections.abc import Callable

from m2mproto import cbor
from m2mproto.errors import ErrorCode
from m2mproto.frames import Frame, MessageFrame, OpenFrame, PingFrame, PongFrame, TokenFrame

from . import mint
from .framework import Actual, Ctx, case, conn, ok
from .inprocess import IUTProfile
from .peer import Received

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
