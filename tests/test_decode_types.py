"""Every wrong CBOR type in every field of every decode site gets the protocol's error.

A peer controls these values. In the pure build a value of the wrong type
reaches an ``isinstance`` check; in the mypyc-compiled build a typed variable
or argument would check it first and raise ``TypeError`` instead of the
protocol error. The same tests run on both builds (``make test-compiled``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from m2mproto import cbor
from m2mproto.config import TransportParameters
from m2mproto.errors import ErrorCode, M2MError
from m2mproto.frames import (
    FRAME_SPECS,
    CloseFrame,
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
from m2mproto.handshake._payload import decode_payload
from m2mproto.handshake._wire import OFFER_PREFERENCE, decode_offer
from m2mproto.identity import Identity
from m2mproto.tokens.claims import (
    CLAIM_AUD,
    CLAIM_CAPS,
    CLAIM_CAVEATS,
    CLAIM_CNF,
    CLAIM_CTI,
    CLAIM_EXP,
    CLAIM_IAT,
    CLAIM_ISS,
    CLAIM_NBF,
    CLAIM_PRF,
    CLAIM_REVOKED,
    CLAIM_SUB,
    cnf_for,
    parse_link,
)
from m2mproto.tokens.cose import ALG_EDDSA, HDR_ALG, HDR_CRIT, HDR_KID, decode_sign1, encode_sign1
from m2mproto.tokens.revocation import parse_statement

#: One value of every CBOR type class.
WRONG: dict[str, Any] = {
    "uint": 7,
    "negint": -7,
    "bytes": b"\x01",
    "text": "1",
    "array": [1],
    "map": {1: 1},
    "bool": True,
    "null": None,
    "float": 1.5,
}


def kind_of(value: Any) -> str:
    """The CBOR type class of a (decoded) value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "uint" if value >= 0 else "negint"
    for name, cls in (("bytes", bytes), ("text", str), ("array", list), ("map", dict)):
        if isinstance(value, cls):
            return name
    if isinstance(value, float):
        return "float"
    raise AssertionError(f"unexpected {value!r}")


def wrong_for(valid: Any, *, also_valid: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """Every value of :data:`WRONG` whose type class differs from *valid*'s."""
    skip = {kind_of(valid), *also_valid}
    return [(name, value) for name, value in WRONG.items() if name not in skip]


def expect_code(code: ErrorCode, call: Callable[[], object]) -> None:
    """*call* raises the library's error with *code* (never TypeError or anything else)."""
    with pytest.raises(M2MError) as info:
        call()
    assert info.value.code == code, f"{info.value.code!r} != {code!r}: {info.value}"


ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(1, 33)))

# -- handshake payloads (spec/handshake.md 2.4) ------------------------------------------------

INITIATOR = {1: ALICE.public_key, 2: bytes(64), 3: {1: 10}, 4: [b"token"]}
RESPONDER = {1: ALICE.public_key, 2: bytes(64), 3: {1: 10}, 5: 1}


def payload_cases() -> list[Any]:
    cases = []
    for side, base in (("initiator", INITIATOR), ("responder", RESPONDER)):
        for key, valid in base.items():
            for name, value in wrong_for(valid):
                if key == 5 and name == "uint":
                    continue
                cases.append(pytest.param(side, base, key, value, id=f"{side}-{key}-{name}"))
        if side == "initiator":
            for name, value in wrong_for(b""):
                cases.append(pytest.param(side, base, 4, [value], id=f"{side}-4-item-{name}"))
        for name, value in wrong_for(0, also_valid=("array", "map", "bool", "null", "float")):
            cases.append(pytest.param(side, base, 3, {value: 1}, id=f"{side}-3-key-{name}"))
    return cases


@pytest.mark.parametrize(("side", "base", "key", "value"), payload_cases())
def test_handshake_payload(side: str, base: dict[int, Any], key: int, value: Any) -> None:
    obj = dict(base)
    obj[key] = value
    data = cbor.encode(obj)
    expect_code(
        ErrorCode.DECODE_ERROR,
        lambda: decode_payload(data, from_initiator=side == "initiator"),
    )


@pytest.mark.parametrize(("name", "value"), list(WRONG.items()), ids=list(WRONG))
def test_handshake_payload_not_a_map(name: str, value: Any) -> None:
    if name == "map":
        value = {}
    data = cbor.encode(value)
    expect_code(ErrorCode.DECODE_ERROR, lambda: decode_payload(data, from_initiator=True))


