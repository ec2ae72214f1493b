"""Hybrid post-quantum handshake (spec/handshake.md 2.13): negotiation, fallback, downgrade.

A "classical-only" side is ``post_quantum=False``: its offer is byte-identical to
one of an implementation of the classical-only spec, and as a responder it
refuses a hybrid offer exactly as such an implementation does (an offer naming
a pattern it does not support: ``MAGIC || ABORT(VERSION_MISMATCH)``).
"""

from __future__ import annotations

from typing import Any

import pytest
from test_handshake_helpers import drbg, ident

from m2mproto import cbor
from m2mproto.errors import ErrorCode, M2MError
from m2mproto.handshake import MAGIC, Handshake, HandshakeResult, encode_abort
from m2mproto.noise import x25519_public_key

ALICE, BOB = ident("alice"), ident("bob")
STATIC_R = bytes(range(32, 64))
ABORT_VERSION = MAGIC + bytes.fromhex("00020003")


def _init(n: int = 1, **kw: Any) -> Handshake:
    return Handshake(True, ALICE, entropy=drbg(b"i%d" % n), params={1: 10}, **kw)


def _resp(n: int = 1, **kw: Any) -> Handshake:
    kw.setdefault("static_key", STATIC_R)
    return Handshake(False, BOB, entropy=drbg(b"r%d" % n), params={1: 10}, **kw)


class _Side:
    def __init__(self, hs: Handshake) -> None:
        self.hs = hs
        self.result: HandshakeResult | None = None
        self.error: M2MError | None = None
        self.sent: list[bytes] = []


def _pump(
    i: Handshake, r: Handshake, *, tamper: Any = None, max_rounds: int = 6
) -> tuple[_Side, _Side]:
    """Run both sides; a failing side sends its ABORT. *tamper(index, bytes)* edits flights."""
    sides = _Side(i), _Side(r)
    index = 0
    for _ in range(max_rounds):
        moved = False
        for me, peer in (sides, sides[::-1]):
            data = me.hs.data_to_send()
            if not data or peer.result is not None or peer.error is not None:
                continue
            if tamper is not None:
                data = tamper(index, data)
            index += 1
            me.sent.append(data)
            moved = True
            peer.hs.receive_data(data)
            try:
                res = peer.hs.next_event()
            except M2MError as exc:
                peer.error = exc
                abort = peer.hs.abort(exc.code)
                if abort and me.result is None and me.error is None:
                    peer.sent.append(abort)
                    me.hs.receive_data(abort)
                    try:
                        me.hs.next_event()
                    except M2MError as exc2:
                        me.error = exc2
                continue
            if res is not None:
                peer.result = res
        if not moved:
            break
    # The side that completes first may still hold its last flight.
    return sides


def _offer(flight: bytes) -> dict[int, Any]:
    n = int.from_bytes(flight[8:10], "big")
    obj = cbor.decode(flight[10 : 10 + n])
    assert isinstance(obj, dict)
    return obj


# ------------------------------------------------------------------ negotiation


@pytest.mark.parametrize("ik", [False, True])
def test_hybrid_both_sides(ik: bool) -> None:
    rs = x25519_public_key(STATIC_R) if ik else None
    i, r = _pump(_init(post_quantum=True, remote_static=rs), _resp(post_quantum=True))
    assert i.result is not None and r.result is not None
    want = "IKhfs" if ik else "XXhfs"
    assert i.result.pattern == r.result.pattern == want
    assert i.result.post_quantum and r.result.post_quantum
    assert i.result.suite == f"Noise_{want}_25519+ML-KEM-768_ChaChaPoly_SHA256"
    assert i.result.handshake_hash == r.result.handshake_hash
    assert _offer(i.sent[0]) == {1: [1], 2: want, 512: [want, want[:2]]}
    if not ik:
        assert len(i.sent[0]) == 8 + 2 + len(cbor.encode(_offer(i.sent[0]))) + 2 + 1216


def test_classical_offer_is_byte_identical_to_the_classical_spec() -> None:
    i = _init(post_quantum=False)
    flight = i.data_to_send()
    # The prologue of the XX transcript in interop/vectors/handshake.json.
    assert flight[:18] == bytes.fromhex("8b4d324d0d0a1a0a0008a201810102625858")
    assert len(flight) == 8 + 2 + 8 + 2 + 32


