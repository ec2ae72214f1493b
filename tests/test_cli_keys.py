"""``m2m --version``, ``m2m keygen``, ``m2m id`` through the real entry point."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from m2mproto import COMPILED, __version__
from m2mproto.cli import EXIT_CODES, main
from m2mproto.identity import AgentId, Identity


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "m2mproto", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    build = "compiled" if COMPILED else "pure"
    assert result.stdout.strip() == f"m2m {__version__} ({build})"


def test_keygen_and_id(tmp_path: Path) -> None:
    key = tmp_path / "a.key"
    result = run("keygen", "--out", str(key))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    agent_text = result.stdout.strip()
    assert AgentId.parse(agent_text) == Identity.load(key).agent_id

    result = run("id", str(key), "--json")
    assert result.returncode == 0
    info = json.loads(result.stdout)
    assert info["agent_id"] == agent_text
    assert bytes.fromhex(info["public_key"]) == AgentId.parse(agent_text).public_key

    result = run("id", str(key))
    assert result.stdout.strip() == agent_text


def test_keygen_refuses_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "a.key"
    assert main(["keygen", "--out", str(key)]) == 0
    assert main(["keygen", "--out", str(key)]) == EXIT_CODES["local"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KEY_FILE_INVALID" in err


def test_id_user_mistakes_one_line(tmp_path: Path) -> None:
    key = tmp_path / "a.key"
    assert run("keygen", "--out", str(key)).returncode == 0
    key.chmod(0o644)
    result = run("id", str(key))
    assert result.returncode == EXIT_CODES["local"]
    assert "KEY_FILE_PERMISSIONS" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1

    result = run("id", str(tmp_path / "missing.key"))
    assert result.returncode == EXIT_CODES["local"]
    assert "KEY_FILE_INVALID" in result.stderr and "Traceback" not in result.stderr


def test_no_command_prints_help() -> None:
    result = run()
    assert result.returncode == 2
    assert "keygen" in result.stderr
