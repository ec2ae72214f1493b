"""FeedRevocationStore: pushed statements live beside a revocation file, never in it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from m2mproto import Identity
from m2mproto.errors import TokenError
from m2mproto.tokens import FileRevocationStore, issue, revoke
from m2mproto.transport.nats import FeedRevocationStore


def test_feed_statements_survive_file_reloads_and_are_not_written(tmp_path: Path) -> None:
    root, holder = Identity.generate(), Identity.generate()
    now = time.time()
    pushed, filed = (issue(root, holder.agent_id, ["x=*"], now=now, ttl=60) for _ in "ab")
    path = tmp_path / "revocations.bin"
    base = FileRevocationStore(path)
    store = FeedRevocationStore(base)
    (pushed_id,) = store.add(revoke(root, [pushed], now=now)).token_ids
    assert not path.exists()  # the feed never writes the file
    (filed_id,) = FileRevocationStore(path).add(revoke(root, [filed], now=now)).token_ids
    assert base.reload_if_changed()  # another writer appended to the file
    authorities = [root.agent_id]
    assert store.is_revoked(pushed_id, authorities)  # still there after the reload
    assert store.is_revoked(filed_id, authorities)
    assert not store.is_revoked(bytes(16), authorities)
    assert not store.is_revoked(pushed_id, [Identity.generate().agent_id])  # not its revoker
    with pytest.raises(TokenError):
        store.add(b"\xa0")  # not a statement
    assert len(store) == 2
