"""Replay third-party Noise test vectors against this engine (``m2m interop noise-vectors``).

Three JSON dialects are read (interop/vectors/third_party/noise/README.md):

* ``cacophony`` (cacophony, snow): ``protocol_name``, ``init_*``/``resp_*`` keys,
  ``messages`` alternating from the initiator through the transport phase;
* ``noise-c``: the same with ``name`` and a single ``init_psk``/``resp_psk``;
* ``flynn``: ``handshake``, ``gen_*_ephemeral``, ``prologue``, ``preshared_key``,
  ``msg_N_payload``/``msg_N_ciphertext``; the transport phase restarts the
  alternation with the initiator, and pre-known static keys are derived.

A file is ``{"vectors": [...]}`` or a bare list. Each vector drives both an
initiator and a responder: every message the sender writes must equal the
vector's ciphertext byte for byte, every message the receiver reads must give
the vector's payload, and both handshake hashes must agree (and equal the
vector's ``handshake_hash`` where present).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from m2mproto.errors import M2MError
from m2mproto.noise.cipherstate import CipherState
from m2mproto.noise.handshake import HandshakeState
from m2mproto.noise.protocol import NoiseProtocol

__all__ = [
    "NoiseVector",
    "VectorFailure",
    "check_vector",
    "load_file",
    "parse_vector",
    "run_files",
]

#: Largest vector file read (bytes): these are test data, not a stream.
MAX_FILE_SIZE = 64 * 1024 * 1024


class VectorFailure(Exception):
    """A vector did not reproduce (or could not be read); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class NoiseVector:
    """One test vector, dialect-neutral."""

    label: str
    dialect: str
    protocol_name: str
    init_prologue: bytes
    resp_prologue: bytes
    init_psks: tuple[bytes, ...]
    resp_psks: tuple[bytes, ...]
    init_static: bytes | None
    resp_static: bytes | None
    init_ephemeral: bytes | None
    resp_ephemeral: bytes | None
    init_remote_static: bytes | None
    resp_remote_static: bytes | None
    handshake_hash: bytes | None
    #: (payload, ciphertext) pairs, handshake first.
    messages: tuple[tuple[bytes, bytes], ...]
    #: flynn dialect: the transport phase starts again with the initiator.
    transport_restarts_with_initiator: bool


