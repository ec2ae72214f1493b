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
       "--cap", "echo=*", "--ttl", "2h", "--out", "a.tok", cwd=d)  # fmt: skip
    ok("token", "delegate", "--key", "a.key", "--parent", "a.tok", "--to", ids["b"],
       "--cap", "orders/eu/*=msg/send", "--ttl", "10m", "--out", "b.tok", cwd=d)  # fmt: skip
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
                 "--cap", "admin/*=*", "--out", "bad.tok", cwd=d)  # fmt: skip
    assert result.returncode == EXIT_CODES["local"]
    assert "INVALID_ARGUMENT" in result.stderr
    assert not (d / "bad.tok").exists()


@pytest.mark.slow
def test_revoke_appends_and_revokes_descendants(tmp_path: Path) -> None:
    d = tmp_path
    ids = {name: ok("keygen", "--out", f"{name}.key", cwd=d).strip() for name in ("root", "a", "b")}
    for name in ("a", "c"):
        ok("token", "issue", "--key", "root.key", "--to", ids["a"], "--cap", "x=*", "--out",
           f"{name}.tok", cwd=d)  # fmt: skip
    ok("token", "delegate", "--key", "a.key", "--parent", "a.tok", "--to", ids["b"], "--cap",
       "x=*", "--out", "b.tok", cwd=d)  # fmt: skip
    verify_b = ("token", "verify", "b.tok", "--root", ids["root"], "--revocations", "rev.bin")
    ok(*verify_b, cwd=d)  # a missing revocation file means nothing is revoked
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


@pytest.mark.slow
def test_revoke_by_unrelated_key_has_no_effect(tmp_path: Path) -> None:
    d = tmp_path
    ids = {name: ok("keygen", "--out", f"{name}.key", cwd=d).strip() for name in ("root", "x")}
    ok("token", "issue", "--key", "root.key", "--to", ids["x"], "--cap", "y=*", "--out", "t.tok",
       cwd=d)  # fmt: skip
    ok("token", "revoke", "--key", "x.key", "t.tok", "--out", "rev.bin", cwd=d)
    ok("token", "verify", "t.tok", "--root", ids["root"], "--revocations", "rev.bin", cwd=d)


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
