"""Handshake failures: every hostile input of spec/handshake.md 2.6 meets its code.

Hostile peers are built from the real Noise engine (a HandshakeState driven by hand),
never from mocks.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_handshake_helpers import PREFIX, drbg, ident, run_pair

from m2mproto import cbor
from m2mproto.errors import (
    AuthenticationError,
    DecodeError,
    ErrorCode,
    LimitExceeded,
    LocalProtocolError,
    M2MError,
    RemoteProtocolError,
)
from m2mproto.handshake import MAGIC, Handshake, HandshakeAborted
from m2mproto.identity import Identity
from m2mproto.noise import HandshakeState, x25519_public_key

ALICE, BOB, CAROL = ident("alice"), ident("bob"), ident("carol")
STATIC_R = hashlib.sha256(b"responder static").digest()
STATIC_I = hashlib.sha256(b"initiator static").digest()
STATIC_OTHER = hashlib.sha256(b"other static").digest()
PUB_R = x25519_public_key(STATIC_R)
NAMES = {"XX": "Noise_XX_25519_ChaChaPoly_SHA256", "IK": "Noise_IK_25519_ChaChaPoly_SHA256"}
ED25519_L = 2**252 + 27742317777372353535851937790883648493

# X25519 public keys that give an all-zero shared secret (RFC 7748 section 6.1; Wycheproof).
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


def offer(versions: Any = (1,), pattern: Any = "XX", **extra: Any) -> bytes:
    obj: dict[Any, Any] = {1: list(versions), 2: pattern}
    obj.update({int(k[1:]): v for k, v in extra.items()})
    return cbor.encode(obj)


def responder(**kw: Any) -> Handshake:
    return Handshake(False, BOB, entropy=drbg(b"R"), static_key=STATIC_R, **kw)


def initiator(**kw: Any) -> Handshake:
    return Handshake(True, ALICE, entropy=drbg(b"I"), static_key=STATIC_I, **kw)


def fail(hs: Handshake, data: bytes) -> M2MError:
    """Feed *data*, expect the next event to fail; return the error."""
    hs.receive_data(data)
    with pytest.raises(M2MError) as info:
        hs.next_event()
    assert hs.failed and not hs.is_complete
    return info.value


class EvilInitiator:
    """A hand-driven Noise initiator that can put anything in its preface and payloads."""

    def __init__(
        self,
        *,
        pattern: str = "XX",
        identity: Identity = ALICE,
        static: bytes = STATIC_I,
        offer_bytes: bytes | None = None,
    ) -> None:
        self.offer = offer_bytes if offer_bytes is not None else offer(pattern=pattern)
        self.preface = MAGIC + frame(self.offer)
        self.identity = identity
        self.static_pub = x25519_public_key(static)
        self.noise = HandshakeState(
            NAMES[pattern],
            initiator=True,
            prologue=self.preface,
            s=static,
            rs=PUB_R if pattern == "IK" else None,
            entropy=drbg(b"evil initiator"),
        )

    def payload(self, **changes: Any) -> dict[Any, Any]:
        obj: dict[Any, Any] = {
            1: self.identity.public_key,
            2: self.identity.sign(PREFIX + self.static_pub),
            3: {},
            4: [],
        }
        for key, value in changes.items():
            k = int(key[1:])
            if value is None:
                del obj[k]
            else:
                obj[k] = value
        return obj

    def flight1(self, payload: bytes = b"") -> bytes:
        return self.preface + frame(self.noise.write_message(payload))

    def read_msg2(self, flight: bytes) -> bytes:
        assert flight[:8] == MAGIC
        assert int.from_bytes(flight[8:10], "big") == len(flight) - 10
        return self.noise.read_message(flight[10:])

    def msg3(self, payload: bytes) -> bytes:
        return frame(self.noise.write_message(payload))


class EvilResponder:
    """A hand-driven Noise responder answering a real initiator's flight 1."""

    def __init__(self, flight1: bytes, *, identity: Identity = BOB, static: bytes = STATIC_R):
        assert flight1[:8] == MAGIC
        olen = int.from_bytes(flight1[8:10], "big")
        offer_bytes = flight1[10 : 10 + olen]
        pattern = cbor.decode(offer_bytes)[2]
        msg1 = flight1[12 + olen :]
        self.identity = identity
        self.static_pub = x25519_public_key(static)
        self.noise = HandshakeState(
            NAMES[pattern],
            initiator=False,
            prologue=flight1[: 10 + olen],
            s=static,
            entropy=drbg(b"evil responder"),
        )
        self.noise.read_message(msg1)

    def payload(self, **changes: Any) -> dict[Any, Any]:
        obj: dict[Any, Any] = {
            1: self.identity.public_key,
            2: self.identity.sign(PREFIX + self.static_pub),
            3: {},
            5: 1,
        }
        for key, value in changes.items():
            k = int(key[1:])
            if value is None:
                del obj[k]
            else:
                obj[k] = value
        return obj

    def msg2(self, payload: bytes) -> bytes:
        return MAGIC + frame(self.noise.write_message(payload))


