"""The revocation file store fails closed (spec/tokens.md 6.7, "File store").

Revocations are monotonic: a reload never drops a recorded entry, whatever
the file looks like meanwhile (truncated, rewritten in pieces, removed,
replaced by rename). Parsing is incremental when the file only grew, and a
statement already verified is never verified again.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tok_helpers import ALICE, BOB, CAROL, NOW, ROOT, counter_entropy

from m2mproto.errors import ErrorCode, LocalProtocolError, TokenError
from m2mproto.tokens import FileRevocationStore, issue, revoke, verify

ROOTS = [ROOT.agent_id]


def leaf_token(n: int = 0) -> bytes:
    return issue(ROOT, CAROL.agent_id, ["x=*"], now=NOW, ttl=3600, entropy=counter_entropy(n))


def is_valid(token: bytes, store: FileRevocationStore) -> bool:
    try:
        verify(token, trust_roots=ROOTS, now=NOW, holder=CAROL.agent_id, revocations=store)
    except TokenError as exc:
        assert exc.code == ErrorCode.REVOKED
        return False
    return True


def statements(count: int, start: int = 1000) -> list[bytes]:
    return [revoke(ROOT, [(start + i).to_bytes(16, "big")], now=NOW) for i in range(count)]


@pytest.fixture
def revoked(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """A file revoking one token (plus others); returns (path, token, file bytes)."""
    token = leaf_token()
    data = b"".join(statements(3)) + revoke(ROOT, [token], now=NOW) + b"".join(statements(2, 50))
    path = tmp_path / "revoked.cbor"
    path.write_bytes(data)
    return path, token, data


def test_truncate_then_write_never_serves_a_revoked_token(
    revoked: tuple[Path, bytes, bytes],
) -> None:
    """A writer rewriting the file in place (truncate, then chunks): every reload in between."""
    path, token, data = revoked
    store = FileRevocationStore(path)
    assert not is_valid(token, store)
    entries = len(store)
    for chunk in (0, 1, 7, 100, 211, len(data) // 2, len(data) - 1, len(data)):
        with path.open("r+b") as fh:
            fh.truncate(0)
            fh.write(data[:chunk])
        store.reload_if_changed()  # no error: a cut statement is "not written yet"
        assert not is_valid(token, store), chunk
        assert len(store) == entries
    assert store.pending_bytes == 0


@pytest.mark.parametrize("change", ["unlink", "empty", "other-content", "rename-smaller"])
def test_reload_never_drops_entries(revoked: tuple[Path, bytes, bytes], change: str) -> None:
    path, token, _data = revoked
    store = FileRevocationStore(path)
    entries = len(store)
    if change == "unlink":
        path.unlink()
    elif change == "empty":
        path.write_bytes(b"")
    elif change == "other-content":
        path.write_bytes(statements(1, 7000)[0])
    else:
        new = path.with_name("new")
        new.write_bytes(b"".join(statements(1, 8000)))
        os.replace(new, path)
    store.reload_if_changed()
    assert not is_valid(token, store)
    assert len(store) >= entries


def test_corrupt_tail_keeps_everything_and_records_what_verified(tmp_path: Path) -> None:
    path = tmp_path / "revoked.cbor"
    token = leaf_token()
    path.write_bytes(b"".join(statements(2)))
    store = FileRevocationStore(path)
    with path.open("ab") as fh:
        fh.write(revoke(ROOT, [token], now=NOW) + b"\xff\x00garbage")
    with pytest.raises(TokenError) as info:
        store.reload_if_changed()
    assert info.value.code == ErrorCode.MALFORMED
    assert str(path) in info.value.message
    assert not is_valid(token, store)  # the good statement before the garbage counts
    assert len(store) == 3


def test_growing_file_is_parsed_incrementally(tmp_path: Path) -> None:
    path = tmp_path / "revoked.cbor"
    path.write_bytes(b"".join(statements(200)))
    store = FileRevocationStore(path)
    assert store.verified == 200
    with path.open("ab") as fh:
        fh.write(statements(1, 5000)[0])
    assert store.reload_if_changed()
    assert store.verified == 201 and len(store) == 201
    assert store.bytes_read < 2 * path.stat().st_size  # the prefix was not read again


def test_replaced_file_verifies_only_new_statements(tmp_path: Path) -> None:
    path = tmp_path / "revoked.cbor"
    old = b"".join(statements(100))
    path.write_bytes(old)
    store = FileRevocationStore(path)
    new = path.with_name("revoked.new")
    new.write_bytes(old + statements(1, 9000)[0])
    os.replace(new, path)  # the recommended writer: rename a new file over the old
    assert store.reload_if_changed()
    assert store.verified == 101 and len(store) == 101


def test_prefix_rewritten_with_same_growth_is_reparsed(tmp_path: Path) -> None:
    """Same inode, bigger, but the bytes already read changed: parse it all (union)."""
    path = tmp_path / "revoked.cbor"
    path.write_bytes(statements(1, 100)[0])
    store = FileRevocationStore(path)
    token = leaf_token()
    with path.open("r+b") as fh:  # in place, no truncation: a different first statement
        fh.write(revoke(ROOT, [token], now=NOW) + statements(1, 200)[0])
    store.reload_if_changed()
    assert not is_valid(token, store)
    assert store.is_revoked((100).to_bytes(16, "big"), ROOTS)  # kept
    assert store.is_revoked((200).to_bytes(16, "big"), ROOTS)


def test_read_and_apply_split_for_worker_threads(revoked: tuple[Path, bytes, bytes]) -> None:
    path, token, data = revoked
    store = FileRevocationStore(path.with_name("fresh.cbor"))
    assert is_valid(token, store)
    path.with_name("fresh.cbor").write_bytes(data)
    update = store.read_changes()  # pure: reads and verifies, records nothing
    assert update is not None and is_valid(token, store)
    store.apply(update)
    assert not is_valid(token, store)
    assert store.read_changes() is None


def test_must_exist_names_the_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.cbor"
    with pytest.raises(LocalProtocolError) as info:
        FileRevocationStore(path, must_exist=True)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    assert str(path) in info.value.message
    assert len(FileRevocationStore(path)) == 0  # the library default: missing means empty


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_must_exist_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.cbor"
    path.write_bytes(b"")
    path.chmod(0)
    with pytest.raises(LocalProtocolError) as info:
        FileRevocationStore(path, must_exist=True)
    assert str(path) in info.value.message


def test_append_refuses_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"")  # reads as an empty revocation file
    link = tmp_path / "revoked.cbor"
    link.symlink_to(victim)
    with pytest.raises(TokenError) as info:
        FileRevocationStore(link).add(revoke(ALICE, [leaf_token()], now=NOW))
    assert "symbolic link" in info.value.message
    assert victim.read_bytes() == b""


def test_own_append_is_not_reparsed(tmp_path: Path) -> None:
    path = tmp_path / "revoked.cbor"
    store = FileRevocationStore(path)
    store.add(revoke(BOB, [leaf_token()], now=NOW))
    assert not store.reload_if_changed()
    assert store.verified == 1


def test_revocation_authorities_are_the_issuers_of_the_chain() -> None:
    from m2mproto.tokens import delegate
    from m2mproto.tokens.revocation import revocation_authorities

    t1 = issue(ROOT, ALICE.agent_id, ["x/*=*"], now=NOW, ttl=3600, entropy=counter_entropy(1))
    t2 = delegate(ALICE, t1, BOB.agent_id, ["x/*=*"], now=NOW, ttl=60, entropy=counter_entropy(2))
    assert revocation_authorities(t1) == (ROOT.agent_id,)
    assert revocation_authorities(t2) == (ROOT.agent_id, ALICE.agent_id)  # never BOB, the holder
    forged = bytearray(t2)
    forged[-1] ^= 1
    with pytest.raises(TokenError) as info:
        revocation_authorities(bytes(forged))
    assert info.value.code == ErrorCode.BAD_SIGNATURE


def test_same_size_rewrite_is_reparsed(tmp_path: Path) -> None:
    """Same inode and size, new mtime: read it all again (the new statement counts)."""
    path = tmp_path / "revoked.cbor"
    old, new = statements(1, 300)[0], statements(1, 400)[0]
    assert len(old) == len(new)
    path.write_bytes(old)
    store = FileRevocationStore(path)
    path.write_bytes(new)
    os.utime(path, ns=(1, 1))  # a different mtime even within one timestamp tick
    assert store.reload_if_changed()
    assert store.is_revoked((300).to_bytes(16, "big"), ROOTS)  # kept
    assert store.is_revoked((400).to_bytes(16, "big"), ROOTS)  # and read