def test_classical_initiator_against_hybrid_responder() -> None:
    i, r = _pump(_init(post_quantum=False), _resp(post_quantum=True))
    assert i.result is not None and r.result is not None
    assert i.result.pattern == r.result.pattern == "XX" and not r.result.post_quantum


def test_hybrid_offer_to_classical_only_responder_is_refused_like_an_old_peer() -> None:
    i, r = _pump(_init(post_quantum=True), _resp(post_quantum=False))
    assert r.error is not None and r.error.code is ErrorCode.VERSION_MISMATCH
    assert r.sent == [ABORT_VERSION]
    assert i.error is not None and i.error.code is ErrorCode.VERSION_MISMATCH


def test_fallback_offer_completes_with_classical_only_responder() -> None:
    i, r = _pump(_init(post_quantum=True, classical_fallback=True), _resp(post_quantum=False))
    assert i.result is not None and r.result is not None and i.result.pattern == "XX"
    assert _offer(i.sent[0]) == {1: [1], 2: "XX", 512: ["XXhfs", "XX"]}


@pytest.mark.parametrize("ik", [False, True])
def test_fallback_offer_to_hybrid_responder_is_a_downgrade(ik: bool) -> None:
    rs = x25519_public_key(STATIC_R) if ik else None
    i, r = _pump(
        _init(post_quantum=True, classical_fallback=True, remote_static=rs),
        _resp(post_quantum=True),
    )
    assert r.error is not None and r.error.code is ErrorCode.DOWNGRADE_DETECTED
    assert r.sent == [ABORT_VERSION]  # wire VERSION_MISMATCH
    assert i.result is None and i.error is not None
    assert i.error.code is ErrorCode.VERSION_MISMATCH


def test_require_post_quantum_responder_refuses_classical() -> None:
    i, r = _pump(_init(post_quantum=False), _resp(require_post_quantum=True))
    assert r.error is not None and r.error.code is ErrorCode.POST_QUANTUM_REQUIRED
    assert r.sent == [ABORT_VERSION]
    assert i.error is not None and i.error.code is ErrorCode.VERSION_MISMATCH


def test_require_post_quantum_initiator_reports_the_refusal() -> None:
    i, _r = _pump(_init(require_post_quantum=True), _resp(post_quantum=False))
    assert _offer(i.sent[0]) == {1: [1], 2: "XXhfs"}  # no classical alternative offered
    assert i.error is not None and i.error.code is ErrorCode.POST_QUANTUM_REQUIRED


def test_require_post_quantum_both_sides() -> None:
    i, _r = _pump(_init(require_post_quantum=True), _resp(require_post_quantum=True))
    assert i.result is not None and i.result.pattern == "XXhfs"


def test_classical_fallback_needs_a_post_quantum_initiator() -> None:
    with pytest.raises(M2MError) as info:
        _init(post_quantum=False, classical_fallback=True)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(M2MError):
        _resp(post_quantum=True, classical_fallback=True)


def test_small_max_message_size_still_takes_hybrid_messages() -> None:
    i, r = _pump(
        _init(post_quantum=True, max_message_size=1024),
        _resp(post_quantum=True, max_message_size=1024),
    )
    assert i.result is not None and r.result is not None and r.result.post_quantum


# ------------------------------------------------------------------ man in the middle


def _strip(keep_preference: bool) -> Any:
    """A MITM turning the hybrid first flight into a classical XX one."""

    def tamper(index: int, data: bytes) -> bytes:
        if index != 0:
            return data
        offer: dict[int, Any] = {1: [1], 2: "XX"}
        if keep_preference:
            offer[512] = ["XXhfs", "XX"]
        body = cbor.encode(offer)
        n = int.from_bytes(data[8:10], "big")
        e = data[10 + n + 2 : 10 + n + 2 + 32]
        return MAGIC + len(body).to_bytes(2, "big") + body + b"\x00\x20" + e

    return tamper


def test_mitm_strips_hybrid_but_keeps_the_preference() -> None:
    i, r = _pump(_init(post_quantum=True), _resp(post_quantum=True), tamper=_strip(True))
    assert r.error is not None and r.error.code is ErrorCode.DOWNGRADE_DETECTED
    assert i.result is None and r.result is None


def test_mitm_strips_hybrid_and_the_preference() -> None:
    # The responder runs classical XX over the rewritten prologue; the initiator,
    # whose prologue is its real offer, cannot read message 2: it fails closed.
    i, r = _pump(_init(post_quantum=True), _resp(post_quantum=True), tamper=_strip(False))
    assert i.result is None
    assert i.error is not None
    assert i.error.code in (ErrorCode.DECRYPT_ERROR, ErrorCode.DECODE_ERROR)
    assert r.result is None


