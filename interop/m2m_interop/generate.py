"""Generate the m2mproto test-vector files (``m2m interop vectors --write/--check``).

Theory of operation
-------------------
Every byte of every vector follows from fixed labels (``mint.seed``): identity
seeds, Noise static keys, ephemeral keys (through the handshake's
``fixed_ephemeral_key_for_testing_only`` hook) and entropy streams. The
generator runs the real implementation (``m2mproto.handshake``, ``records``,
``frames``, ``tokens``, ``identity``) and records what it produced;
``tests/interop/test_vectors.py`` then checks the implementation *against*
the files by decoding and verifying them. The files are described in
``interop/README.md``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from m2mproto import cbor
from m2mproto.errors import ErrorCode, LocalProtocolError
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
    encode_frame,
)
from m2mproto.handshake import Handshake, HandshakeResult, binding_message
from m2mproto.identity import AgentId, Identity
from m2mproto.noise import CipherState, NoiseProtocol, x25519_public_key
from m2mproto.records import RecordWriter

from . import mint

__all__ = [
    "FILES",
    "check",
    "frame_from_json",
    "frame_to_json",
    "generate",
    "write",
]

_FORMAT = "m2mproto-vectors/1"
#: Fixed key used for the frame vectors' records (nonce starts at 0).
FRAME_RECORD_KEY = hashlib.sha256(b"m2mproto interop frame record key").digest()
_NOISE = NoiseProtocol.from_name("Noise_XX_25519_ChaChaPoly_SHA256")


def _hex(b: bytes) -> str:
    return b.hex()


# --------------------------------------------------------------------------
# Frames <-> JSON
# --------------------------------------------------------------------------


def frame_to_json(frame: Frame) -> dict[str, Any]:
    """A JSON object naming the frame kind and its fields (bytes as hex)."""
    if isinstance(frame, StreamFrame):
        return {
            "kind": "STREAM",
            "stream_id": frame.stream_id,
            "data": _hex(frame.data),
            "end_stream": frame.end_stream,
        }
    if isinstance(frame, OpenFrame):
        return {"kind": "OPEN", "stream_id": frame.stream_id, "resource": frame.resource}
    if isinstance(frame, MessageFrame):
        return {
            "kind": "MESSAGE",
            "stream_id": frame.stream_id,
            "fragment": _hex(frame.fragment),
            "last": frame.last,
            "end_stream": frame.end_stream,
        }
    if isinstance(frame, ResetFrame):
        return {
            "kind": "RESET",
            "stream_id": frame.stream_id,
            "code": frame.code,
            "final_size": frame.final_size,
        }
    if isinstance(frame, WindowUpdateFrame):
        return {"kind": "WINDOW_UPDATE", "stream_id": frame.stream_id, "increment": frame.increment}
    if isinstance(frame, PingFrame):
        return {"kind": "PING", "payload": _hex(frame.payload)}
    if isinstance(frame, PongFrame):
        return {"kind": "PONG", "payload": _hex(frame.payload)}
    if isinstance(frame, TokenFrame):
        return {"kind": "TOKEN", "token": _hex(frame.token)}
    if isinstance(frame, KeyUpdateFrame):
        return {"kind": "KEY_UPDATE", "update_requested": frame.update_requested}
    if isinstance(frame, CloseFrame):
        return {"kind": "CLOSE", "code": frame.code, "reason": frame.reason}
    if isinstance(frame, RequestFrame):
        return {
            "kind": "REQUEST",
            "stream_id": frame.stream_id,
            "resource": frame.resource,
            "payload": _hex(frame.payload),
        }
    if isinstance(frame, ReplyFrame):
        return {"kind": "REPLY", "stream_id": frame.stream_id, "payload": _hex(frame.payload)}
    return {"kind": frame.kind, "fields_cbor": _hex(cbor.encode(list(frame.fields)))}


def frame_from_json(obj: dict[str, Any]) -> Frame:
    """Inverse of :func:`frame_to_json`.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) for an unknown kind.
    """
    kind = obj["kind"]
    b = bytes.fromhex
    if kind == "STREAM":
        return StreamFrame(obj["stream_id"], b(obj["data"]), obj["end_stream"])
    if kind == "OPEN":
        return OpenFrame(obj["stream_id"], obj["resource"])
    if kind == "MESSAGE":
        return MessageFrame(obj["stream_id"], b(obj["fragment"]), obj["last"], obj["end_stream"])
    if kind == "RESET":
        return ResetFrame(obj["stream_id"], obj["code"], obj["final_size"])
    if kind == "WINDOW_UPDATE":
        return WindowUpdateFrame(obj["stream_id"], obj["increment"])
    if kind == "PING":
        return PingFrame(b(obj["payload"]))
    if kind == "PONG":
        return PongFrame(b(obj["payload"]))
    if kind == "TOKEN":
        return TokenFrame(b(obj["token"]))
    if kind == "KEY_UPDATE":
        return KeyUpdateFrame(obj["update_requested"])
    if kind == "CLOSE":
        return CloseFrame(obj["code"], obj["reason"])
    if kind == "REQUEST":
        return RequestFrame(obj["stream_id"], obj["resource"], b(obj["payload"]))
    if kind == "REPLY":
        return ReplyFrame(obj["stream_id"], b(obj["payload"]))
    if isinstance(kind, int):
        return ExtensionFrame(kind, tuple(cbor.decode(b(obj["fields_cbor"]))))
    raise LocalProtocolError(f"unknown frame kind {kind!r}", ErrorCode.INVALID_ARGUMENT)


# --------------------------------------------------------------------------
# Handshake transcripts
# --------------------------------------------------------------------------


def _party(label: str) -> dict[str, Any]:
    ident = mint.identity(label)
    static = mint.seed(label + " noise static")
    eph = mint.seed(label + " noise ephemeral")
    return {
        "label": label,
        "identity": ident,
        "static": static,
        "ephemeral": eph,
    }


def _party_json(p: dict[str, Any]) -> dict[str, Any]:
    ident: Identity = p["identity"]
    static_pub = x25519_public_key(p["static"])
    return {
        "identity_seed": _hex(mint.seed(p["label"])),
        "identity_public_key": _hex(ident.public_key),
        "agent_id": ident.agent_id.text,
        "static_private": _hex(p["static"]),
        "static_public": _hex(static_pub),
        "ephemeral_private": _hex(p["ephemeral"]),
        "ephemeral_public": _hex(x25519_public_key(p["ephemeral"])),
        "binding_message": _hex(binding_message(static_pub)),
        "identity_sig": _hex(ident.sign(binding_message(static_pub))),
    }


def _drive(
    init: Handshake, resp: Handshake
) -> tuple[list[bytes], HandshakeResult, HandshakeResult]:
    flights: list[bytes] = []
    results: dict[str, HandshakeResult] = {}
    sides = {"i": init, "r": resp}
    sender, receiver = "i", "r"
    for _ in range(6):  # bounded: XX has 3 flights, IK 2
        data = sides[sender].data_to_send()
        if data:
            flights.append(data)
            sides[receiver].receive_data(data)
        for name, hs in sides.items():
            if name not in results and not hs.failed:
                res = hs.next_event()
                if res is not None:
                    results[name] = res
        if len(results) == 2 and not init.data_to_send() and not resp.data_to_send():
            break
        sender, receiver = receiver, sender
    return flights, results["i"], results["r"]


def _split_flights(pattern: str, flights: list[bytes]) -> list[dict[str, Any]]:
    """Name each flight and its parts (magic, offer frame, Noise message frames)."""
    out: list[dict[str, Any]] = []
    magic = flights[0][:8]
    f1 = flights[0]
    offer_len = int.from_bytes(f1[8:10], "big")
    offer = f1[10 : 10 + offer_len]
    msg1 = f1[12 + offer_len :]
    out.append(
        {
            "name": "initiator flight 1",
            "bytes": _hex(f1),
            "magic": _hex(magic),
            "offer_cbor": _hex(offer),
            "noise_message": _hex(msg1),
        }
    )
    f2 = flights[1]
    out.append(
        {
            "name": "responder flight 1",
            "bytes": _hex(f2),
            "magic": _hex(f2[:8]),
            "noise_message": _hex(f2[10:]),
        }
    )
    if pattern == "XX":
        out.append(
            {
                "name": "initiator flight 2",
                "bytes": _hex(flights[2]),
                "noise_message": _hex(flights[2][2:]),
            }
        )
    return out


def _transcript(pattern: str) -> dict[str, Any]:
    i, r = _party("initiator"), _party("responder")
    root = mint.ROOT
    token = mint.craft_token(
        root,
        mint.claims_for(root, i["identity"], (("echo", "*"),), cti=bytes(range(16))),
    )
    params_i = {1: 100, 2: 262144, 3: 1048576, 4: 1048576}
    params_r = {1: 50, 2: 65536, 3: 262144, 4: 65536}
    rs = x25519_public_key(r["static"]) if pattern == "IK" else None
    init = Handshake(
        True,
        i["identity"],
        entropy=mint.entropy("transcript initiator"),
        params=params_i,
        tokens=(token,),
        static_key=i["static"],
        remote_static=rs,
        fixed_ephemeral_key_for_testing_only=i["ephemeral"],
    )
    resp = Handshake(
        False,
        r["identity"],
        entropy=mint.entropy("transcript responder"),
        params=params_r,
        static_key=r["static"],
        fixed_ephemeral_key_for_testing_only=r["ephemeral"],
    )
    flights, ri, rr = _drive(init, resp)
    assert ri.handshake_hash == rr.handshake_hash
    sig_i = i["identity"].sign(binding_message(x25519_public_key(i["static"])))
    sig_r = r["identity"].sign(binding_message(x25519_public_key(r["static"])))
    payload_i = cbor.encode({1: i["identity"].public_key, 2: sig_i, 3: params_i, 4: [token]})
    payload_r = cbor.encode({1: r["identity"].public_key, 2: sig_r, 3: params_r, 5: 1})
    preface_len = 8 + 2 + int.from_bytes(flights[0][8:10], "big")
    # First transport records, both ways (records.md §1, frames.md).
    wi = RecordWriter(ri.send_cipher, key_update_after=2**24, max_records_per_key=2**32)
    wr = RecordWriter(rr.send_cipher, key_update_after=2**24, max_records_per_key=2**32)
    frames_i: list[Frame] = [
        OpenFrame(0, "echo"),
        MessageFrame(0, cbor.encode({"hello": "world"}), True, True),
    ]
    frames_r: list[Frame] = [
        TokenFrame(mint.craft_token(root, mint.claims_for(root, r["identity"], cti=bytes(16)))),
        MessageFrame(0, cbor.encode({"hello": "world"}), True, True),
    ]
    records = []
    for sender, writer, frames in (("initiator", wi, frames_i), ("responder", wr, frames_r)):
        plaintext = b"".join(encode_frame(f) for f in frames)
        records.append(
            {
                "sender": sender,
                "nonce": 0,
                "frames": [frame_to_json(f) for f in frames],
                "plaintext": _hex(plaintext),
                "record": _hex(writer.seal(plaintext)),
            }
        )
    return {
        "pattern": pattern,
        "protocol_name": f"Noise_{pattern}_25519_ChaChaPoly_SHA256",
        "initiator": _party_json(i),
        "responder": _party_json(r),
        "prologue": _hex(flights[0][:preface_len]),
        "initiator_payload_cbor": _hex(payload_i),
        "responder_payload_cbor": _hex(payload_r),
        "initiator_token": _hex(token),
        "flights": _split_flights(pattern, flights),
        "handshake_hash": _hex(ri.handshake_hash),
        "version": ri.version,
        "records": records,
    }


def _handshake_file() -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "description": (
            "Deterministic m2mproto handshakes (spec/handshake.md): fixed identities, Noise "
            "static and ephemeral keys; every flight, payload, identity signature, the "
            "handshake hash and the first transport record each way (spec/records.md)."
        ),
        "root_agent_id": mint.ROOT.agent_id.text,
        "transcripts": [_transcript("XX"), _transcript("IK")],
    }


# --------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------

_VALID_FRAMES: list[tuple[str, Frame]] = [
    ("stream", StreamFrame(0, b"hi", True)),
    ("stream-empty-end", StreamFrame(4611686018427387903, b"", True)),
    ("open", OpenFrame(2, "echo")),
    ("message", MessageFrame(1, bytes.fromhex("a10102"), True, False)),
    ("message-fragment", MessageFrame(3, b"\x82\x01", False, False)),
    ("reset", ResetFrame(5, 0x40, 1000)),
    ("window-update-connection", WindowUpdateFrame(None, 65536)),
    ("window-update-stream", WindowUpdateFrame(7, 4611686018427387903)),
    ("ping", PingFrame(bytes(range(8)))),
    ("pong", PongFrame(bytes(range(8)))),
    ("token", TokenFrame(bytes.fromhex("d28443a10127a0f6"))),
    ("key-update", KeyUpdateFrame(True)),
    ("close", CloseFrame(0, "")),
    ("close-reason", CloseFrame(0x0E, "enhance_your_calm")),
    ("extension", ExtensionFrame(64, (1, "x"))),
]

#: Valid only where request/reply is negotiated (transport parameter 5): entries
#: carry ``"request_reply": true``; elsewhere kinds 11 and 12 are unknown core kinds.
_VALID_RR_FRAMES: list[tuple[str, Frame]] = [
    ("request", RequestFrame(0, "orders/get", bytes.fromhex("a1626964182a"))),
    ("request-empty-payload", RequestFrame(4611686018427387902, "r", b"")),
    ("reply", ReplyFrame(1, bytes.fromhex("a1626964182a"))),
]

# (name, hex, code, comment) -- REQUEST / REPLY frames a receiver that negotiated
# request/reply MUST reject (frames.md §2; kinds 11 and 12 are core kinds there).
_INVALID_RR_FRAMES: list[tuple[str, str, ErrorCode, str]] = [
    ("request-arity", "830b0061" + "72", ErrorCode.DECODE_ERROR, "REQUEST with 2 fields"),
    ("reply-arity", "840c004040", ErrorCode.DECODE_ERROR, "REPLY with 3 fields"),
    ("request-id-text", "840b6161617240", ErrorCode.DECODE_ERROR, "stream ID as text"),
    (
        "request-id-2^62",
        "840b1b4000000000000000617240",
        ErrorCode.PROTOCOL_ERROR,
        "stream ID above 2^62-1",
    ),
    ("request-resource-bytes", "840b00417240", ErrorCode.DECODE_ERROR, "resource as bytes"),
    ("request-payload-text", "840b00617260", ErrorCode.DECODE_ERROR, "payload as text"),
    ("request-resource-empty", "840b006040", ErrorCode.PROTOCOL_ERROR, "empty resource"),
    (
        "request-resource-257",
        "840b00" + "790101" + "61" * 257 + "40",
        ErrorCode.FRAME_SIZE_ERROR,
        "resource 257 bytes",
    ),
    ("request-resource-bad-utf8", "840b0061ff40", ErrorCode.DECODE_ERROR, "resource not UTF-8"),
    ("request-truncated", "840b00617242", ErrorCode.DECODE_ERROR, "payload beyond the end"),
    ("reply-id-negative", "830c2040", ErrorCode.DECODE_ERROR, "negative stream ID"),
    ("reply-id-2^62", "830c1b400000000000000040", ErrorCode.PROTOCOL_ERROR, "stream ID 2^62"),
    ("reply-payload-bool", "830c01f5", ErrorCode.DECODE_ERROR, "payload as a bool"),
    ("reply-non-shortest", "830c180140", ErrorCode.DECODE_ERROR, "stream ID 1 in 2 bytes"),
    (
        "order-request-range-before-size",
        "840b1b4000000000000000" + "790101" + "61" * 257 + "40",
        ErrorCode.PROTOCOL_ERROR,
        "REQUEST with stream ID 2^62 and a 257-byte resource: rule 5 before the size rule",
    ),
    (
        "order-request-types-before-size",
        "840b00" + "790101" + "61" * 257 + "60",
        ErrorCode.DECODE_ERROR,
        "REQUEST with a 257-byte resource and a text payload: every field's type (rule 4) "
        "before the resource size rule",
    ),
]

# (name, hex, code, comment) — frames a receiver MUST reject.
_INVALID_FRAMES: list[tuple[str, str, ErrorCode, str]] = [
    ("not-array", "a10101", ErrorCode.DECODE_ERROR, "a map, not an array"),
    ("empty-array", "80", ErrorCode.DECODE_ERROR, "no kind"),
    ("kind-0", "8100", ErrorCode.PROTOCOL_ERROR, "kind 0 is reserved core range"),
    ("kind-11", "810b", ErrorCode.PROTOCOL_ERROR, "unknown core kind"),
    ("stream-arity", "83010042", ErrorCode.DECODE_ERROR, "STREAM with 2 fields"),
    ("stream-id-text", "840161614268" + "69f5", ErrorCode.DECODE_ERROR, "stream ID as text"),
    ("stream-id-negative", "84012042" + "6869f5", ErrorCode.DECODE_ERROR, "negative stream ID"),
    ("stream-id-float", "8401f93c0042" + "6869f5", ErrorCode.DECODE_ERROR, "stream ID 1.0"),
    (
        "stream-id-2^62",
        "84011b400000000000000042" + "6869f5",
        ErrorCode.PROTOCOL_ERROR,
        "stream ID above 2^62-1",
    ),
    ("stream-end-int", "8401004268" + "6901", ErrorCode.DECODE_ERROR, "end_stream as integer"),
    ("non-shortest-int", "84011800426869f5", ErrorCode.DECODE_ERROR, "0 encoded in 2 bytes"),
    ("indefinite-array", "9f0100426869f5ff", ErrorCode.DECODE_ERROR, "indefinite length"),
    ("tag", "8401c2410042" + "6869f5", ErrorCode.DECODE_ERROR, "bignum tag"),
    ("trailing", "84010042" + "6869f5" + "00", ErrorCode.DECODE_ERROR, "byte after the frame"),
    ("truncated", "8401004268", ErrorCode.DECODE_ERROR, "declared length beyond the end"),
    (
        "huge-length",
        "8401005b7fffffffffffffff",
        ErrorCode.DECODE_ERROR,
        "2^63-byte string declared",
    ),
    ("open-empty", "83020260", ErrorCode.PROTOCOL_ERROR, "empty resource"),
    (
        "open-257",
        "830202" + "790101" + "61" * 257,
        ErrorCode.FRAME_SIZE_ERROR,
        "resource 257 bytes",
    ),
    ("open-bad-utf8", "83020261ff", ErrorCode.DECODE_ERROR, "resource not UTF-8"),
    ("message-end-not-last", "850301420102f4f5", ErrorCode.PROTOCOL_ERROR, "end without last"),
    ("reset-code-2^16", "8404011a0001000000", ErrorCode.PROTOCOL_ERROR, "code above 0xFFFF"),
    (
        "reset-final-2^62",
        "840401001b4000000000000000",
        ErrorCode.FINAL_SIZE_ERROR,
        "final size above 2^62-1",
    ),
    ("window-zero", "8305f600", ErrorCode.PROTOCOL_ERROR, "increment 0"),
    (
        "window-2^62",
        "8305f61b4000000000000000",
        ErrorCode.FLOW_CONTROL_ERROR,
        "increment above 2^62-1",
    ),
    ("ping-65", "8206" + "5841" + "00" * 65, ErrorCode.FRAME_SIZE_ERROR, "ping payload 65 bytes"),
    ("close-reason-257", "830a00" + "790101" + "61" * 257, ErrorCode.FRAME_SIZE_ERROR, "reason"),
    (
        "key-update-not-last",
        "8209f5" + "820640",
        ErrorCode.PROTOCOL_ERROR,
        "KEY_UPDATE followed by a PING in one record",
    ),
    ("key-update-int", "820901", ErrorCode.DECODE_ERROR, "update_requested as integer"),
    (
        "duplicate-key",
        "821840" + "a2" + "0101" + "0102",
        ErrorCode.DECODE_ERROR,
        "map with a duplicate key inside an extension frame",
    ),
    # Order of the checks when one record breaks several rules (frames.md §2).
    (
        "order-arity-before-size",
        "8306" + "5841" + "00" * 65 + "00",
        ErrorCode.DECODE_ERROR,
        "PING with an extra field and a 65-byte payload: rule 4 (arity) before the size rule",
    ),
    (
        "order-range-before-size",
        "8302" + "1b4000000000000000" + "790101" + "61" * 257,
        ErrorCode.PROTOCOL_ERROR,
        "OPEN with stream ID 2^62 and a 257-byte resource: rule 5 (range) before the size rule",
    ),
    (
        "order-fields-in-order",
        "8401" + "1b4000000000000000" + "626869" + "f5",
        ErrorCode.PROTOCOL_ERROR,
        "STREAM with stream ID 2^62 (rule 5) and text data (rule 4): the first field decides",
    ),
    (
        "order-message-flags-first",
        "8503" + "1b4000000000000000" + "40" + "01" + "f4",
        ErrorCode.DECODE_ERROR,
        "MESSAGE with stream ID 2^62 (rule 5) and last as integer (rule 4): flags come first",
    ),
    (
        "order-type-before-value",
        "8305" + "6161" + "00",
        ErrorCode.DECODE_ERROR,
        "WINDOW_UPDATE with a text stream ID and increment 0: rule 4 before the zero rule",
    ),
    (
        "order-first-invalid-frame",
        "810b" + "83010042",
        ErrorCode.PROTOCOL_ERROR,
        "unknown core kind, then a STREAM with 2 fields: the first invalid frame decides",
    ),
    (
        "order-frames-before-key-update-position",
        "8209f5" + "80",
        ErrorCode.DECODE_ERROR,
        "KEY_UPDATE followed by an empty array: every frame decodes before the KEY_UPDATE rule",
    ),
]


def _frames_file() -> dict[str, Any]:
    valid: list[dict[str, Any]] = []
    for name, frame in _VALID_FRAMES:
        enc = encode_frame(frame)
        cs = CipherState(_NOISE, FRAME_RECORD_KEY)
        record = RecordWriter(cs, key_update_after=2**24, max_records_per_key=2**32).seal(enc)
        valid.append(
            {"name": name, "frame": frame_to_json(frame), "cbor": _hex(enc), "record": _hex(record)}
        )
    invalid: list[dict[str, Any]] = []
    for name, hexstr, code, comment in _INVALID_FRAMES:
        invalid.append(
            {
                "name": name,
                "plaintext": hexstr,
                "result": "invalid",
                "code": code.name,
                "comment": comment,
            }
        )
    for name, frame in _VALID_RR_FRAMES:
        enc = encode_frame(frame)
        cs = CipherState(_NOISE, FRAME_RECORD_KEY)
        record = RecordWriter(cs, key_update_after=2**24, max_records_per_key=2**32).seal(enc)
        valid.append(
            {
                "name": name,
                "frame": frame_to_json(frame),
                "cbor": _hex(enc),
                "record": _hex(record),
                "request_reply": True,
            }
        )
    for name, hexstr, code, comment in _INVALID_RR_FRAMES:
        invalid.append(
            {
                "name": name,
                "plaintext": hexstr,
                "result": "invalid",
                "code": code.name,
                "comment": comment,
                "request_reply": True,
            }
        )
    return {
        "format": _FORMAT,
        "description": (
            "Frame encodings (spec/frames.md): each valid frame as JSON fields, its CBOR, and "
            "the record sealing it alone with ChaCha20-Poly1305 under record_key at nonce 0 "
            "(ad empty); invalid record plaintexts with the code a receiver MUST report."
        ),
        "record_key": _hex(FRAME_RECORD_KEY),
        "valid": valid,
        "invalid": invalid,
    }


# --------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------


def _tokens_file() -> dict[str, Any]:
    tests = []
    for i, case in enumerate(mint.token_catalog(), 1):
        entry: dict[str, Any] = {
            "tcId": i,
            "name": case.name,
            "comment": case.comment,
            "token": _hex(case.token),
            "result": case.result,
            "flags": list(case.flags),
        }
        if case.result == "valid":
            entry["capabilities"] = list(case.capabilities)
            entry["chain_length"] = case.depth
        else:
            assert case.code is not None
            entry["code"] = case.code.name
        tests.append(entry)
    return {
        "format": _FORMAT,
        "description": (
            "Capability tokens (spec/tokens.md), Wycheproof style. Verify each token with the "
            "context below; a valid token yields the listed effective capabilities, an invalid "
            "one fails with the listed reason code (the first step of §6.6 that applies)."
        ),
        "context": {
            "trust_roots": [mint.ROOT.agent_id.text],
            "now": mint.NOW,
            "clock_skew": mint.SKEW,
            "holder": mint.HOLDER.agent_id.text,
            "audience": mint.VERIFIER.agent_id.text,
            "revocations": [_hex(mint.revocation_statement())],
            "max_token_size": 8192,
            "max_chain_length": 8,
        },
        "tests": tests,
    }


# --------------------------------------------------------------------------
# Application conventions (spec/application.md)
# --------------------------------------------------------------------------


def _msg(sid: int, value: Any, *, end: bool) -> MessageFrame:
    return MessageFrame(sid, cbor.encode(value), True, end)


def _end(sid: int) -> StreamFrame:
    return StreamFrame(sid, b"", True)


_ECHO_DATA = bytes.fromhex("00017f80ff")

#: (name, comment, [(sender, [frames of one record])]) -- each on a fresh connection,
#: so the initiator's first stream is 0. Senders are "initiator" / "responder".
_EXCHANGES: list[tuple[str, str, list[tuple[str, list[Frame]]]]] = [
    (
        "request-reply",
        "§7.2 request: OPEN and the request (last, end-stream) in one record; the reply is "
        "one message with last and end-stream. The stream is then closed both ways.",
        [
            ("initiator", [OpenFrame(0, "orders/get"), _msg(0, {"id": 42}, end=True)]),
            ("responder", [_msg(0, {"id": 42, "state": "shipped"}, end=True)]),
        ],
    ),
    (
        "request-reply-separate-end",
        "§7.2 the same reply with its end of stream in a separate empty STREAM frame (how a "
        "stream handler such as the reference echo answers); a requester MUST accept both.",
        [
            ("initiator", [OpenFrame(0, "echo"), _msg(0, {"hello": "world"}, end=True)]),
            ("responder", [_msg(0, {"hello": "world"}, end=False), _end(0)]),
        ],
    ),
    (
        "one-way",
        "§7.3 one-way message: OPEN and the message (last, end-stream); after handling it the "
        "receiver ends its half with an empty STREAM frame carrying end-stream (the stream "
        "is then closed both ways and stops counting against max_concurrent_streams).",
        [
            ("initiator", [OpenFrame(0, "log"), _msg(0, {"event": "boot"}, end=True)]),
            ("responder", [_end(0)]),
        ],
    ),
    (
        "one-way-confirmed",
        "§7.4 confirmed one-way message: the same bytes as one-way; the sender waits for the "
        "receiver's end of stream (handled) or a RESET (not handled).",
        [
            ("initiator", [OpenFrame(0, "log"), _msg(0, {"event": "boot"}, end=True)]),
            ("responder", [_end(0)]),
        ],
    ),
    (
        "error-application",
        "§7.5 error reply: the handler failed; RESET with APPLICATION_ERROR and final size 0 "
        "(the receiver sent nothing on the stream). The error's reason never travels.",
        [
            ("initiator", [OpenFrame(0, "fail"), _msg(0, {"id": 1}, end=True)]),
            ("responder", [ResetFrame(0, ErrorCode.APPLICATION_ERROR, 0)]),
        ],
    ),
    (
        "error-refused",
        "§7.5 no handler for the resource: RESET(REFUSED); the request message that followed "
        "the OPEN is discarded (its credit is returned).",
        [
            ("initiator", [OpenFrame(0, "nothing/here"), _msg(0, {"id": 1}, end=True)]),
            ("responder", [ResetFrame(0, ErrorCode.REFUSED, 0)]),
        ],
    ),
    (
        "error-unauthorized",
        "§7.5 / streams.md §7 the peer holds no stream/open capability for the resource: "
        "RESET(UNAUTHORIZED).",
        [
            ("initiator", [OpenFrame(0, "admin"), _msg(0, {"op": "drop"}, end=True)]),
            ("responder", [ResetFrame(0, ErrorCode.UNAUTHORIZED, 0)]),
        ],
    ),
    (
        "byte-stream-echo",
        "§7.1 byte stream on echo (interop.md §3): STREAM data comes back XOR ff; each side "
        "ends its half with an empty STREAM frame carrying end-stream.",
        [
            (
                "initiator",
                [OpenFrame(0, "echo"), StreamFrame(0, bytes.fromhex("00017f80ff"), False)],
            ),
            ("responder", [StreamFrame(0, bytes(b ^ 0xFF for b in _ECHO_DATA), False)]),
            ("initiator", [_end(0)]),
            ("responder", [_end(0)]),
        ],
    ),
    (
        "message-stream",
        "§7.6 message stream: several messages (each last, not end-stream), then the sender's "
        "end; the receiver consumed them and sends nothing back but its end.",
        [
            (
                "initiator",
                [OpenFrame(0, "feed"), _msg(0, 1, end=False), _msg(0, [2, "two"], end=False)],
            ),
            ("initiator", [_msg(0, {"n": 3}, end=True)]),
            ("responder", [_end(0)]),
        ],
    ),
    (
        "fragmented-request",
        "§7.2 / streams.md §3 a request message of 12 bytes sent as three fragments (last "
        "false, false, true); only the final fragment carries end-stream.",
        [
            (
                "initiator",
                [
                    OpenFrame(0, "orders/get"),
                    MessageFrame(0, cbor.encode({"id": "abcdefgh"})[:4], False, False),
                    MessageFrame(0, cbor.encode({"id": "abcdefgh"})[4:8], False, False),
                    MessageFrame(0, cbor.encode({"id": "abcdefgh"})[8:], True, True),
                ],
            ),
            ("responder", [_msg(0, {"id": "abcdefgh", "state": "new"}, end=True)]),
        ],
    ),
]


def _req(sid: int, resource: str, value: Any) -> RequestFrame:
    return RequestFrame(sid, resource, cbor.encode(value))


#: The same conventions where both sides advertised request/reply (transport
#: parameter 5, spec/application.md §7.8): entries carry ``"request_reply": true``.
_RR_EXCHANGES: list[tuple[str, str, list[tuple[str, list[Frame]]]]] = [
    (
        "request-reply-frames",
        "§7.8 request/reply negotiated: the request is one REQUEST frame (OPEN and the "
        "message with last and end-stream), the reply one REPLY frame (the message with last "
        "and end-stream). The stream is then closed both ways.",
        [
            ("initiator", [_req(0, "orders/get", {"id": 42})]),
            ("responder", [ReplyFrame(0, cbor.encode({"id": 42, "state": "shipped"}))]),
        ],
    ),
    (
        "request-reply-frames-separate-end",
        "§7.8 a REQUEST answered by a stream handler: its reply is an ordinary MESSAGE (last, "
        "not end-stream) and its end an empty STREAM frame; a requester MUST accept it.",
        [
            ("initiator", [_req(0, "echo", {"hello": "world"})]),
            ("responder", [_msg(0, {"hello": "world"}, end=False), _end(0)]),
        ],
    ),
    (
        "one-way-frames",
        "§7.8 one-way message as a REQUEST frame; the receiver ends its half after handling it.",
        [
            ("initiator", [_req(0, "log", {"event": "boot"})]),
            ("responder", [_end(0)]),
        ],
    ),
    (
        "error-application-frames",
        "§7.8 / §7.5 error reply to a REQUEST: RESET(APPLICATION_ERROR, final size 0).",
        [
            ("initiator", [_req(0, "fail", {"id": 1})]),
            ("responder", [ResetFrame(0, ErrorCode.APPLICATION_ERROR, 0)]),
        ],
    ),
    (
        "error-refused-frames",
        "§7.8 / §7.5 no handler for the REQUEST's resource: RESET(REFUSED).",
        [
            ("initiator", [_req(0, "nothing/here", {"id": 1})]),
            ("responder", [ResetFrame(0, ErrorCode.REFUSED, 0)]),
        ],
    ),
    (
        "error-unauthorized-frames",
        "§7.8 / streams.md §7 no stream/open capability for the REQUEST's resource: "
        "RESET(UNAUTHORIZED); the payload is discarded and its connection credit returned.",
        [
            ("initiator", [_req(0, "admin", {"op": "drop"})]),
            ("responder", [ResetFrame(0, ErrorCode.UNAUTHORIZED, 0)]),
        ],
    ),
]


def _application_file() -> dict[str, Any]:
    exchanges = []
    rr_names = {name for name, _c, _r in _RR_EXCHANGES}
    for name, comment, records in _EXCHANGES + _RR_EXCHANGES:
        out = []
        for sender, frames in records:
            plaintext = b"".join(encode_frame(f) for f in frames)
            messages, partial = [], b""
            for f in frames:
                if isinstance(f, MessageFrame):
                    partial += f.fragment
                    if f.last:
                        messages.append(cbor.to_json(cbor.decode(partial)))
                        partial = b""
                elif isinstance(f, (RequestFrame, ReplyFrame)):
                    messages.append(cbor.to_json(cbor.decode(f.payload)))
            entry: dict[str, Any] = {
                "sender": sender,
                "frames": [frame_to_json(f) for f in frames],
                "plaintext": _hex(plaintext),
            }
            if messages:
                entry["messages"] = messages
            out.append(entry)
        exchange: dict[str, Any] = {"name": name, "comment": comment, "records": out}
        if name in rr_names:
            exchange["request_reply"] = True
        exchanges.append(exchange)
    return {
        "format": _FORMAT,
        "description": (
            "Application conventions (spec/application.md): the record plaintexts of requests, "
            "replies, one-way and confirmed messages, error replies, a byte stream and a "
            "message stream, each on a fresh connection (the initiator's first stream is 0). "
            "Record boundaries are not significant (a sender may coalesce or split records); "
            "the frames and their order per direction are. `messages` lists, in JSON, the "
            "complete messages a record's MESSAGE frames carry."
        ),
        "exchanges": exchanges,
    }


# --------------------------------------------------------------------------
# Agent IDs
# --------------------------------------------------------------------------


def _agent_ids_file() -> dict[str, Any]:
    valid = []
    keys = [
        bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
        bytes(32),
        b"\xff" * 32,
        mint.ROOT.public_key,
    ]
    for key in keys:
        aid = AgentId(key)
        valid.append({"public_key": _hex(key), "agent_id": aid.text, "short": aid.short})
    good = AgentId(keys[0]).text
    body = good[4:]
    raw = base64.b32decode(body.upper() + "======")
    bad_sum = raw[:32] + bytes([raw[32] ^ 1]) + raw[33:]
    nonzero_tail = good[:-1] + ("b" if good[-1] == "a" else "a")
    invalid: list[tuple[str, str, str]] = [
        ("wrong-prefix", "m2m2" + body, "prefix is not m2m1"),
        ("too-short", good[:-1], "61 characters"),
        ("too-long", good + "a", "63 characters"),
        ("upper-case", "m2m1" + body.upper(), "upper-case base32"),
        ("bad-alphabet", good[:10] + "0" + good[11:], "0 is not in the base32 alphabet"),
        ("checksum", "m2m1" + base64.b32encode(bad_sum).decode().lower().rstrip("="), "checksum"),
        ("non-canonical", nonzero_tail, "non-zero trailing bits or checksum mismatch"),
        ("padding", good[:-2] + "==", "padding characters"),
        ("empty", "", "empty"),
    ]
    out = []
    for name, text, comment in invalid:
        try:
            AgentId.parse(text)
        except LocalProtocolError:
            pass
        else:  # pragma: no cover - the generator only writes what the parser rejects
            raise AssertionError(f"agent ID vector {name} parses")
        out.append(
            {
                "name": name,
                "agent_id": text,
                "result": "invalid",
                "code": ErrorCode.AGENT_ID_INVALID.name,
                "comment": comment,
            }
        )
    return {
        "format": _FORMAT,
        "description": (
            "Agent ID encodings (spec/identity.md §1.2): public key -> agent ID and short form; "
            "texts a parser MUST reject with AGENT_ID_INVALID. Surrounding white space MAY be "
            "stripped, so no vector depends on it."
        ),
        "valid": valid,
        "invalid": out,
    }


#: File name -> builder.
FILES: dict[str, Callable[[], dict[str, Any]]] = {
    "handshake.json": _handshake_file,
    "frames.json": _frames_file,
    "tokens.json": _tokens_file,
    "agent_ids.json": _agent_ids_file,
    "application.json": _application_file,
}


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """Return ``{file name: JSON text}`` for every vector file."""
    return {name: _dump(build()) for name, build in FILES.items()}


def write(directory: Path) -> list[Path]:
    """Write every vector file into *directory*; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in generate().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def check(directory: Path) -> list[str]:
    """Compare the files in *directory* with what the generator makes.

    Returns:
        The names of the files that differ or are missing (empty: all equal).
    """
    bad = []
    for name, text in generate().items():
        path = directory / name
        try:
            current = path.read_text(encoding="utf-8")
        except OSError:
            bad.append(name)
            continue
        if current != text:
            bad.append(name)
    return bad
