"""``m2m interop shim``: the reference implementation's shim (spec/interop.md §5).

Theory of operation
-------------------
The shim parses the contract's flags into an :class:`IUTProfile`, dials the
runner, writes the test ID, and then moves bytes between the socket and an
:class:`InProcessLink` (the sans-IO ``Connection`` plus the conformance
application). The link's clock stands still (token checks see exactly
``--now``) except that a deadline fires once real time reaches it. Local
events are printed on stderr as they happen (``M2M-STREAM-RESET`` ...); when
the connection is closed it prints ``M2M-RESULT: <CODE>`` and exits 0
(NO_ERROR) or 1; an unknown flag or configuration name exits 89 before
connecting.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from m2mproto.config import Configuration
from m2mproto.errors import ErrorCode, M2MError
from m2mproto.events import HandshakeCompleted, StreamReset, TokenRejected
from m2mproto.identity import AgentId, Identity

from .inprocess import START, InProcessLink, IUTProfile

__all__ = ["main"]

UNIMPLEMENTED = 89


def unimplemented(message: str) -> NoReturn:
    """A bad or unknown flag: the shim exits "unimplemented" (89), not with a usage error."""
    print(f"M2M-UNIMPLEMENTED: {message}", file=sys.stderr)
    raise SystemExit(UNIMPLEMENTED)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # unknown flag: "unimplemented", not usage
        unimplemented(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="m2m interop shim", description="m2mproto reference shim")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The shim's options (spec/interop.md, the shim command line)."""
    p.add_argument("--port", type=int, required=True, help="the runner's TCP port to connect to")
    p.add_argument(
        "--test-id",
        type=int,
        required=True,
        metavar="N",
        help="the case number, sent first so the runner can match the connection",
    )
    p.add_argument(
        "--role",
        choices=("initiator", "responder"),
        required=True,
        help="the handshake role the implementation under test plays",
    )
    p.add_argument(
        "--identity-seed",
        required=True,
        metavar="HEX",
        help="the 32-byte Ed25519 seed of its identity",
    )
    p.add_argument("--static-key", metavar="HEX", help="its Noise static X25519 private key")
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="AGENT_ID",
        help="an agent its trust decision accepts (repeatable; AUTH_UNTRUSTED otherwise)",
    )
    p.add_argument(
        "--expect-peer",
        metavar="AGENT_ID",
        help="initiator: the only acceptable responder (AUTH_UNEXPECTED_PEER otherwise)",
    )
    p.add_argument(
        "--trust-root",
        action="append",
        default=[],
        metavar="AGENT_ID",
        help="a token trust root (repeatable)",
    )
    p.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="HEX",
        help="a token it presents (repeatable; initiator: in the handshake, "
        "responder: in TOKEN frames)",
    )
    p.add_argument(
        "--revocation",
        action="append",
        default=[],
        metavar="HEX",
        help="a signed revocation statement its store holds (repeatable)",
    )
    p.add_argument(
        "--revoked",
        action="append",
        default=[],
        metavar="HEX",
        help="a token ID revoked by local policy (repeatable)",
    )
    p.add_argument(
        "--no-authorize",
        action="store_true",
        help="authorize nothing: every stream and message is allowed",
    )
    p.add_argument(
        "--now",
        type=float,
        metavar="UNIX",
        help="the Unix time for token checks (the clock stands still)",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Configuration field to set, e.g. max_concurrent_streams=4 (repeatable)",
    )


def _value(field_type: Any, text: str) -> Any:
    if text in ("None", "none"):
        return None
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    try:
        return int(text)
    except ValueError:
        return float(text)


def _config(items: Sequence[str]) -> dict[str, Any]:
    fields = Configuration.__dataclass_fields__
    out: dict[str, Any] = {}
    for item in items:
        name, _, text = item.partition("=")
        if name not in fields or name in ("entropy", "static_key", "policy", "clock_offset"):
            print(f"M2M-UNIMPLEMENTED: --config {name}", file=sys.stderr)
            raise SystemExit(UNIMPLEMENTED)
        out[name] = _value(fields[name].type, text)
    return out


