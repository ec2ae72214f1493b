"""Conformance cases for spec/tokens.md (§6): every token of ``mint.token_catalog``
presented in the handshake, plus enforcement details."""

from __future__ import annotations

from collections.abc import Callable

from . import mint
from .framework import Actual, Ctx, case, conn, ok
from .inprocess import IUTProfile

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