def test_mitm_strips_hybrid_from_ik() -> None:
    rs = x25519_public_key(STATIC_R)

    def tamper(index: int, data: bytes) -> bytes:
        if index != 0:
            return data
        n = int.from_bytes(data[8:10], "big")
        body = cbor.encode({1: [1], 2: "IK"})
        return MAGIC + len(body).to_bytes(2, "big") + body + data[10 + n :]

    i, r = _pump(_init(post_quantum=True, remote_static=rs), _resp(), tamper=tamper)
    assert r.error is not None and r.error.code is ErrorCode.DECRYPT_ERROR
    assert r.result is None and i.result is None


# ------------------------------------------------------------------ hostile hybrid messages


def _flip(at: int) -> Any:
    def tamper(index: int, data: bytes) -> bytes:
        if index != at:
            return data
        pos = len(data) // 2
        return data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1 :]

    return tamper


@pytest.mark.parametrize("flight", [0, 1, 2])
def test_bit_flip_in_any_hybrid_flight_fails_closed(flight: int) -> None:
    i, r = _pump(_init(post_quantum=True), _resp(post_quantum=True), tamper=_flip(flight))
    assert i.result is None or r.result is None
    failed = i.error if i.error is not None else r.error
    assert failed is not None
    # flight 0's middle is the cleartext KEM key: the responder's message 2 is then
    # keyed differently from the initiator's view (DECRYPT_ERROR at the initiator).
    assert failed.code in (ErrorCode.DECRYPT_ERROR, ErrorCode.DECODE_ERROR)


def test_xxhfs_message_1_of_the_wrong_length() -> None:
    def tamper(index: int, data: bytes) -> bytes:
        if index != 0:
            return data
        n = int.from_bytes(data[8:10], "big")
        msg1 = data[12 + n :] + b"\x00"
        return data[: 10 + n] + len(msg1).to_bytes(2, "big") + msg1

    _i, r = _pump(_init(post_quantum=True), _resp(post_quantum=True), tamper=tamper)
    assert r.error is not None and r.error.code is ErrorCode.DECODE_ERROR


def test_invalid_ml_kem_public_key_is_a_decode_error() -> None:
    # Coefficients of 0xfff are not reduced modulo q (FIPS 203 encapsulation-key check).
    def tamper(index: int, data: bytes) -> bytes:
        if index != 0:
            return data
        return data[: len(data) - 1184] + b"\xff" * 1184

    _i, r = _pump(_init(post_quantum=True), _resp(post_quantum=True), tamper=tamper)
    assert r.error is not None and r.error.code is ErrorCode.DECODE_ERROR
    assert r.sent == [MAGIC + encode_abort(ErrorCode.DECODE_ERROR)]


def test_preference_naming_only_the_hybrid_pattern_is_a_downgrade() -> None:
    # A classical offer whose key 512 names the hybrid variant but not the pattern it runs.
    def tamper(index: int, data: bytes) -> bytes:
        if index != 0:
            return data
        n = int.from_bytes(data[8:10], "big")
        body = cbor.encode({1: [1], 2: "XX", 512: ["XXhfs"]})
        return MAGIC + len(body).to_bytes(2, "big") + body + data[10 + n :]

    _i, r = _pump(_init(post_quantum=False), _resp(post_quantum=True), tamper=tamper)
    assert r.error is not None and r.error.code is ErrorCode.DOWNGRADE_DETECTED


def test_malformed_preference_is_ignored_like_an_unknown_extension() -> None:
    def tamper(index: int, data: bytes) -> bytes:
        if index != 0:
            return data
        n = int.from_bytes(data[8:10], "big")
        body = cbor.encode({1: [1], 2: "XX", 512: b"XXhfs"})
        return MAGIC + len(body).to_bytes(2, "big") + body + data[10 + n :]

    # The responder ignores the malformed key and answers with message 2; the initiator
    # bound its real offer, so the rewrite is caught by the prologue instead.
    i, r = _pump(_init(post_quantum=False), _resp(post_quantum=True), tamper=tamper)
    assert r.sent and r.sent[0].startswith(MAGIC) and len(r.sent[0]) > 100  # message 2
    assert i.error is not None and i.error.code is ErrorCode.DECRYPT_ERROR
    assert r.error is not None and r.error.code is ErrorCode.DECRYPT_ERROR  # the ABORT