def initiator_payload_error(pattern: str, payload: bytes, **evil: Any) -> tuple[M2MError, bytes]:
    """Send *payload* as the initiator payload (XX message 3 / IK message 1) to a responder.

    Returns the responder's error and the ABORT it would send.
    """
    r = responder()
    ev = EvilInitiator(pattern=pattern, **evil)
    if pattern == "XX":
        r.receive_data(ev.flight1())
        assert r.next_event() is None
        ev.read_msg2(r.data_to_send())
        err = fail(r, ev.msg3(payload))
    else:
        err = fail(r, ev.flight1(payload))
        assert r.data_to_send() == b""  # IK: no message 2 for a rejected initiator
    return err, r.abort(err.code)


def good_initiator_payload(pattern: str, **changes: Any) -> bytes:
    return cbor.encode(EvilInitiator(pattern=pattern).payload(**changes))


# --------------------------------------------------------------------------- preface


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00", b"PRI * HTTP/2.0", b"SSH-2.0"],
)
def test_garbage_preface_rejected_at_first_byte(garbage: bytes) -> None:
    r = responder()
    err = fail(r, garbage[:1])
    assert type(err) is RemoteProtocolError and err.code is ErrorCode.VERSION_MISMATCH
    abort = r.abort(err.code)
    assert abort == MAGIC + bytes.fromhex("00020003") and len(abort) <= 64


@pytest.mark.parametrize("pos", range(8))
def test_magic_mismatch_at_each_position(pos: int) -> None:
    r = responder()
    if pos:
        r.receive_data(MAGIC[:pos])
        assert r.next_event() is None
    bad = bytes([MAGIC[pos] ^ 0x01])
    assert fail(r, bad).code is ErrorCode.VERSION_MISMATCH


def test_initiator_rejects_non_m2m_responder() -> None:
    i = initiator()
    i.data_to_send()
    err = fail(i, b"HTTP/1.1 400 Bad Request\r\n")
    assert err.code is ErrorCode.VERSION_MISMATCH
    assert i.abort(err.code) == bytes.fromhex("00020003")


@pytest.mark.parametrize(
    "offer_bytes",
    [offer([7]), offer([9, 7, 2]), offer(pattern="NN"), offer(pattern="XXfallback")],
)
def test_unsupported_offer_is_version_mismatch(offer_bytes: bytes) -> None:
    r = responder()
    err = fail(r, MAGIC + frame(offer_bytes))
    assert err.code is ErrorCode.VERSION_MISMATCH
    assert r.abort(err.code) == MAGIC + bytes.fromhex("00020003")


