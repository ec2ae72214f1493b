"""Identity keys, key files and agent IDs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2mproto.errors import AuthenticationError, ErrorCode, LocalProtocolError
from m2mproto.identity import AgentId, Identity, verify_signature

RFC8032_TEST1_SEED = bytes.fromhex(
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
)
RFC8032_TEST1_PUB = bytes.fromhex(
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
)
RFC8032_TEST1_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_rfc8032_test1() -> None:
    identity = Identity.from_seed(RFC8032_TEST1_SEED)
    assert identity.public_key == RFC8032_TEST1_PUB
    assert identity.sign(b"") == RFC8032_TEST1_SIG
    identity.agent_id.verify(RFC8032_TEST1_SIG, b"")


def test_agent_id_spec_example() -> None:
    # The example printed in spec/identity.md.
    agent = AgentId(RFC8032_TEST1_PUB)
    assert agent.text == "m2m125njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenffxs3iu"
    assert agent.short == "m2m125njqamc"
    spec = (Path(__file__).parent.parent / "spec" / "identity.md").read_text()
    assert agent.text in spec


@given(st.binary(min_size=32, max_size=32))
def test_agent_id_round_trip(key: bytes) -> None:
    agent = AgentId(key)
    assert len(agent.text) == 62
    assert AgentId.parse(agent.text) == agent
    assert AgentId.parse(f"  {agent.text}\n") == agent


@given(st.binary(min_size=32, max_size=32), st.integers(min_value=4, max_value=61), st.data())
def test_agent_id_single_character_typo_detected(key: bytes, pos: int, data: st.DataObject) -> None:
    text = AgentId(key).text
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    replacement = data.draw(st.sampled_from([c for c in alphabet if c != text[pos]]))
    typo = text[:pos] + replacement + text[pos + 1 :]
    with pytest.raises(LocalProtocolError) as info:
        AgentId.parse(typo)
    assert info.value.code is ErrorCode.AGENT_ID_INVALID


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "m2m1",
        "m2m2" + "a" * 58,
        "m2m1" + "a" * 57,
        "m2m1" + "a" * 59,
        "m2m1" + "A" * 58,
        "m2m1" + "1" * 58,
        "m2m1" + "a" * 57 + "8",
    ],
)
def test_agent_id_malformed(bad: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        AgentId.parse(bad)
    assert info.value.code is ErrorCode.AGENT_ID_INVALID


def test_agent_id_non_canonical_trailing_bits() -> None:
    text = AgentId(bytes(32)).text
    # The last base32 character carries 3 padding bits that must be zero.
    last = text[-1]
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    bumped = alphabet[alphabet.index(last) + 1]
    with pytest.raises(LocalProtocolError):
        AgentId.parse(text[:-1] + bumped)


def test_save_load_round_trip(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "agent.key"
    identity.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Identity.load(path)
    assert loaded.agent_id == identity.agent_id
    assert loaded.sign(b"x") == identity.sign(b"x")


def test_save_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    Identity.generate().save(path)
    with pytest.raises(LocalProtocolError) as info:
        Identity.generate().save(path)
    assert info.value.code is ErrorCode.KEY_FILE_INVALID
    Identity.generate().save(path, overwrite=True)


def test_save_with_permissive_umask_still_0600(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Identity.generate().save(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666])
def test_load_refuses_readable_by_others(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "agent.key"
    Identity.generate().save(path)
    path.chmod(mode)
    with pytest.raises(LocalProtocolError) as info:
        Identity.load(path)
    assert info.value.code is ErrorCode.KEY_FILE_PERMISSIONS
    assert "chmod 600" in info.value.message


def test_load_missing_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(LocalProtocolError) as info:
        Identity.load(tmp_path / "nope")
    assert info.value.code is ErrorCode.KEY_FILE_INVALID
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    with pytest.raises(LocalProtocolError) as info:
        Identity.load(garbage)
    assert info.value.code is ErrorCode.KEY_FILE_INVALID


def test_load_refuses_non_ed25519(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    pem = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / "x.key"
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(LocalProtocolError, match="not an Ed25519 key"):
        Identity.load(path)


def test_repr_has_no_secret() -> None:
    identity = Identity.from_seed(RFC8032_TEST1_SEED)
    text = repr(identity)
    assert RFC8032_TEST1_SEED.hex() not in text
    assert identity.agent_id.text in text
    assert identity.to_pem().decode() not in text


def test_verify_signature_errors() -> None:
    with pytest.raises(AuthenticationError) as info:
        verify_signature(RFC8032_TEST1_PUB, RFC8032_TEST1_SIG[:-1] + b"\x00", b"")
    assert info.value.code is ErrorCode.AUTH_SIGNATURE
    with pytest.raises(AuthenticationError) as info:
        verify_signature(RFC8032_TEST1_PUB, RFC8032_TEST1_SIG[:63], b"")
    assert info.value.code is ErrorCode.AUTH_SIGNATURE
    with pytest.raises(AuthenticationError) as info:
        verify_signature(b"\x00" * 31, RFC8032_TEST1_SIG, b"")
    assert info.value.code is ErrorCode.AUTH_IDENTITY_KEY