def _hex(obj: Mapping[str, Any], key: str, label: str) -> bytes | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise VectorFailure(f"{label}: field {key!r} is not a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise VectorFailure(f"{label}: field {key!r} is not valid hex") from None


def _req_hex(obj: Mapping[str, Any], key: str, label: str) -> bytes:
    value = _hex(obj, key, label)
    if value is None:
        raise VectorFailure(f"{label}: missing field {key!r}")
    return value


def _psk_list(obj: Mapping[str, Any], key: str, label: str) -> tuple[bytes, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise VectorFailure(f"{label}: field {key!r} is not a list")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise VectorFailure(f"{label}: {key}[{i}] is not a hex string")
        try:
            out.append(bytes.fromhex(item))
        except ValueError:
            raise VectorFailure(f"{label}: {key}[{i}] is not valid hex") from None
    return tuple(out)


def vector_name(obj: object) -> str:
    """The protocol name a raw vector object claims, or a placeholder."""
    if isinstance(obj, Mapping):
        for key in ("protocol_name", "name", "handshake"):
            value = obj.get(key)
            if isinstance(value, str):
                return value
    return "<no protocol name>"


def parse_vector(obj: object, label: str = "vector") -> NoiseVector:
    """Read one raw vector object in any of the three dialects.

    Raises:
        VectorFailure: the object is not a vector of a known dialect, or a field is malformed.
    """
    if not isinstance(obj, Mapping):
        raise VectorFailure(f"{label}: a vector must be a JSON object")
    for flag in ("fail", "fallback", "fallback_pattern", "hybrid"):
        if obj.get(flag):
            raise VectorFailure(f"{label}: vectors using {flag!r} are not supported")
    if isinstance(obj.get("handshake"), str):
        return _parse_flynn(obj, label)
    if isinstance(obj.get("protocol_name"), str):
        dialect, name = "cacophony", obj["protocol_name"]
    elif isinstance(obj.get("name"), str):
        dialect, name = "noise-c", obj["name"]
    else:
        raise VectorFailure(f"{label}: no protocol_name, name or handshake field")
    raw_messages = obj.get("messages")
    if not isinstance(raw_messages, list):
        raise VectorFailure(f"{label}: 'messages' is missing or not a list")
    messages = []
    for i, m in enumerate(raw_messages):
        if not isinstance(m, Mapping):
            raise VectorFailure(f"{label}: messages[{i}] is not an object")
        messages.append(
            (_req_hex(m, "payload", f"{label} messages[{i}]"),
             _req_hex(m, "ciphertext", f"{label} messages[{i}]"))
        )  # fmt: skip
    if dialect == "noise-c":
        init_psks = tuple(p for p in [_hex(obj, "init_psk", label)] if p is not None)
        resp_psks = tuple(p for p in [_hex(obj, "resp_psk", label)] if p is not None)
    else:
        init_psks = _psk_list(obj, "init_psks", label)
        resp_psks = _psk_list(obj, "resp_psks", label)
    return NoiseVector(
        label=label,
        dialect=dialect,
        protocol_name=name,
        init_prologue=_hex(obj, "init_prologue", label) or b"",
        resp_prologue=_hex(obj, "resp_prologue", label) or b"",
        init_psks=init_psks,
        resp_psks=resp_psks,
        init_static=_hex(obj, "init_static", label),
        resp_static=_hex(obj, "resp_static", label),
        init_ephemeral=_hex(obj, "init_ephemeral", label),
        resp_ephemeral=_hex(obj, "resp_ephemeral", label),
        init_remote_static=_hex(obj, "init_remote_static", label),
        resp_remote_static=_hex(obj, "resp_remote_static", label),
        handshake_hash=_hex(obj, "handshake_hash", label),
        messages=tuple(messages),
        transport_restarts_with_initiator=False,
    )


def _parse_flynn(obj: Mapping[str, Any], label: str) -> NoiseVector:
    messages = []
    i = 0
    while f"msg_{i}_ciphertext" in obj or f"msg_{i}_payload" in obj:
        messages.append(
            (_hex(obj, f"msg_{i}_payload", label) or b"",
             _req_hex(obj, f"msg_{i}_ciphertext", label))
        )  # fmt: skip
        i += 1
    if not messages:
        raise VectorFailure(f"{label}: no msg_0_ciphertext")
    prologue = _hex(obj, "prologue", label) or b""
    psk = _hex(obj, "preshared_key", label)
    psks = (psk,) if psk is not None else ()
    return NoiseVector(
        label=label,
        dialect="flynn",
        protocol_name=obj["handshake"],
        init_prologue=prologue,
        resp_prologue=prologue,
        init_psks=psks,
        resp_psks=psks,
        init_static=_hex(obj, "init_static", label),
        resp_static=_hex(obj, "resp_static", label),
        init_ephemeral=_hex(obj, "gen_init_ephemeral", label),
        resp_ephemeral=_hex(obj, "gen_resp_ephemeral", label),
        init_remote_static=None,
        resp_remote_static=None,
        handshake_hash=None,
        messages=tuple(messages),
        transport_restarts_with_initiator=True,
    )


def _build(
    proto: NoiseProtocol,
    vec: NoiseVector,
    initiator: bool,
) -> HandshakeState:
    hp = proto.handshake_pattern
    role = "initiator" if initiator else "responder"
    if initiator:
        prologue, psks, s, e = vec.init_prologue, vec.init_psks, vec.init_static, vec.init_ephemeral
        rs, peer_s = vec.init_remote_static, vec.resp_static
    else:
        prologue, psks, s, e = vec.resp_prologue, vec.resp_psks, vec.resp_static, vec.resp_ephemeral
        rs, peer_s = vec.resp_remote_static, vec.init_static
    if hp.needs_local_static(initiator):
        if s is None:
            raise VectorFailure(f"{vec.label}: the {role} needs a static key and has none")
    else:
        s = None
    if hp.knows_remote_static(initiator):
        if rs is None:
            if peer_s is None:
                raise VectorFailure(f"{vec.label}: no pre-known static key for the {role}")
            rs = proto.dh.keypair_from_private(peer_s).public
    else:
        rs = None
    if not any("e" in m for m in hp.sends(initiator)):
        e = None
    elif e is None:
        raise VectorFailure(f"{vec.label}: no ephemeral key for the {role}")
    if len(psks) == 1 and hp.psk_count > 1:
        psks = psks * hp.psk_count  # one PSK used for every psk token
    return HandshakeState(
        proto,
        initiator=initiator,
        prologue=prologue,
        s=s,
        rs=rs,
        psks=psks,
        fixed_ephemeral_key_for_testing_only=e,
    )


def check_vector(vec: NoiseVector) -> int:
    """Replay *vec* on both sides and compare every byte.

    Returns:
        The number of messages checked.

    Raises:
        VectorFailure: with the protocol name, label, message index and what differed.
    """
    where = f"{vec.protocol_name} [{vec.label}]"
    try:
        proto = NoiseProtocol.from_name(vec.protocol_name)
    except M2MError as exc:
        raise VectorFailure(f"unsupported: {exc.message}") from None
    try:
        init = _build(proto, vec, True)
        resp = _build(proto, vec, False)
    except M2MError as exc:
        raise VectorFailure(f"{where}: cannot set up: {exc}") from None
    n_hs = init.message_count
    if len(vec.messages) < n_hs:
        raise VectorFailure(f"{where}: {len(vec.messages)} messages, the handshake needs {n_hs}")
    # (encrypting side, decrypting side) per direction, set at the end of the handshake.
    i2r: tuple[CipherState, CipherState] | None = None
    r2i: tuple[CipherState, CipherState] | None = None
    for i, (payload, ciphertext) in enumerate(vec.messages):
        if i < n_hs:
            from_init = proto.one_way or i % 2 == 0
            step = "handshake"
        else:
            j = i - n_hs if vec.transport_restarts_with_initiator else i
            from_init = proto.one_way or j % 2 == 0
            step = "transport"
        role = "initiator" if from_init else "responder"
        op = "write"
        try:
            if i < n_hs:
                sender, receiver = (init, resp) if from_init else (resp, init)
                got = sender.write_message(payload)
                if got != ciphertext:
                    raise VectorFailure(
                        f"{where}: message {i} ({step}): the {role} wrote different bytes"
                    )
                op = "read"
                plain = receiver.read_message(ciphertext)
            else:
                pair = i2r if from_init else r2i
                if pair is None:  # pragma: no cover - set after the last handshake message
                    raise VectorFailure(f"{where}: internal: no transport keys")
                enc, dec = pair
                got = enc.encrypt_with_ad(b"", payload)
                if got != ciphertext:
                    raise VectorFailure(
                        f"{where}: message {i} ({step}): the {role} wrote different bytes"
                    )
                op = "read"
                plain = dec.decrypt_with_ad(b"", ciphertext)
        except M2MError as exc:
            who = role if op == "write" else ("responder" if from_init else "initiator")
            raise VectorFailure(f"{where}: message {i} ({step}, {who} {op}): {exc}") from None
        if plain != payload:
            raise VectorFailure(f"{where}: message {i} ({step}): payload differs after read")
        if i == n_hs - 1:
            if init.handshake_hash != resp.handshake_hash:
                raise VectorFailure(f"{where}: the two sides' handshake hashes differ")
            if vec.handshake_hash is not None and init.handshake_hash != vec.handshake_hash:
                raise VectorFailure(f"{where}: handshake hash differs from the vector's")
            init_i2r, init_r2i = init.split()
            resp_i2r, resp_r2i = resp.split()
            i2r, r2i = (init_i2r, resp_i2r), (resp_r2i, init_r2i)
    return len(vec.messages)


@dataclass(frozen=True, slots=True)
class VectorResult:
    """The outcome of one vector (or of one unreadable file)."""

    protocol_name: str
    label: str
    ok: bool
    reason: str = ""


def load_file(path: str) -> list[NoiseVector | VectorResult]:
    """Read a vector file; a vector that cannot be parsed becomes a failed result.

    Raises:
        VectorFailure: the file cannot be read or is not a vector file at all.
    """
    try:
        if os.path.getsize(path) > MAX_FILE_SIZE:
            raise VectorFailure(f"{path}: larger than {MAX_FILE_SIZE} bytes")
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise VectorFailure(f"{path}: cannot read: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise VectorFailure(f"{path}: not JSON: {exc}") from None
    raw = data.get("vectors") if isinstance(data, dict) else data
    if not isinstance(raw, list):
        raise VectorFailure(f"{path}: no 'vectors' list")
    if not raw:
        raise VectorFailure(f"{path}: the file holds no vectors")
    out: list[NoiseVector | VectorResult] = []
    base = os.path.basename(path)
    for index, obj in enumerate(raw):
        label = f"{base}#{index}"
        try:
            out.append(parse_vector(obj, label))
        except VectorFailure as exc:
            out.append(VectorResult(vector_name(obj), label, False, exc.reason))
    return out


def run_vector(vec: NoiseVector) -> VectorResult:
    """Check one vector and return its result (never raises)."""
    try:
        check_vector(vec)
    except VectorFailure as exc:
        return VectorResult(vec.protocol_name, vec.label, False, exc.reason)
    except Exception as exc:  # a runner must report, never crash
        return VectorResult(
            vec.protocol_name, vec.label, False, f"internal error: {type(exc).__name__}: {exc}"
        )
    return VectorResult(vec.protocol_name, vec.label, True)


def run_files(paths: Sequence[str], *, verbose: bool = False, out: TextIO | None = None) -> int:
    """Run every vector of every file; print one line per protocol name and a summary.

    Returns:
        0 if every vector passed, 1 otherwise (including unreadable files,
        which count as one failed vector each).
    """
    stream = out if out is not None else sys.stdout
    results: list[VectorResult] = []
    for path in paths:
        try:
            items = load_file(path)
        except VectorFailure as exc:
            results.append(VectorResult(f"<file {path}>", path, False, exc.reason))
            continue
        for item in items:
            result = item if isinstance(item, VectorResult) else run_vector(item)
            results.append(result)
            if verbose:
                status = "ok  " if result.ok else "FAIL"
                tail = f": {result.reason}" if result.reason else ""
                print(f"  {status} {result.label} {result.protocol_name}{tail}", file=stream)
    by_name: dict[str, list[VectorResult]] = {}
    for result in results:
        by_name.setdefault(result.protocol_name, []).append(result)
    for name, group in by_name.items():
        passed = sum(r.ok for r in group)
        if passed == len(group):
            print(f"PASS {name} {passed}/{len(group)}", file=stream)
        else:
            first = next(r for r in group if not r.ok)
            print(f"FAIL {name} {passed}/{len(group)} {first.reason}", file=stream)
    n_pass = sum(r.ok for r in results)
    n_fail = len(results) - n_pass
    print(f"{n_pass} passed, {n_fail} failed", file=stream)
    return 1 if n_fail or not results else 0