@pytest.mark.parametrize(
    "offer_bytes",
    [
        b"\xff",  # not CBOR
        offer() + b"\x00",  # trailing bytes
        bytes.fromhex("a202625858018101"),  # keys unsorted (non-deterministic)
        bytes.fromhex("a21801810102625858"),  # key 1 in a non-shortest form
        bytes.fromhex("bf01810102625858ff"),  # indefinite-length map
        cbor.encode([1, "XX"]),  # not a map
        cbor.encode({2: "XX"}),  # versions missing
        cbor.encode({1: [1]}),  # pattern missing
        offer(_3=1),  # reserved key
        cbor.encode({1: [1], 2: "XX", -1: 0}),  # negative key
        cbor.encode({1: [1], 2: "XX", "x": 0}),  # text key
        offer([]),
        offer([1, 2]),  # ascending
        offer([1, 1]),  # duplicate
        offer(list(range(17, 0, -1))),  # 17 versions
        offer([0]),
        offer([70000]),
        offer(["1"]),
        offer(pattern=1),
        cbor.encode({1: 1, 2: "XX"}),
    ],
)
def test_malformed_offer_is_decode_error(offer_bytes: bytes) -> None:
    r = responder()
    err = fail(r, MAGIC + frame(offer_bytes))
    assert isinstance(err, DecodeError) and err.code is ErrorCode.DECODE_ERROR
    assert r.abort(err.code) == MAGIC + bytes.fromhex("00020007")


@pytest.mark.parametrize("length", [0, 257, 65535])
def test_offer_length_checked_before_body(length: int) -> None:
    r = responder()
    err = fail(r, MAGIC + length.to_bytes(2, "big"))  # no body needed to decide
    assert err.code is ErrorCode.DECODE_ERROR


def test_offer_extensions_ignored_and_highest_common_version_chosen() -> None:
    r = responder()
    ev = EvilInitiator(offer_bytes=offer([9, 3, 1], _300="future option", _65535=b"x"))
    r.receive_data(ev.flight1())
    assert r.next_event() is None
    payload = cbor.decode(ev.read_msg2(r.data_to_send()))
    assert payload[5] == 1 and 4 not in payload
    r.receive_data(ev.msg3(cbor.encode(ev.payload(_300={"x": 1}))))
    result = r.next_event()
    assert result is not None and result.version == 1 and result.peer == ALICE.agent_id


# --------------------------------------------------------------------------- downgrade


def _split_flight1(flight: bytes) -> tuple[bytes, bytes]:
    olen = int.from_bytes(flight[8:10], "big")
    return flight[10 : 10 + olen], flight[10 + olen :]


@pytest.mark.parametrize(
    "rewrite",
    [offer([2, 1]), offer([1], _300=0), offer([1], _256=b"")],
)
def test_mitm_rewriting_xx_offer_fails_message_2(rewrite: bytes) -> None:
    i, r = initiator(), responder()
    _offer, msg1_frame = _split_flight1(i.data_to_send())
    r.receive_data(MAGIC + frame(rewrite) + msg1_frame)
    assert r.next_event() is None  # the responder cannot tell ...
    err = fail(i, r.data_to_send())  # ... but the initiator's transcript differs
    assert err.code is ErrorCode.DECRYPT_ERROR
    assert i.data_to_send() == b""  # no message 3, no identity, no application data
    assert i.abort(err.code) == bytes.fromhex("00020006")


def test_mitm_stripping_highest_version_is_detected() -> None:
    ev = EvilInitiator(offer_bytes=offer([3, 1]))  # an initiator that also speaks v3
    r = responder()
    _offer, msg1_frame = _split_flight1(ev.flight1())
    r.receive_data(MAGIC + frame(offer([1])) + msg1_frame)  # MITM strips 3
    assert r.next_event() is None
    with pytest.raises(RemoteProtocolError) as info:
        ev.read_msg2(r.data_to_send())
    assert info.value.code is ErrorCode.DECRYPT_ERROR