def run(args: argparse.Namespace) -> int:
    profile = IUTProfile(
        initiator=args.role == "initiator",
        config=_config(args.config),
        trust=frozenset(AgentId.parse(t) for t in args.trust) if args.trust else None,
        expect_peer=AgentId.parse(args.expect_peer) if args.expect_peer else None,
        revoked=tuple(bytes.fromhex(x) for x in args.revoked),
        tokens=tuple(bytes.fromhex(x) for x in args.token),
        authorize=not args.no_authorize,
    )
    kwargs: dict[str, Any] = {}
    if args.static_key:
        kwargs["static_key"] = bytes.fromhex(args.static_key)
    if args.trust_root:
        kwargs["trust_roots"] = [AgentId.parse(r) for r in args.trust_root]
    kwargs["revocations"] = [bytes.fromhex(x) for x in args.revocation]
    if args.now is not None:
        kwargs["unix_now"] = args.now
    identity = Identity.from_seed(bytes.fromhex(args.identity_seed))
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=5.0)
    sock.sendall(args.test_id.to_bytes(8, "little"))
    link = InProcessLink(profile, identity, **kwargs)
    start = time.monotonic()
    eof = False
    shown = 0
    for _ in range(10_000_000):  # bounded by the connection's own timers
        shown = _report(link, shown)  # before the bytes that follow from the same events
        out = link.read()
        if out:
            try:
                sock.sendall(out)
            except OSError:
                if not eof:
                    link.write_eof()
                eof = True
        if link.iut_closed:
            break
        ready, _, _ = select.select([] if eof else [sock], [], [], 0.02)
        if ready:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data:
                link.write(data)
            else:
                eof = True
                link.write_eof()
        # The clock stands still except to fire a deadline that real time has reached, so
        # token time is exactly --now and budgets do not refill behind the runner's back.
        deadline = link.conn.get_timer()
        real = START + (time.monotonic() - start)
        if deadline is not None and deadline <= real:
            link.advance(deadline - link.now)
    tail = link.read()
    if tail:
        with contextlib.suppress(OSError):
            sock.sendall(tail)
    _report(link, shown)  # the local outcome first: the runner reads it as the link ends
    closed = link.local().closed_code
    print(f"M2M-RESULT: {_name(closed) if closed is not None else 'NONE'}", file=sys.stderr,
          flush=True)  # fmt: skip
    _lingering_close(sock, eof)
    return 0 if closed == ErrorCode.NO_ERROR else 1


def _name(code: int) -> str:
    """Registry name, or the number for codes outside the registry (spec/interop.md §5)."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


def _report(link: InProcessLink, shown: int) -> int:
    """Print the local events not printed yet (one line each, flushed); return the count."""
    for ev in link.events[shown:]:
        line = None
        if isinstance(ev, StreamReset):
            who = "remote" if ev.remote else "local"
            line = f"M2M-STREAM-RESET: {ev.stream_id} {_name(ev.code)} {who}"
        elif isinstance(ev, TokenRejected):
            line = f"M2M-TOKEN-REJECTED: {_name(ev.code)}"
        elif isinstance(ev, HandshakeCompleted):
            line = f"M2M-PEER: {ev.peer.text}"
        if line is not None:
            print(line, file=sys.stderr, flush=True)
    return len(link.events)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m m2m_interop.shim`` or ``m2m interop shim``)."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except M2MError as exc:
        print(f"M2M-RESULT: {exc.code.name}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"m2m interop shim: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())


def _lingering_close(sock: socket.socket, eof: bool, linger: float = 2.0) -> None:
    """Half-close, then read and drop what the runner still sends until its EOF (at most
    *linger* seconds, or until it is quiet for 0.2 s), then close: closing with unread
    bytes would make the kernel send a TCP reset, which can destroy the CLOSE frame we
    just sent (as the library's pump does).
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + linger
        while not eof:  # bounded by the deadline
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([sock], [], [], min(left, 0.2))
            if not ready:
                break  # the runner went quiet: nothing left to reset the connection
            if not sock.recv(65536):
                eof = True
    sock.close()