# -- handshake offer (spec/handshake.md 2.2) ---------------------------------------------------

OFFER = {1: [2, 1], 2: "XX"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param(key, value, id=f"{key}-{name}")
        for key, valid in OFFER.items()
        for name, value in wrong_for(valid)
    ]
    + [pytest.param(1, [value], id=f"1-item-{name}") for name, value in wrong_for(1)],
)
def test_offer(key: int, value: Any) -> None:
    data = cbor.encode({**OFFER, key: value})
    expect_code(ErrorCode.DECODE_ERROR, lambda: decode_offer(data))


@pytest.mark.parametrize(("name", "value"), list(WRONG.items()), ids=list(WRONG))
def test_offer_preference_of_another_form_is_ignored(name: str, value: Any) -> None:
    for preference in (value, [value]):
        data = cbor.encode({**OFFER, OFFER_PREFERENCE: preference})
        versions, pattern, pref = decode_offer(data)
        assert (versions, pattern) == ((2, 1), "XX")
        assert pref == (("1",) if preference == ["1"] else ())


# -- transport parameters (spec/handshake.md 2.6) ----------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param(key, value, id=f"{key}-{name}")
        for key in (1, 2, 3, 4, 5)
        for name, value in wrong_for(1)
    ],
)
def test_transport_parameters(key: int, value: Any) -> None:
    expect_code(ErrorCode.PROTOCOL_ERROR, lambda: TransportParameters.from_params({key: value}))


# -- frames (spec/frames.md) -------------------------------------------------------------------

SAMPLE_FRAMES = [
    StreamFrame(1, b"data", True),
    OpenFrame(1, "svc/echo"),
    MessageFrame(1, b"frag", True, False),
    ResetFrame(1, 7, 10),
    WindowUpdateFrame(1, 100),
    WindowUpdateFrame(None, 100),
    PingFrame(b"12345678"),
    PongFrame(b"12345678"),
    TokenFrame(b"token"),
    KeyUpdateFrame(True),
    CloseFrame(0, "bye"),
    RequestFrame(1, "svc/echo", b"payload"),
    ReplyFrame(1, b"payload"),
]


def frame_cases() -> list[Any]:
    cases = []
    for frame in SAMPLE_FRAMES:
        items = cbor.decode(encode_frame(frame))
        for position in range(len(items)):
            # WINDOW_UPDATE's stream ID is null for the connection window.
            also = ("null", "uint") if items[0] == 5 and position == 1 else ()
            for name, value in wrong_for(items[position], also_valid=also):
                label = f"{type(frame).__name__}-{position}-{name}"
                cases.append(pytest.param(items, position, value, id=label))
    return cases


@pytest.mark.parametrize(("items", "position", "value"), frame_cases())
def test_frame_fields(items: list[Any], position: int, value: Any) -> None:
    mutated = list(items)
    mutated[position] = value
    data = cbor.encode(mutated)
    # A negative kind, or a kind of another type, is not a frame; every other field of
    # the wrong type is a DECODE_ERROR (spec/frames.md), on both connection flavours.
    # REQUEST (11) and REPLY (12) exist only where request/reply was negotiated.
    flavours = (True,) if items[0] in (11, 12) and position > 0 else (False, True)
    for request_reply in flavours:
        expect_code(
            ErrorCode.DECODE_ERROR, lambda rr=request_reply: decode_frames(data, request_reply=rr)
        )


@pytest.mark.parametrize(("name", "value"), list(WRONG.items()), ids=list(WRONG))
def test_frame_not_an_array(name: str, value: Any) -> None:
    data = cbor.encode([] if name == "array" else value)
    expect_code(ErrorCode.DECODE_ERROR, lambda: decode_frames(data))


# -- COSE_Sign1, token claims, revocation statements (spec/tokens.md) ---------------------------


def sign1(body: list[Any]) -> bytes:
    return cbor.encode(cbor.Tag(18, body))


PROTECTED = cbor.encode({HDR_ALG: ALG_EDDSA, HDR_KID: ALICE.public_key})


@pytest.mark.parametrize(
    ("position", "value"),
    [
        pytest.param(position, value, id=f"{position}-{name}")
        for position, valid in enumerate([PROTECTED, {}, b"payload", bytes(64)])
        for name, value in wrong_for(valid)
    ],
)
def test_sign1_fields(position: int, value: Any) -> None:
    body: list[Any] = [PROTECTED, {}, b"payload", bytes(64)]
    body[position] = value
    expect_code(ErrorCode.MALFORMED, lambda: decode_sign1(sign1(body)))