def test_mitm_rewriting_ik_offer_fails_message_1() -> None:
    r = responder()
    i = initiator(remote_static=r.local_static_public)
    _offer, msg1_frame = _split_flight1(i.data_to_send())
    err = fail(r, MAGIC + frame(offer([1], "IK", _300=1)) + msg1_frame)
    assert err.code is ErrorCode.DECRYPT_ERROR
    assert r.data_to_send() == b""


def test_ik_with_wrong_responder_key_is_decrypt_error() -> None:
    r = responder()
    i = initiator(remote_static=x25519_public_key(STATIC_OTHER))
    assert fail(r, i.data_to_send()).code is ErrorCode.DECRYPT_ERROR


# --------------------------------------------------------------------------- framing


@pytest.mark.parametrize("length", [0, 1, 3, 16, 31])
def test_short_noise_frame_is_decode_error(length: int) -> None:
    r = responder()
    err = fail(r, MAGIC + frame(offer()) + length.to_bytes(2, "big"))
    assert err.code is ErrorCode.DECODE_ERROR


def test_xx_message_1_with_payload_is_decode_error() -> None:
    # A valid e plus one extra byte (e.g. application data before the handshake).
    ev = EvilInitiator()
    err = fail(responder(), ev.flight1(b"\x00"))
    assert err.code is ErrorCode.DECODE_ERROR
    ev2 = EvilInitiator()
    err = fail(responder(), ev2.flight1(cbor.encode({0: b"stream data"})))
    assert err.code is ErrorCode.DECODE_ERROR


def test_oversize_frame_rejected_from_its_length_field() -> None:
    r = responder(max_message_size=1024)
    err = fail(r, MAGIC + frame(offer()) + (1025).to_bytes(2, "big"))
    assert isinstance(err, LimitExceeded) and err.code is ErrorCode.FRAME_SIZE_ERROR
    assert r.abort(err.code) == MAGIC + bytes.fromhex("00020004")
    i = initiator(max_message_size=1024)
    i.data_to_send()
    assert fail(i, MAGIC + b"\xff\xff").code is ErrorCode.FRAME_SIZE_ERROR


def test_message_at_max_is_buffered_not_rejected() -> None:
    r = responder(max_message_size=1024)
    r.receive_data(MAGIC + frame(offer()) + (1024).to_bytes(2, "big") + bytes(1000))
    assert r.next_event() is None and not r.failed


# --------------------------------------------------------------------------- ABORT


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (0x0003, ErrorCode.VERSION_MISMATCH),
        (0x0005, ErrorCode.UNAUTHORIZED),
        (0x0006, ErrorCode.DECRYPT_ERROR),
        (0x0012, ErrorCode.TRUNCATED),
        (0x0099, ErrorCode.HANDSHAKE_FAILURE),
        (0x0104, ErrorCode.HANDSHAKE_FAILURE),
        (0xFFFF, ErrorCode.HANDSHAKE_FAILURE),
    ],
)
def test_received_abort_reports_code(raw: int, code: ErrorCode) -> None:
    i = initiator()
    i.data_to_send()
    err = fail(i, MAGIC + b"\x00\x02" + raw.to_bytes(2, "big"))
    assert isinstance(err, HandshakeAborted) and err.code is code
    assert i.abort(ErrorCode.HANDSHAKE_FAILURE) == b""


def test_responder_accepts_abort_instead_of_message_3() -> None:
    r = responder()
    ev = EvilInitiator()
    r.receive_data(ev.flight1())
    assert r.next_event() is None
    err = fail(r, bytes.fromhex("00020004"))
    assert isinstance(err, HandshakeAborted) and err.code is ErrorCode.HANDSHAKE_FAILURE


# --------------------------------------------------------------------------- payloads


