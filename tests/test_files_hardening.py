"""Key and token files against a hostile file system: real symlinks in tmp_path.

Writes never go through a symbolic link at the destination (refused with a
clear error) and land atomically (a fresh O_EXCL temporary, then a rename);
private keys are loaded only from a regular file owned by this user (or
root) with no group/other permission bits, checked on the descriptor read.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2mproto.cli import EXIT_CODES
from m2mproto.errors import ErrorCode, LocalProtocolError
from m2mproto.identity import Identity

ME = Identity.from_seed(bytes(range(32)))


def m2m(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "m2mproto", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)  # fmt: skip


@pytest.fixture
def no_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_bytes(b"precious\n")
    return path


# ------------------------------------------------------------------ key writes


@pytest.mark.parametrize("force", [False, True])
def test_keygen_refuses_a_symlink_destination(tmp_path: Path, victim: Path, force: bool) -> None:
    (tmp_path / "link.key").symlink_to(victim)
    result = m2m("keygen", "--out", "link.key", *(["--force"] if force else []), cwd=tmp_path)
    assert result.returncode == EXIT_CODES["local"], result.stderr
    assert "KEY_FILE_INVALID" in result.stderr and "symbolic link" in result.stderr
    assert victim.read_bytes() == b"precious\n"
    assert (tmp_path / "link.key").is_symlink()


@pytest.mark.parametrize("overwrite", [False, True])
def test_save_refuses_a_dangling_symlink(tmp_path: Path, overwrite: bool) -> None:
    target = tmp_path / "elsewhere" / "planted.key"
    target.parent.mkdir()
    (tmp_path / "a.key").symlink_to(target)
    with pytest.raises(LocalProtocolError) as info:
        ME.save(tmp_path / "a.key", overwrite=overwrite)
    assert info.value.code == ErrorCode.KEY_FILE_INVALID
    assert not target.exists()


@pytest.mark.usefixtures("no_umask")
def test_save_overwrite_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "a.key"
    path.write_bytes(b"old contents")
    path.chmod(0o644)
    old_inode = path.stat().st_ino
    ME.save(path, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != old_inode  # a new file renamed over the old one
    assert Identity.load(path).agent_id == ME.agent_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.key"]  # no temporary left


def test_save_without_overwrite_keeps_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "a.key"
    path.write_bytes(b"keep me")
    with pytest.raises(LocalProtocolError) as info:
        ME.save(path)
    assert info.value.code == ErrorCode.KEY_FILE_INVALID and "exists" in info.value.message
    assert path.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.key"]


def test_save_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "a.key").mkdir()
    with pytest.raises(LocalProtocolError):
        ME.save(tmp_path / "a.key", overwrite=True)


# ------------------------------------------------------------------ key reads


def test_load_checks_the_file_actually_opened(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    ME.save(real)
    (tmp_path / "link.key").symlink_to(real)
    assert Identity.load(tmp_path / "link.key").agent_id == ME.agent_id  # e.g. mounted secrets
    real.chmod(0o640)
    with pytest.raises(LocalProtocolError) as info:
        Identity.load(tmp_path / "link.key")
    assert info.value.code == ErrorCode.KEY_FILE_PERMISSIONS


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_load_refuses_a_key_owned_by_another_user(tmp_path: Path) -> None:
    path = tmp_path / "a.key"
    ME.save(path)
    os.chown(path, 12345, 12345)
    with pytest.raises(LocalProtocolError) as info:
        Identity.load(path)
    assert info.value.code == ErrorCode.KEY_FILE_PERMISSIONS
    assert "owned by uid 12345" in info.value.message


def test_load_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "a.key"
    os.mkfifo(path, 0o600)
    with pytest.raises(LocalProtocolError) as info:
        Identity.load(path)
    assert info.value.code == ErrorCode.KEY_FILE_INVALID and "regular" in info.value.message


# ------------------------------------------------------------------ token files


@pytest.fixture
def keys(tmp_path: Path) -> str:
    result = m2m("keygen", "--out", "root.key", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_token_issue_refuses_a_symlink_destination(tmp_path: Path, victim: Path, keys: str) -> None:
    (tmp_path / "a.tok").symlink_to(victim)
    result = m2m("token", "issue", "--key", "root.key", "--to", keys, "--cap", "x=*",
                 "--aud", keys, "--out", "a.tok", cwd=tmp_path)  # fmt: skip
    assert result.returncode == EXIT_CODES["local"], result.stderr
    assert "symbolic link" in result.stderr and "a.tok" in result.stderr
    assert victim.read_bytes() == b"precious\n"


@pytest.mark.usefixtures("no_umask")
def test_token_file_is_written_private_and_atomically(tmp_path: Path, keys: str) -> None:
    (tmp_path / "a.tok").write_bytes(b"old")
    result = m2m("token", "issue", "--key", "root.key", "--to", keys, "--cap", "x=*",
                 "--aud", keys, "--out", "a.tok", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "a.tok").stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_token_revoke_refuses_a_symlinked_revocation_file(tmp_path: Path, keys: str) -> None:
    result = m2m("token", "issue", "--key", "root.key", "--to", keys, "--cap", "x=*",
                 "--aud", keys, "--out", "a.tok", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    target = tmp_path / "target.bin"
    target.write_bytes(b"")
    (tmp_path / "rev.bin").symlink_to(target)
    result = m2m("token", "revoke", "--key", "root.key", "a.tok", "--out", "rev.bin",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == EXIT_CODES["local"], result.stderr
    assert "symbolic link" in result.stderr and "rev.bin" in result.stderr
    assert target.read_bytes() == b""