@pytest.mark.parametrize(("name", "value"), list(WRONG.items()), ids=list(WRONG))
def test_sign1_protected_header_of_another_type(name: str, value: Any) -> None:
    if name == "map":
        pytest.skip("a map is the valid protected header")
    body = [cbor.encode(value), {}, b"payload", bytes(64)]
    expect_code(ErrorCode.MALFORMED, lambda: decode_sign1(sign1(body)))


@pytest.mark.parametrize(
    ("label", "value", "code"),
    [
        pytest.param(HDR_ALG, value, ErrorCode.BAD_ALG, id=f"alg-{name}")
        for name, value in wrong_for(ALG_EDDSA)
    ]
    + [
        pytest.param(HDR_CRIT, value, ErrorCode.MALFORMED, id=f"crit-{name}")
        for name, value in wrong_for([1])
    ]
    + [
        pytest.param(HDR_CRIT, [value], ErrorCode.MALFORMED, id=f"crit-item-{name}")
        for name, value in wrong_for(1, also_valid=("negint", "text"))
    ],
)
def test_sign1_header_values(label: int, value: Any, code: ErrorCode) -> None:
    headers: dict[int, Any] = {HDR_ALG: ALG_EDDSA, HDR_KID: ALICE.public_key, label: value}
    body = [cbor.encode(headers), {}, b"payload", bytes(64)]
    expect_code(code, lambda: decode_sign1(sign1(body)))


def token_claims() -> dict[int, Any]:
    return {
        CLAIM_ISS: ALICE.agent_id.text,
        CLAIM_SUB: BOB.agent_id.text,
        CLAIM_AUD: ALICE.agent_id.text,
        CLAIM_EXP: 2000,
        CLAIM_NBF: 1000,
        CLAIM_IAT: 1000,
        CLAIM_CTI: bytes(16),
        CLAIM_CNF: cnf_for(BOB.agent_id),
        CLAIM_CAPS: [["svc/*", "call"]],
        CLAIM_CAVEATS: {"max_message_size": 10},
    }


def token(claims: dict[int, Any], protected: bytes = PROTECTED) -> bytes:
    # parse_link does not verify the signature: a zero signature is enough here.
    return sign1([protected, {}, cbor.encode(claims), bytes(64)])


def test_token_fixture_parses() -> None:
    link = parse_link(token(token_claims()))
    assert link.holder == BOB.agent_id
    assert link.caveats.max_message_size == 10


def claim_cases() -> list[Any]:
    cases = []
    base = token_claims()
    nested: dict[str, Callable[[Any], Any]] = {
        "cnf-inner": lambda v: {1: v},
        "cnf-kty": lambda v: {1: {1: v, -1: 6, -2: BOB.public_key}},
        "cnf-crv": lambda v: {1: {1: 1, -1: v, -2: BOB.public_key}},
        "cnf-x": lambda v: {1: {1: 1, -1: 6, -2: v}},
    }
    dates = (CLAIM_EXP, CLAIM_NBF, CLAIM_IAT)  # NumericDate: any integer
    for label, valid in base.items():
        for name, value in wrong_for(valid, also_valid=("negint",) if label in dates else ()):
            cases.append(pytest.param(label, value, id=f"{label}-{name}"))
    for name, value in wrong_for(b"", also_valid=("null",)):  # null reads as absent
        cases.append(pytest.param(CLAIM_PRF, value, id=f"prf-{name}"))
    for name, value in wrong_for(""):
        cases.append(pytest.param(CLAIM_CAPS, [[value, "call"]], id=f"caps-resource-{name}"))
        cases.append(pytest.param(CLAIM_CAPS, [["svc/*", value]], id=f"caps-ability-{name}"))
    for name, value in WRONG.items():
        for what, wrap in nested.items():
            cases.append(pytest.param(CLAIM_CNF, wrap(value), id=f"{what}-{name}"))
        cases.append(pytest.param(CLAIM_CAPS, [value], id=f"caps-item-{name}"))
        cases.append(
            pytest.param(CLAIM_CAVEATS, {"max_message_size": value}, id=f"caveat-size-{name}")
        )
        cases.append(
            pytest.param(CLAIM_CAVEATS, {"allowed_peers": value}, id=f"caveat-peers-{name}")
        )
        cases.append(
            pytest.param(CLAIM_CAVEATS, {"allowed_peers": [value]}, id=f"caveat-peer-{name}")
        )
    return cases