def _unsorted_payload(ev: EvilInitiator) -> bytes:
    p = ev.payload()
    enc = cbor.encode
    return b"\xa4" + enc(2) + enc(p[2]) + enc(1) + enc(p[1]) + enc(3) + enc({}) + enc(4) + enc([])


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


BAD_PAYLOADS: dict[str, Any] = {
    "not-cbor": lambda ev: b"\xff\x00",
    "empty": lambda ev: b"",
    "trailing": lambda ev: cbor.encode(ev.payload()) + b"\x00",
    "unsorted": _unsorted_payload,
    "indefinite": lambda ev: b"\xbf" + cbor.encode(ev.payload())[1:] + b"\xff",
    "not-a-map": lambda ev: cbor.encode([ev.identity.public_key]),
    "missing-identity": lambda ev: cbor.encode(ev.payload(_1=None)),
    "missing-sig": lambda ev: cbor.encode(ev.payload(_2=None)),
    "missing-params": lambda ev: cbor.encode(ev.payload(_3=None)),
    "missing-tokens": lambda ev: cbor.encode(ev.payload(_4=None)),
    "identity-as-text": lambda ev: cbor.encode(ev.payload(_1="key")),
    "sig-as-int": lambda ev: cbor.encode(ev.payload(_2=7)),
    "params-as-list": lambda ev: cbor.encode(ev.payload(_3=[1])),
    "params-text-key": lambda ev: cbor.encode(ev.payload(_3={"a": 1})),
    "params-negative-key": lambda ev: cbor.encode(ev.payload(_3={-1: 1})),
    "tokens-as-bytes": lambda ev: cbor.encode(ev.payload(_4=b"tok")),
    "token-as-text": lambda ev: cbor.encode(ev.payload(_4=["tok"])),
    "version-from-initiator": lambda ev: cbor.encode(ev.payload(_5=1)),
    "reserved-key": lambda ev: cbor.encode(ev.payload(_9=0)),
    "key-beyond-ext-range": lambda ev: cbor.encode(ev.payload(_65536=0)),
    "too-deep": lambda ev: cbor.encode(ev.payload(_3={1: _nested(16)})),
}


@pytest.mark.parametrize("pattern", ["XX", "IK"])
@pytest.mark.parametrize("name", sorted(BAD_PAYLOADS))
def test_malformed_initiator_payload_is_decode_error(pattern: str, name: str) -> None:
    payload = BAD_PAYLOADS[name](EvilInitiator(pattern=pattern))
    err, abort = initiator_payload_error(pattern, payload)
    assert isinstance(err, DecodeError) and err.code is ErrorCode.DECODE_ERROR, err
    assert abort.endswith(bytes.fromhex("00020007"))


def _malleable(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:], "little") + ED25519_L
    return sig[:32] + s.to_bytes(32, "little")


AUTH_CASES: dict[str, tuple[Any, ErrorCode]] = {
    "random-sig": (lambda ev: ev.payload(_2=bytes(range(64))), ErrorCode.AUTH_SIGNATURE),
    "sig-over-other-static": (
        lambda ev: ev.payload(
            _2=ALICE.sign(PREFIX + x25519_public_key(STATIC_OTHER)),
        ),
        ErrorCode.AUTH_SIGNATURE,
    ),
    "sig-without-prefix": (
        lambda ev: ev.payload(_2=ALICE.sign(ev.static_pub)),
        ErrorCode.AUTH_SIGNATURE,
    ),
    "sig-by-other-identity": (
        lambda ev: ev.payload(_2=CAROL.sign(PREFIX + ev.static_pub)),
        ErrorCode.AUTH_SIGNATURE,
    ),
    "sig-63-bytes": (lambda ev: ev.payload(_2=ev.payload()[2][:63]), ErrorCode.AUTH_SIGNATURE),
    "sig-65-bytes": (
        lambda ev: ev.payload(_2=ev.payload()[2] + b"\x00"),
        ErrorCode.AUTH_SIGNATURE,
    ),
    "sig-malleable-s-plus-l": (
        lambda ev: ev.payload(_2=_malleable(ev.payload()[2])),
        ErrorCode.AUTH_SIGNATURE,
    ),
    "identity-31-bytes": (
        lambda ev: ev.payload(_1=ALICE.public_key[:31]),
        ErrorCode.AUTH_IDENTITY_KEY,
    ),
    "identity-33-bytes": (
        lambda ev: ev.payload(_1=ALICE.public_key + b"\x00"),
        ErrorCode.AUTH_IDENTITY_KEY,
    ),
    "identity-empty": (lambda ev: ev.payload(_1=b""), ErrorCode.AUTH_IDENTITY_KEY),
}


