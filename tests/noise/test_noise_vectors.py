"""Every third-party vector reproduces on both sides; the runner and its CLI report honestly."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from noise_helpers import VECTOR_DIR

from m2m_interop.noise_vectors import (
    NoiseVector,
    VectorFailure,
    check_vector,
    load_file,
    parse_vector,
    run_files,
)
from m2mproto.cli import main

ROOT = Path(__file__).resolve().parents[2]
VDIR = ROOT / VECTOR_DIR
FILES = sorted(VDIR.glob("*.json"))


def _all_vectors() -> list[pytest.param]:
    params = []
    for path in FILES:
        for item in load_file(str(path)):
            assert isinstance(item, NoiseVector), item
            params.append(pytest.param(item, id=f"{item.label}-{item.protocol_name}"))
    return params


VECTORS = _all_vectors()


def test_vector_set_is_complete() -> None:
    # The README promises 45 vectors in four files; losing some must not go unnoticed.
    assert [p.name for p in FILES] == ["cacophony.json", "flynn.json", "noise-c.json", "snow.json"]
    assert len(VECTORS) == 45


@pytest.mark.parametrize("vector", VECTORS)
def test_vector_reproduces(vector: NoiseVector) -> None:
    assert check_vector(vector) == len(vector.messages)


def _tamper(vec: NoiseVector, **changes: object) -> NoiseVector:
    fields = {f: getattr(vec, f) for f in NoiseVector.__dataclass_fields__}
    fields.update(changes)
    return NoiseVector(**fields)  # type: ignore[arg-type]


def _flip(data: bytes, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[bit // 8 % len(b)] ^= 1 << (bit % 8)
    return bytes(b)


@pytest.mark.parametrize("index", range(0, 45, 4))
def test_tampered_vectors_fail(index: int) -> None:
    vec = VECTORS[index].values[0]
    assert isinstance(vec, NoiseVector)
    for m in range(len(vec.messages)):
        msgs = list(vec.messages)
        payload, ct = msgs[m]
        msgs[m] = (payload, _flip(ct, 8 * (len(ct) - 1)))
        with pytest.raises(VectorFailure, match=f"message {m}"):
            check_vector(_tamper(vec, messages=tuple(msgs)))
    with pytest.raises(VectorFailure):
        check_vector(_tamper(vec, init_prologue=vec.init_prologue + b"x"))
    if vec.handshake_hash is not None:
        with pytest.raises(VectorFailure, match="handshake hash"):
            check_vector(_tamper(vec, handshake_hash=_flip(vec.handshake_hash)))


def test_unsupported_protocol_is_a_failure_with_reason() -> None:
    vec = VECTORS[0].values[0]
    assert isinstance(vec, NoiseVector)
    with pytest.raises(VectorFailure, match="unsupported: DH function '25520'"):
        check_vector(_tamper(vec, protocol_name=vec.protocol_name.replace("25519", "25520")))


def test_parse_rejects_non_vectors() -> None:
    with pytest.raises(VectorFailure):
        parse_vector([1, 2])
    with pytest.raises(VectorFailure, match="no protocol_name"):
        parse_vector({"messages": []})
    with pytest.raises(VectorFailure, match="not valid hex"):
        parse_vector({"protocol_name": "Noise_NN_25519_ChaChaPoly_SHA256", "init_prologue": "zz",
                      "messages": []})  # fmt: skip
    with pytest.raises(VectorFailure, match="not supported"):
        parse_vector({"protocol_name": "Noise_NN_25519_ChaChaPoly_SHA256", "fail": True})


def test_cli_all_files_pass(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["interop", "noise-vectors", *map(str, FILES)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[-1] == "45 passed, 0 failed"
    per_name = out[:-1]
    assert len(per_name) == 7
    assert "PASS Noise_XX_25519_ChaChaPoly_SHA256 7/7" in per_name
    assert "PASS Noise_IKpsk2_25519_ChaChaPoly_SHA256 5/5" in per_name
    assert all(line.startswith("PASS ") for line in per_name)


def test_cli_verbose_lists_every_vector(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["interop", "noise-vectors", "-v", str(VDIR / "snow.json")])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert sum(1 for line in out if line.startswith("  ok ")) == 5
    assert out[-1] == "5 passed, 0 failed"


def test_cli_tampered_copy_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads((VDIR / "cacophony.json").read_text())
    ct = data["vectors"][4]["messages"][1]["ciphertext"]
    data["vectors"][4]["messages"][1]["ciphertext"] = ct[:-1] + ("0" if ct[-1] != "0" else "1")
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(data))
    rc = main(["interop", "noise-vectors", str(bad)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert out[-1] == "6 passed, 1 failed"
    fail = [line for line in out if line.startswith("FAIL ")]
    assert len(fail) == 1
    assert fail[0].startswith("FAIL Noise_XX_25519_ChaChaPoly_SHA256 0/1 ")
    assert "message 1" in fail[0] and "tampered.json#4" in fail[0]


def test_cli_malformed_files_do_not_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_json = tmp_path / "garbage.json"
    not_json.write_bytes(b"\xff\x00{{")
    empty = tmp_path / "empty.json"
    empty.write_text('{"vectors": []}')
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"vectors": [
        {"protocol_name": "Noise_XX_448_ChaChaPoly_SHA256", "messages": "nope"},
        {"protocol_name": "Noise_NN_25519_ChaChaPoly_SHA256", "init_ephemeral": "00" * 31,
         "resp_ephemeral": "00" * 32, "messages": [{"payload": "", "ciphertext": "00"}] * 2},
        {"handshake": "Noise_XXfallback_25519_AESGCM_SHA512", "msg_0_ciphertext": "00"},
        {"protocol_name": "Noise_NN_25519_Salsa_SHA256", "messages": []},
        7,
    ]}))  # fmt: skip
    missing = tmp_path / "missing.json"
    rc = main(["interop", "noise-vectors", *map(str, (not_json, empty, deep, odd, missing))])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert out[-1] == "0 passed, 9 failed"
    text = "\n".join(out)
    assert "cipher 'Salsa' is not supported" in text
    assert "pattern modifier 'fallback' is not supported" in text
    assert "no vectors" in text and "not JSON" in text and "cannot read" in text


def test_run_files_output_stream_and_return_code() -> None:
    buf = io.StringIO()
    assert run_files([str(VDIR / "noise-c.json")], out=buf) == 0
    assert buf.getvalue().splitlines()[-1] == "5 passed, 0 failed"


def test_vectors_are_copies_not_links() -> None:
    for path in FILES:
        assert not os.path.islink(path)
        data = json.loads(path.read_text())
        assert data["source"] and data["source_commit"] and data["license"]