@pytest.mark.parametrize(("label", "value"), claim_cases())
def test_token_claims(label: int, value: Any) -> None:
    claims = token_claims()
    claims[label] = value
    if label == CLAIM_CAVEATS and value == {"max_message_size": 7}:
        pytest.skip("an unsigned size is a valid caveat")
    raw = token(claims)
    expect_code(ErrorCode.MALFORMED, lambda: parse_link(raw))


@pytest.mark.parametrize(("name", "value"), list(WRONG.items()), ids=list(WRONG))
def test_token_kid(name: str, value: Any) -> None:
    protected = cbor.encode({HDR_ALG: ALG_EDDSA, HDR_KID: value})
    expect_code(ErrorCode.MALFORMED, lambda: parse_link(token(token_claims(), protected)))


@pytest.mark.parametrize(("name", "value"), list(WRONG.items()), ids=list(WRONG))
def test_token_claims_not_a_map(name: str, value: Any) -> None:
    if name == "map":
        pytest.skip("a map is the valid claims set")
    raw = sign1([PROTECTED, {}, cbor.encode(value), bytes(64)])
    expect_code(ErrorCode.MALFORMED, lambda: parse_link(raw))


def statement(claims: dict[int, Any], signer: Identity = ALICE) -> bytes:
    return encode_sign1(
        signer, {HDR_ALG: ALG_EDDSA, HDR_KID: signer.public_key}, cbor.encode(claims)
    )


def statement_claims() -> dict[int, Any]:
    return {CLAIM_ISS: ALICE.agent_id.text, CLAIM_IAT: 1000, CLAIM_REVOKED: [bytes(16)]}


def test_statement_fixture_parses() -> None:
    assert parse_statement(statement(statement_claims())).token_ids == (bytes(16),)


@pytest.mark.parametrize(
    ("label", "value"),
    [
        pytest.param(label, value, id=f"{label}-{name}")
        for label, valid in statement_claims().items()
        for name, value in wrong_for(valid, also_valid=("negint",) if label == CLAIM_IAT else ())
    ]
    + [
        pytest.param(CLAIM_REVOKED, [value], id=f"revoked-item-{name}")
        for name, value in wrong_for(b"")
    ],
)
def test_revocation_statement(label: int, value: Any) -> None:
    claims = statement_claims()
    claims[label] = value
    expect_code(ErrorCode.MALFORMED, lambda: parse_statement(statement(claims)))


@pytest.mark.parametrize(("name", "value"), list(WRONG.items()), ids=list(WRONG))
def test_revocation_statement_kid(name: str, value: Any) -> None:
    raw = encode_sign1(
        ALICE, {HDR_ALG: ALG_EDDSA, HDR_KID: value}, cbor.encode(statement_claims())
    )
    expect_code(ErrorCode.MALFORMED, lambda: parse_statement(raw))


# -- the backstop: a TypeError while processing peer input closes, never crashes -------------


def test_type_error_processing_peer_input_closes_with_internal_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from helpers import Pair

    from m2mproto import _conn_receiver
    from m2mproto.events import ConnectionClosed
    from m2mproto.frames import FrameKind

    p = Pair().handshake()

    def slipped_through(receiver: object, frame: object) -> None:
        raise TypeError("a peer value met a typed name")  # what compiled code raises

    for kind in (FrameKind.OPEN, FrameKind.STREAM, FrameKind.MESSAGE, FrameKind.REQUEST):
        cls = next(s.cls for s in FRAME_SPECS if s.kind is kind)
        monkeypatch.setitem(_conn_receiver._DISPATCH, cls, slipped_through)
    sid = p.a.open_stream("svc/echo")
    p.a.send_message(sid, "hello")
    p.run()  # b's next_event() must not raise
    closed_b = [e for e in p.events[p.b] if isinstance(e, ConnectionClosed)]
    closed_a = [e for e in p.events[p.a] if isinstance(e, ConnectionClosed)]
    assert [(e.code, e.remote) for e in closed_b] == [(ErrorCode.INTERNAL_ERROR, False)]
    assert [(e.code, e.remote) for e in closed_a] == [(ErrorCode.INTERNAL_ERROR, True)]