@pytest.mark.parametrize("pattern", ["XX", "IK"])
@pytest.mark.parametrize("name", sorted(AUTH_CASES))
def test_bad_identity_binding(pattern: str, name: str) -> None:
    make, code = AUTH_CASES[name]
    payload = cbor.encode(make(EvilInitiator(pattern=pattern)))
    err, abort = initiator_payload_error(pattern, payload)
    assert isinstance(err, AuthenticationError) and err.code is code, err
    assert abort.endswith(bytes.fromhex("00020004"))  # no detail on the wire


@pytest.mark.parametrize("pattern", ["XX", "IK"])
def test_reflected_identity_refused(pattern: str) -> None:
    ev = EvilInitiator(pattern=pattern, identity=BOB)  # the responder's own identity
    err, abort = initiator_payload_error(pattern, cbor.encode(ev.payload()), identity=BOB)
    assert err.code is ErrorCode.AUTH_REFLECTED
    assert abort.endswith(bytes.fromhex("00020004"))


def test_reflected_static_key_refused() -> None:
    ev = EvilInitiator(static=STATIC_R)  # our own Noise static key, someone else's identity
    err, _ = initiator_payload_error("XX", cbor.encode(ev.payload()), static=STATIC_R)
    assert err.code is ErrorCode.AUTH_REFLECTED


def test_reflection_between_real_peers_detected_by_initiator() -> None:
    r = Handshake(False, ALICE, entropy=drbg(b"r"))
    i = Handshake(True, ALICE, entropy=drbg(b"i"))
    ini, res = run_pair(i, r)
    assert ini.error is not None and ini.error.code is ErrorCode.AUTH_REFLECTED
    assert ini.result is None and res.result is None


def test_payload_extension_keys_are_ignored() -> None:
    r = responder()
    ev = EvilInitiator()
    r.receive_data(ev.flight1())
    r.next_event()
    ev.read_msg2(r.data_to_send())
    r.receive_data(ev.msg3(cbor.encode(ev.payload(_256=1, _65535={"a": [1]}))))
    result = r.next_event()
    assert result is not None and result.peer == ALICE.agent_id


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"_4": []}, ErrorCode.DECODE_ERROR),  # the responder never sends tokens
        ({"_5": None}, ErrorCode.DECODE_ERROR),  # no version confirmation
        ({"_5": 0}, ErrorCode.DECODE_ERROR),
        ({"_5": "1"}, ErrorCode.DECODE_ERROR),
        ({"_5": 2}, ErrorCode.VERSION_MISMATCH),  # a version that was never offered
        ({"_2": bytes(64)}, ErrorCode.AUTH_SIGNATURE),
        ({"_1": b"\x01" * 31}, ErrorCode.AUTH_IDENTITY_KEY),
        ({"_1": ALICE.public_key}, ErrorCode.AUTH_SIGNATURE),  # BOB's sig, ALICE's key
    ],
)
def test_malformed_responder_payload(changes: dict[str, Any], code: ErrorCode) -> None:
    i = initiator()
    ev = EvilResponder(i.data_to_send())
    err = fail(i, ev.msg2(cbor.encode(ev.payload(**changes))))
    assert err.code is code
    assert i.data_to_send() == b""  # the initiator never sent message 3


