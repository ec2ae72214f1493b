"""The handshake driver (m2mproto.handshake.Handshake) in each role and state.

The first input byte picks the scenario, the rest is what the peer sends:

* 0: responder fed the initiator's whole flight (preface, offer, message 1;
  XX and IK seeds both apply, the offer picks the pattern);
* 1: XX initiator, after its real message 1, fed the responder's flight;
* 2: XX responder, after the real preface and message 1, fed message 3;
* 3: IK initiator, after its real message 1, fed the responder's flight.

Bit 0x40 of the first byte makes the initiator scenarios (1, 3) hybrid post-quantum
(XXhfs / IKhfs: the responder's flight carries the encrypted ML-KEM ciphertext, so
``ekem1`` parsing and decapsulation are reached); the responder scenarios ignore
it (their encapsulation draws OpenSSL randomness, which would break the
split-input equivalence).

Identities, static and ephemeral keys are fixed, so a seed recorded from a
real run completes the handshake. Bit 0x80 of the first byte also signals
end of stream after the input. Invariant: ``next_event`` returns None, a
result, or raises an ``M2MError``; afterwards the side is terminal and
``abort`` yields bytes ending in an ABORT (or nothing if the peer aborted).
The input is processed twice, whole and in small pieces, and both runs must
agree on the outcome (split-input equivalence).
"""

from __future__ import annotations

from typing import Any

from _common import fuzz_main, instrumented, new_handshake, run_handshake

with instrumented(__name__):
    from m2mproto.errors import ErrorCode, LocalProtocolError, M2MError
    from m2mproto.handshake import ABORT_LENGTH, HandshakeAborted

_FLIGHTS: dict[tuple[bool, bool], dict[str, bytes]] = {}


def _flights(ik: bool, hybrid: bool = False) -> dict[str, bytes]:
    if (ik, hybrid) not in _FLIGHTS:
        _FLIGHTS[(ik, hybrid)] = run_handshake(ik, post_quantum=hybrid)
    return _FLIGHTS[(ik, hybrid)]


def _setup(scenario: int, hybrid: bool = False) -> Any:
    if hybrid and scenario in (1, 3):
        ik = scenario == 3
        hs = new_handshake(True, ik=ik, post_quantum=True)
        assert hs.data_to_send() == _flights(ik, True)["init1"], "initiator is not deterministic"
        return hs
    if scenario == 0:
        return new_handshake(False)
    if scenario == 1:
        hs = new_handshake(True)
        assert hs.data_to_send() == _flights(False)["init1"], "initiator is not deterministic"
        return hs
    if scenario == 2:
        hs = new_handshake(False)
        hs.receive_data(_flights(False)["init1"])
        assert hs.next_event() is None
        assert hs.data_to_send() == _flights(False)["resp2"], "responder is not deterministic"
        return hs
    hs = new_handshake(True, ik=True)
    assert hs.data_to_send() == _flights(True)["init1"]
    return hs


def _run(scenario: int, pieces: list[bytes], eof: bool, hybrid: bool = False) -> tuple[Any, ...]:
    """Feed *pieces*; return the outcome ``("done", hash, trailing)`` / ``("error", code)``."""
    hs = _setup(scenario, hybrid)
    trailing = b""
    result = None
    try:
        for i, piece in enumerate(pieces):
            hs.receive_data(piece)
            result = hs.next_event()
            if result is not None:
                trailing = result.trailing_data + b"".join(pieces[i + 1 :])
                break
        else:
            if eof:
                hs.receive_data(b"")
                result = hs.next_event()
                assert result is None, "completed on end of stream alone"
    except M2MError as exc:
        assert not isinstance(exc, LocalProtocolError), f"local error from peer input: {exc!r}"
        assert hs.failed and hs.error is exc
        out = hs.abort(exc.code)
        if isinstance(exc, HandshakeAborted):
            assert out == b""
        else:
            assert len(out) >= 2 + ABORT_LENGTH, "no ABORT after a failure"
        try:
            hs.next_event()
        except LocalProtocolError as again:
            assert again.code is ErrorCode.INVALID_STATE
        else:
            raise AssertionError("a failed handshake accepted next_event")
        return ("error", exc.code)
    if result is None:
        return ("pending",)
    assert hs.is_complete and len(result.handshake_hash) == 32
    return ("done", result.handshake_hash, bytes(trailing), result.peer)


def check_handshake(data: bytes) -> None:
    """Run one handshake scenario from *data*, whole and split."""
    if not data:
        return
    scenario, eof, body = data[0] % 4, bool(data[0] & 0x80), data[1:]
    hybrid = bool(data[0] & 0x40)
    whole = _run(scenario, [body] if body else [], eof, hybrid)
    sizes = [1, 2, 3, 5, 7, 11, 64]
    pieces, pos, i = [], 0, 0
    while pos < len(body):
        pieces.append(body[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    split = _run(scenario, pieces, eof, hybrid)
    assert whole == split, f"whole {whole!r} != split {split!r}"


if __name__ == "__main__":
    fuzz_main(check_handshake)
