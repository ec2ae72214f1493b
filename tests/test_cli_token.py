"""``m2m token ...`` through the real entry point: issue -> delegate -> verify -> revoke."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from m2mproto.cli import EXIT_CODES
from m2mproto.cli.token import parse_duration


def m2m(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "m2mproto", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def ok(*args: str, cwd: Path) -> str:
    result = m2m(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    d = tmp_path_factory.mktemp("agents")
    ids = {name: ok("keygen", "--out", f"{name}.key", cwd=d).strip() for name in ("root", "a", "b")}
    ok("token", "issue", "--key", "root.key", "--to", ids["a"], "--cap", "orders/*=msg/send",
       "--cap", "echo=*", "--ttl", "2h", "--any-audience", "--out", "a.tok", cwd=d)  # fmt: skip
    ok("token", "delegate", "--key", "a.key", "--parent", "a.tok", "--to", ids["b"],
       "--cap", "orders/eu/*=msg/send", "--ttl", "10m", "--any-audience", "--out", "b.tok",
       cwd=d)  # fmt: skip
    return d, ids


def test_verify_delegated_chain(agents: tuple[Path, dict[str, str]]) -> None:
    d, ids = agents
    out = ok("token", "verify", "b.tok", "--root", ids["root"], "--holder", ids["b"], "--json",
             cwd=d)  # fmt: skip
    grant = json.loads(out)
    assert grant["valid"] is True
    assert grant["capabilities"] == ["orders/eu/*=msg/send"]
    assert [link["sub"] for link in grant["chain"]] == [ids["a"], ids["b"]]
    assert grant["root"] == ids["root"]


def test_inspect_json(agents: tuple[Path, dict[str, str]]) -> None:
    d, ids = agents
    view = json.loads(ok("token", "inspect", "a.tok", "--json", cwd=d))
    assert view["claims"]["sub"] == ids["a"]
    assert view["claims"]["iss"] == ids["root"]


@pytest.mark.parametrize(
    ("args", "code", "status"),
    [
        (("--root", "{a}"), "UNTRUSTED_ROOT", "token"),
        (("--root", "{root}", "--holder", "{a}"), "CNF_MISMATCH", "token"),
        (("--root", "{root}", "--at", "1"), "NOT_YET_VALID", "token"),
        (("--root", "{root}", "--at", "99999999999"), "EXPIRED", "token"),
        (("--root", "m2m1notanid"), "AGENT_ID_INVALID", "local"),
    ],
)
def test_verify_failures(
    agents: tuple[Path, dict[str, str]], args: tuple[str, ...], code: str, status: str
) -> None:
    d, ids = agents
    result = m2m("token", "verify", "b.tok", *(a.format(**ids) for a in args), cwd=d)
    assert result.returncode == EXIT_CODES[status]
    assert result.stderr.startswith(f"m2m: {code}:")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_delegate_cannot_widen(agents: tuple[Path, dict[str, str]]) -> None:
    d, ids = agents
    result = m2m("token", "delegate", "--key", "a.key", "--parent", "a.tok", "--to", ids["b"],
                 "--cap", "admin/*=*", "--any-audience", "--out", "bad.tok", cwd=d)  # fmt: skip
    assert result.returncode == EXIT_CODES["local"]
    assert "INVALID_ARGUMENT" in result.stderr
    assert not (d / "bad.tok").exists()


@pytest.mark.slow
def test_revoke_appends_and_revokes_descendants(tmp_path: Path) -> None:
    d = tmp_path
    ids = {name: ok("keygen", "--out", f"{name}.key", cwd=d).strip() for name in ("root", "a", "b")}
    for name in ("a", "c"):
        ok("token", "issue", "--key", "root.key", "--to", ids["a"], "--cap", "x=*",
           "--any-audience", "--out", f"{name}.tok", cwd=d)  # fmt: skip
    ok("token", "delegate", "--key", "a.key", "--parent", "a.tok", "--to", ids["b"], "--cap",
       "x=*", "--any-audience", "--out", "b.tok", cwd=d)  # fmt: skip
    verify_b = ("token", "verify", "b.tok", "--root", ids["root"], "--revocations", "rev.bin")
    result = m2m(*verify_b, cwd=d)  # a missing file named by the operator is a mistake
    assert result.returncode == EXIT_CODES["local"] and "rev.bin" in result.stderr
    ok("token", "revoke", "--key", "root.key", "c.tok", "--out", "rev.bin", cwd=d)
    ok(*verify_b, cwd=d)
    size_one = (d / "rev.bin").stat().st_size
    ok("token", "revoke", "--key", "root.key", "a.tok", "--out", "rev.bin", cwd=d)
    assert (d / "rev.bin").stat().st_size > size_one  # appended, not replaced
    result = m2m(*verify_b, cwd=d)
    assert result.returncode == EXIT_CODES["token"]
    assert "REVOKED" in result.stderr
    # The earlier statement is still in force.
    result = m2m("token", "verify", "c.tok", "--root", ids["root"], "--revocations", "rev.bin",
                 cwd=d)  # fmt: skip
    assert "REVOKED" in result.stderr


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """root -> a -> b, plus an unrelated x; tokens a.tok (root->a) and b.tok (a->b)."""
    d = tmp_path_factory.mktemp("chain")
    ids = {n: ok("keygen", "--out", f"{n}.key", cwd=d).strip() for n in ("root", "a", "b", "x")}
    ok("token", "issue", "--key", "root.key", "--to", ids["a"], "--cap", "y/*=*",
       "--any-audience", "--out", "a.tok", cwd=d)  # fmt: skip
    ok("token", "delegate", "--key", "a.key", "--parent", "a.tok", "--to", ids["b"],
       "--cap", "y/z=*", "--any-audience", "--out", "b.tok", cwd=d)  # fmt: skip
    return d, ids


@pytest.mark.parametrize(
    ("key", "token"),
    [("x", "a.tok"), ("x", "b.tok"), ("a", "a.tok"), ("b", "b.tok"), ("b", "a.tok")],
)
def test_revoke_without_authority_is_refused(
    chain: tuple[Path, dict[str, str]], key: str, token: str
) -> None:
    """Unrelated keys, a token's own holder, a descendant: no authority, nothing written."""
    d, ids = chain
    out = f"refused-{key}-{token}.bin"
    result = m2m("token", "revoke", "--key", f"{key}.key", token, "--out", out, cwd=d)
    assert result.returncode == EXIT_CODES["local"], result.stderr
    assert result.stderr.startswith("m2m: INVALID_ARGUMENT:")
    assert "no authority" in result.stderr and token in result.stderr
    assert result.stdout == "" and not (d / out).exists()