def test_responder_presenting_initiator_identity_is_reflection() -> None:
    i = initiator()
    ev = EvilResponder(i.data_to_send(), identity=ALICE)
    assert fail(i, ev.msg2(cbor.encode(ev.payload()))).code is ErrorCode.AUTH_REFLECTED


def test_responder_refusal_in_ik_sends_no_message_2() -> None:
    def refuse(_peer: Any) -> None:
        raise AuthenticationError("unexpected peer", ErrorCode.AUTH_UNEXPECTED_PEER)

    r = responder(authenticate_peer=refuse)
    i = initiator(remote_static=r.local_static_public)
    err = fail(r, i.data_to_send())
    assert err.code is ErrorCode.AUTH_UNEXPECTED_PEER
    assert r.data_to_send() == b""
    assert r.abort(err.code) == MAGIC + bytes.fromhex("00020005")


# --------------------------------------------------------------------------- low order


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p.hex()[:8])
def test_low_order_ephemeral_xx_responder(point: bytes) -> None:
    r = responder()
    err = fail(r, MAGIC + frame(offer()) + frame(point))
    assert isinstance(err, AuthenticationError) and err.code is ErrorCode.AUTH_LOW_ORDER_KEY
    assert r.data_to_send() == b""  # no message 2 computed
    assert r.abort(err.code) == MAGIC + bytes.fromhex("00020004")


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p.hex()[:8])
def test_low_order_ephemeral_ik_responder(point: bytes) -> None:
    r = responder()
    body = point + bytes(48) + bytes(16 + 100)
    err = fail(r, MAGIC + frame(offer(pattern="IK")) + frame(body))
    assert err.code is ErrorCode.AUTH_LOW_ORDER_KEY


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p.hex()[:8])
def test_low_order_ephemeral_initiator(point: bytes) -> None:
    i = initiator()
    i.data_to_send()
    err = fail(i, MAGIC + frame(point + bytes(48 + 16 + 100)))
    assert err.code is ErrorCode.AUTH_LOW_ORDER_KEY


# --------------------------------------------------------------------------- bit flips


