"""``m2m token issue|delegate|inspect|verify|revoke``.

A token file holds the raw token bytes (a tagged COSE_Sign1, spec/tokens.md).
A revocation file holds concatenated signed revocation statements; ``revoke
--out`` on an existing file appends to it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from .._files import write_atomic
from ..errors import ErrorCode, LocalProtocolError, TokenError
from ..identity import AgentId, Identity
from ..tokens import (
    FileRevocationStore,
    InMemoryRevocationStore,
    TokenLimits,
    delegate,
    inspect,
    issue,
    revoke,
    verify,
)
from ..tokens.claims import parse_link
from ..tokens.revocation import revocation_authorities

__all__ = ["open_revocations", "parse_duration", "read_token", "register", "write_file"]

#: Largest file read as a token (the verifier's own limit applies after reading).
MAX_TOKEN_FILE = 1024 * 1024

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Parse ``90``, ``90s``, ``15m``, ``1h``, ``7d``, ``2w`` into seconds."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise LocalProtocolError(
            f"invalid duration {text!r} (use e.g. 90s, 15m, 1h, 7d)", ErrorCode.INVALID_ARGUMENT
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def read_token(path: str) -> bytes:
    """Read a token file (raw bytes), with a clear error for user mistakes."""
    target = Path(path)
    try:
        size = target.stat().st_size
        if size > MAX_TOKEN_FILE:
            raise LocalProtocolError(
                f"{path}: too large for a token file", ErrorCode.INVALID_ARGUMENT
            )
        return target.read_bytes()
    except OSError as exc:
        raise LocalProtocolError(
            f"{path}: cannot read token file ({exc.strerror})", ErrorCode.INVALID_ARGUMENT
        ) from None


def open_revocations(path: str) -> FileRevocationStore:
    """Load a revocation file named on the command line (it must exist and be valid).

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) the file is missing,
            unreadable or holds a bad statement; the message names the file.
    """
    try:
        return FileRevocationStore(path, must_exist=True)
    except TokenError as exc:
        raise LocalProtocolError(
            f"{path}: not a usable revocation file ({exc.code.name}: {exc.message})",
            ErrorCode.INVALID_ARGUMENT,
        ) from None


def write_file(path: str, data: bytes, *, mode: int = 0o600) -> None:
    """Write *data* to *path* atomically (a fresh ``O_EXCL`` temporary, then a rename).

    A symbolic link at *path* is refused, never followed or replaced.
    """
    write_atomic(path, data, mode=mode, overwrite=True, code=ErrorCode.INVALID_ARGUMENT)


def _agent(text: str) -> AgentId:
    return AgentId.parse(text)


def _now(args: argparse.Namespace) -> float:
    at: float | None = getattr(args, "at", None)
    return time.time() if at is None else at


def _add_common_issue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, metavar="FILE", help="the signer's private key file")
    p.add_argument("--to", required=True, metavar="AGENT_ID", help="the holder's agent ID")
    p.add_argument(
        "--cap",
        action="append",
        required=True,
        metavar="RESOURCE=ABILITY",
        help="a capability, e.g. orders/eu/*=msg/send (repeatable)",
    )
    p.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d (default 1h)")
    audience = p.add_mutually_exclusive_group(required=True)
    audience.add_argument(
        "--aud", metavar="AGENT_ID", help="the only peer that may accept the token (required...)"
    )
    audience.add_argument(
        "--any-audience",
        action="store_true",
        help="...or: any peer trusting the root may accept it (a token replayable to all of them)",
    )
    p.add_argument(
        "--max-message-size", type=int, metavar="BYTES", help="caveat: largest message allowed"
    )
    p.add_argument(
        "--allowed-peer",
        action="append",
        metavar="AGENT_ID",
        help="caveat: a peer the token may be used with (repeatable)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the token")
    p.add_argument("--json", action="store_true", help="print the new token's view as JSON")


def register(sub: Any) -> None:
    p = sub.add_parser("token", help="issue, delegate, inspect, verify and revoke tokens")
    tsub = p.add_subparsers(dest="token_command", metavar="SUBCOMMAND")
    p.set_defaults(handler=lambda args: (p.print_help(sys.stderr), 2)[1])

    q = tsub.add_parser("issue", help="issue a root capability token")
    _add_common_issue_args(q)
    q.set_defaults(handler=cmd_mint)

    q = tsub.add_parser("delegate", help="delegate a narrower token from one you hold")
    q.add_argument("--parent", required=True, metavar="FILE", help="the token you hold")
    _add_common_issue_args(q)
    q.set_defaults(handler=cmd_mint)

    q = tsub.add_parser("inspect", help="show a token's contents (no verification)")
    q.add_argument("file", metavar="FILE")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(handler=cmd_inspect)

    q = tsub.add_parser("verify", help="verify a token and its chain; print what it grants")
    q.add_argument("file", metavar="FILE")
    q.add_argument(
        "--root", action="append", required=True, metavar="AGENT_ID", help="a trust root"
    )
    q.add_argument("--holder", metavar="AGENT_ID", help="check the token is bound to this agent")
    q.add_argument("--aud", metavar="AGENT_ID", help="verify as this audience")
    q.add_argument("--revocations", metavar="FILE", help="a revocation file to consult")
    q.add_argument("--at", type=float, metavar="UNIX_TIME", help="verify at this time")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(handler=cmd_verify)

    q = tsub.add_parser("revoke", help="sign a revocation of tokens and add it to a file")
    q.add_argument("--key", required=True, metavar="FILE", help="the revoker's private key file")
    q.add_argument("tokens", nargs="+", metavar="TOKEN_FILE", help="tokens to revoke")
    q.add_argument("--out", metavar="FILE", help="revocation file (appended)")
    q.add_argument("--json", action="store_true", help="print the revoked IDs as JSON")
    q.add_argument(
        "--publish", metavar="URL", help="also publish it to every replica over NATS at URL"
    )
    q.add_argument("--nats-prefix", default="m2m", metavar="TOKEN", help="NATS subject prefix")
    q.set_defaults(handler=cmd_revoke)


def _caveats(args: argparse.Namespace) -> dict[str, Any] | None:
    caveats: dict[str, Any] = {}
    if args.max_message_size is not None:
        caveats["max_message_size"] = args.max_message_size
    if args.allowed_peer:
        caveats["allowed_peers"] = [_agent(a) for a in args.allowed_peer]
    return caveats or None


def _report_new(args: argparse.Namespace, token: bytes) -> None:
    view = inspect(token)
    if args.json:
        print(json.dumps({"file": args.out, "size": len(token), **view}))
    else:
        claims = view.get("claims", {})
        print(f"wrote {args.out} ({len(token)} bytes, cti {claims.get('cti', '?')})")


def cmd_mint(args: argparse.Namespace) -> int:
    """``token issue`` (a root token) and ``token delegate`` (with ``--parent``)."""
    signer = Identity.load(args.key)
    options: dict[str, Any] = {
        "now": time.time(),
        "ttl": parse_duration(args.ttl),
        "audience": _agent(args.aud) if args.aud else None,
        "caveats": _caveats(args),
    }
    parent = getattr(args, "parent", None)
    if parent is None:
        token = issue(signer, _agent(args.to), args.cap, **options)
    else:
        token = delegate(signer, read_token(parent), _agent(args.to), args.cap, **options)
    write_file(args.out, token)
    _report_new(args, token)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    view = inspect(read_token(args.file))
    if args.json:
        print(json.dumps(view))
    else:
        print(json.dumps(view, indent=2))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    revocations = open_revocations(args.revocations) if args.revocations else None
    grant = verify(
        read_token(args.file),
        trust_roots=[_agent(r) for r in args.root],
        now=_now(args),
        holder=_agent(args.holder) if args.holder else None,
        audience=_agent(args.aud) if args.aud else None,
        revocations=revocations,
        limits=TokenLimits(),
    )
    if args.json:
        print(json.dumps({"valid": True, **grant.to_json()}))
    else:
        print(f"valid: held by {grant.holder.short}, rooted at {grant.root.short}")
        for cap in grant.capabilities:
            print(f"  {cap}")
        print(f"  expires {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(grant.expires))}")
    return 0


def _publish(url: str, statement: bytes, ids: list[str], as_json: bool, prefix: str) -> None:
    """Publish *statement* over NATS (spec/transports.md, "Revocations")."""
    import anyio

    from ..transport.nats import publish_revocation

    how = anyio.run(partial(publish_revocation, url, statement, prefix=prefix))  # OSError: 7
    if as_json:
        print(json.dumps({"published": url, "via": how, "revoked": ids}))
    else:
        print(f"revoked {', '.join(ids)} -> {url} ({how})")


def cmd_revoke(args: argparse.Namespace) -> int:
    """Sign a statement for the tokens this key may revoke and append it, once.

    The key must be the issuer of a link in each token's chain (spec/tokens.md
    6.7): any other statement would be ignored by every verifier, so it is
    refused rather than reported as a success. Token IDs this key already
    revoked in the file are reported and not signed again.
    """
    revoker = Identity.load(args.key)
    if not args.out and not args.publish:
        raise LocalProtocolError("give --out FILE and/or --publish URL", ErrorCode.INVALID_ARGUMENT)
    me = revoker.agent_id
    tokens: list[bytes] = []
    for path in args.tokens:
        token = read_token(path)
        authorities = revocation_authorities(token)
        if me not in authorities:
            allowed = ", ".join(a.text for a in authorities)
            raise LocalProtocolError(
                f"{path}: key {me.text} has no authority to revoke this token; only the "
                f"issuer of a link in its chain may ({allowed})",
                ErrorCode.INVALID_ARGUMENT,
            )
        tokens.append(token)
    try:
        store = FileRevocationStore(args.out) if args.out else InMemoryRevocationStore()
    except TokenError as exc:
        raise LocalProtocolError(
            f"{args.out}: not a usable revocation file ({exc.code.name}: {exc.message})",
            ErrorCode.INVALID_ARGUMENT,
        ) from None
    fresh: list[bytes] = []
    already: list[bytes] = []
    for token in tokens:
        cti = parse_link(token).token_id
        if store.is_revoked(cti, [me]):
            already.append(cti)
        elif cti not in fresh:
            fresh.append(cti)
    if fresh:
        statement = revoke(revoker, fresh, now=time.time())
        try:
            store.add(statement)
        except TokenError as exc:
            raise LocalProtocolError(exc.message, ErrorCode.INVALID_ARGUMENT) from None
    ids, old = [c.hex() for c in fresh], [c.hex() for c in already]
    if args.publish and fresh:
        _publish(args.publish, statement, ids, args.json, args.nats_prefix)
    if not args.out:
        return 0
    if args.json:
        print(json.dumps({"file": args.out, "revoked": ids, "already_revoked": old,
                          "revoker": me.text}))  # fmt: skip
        return 0
    if ids:
        print(f"revoked {', '.join(ids)} -> {args.out}")
    if old:
        print(f"already revoked by this key in {args.out}: {', '.join(old)} (nothing appended)")
    return 0
