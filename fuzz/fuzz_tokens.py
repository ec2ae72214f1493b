"""Token decoding and verification (m2mproto.tokens), fixed clock, roots and holder.

The first input byte picks the entry point, the rest is the untrusted bytes:

* 0: ``verify`` (fixed roots, holder, audience, clock and a revocation store);
  when it accepts, the grant is bound to the holder, rooted in a trust root
  and live at the clock; and the verdict through a verification cache shared
  by every input (twice: filling it, then hitting it) is the uncached one;
* 1: ``inspect`` (offline view; its result must be JSON-serialisable);
* 2: ``parse_statement`` (revocation statements);
* 3: ``FileRevocationStore`` reading the bytes as its file.

Invariant: accept, or raise an ``M2MError`` (``TokenError`` for the token
paths) and nothing else.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from _common import NOW, fuzz_main, identity, instrumented, token_set

with instrumented(__name__):
    from m2mproto.errors import M2MError, TokenError
    from m2mproto.tokens import (
        FileRevocationStore,
        InMemoryRevocationStore,
        VerificationCache,
        inspect,
        revoke,
        verify,
    )
    from m2mproto.tokens.revocation import parse_statement

_STATE: dict[str, Any] = {}


def _world() -> dict[str, Any]:
    if not _STATE:
        tokens = token_set("alice", "bob")
        revocation = revoke(identity("authority"), [tokens["expired"]], now=NOW)
        _STATE.update(
            roots=frozenset({identity("authority").agent_id}),
            holder=identity("alice").agent_id,
            audience=identity("bob").agent_id,
            store=InMemoryRevocationStore([revocation]),
            cache=VerificationCache(trust_roots=[identity("authority").agent_id]),
            dir=tempfile.mkdtemp(prefix="m2m-fuzz-revocations-"),
        )
    return _STATE


def check_tokens(data: bytes) -> None:
    """Run one token entry point on *data* (first byte selects it)."""
    if not data:
        return
    w = _world()
    mode, body = data[0] % 4, data[1:]
    if mode == 0:

        def run(cache: Any) -> Any:
            try:
                return verify(
                    body,
                    trust_roots=w["roots"],
                    now=NOW,
                    holder=w["holder"],
                    audience=w["audience"],
                    revocations=w["store"],
                    cache=cache,
                )
            except TokenError as exc:
                return exc.code

        grant = run(None)
        for _ in range(2):
            assert run(w["cache"]) == grant, "the cache changed a verdict"
        if not hasattr(grant, "holder"):
            return
        assert grant.holder == w["holder"], "grant bound to another holder"
        assert grant.root in w["roots"], "grant from an untrusted root"
        assert grant.not_before - 60 <= NOW <= grant.expires + 60, "grant not live"
        assert grant.audience in (None, w["audience"])
    elif mode == 1:
        try:
            view = inspect(body)
        except TokenError:
            return
        json.dumps(view)
    elif mode == 2:
        try:
            statement = parse_statement(body)
        except TokenError:
            return
        assert statement.token_ids
    else:
        path = os.path.join(w["dir"], "revocations.cbor")
        with open(path, "wb") as fh:
            fh.write(body)
        try:
            FileRevocationStore(path)
        except M2MError:
            return


if __name__ == "__main__":
    fuzz_main(check_tokens)