@pytest.mark.parametrize(("key", "token"), [("root", "a.tok"), ("root", "b.tok"), ("a", "b.tok")])
def test_revoke_with_authority(chain: tuple[Path, dict[str, str]], key: str, token: str) -> None:
    d, ids = chain
    out = f"ok-{key}-{token}.bin"
    ok("token", "revoke", "--key", f"{key}.key", token, "--out", out, cwd=d)
    result = m2m("token", "verify", token, "--root", ids["root"], "--revocations", out, cwd=d)
    assert result.returncode == EXIT_CODES["token"] and "REVOKED" in result.stderr


def test_revoke_twice_is_idempotent(chain: tuple[Path, dict[str, str]]) -> None:
    d, _ids = chain
    ok("token", "revoke", "--key", "a.key", "b.tok", "--out", "twice.bin", cwd=d)
    size = (d / "twice.bin").stat().st_size
    out = json.loads(ok("token", "revoke", "--key", "a.key", "b.tok", "--out", "twice.bin",
                        "--json", cwd=d))  # fmt: skip
    assert out["revoked"] == [] and len(out["already_revoked"]) == 1
    assert (d / "twice.bin").stat().st_size == size  # nothing appended
    text = ok("token", "revoke", "--key", "a.key", "b.tok", "--out", "twice.bin", cwd=d)
    assert "already revoked" in text and "nothing appended" in text
    # another authority's statement is not a duplicate: it is appended
    ok("token", "revoke", "--key", "root.key", "b.tok", "--out", "twice.bin", cwd=d)
    assert (d / "twice.bin").stat().st_size > size
    # a mix: only the new one is signed
    out = json.loads(ok("token", "revoke", "--key", "root.key", "b.tok", "a.tok", "--out",
                        "twice.bin", "--json", cwd=d))  # fmt: skip
    assert len(out["revoked"]) == 1 and len(out["already_revoked"]) == 1


def test_revoke_refuses_a_forged_chain(chain: tuple[Path, dict[str, str]]) -> None:
    """A token whose signature does not verify is not evidence of authority."""
    d, _ids = chain
    raw = bytearray((d / "a.tok").read_bytes())
    raw[-1] ^= 1
    (d / "forged.tok").write_bytes(bytes(raw))
    result = m2m("token", "revoke", "--key", "root.key", "forged.tok", "--out", "f.bin", cwd=d)
    assert result.returncode == EXIT_CODES["token"] and "BAD_SIGNATURE" in result.stderr
    assert not (d / "f.bin").exists()


def test_user_mistakes(tmp_path: Path) -> None:
    result = m2m("token", "inspect", "missing.tok", cwd=tmp_path)
    assert result.returncode == EXIT_CODES["local"] and "Traceback" not in result.stderr
    (tmp_path / "junk.tok").write_bytes(b"junk")
    result = m2m("token", "inspect", "junk.tok", cwd=tmp_path)
    assert result.returncode == EXIT_CODES["token"] and "MALFORMED" in result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1h", "1y", "h"])
def test_parse_duration_invalid(text: str) -> None:
    from m2mproto.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        parse_duration(text)


@pytest.mark.parametrize("command", ["issue", "delegate"])
def test_audience_is_required_or_explicitly_waived(
    agents: tuple[Path, dict[str, str]], command: str
) -> None:
    d, ids = agents
    base = [
        "token",
        command,
        "--key",
        "root.key" if command == "issue" else "a.key",
        "--to",
        ids["b"],
        "--cap",
        "orders/eu/*=msg/send",
        "--out",
        f"aud-{command}.tok",
    ]
    if command == "delegate":
        base += ["--parent", "a.tok"]  # fmt: skip
    result = m2m(*base, cwd=d)  # neither: refused, nothing written
    assert result.returncode == EXIT_CODES["usage"]
    assert "--aud" in result.stderr and "--any-audience" in result.stderr
    assert not (d / f"aud-{command}.tok").exists()
    result = m2m(*base, "--aud", ids["root"], "--any-audience", cwd=d)  # both: contradictory
    assert result.returncode == EXIT_CODES["usage"]
    ok(*base, "--aud", ids["root"], cwd=d)
    view = json.loads(ok("token", "inspect", f"aud-{command}.tok", "--json", cwd=d))
    assert view["claims"]["aud"] == ids["root"]
    ok(*base, "--any-audience", cwd=d)
    view = json.loads(ok("token", "inspect", f"aud-{command}.tok", "--json", cwd=d))
    assert "aud" not in view["claims"]