def _flip(data: bytes, bit: int) -> bytes:
    buf = bytearray(data)
    buf[bit // 8 % len(buf)] ^= 1 << (bit % 8)
    return bytes(buf)


@settings(max_examples=60)
@given(pattern=st.sampled_from(["XX", "IK"]), which=st.integers(1, 3), bit=st.integers(0, 10**6))
def test_bit_flip_in_any_noise_message_fails(pattern: str, which: int, bit: int) -> None:
    if pattern == "IK" and which == 3:
        which = 2
    r = responder()
    i = initiator(remote_static=PUB_R if pattern == "IK" else None)
    flight = i.data_to_send()
    olen = int.from_bytes(flight[8:10], "big")
    head, msg1 = flight[: 12 + olen], flight[12 + olen :]
    if which == 1:
        msg1 = _flip(msg1, bit)
    r.receive_data(head + msg1)
    if pattern == "IK" and which == 1:
        err = fail_quiet(r)
        assert err is not None and err.code is ErrorCode.DECRYPT_ERROR
        return
    res_r = r.next_event()
    flight2 = r.data_to_send()
    assert flight2.startswith(MAGIC)
    msg2 = flight2[10:]
    if which == 2:
        msg2 = _flip(msg2, bit)
    i.receive_data(flight2[:10] + msg2)
    if which in (1, 2):
        err = fail_quiet(i)
        assert err is not None and err.code is ErrorCode.DECRYPT_ERROR
        assert i.data_to_send() == b""
        return
    assert res_r is None and i.next_event() is not None
    flight3 = i.data_to_send()
    r.receive_data(flight3[:2] + _flip(flight3[2:], bit))
    err = fail_quiet(r)
    assert err is not None and err.code is ErrorCode.DECRYPT_ERROR


def fail_quiet(hs: Handshake) -> M2MError | None:
    try:
        hs.next_event()
    except M2MError as exc:
        assert hs.failed
        return exc
    return None


ANY_FAILURE = {
    ErrorCode.VERSION_MISMATCH,
    ErrorCode.DECODE_ERROR,
    ErrorCode.DECRYPT_ERROR,
    ErrorCode.TRUNCATED,
    ErrorCode.FRAME_SIZE_ERROR,
    ErrorCode.AUTH_LOW_ORDER_KEY,
}


@settings(max_examples=60)
@given(pattern=st.sampled_from(["XX", "IK"]), bit=st.integers(0, 10**6))
def test_bit_flip_anywhere_in_flight_1_never_completes(pattern: str, bit: int) -> None:
    """Flips in the magic, offer, lengths or message 1: some m2mproto error, never success."""
    r = responder()
    i = initiator(remote_static=PUB_R if pattern == "IK" else None)
    r.receive_data(_flip(i.data_to_send(), bit))
    r.receive_data(b"")
    err = fail_quiet(r)
    if err is None:  # the responder could not tell; the initiator must
        i.receive_data(r.data_to_send())
        err = fail_quiet(i)
    assert err is not None and err.code in ANY_FAILURE, err


# --------------------------------------------------------------------------- truncation


@settings(max_examples=40)
@given(pattern=st.sampled_from(["XX", "IK"]), which=st.integers(1, 3), cut=st.integers(0, 10**4))
def test_truncation_then_eof_is_truncated(pattern: str, which: int, cut: int) -> None:
    if pattern == "IK" and which == 3:
        which = 2
    r = responder()
    i = initiator(remote_static=PUB_R if pattern == "IK" else None)
    flight1 = i.data_to_send()
    if which == 1:
        target, data = r, flight1
    else:
        r.receive_data(flight1)
        r.next_event()
        flight2 = r.data_to_send()
        if which == 2:
            target, data = i, flight2
        else:
            i.receive_data(flight2)
            assert i.next_event() is not None
            target, data = r, i.data_to_send()
    cut %= len(data)
    if cut:
        target.receive_data(data[:cut])
        assert target.next_event() is None
    target.receive_data(b"")
    err = fail_quiet(target)
    assert err is not None and type(err) is RemoteProtocolError
    assert err.code is ErrorCode.TRUNCATED
    assert not target.is_complete


# --------------------------------------------------------------------------- robustness


@settings(max_examples=150)
@given(
    pattern=st.sampled_from(["XX", "IK"]),
    junk=st.binary(max_size=300),
    eof=st.booleans(),
)
def test_random_bytes_raise_only_m2m_errors(pattern: str, junk: bytes, eof: bool) -> None:
    r = responder()
    r.receive_data(MAGIC + frame(offer(pattern=pattern)))
    assert r.next_event() is None
    if junk:
        r.receive_data(junk)
    if eof:
        r.receive_data(b"")
    try:
        assert r.next_event() is None
    except M2MError:
        assert r.failed
    i = initiator(remote_static=PUB_R if pattern == "IK" else None)
    i.data_to_send()
    i.receive_data(MAGIC + junk)
    if eof:
        i.receive_data(b"")
    try:
        assert i.next_event() is None
    except M2MError:
        assert i.failed


def test_input_after_eof_is_misuse() -> None:
    r = responder()
    r.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        r.receive_data(MAGIC)


def test_callback_bug_still_fails_closed() -> None:
    def broken(_peer: Any) -> None:
        raise ZeroDivisionError

    r = responder()
    i = initiator(authenticate_peer=broken)
    r.receive_data(i.data_to_send())
    r.next_event()
    i.receive_data(r.data_to_send())
    with pytest.raises(ZeroDivisionError):
        i.next_event()
    assert i.failed and i.data_to_send() == b""
