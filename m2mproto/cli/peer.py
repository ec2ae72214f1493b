"""``m2m serve``, ``m2m send``, ``m2m request``: the reference peer and its client.

``serve`` accepts any agent that authenticates and presents a token chain
rooted at a ``--root``. It serves two built-in resources:

* ``echo`` — a request gets the same message back;
* ``log``  — messages are appended to the log (stderr, and ``--log-file`` as
  JSON lines when given).

When ready it prints exactly one line, ``listening on HOST:PORT``, to stdout.
Connections and refusals are logged to stderr with the peer's short agent ID.
``--revocations FILE`` is re-read whenever it changes; live sessions are then
re-checked and streams no longer covered are reset.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from ..cbor import to_json
from ..errors import ErrorCode, LocalProtocolError, M2MError
from ..identity import AgentId, Identity
from ..tokens import FileRevocationStore
from .token import read_token

__all__ = ["parse_hostport", "register"]

logger = logging.getLogger("m2mproto.cli")

#: Seconds between checks of the revocation file.
REVOCATION_POLL = 0.5


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise LocalProtocolError(f"expected HOST:PORT, got {text!r}", ErrorCode.INVALID_ARGUMENT)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LocalProtocolError(
            f"message is not valid JSON: {exc.msg} at column {exc.colno}",
            ErrorCode.INVALID_ARGUMENT,
        ) from None


def _backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="async backend"
    )


def _reliable_args(p: argparse.ArgumentParser, helptext: str) -> None:
    p.add_argument("--reliable", action="store_true", help=helptext)
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="with --reliable: keep the outbox / delivery marks in SQLite here (survives restarts)",
    )


def _state_path(args: argparse.Namespace, name: str) -> Path | None:
    if not getattr(args, "state_dir", None):
        return None
    if not args.reliable:
        raise LocalProtocolError("--state-dir needs --reliable", ErrorCode.INVALID_ARGUMENT)
    directory = Path(args.state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the reference peer (echo and log resources)")
    p.add_argument("--key", required=True, metavar="FILE", help="the server's private key file")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="port 0 picks a free one")
    p.add_argument(
        "--root", action="append", required=True, metavar="AGENT_ID", help="a trust root"
    )
    p.add_argument("--revocations", metavar="FILE", help="revocation file (re-read on change)")
    p.add_argument("--log-file", metavar="FILE", help="append 'log' messages here as JSON lines")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    _reliable_args(p, "serve 'log' with reliable delivery (spec/reliability.md)")
    _backend_arg(p)
    p.set_defaults(handler=cmd_serve)

    for name, helptext in (
        ("send", "send a one-way message to a peer"),
        ("request", "send a request to a peer and print the reply"),
    ):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--key", required=True, metavar="FILE", help="your private key file")
        q.add_argument("--token", action="append", metavar="FILE", help="token to present")
        q.add_argument("--connect", required=True, metavar="HOST:PORT", help="the peer's address")
        q.add_argument("--peer", metavar="AGENT_ID", help="require the peer to be this agent")
        q.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
        q.add_argument("--json", action="store_true", help="print JSON (the default output)")
        q.add_argument(
            "-v", "--verbose", action="store_true",
            help="print the peer and the negotiated handshake suite to stderr",
        )  # fmt: skip
        q.add_argument("resource", metavar="RESOURCE")
        q.add_argument("message", metavar="JSON")
        if name == "send":
            _reliable_args(q, "deliver exactly once: resend across reconnects until acknowledged")
        _backend_arg(q)
        q.set_defaults(handler=cmd_client, client_kind=name)


# ---------------------------------------------------------------------------- serve


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("m2mproto")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


class _ReliableContext:
    """The part of a handler context ``log`` uses, for reliable deliveries."""

    def __init__(self, peer_text: str) -> None:
        from types import SimpleNamespace

        agent = AgentId.parse(peer_text)
        self.peer = SimpleNamespace(agent_id=agent, short_id=agent.short)


class ReferencePeer:
    """The state of one ``m2m serve`` process."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ..transport import Server

        self.identity = Identity.load(args.key)
        self.roots = [AgentId.parse(r) for r in args.root]
        self.host, self.port = parse_hostport(args.listen)
        self.revocations = FileRevocationStore(args.revocations) if args.revocations else None
        self.log_file = Path(args.log_file) if args.log_file else None
        self.server = Server(self.identity, trust_roots=self.roots, revocations=self.revocations)
        self.server.request("echo")(self.echo)
        self.dedup = None
        if getattr(args, "reliable", False):
            from ..reliable import MemoryDedup, ReliableReceiver, SqliteDedup

            path = _state_path(args, "dedup.sqlite3")
            self.dedup = SqliteDedup(path) if path is not None else MemoryDedup()
            ReliableReceiver(self.log_reliable, self.dedup).install(self.server, "log")
        else:
            _state_path(args, "dedup.sqlite3")  # refuses --state-dir without --reliable
            self.server.message("log")(self.log)

    async def echo(self, message: Any, ctx: Any) -> Any:
        logger.info("echo request from %s (%s)", ctx.peer.short_id, ctx.session.suite)
        return message

    async def log(self, message: Any, ctx: Any) -> None:
        suite = getattr(getattr(ctx, "session", None), "suite", None)  # None: reliable delivery
        logger.info("log from %s%s: %s", ctx.peer.short_id, f" ({suite})" if suite else "",
                    json.dumps(to_json(message)))  # fmt: skip
        if self.log_file is not None:
            line = json.dumps({"peer": ctx.peer.agent_id.text, "message": to_json(message)})
            with self.log_file.open("a") as fh:
                fh.write(line + "\n")

    async def log_reliable(self, message: Any, delivery: Any) -> None:
        await self.log(message, _ReliableContext(delivery.peer))

    async def watch_revocations(self) -> None:
        assert self.revocations is not None
        while True:
            await anyio.sleep(REVOCATION_POLL)
            try:
                changed = self.revocations.reload_if_changed()
            except M2MError as exc:
                logger.warning("revocation file not reloaded: %s", exc)
                continue
            if changed:
                logger.info("revocations reloaded (%d entries)", len(self.revocations))
                for session in list(self.server.sessions):
                    session.reauthorize()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            host, port = await tg.start(self.server.serve_tcp, self.host, self.port)
            shown = f"[{host}]" if ":" in host else host
            print(f"listening on {shown}:{port}", flush=True)
            logger.info("serving as %s, trusting %s", self.identity.agent_id.short,
                        ", ".join(r.short for r in self.roots))  # fmt: skip
            if self.revocations is not None:
                tg.start_soon(self.watch_revocations)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logger.info("%s: closing sessions", signal.Signals(signum).name)
                    break
            with anyio.move_on_after(10):
                await self.server.aclose_sessions()
            tg.cancel_scope.cancel()


def cmd_serve(args: argparse.Namespace) -> int:
    _setup_logging(args.quiet)
    peer = ReferencePeer(args)
    anyio.run(peer.run, backend=args.backend)
    return 0


# ---------------------------------------------------------------------------- clients


async def _reliable_send(args: argparse.Namespace, value: Any) -> int:
    """Queue *value* in the outbox (durable with ``--state-dir``) and wait for the ack.

    Messages left in a durable outbox by an earlier run are delivered first.
    """
    from ..reliable import MemoryOutbox, ReliableSender, SqliteOutbox

    path = _state_path(args, "outbox.sqlite3")
    outbox = SqliteOutbox(path, channel=args.resource) if path is not None else MemoryOutbox()
    try:
        async with ReliableSender(
            parse_hostport(args.connect),
            identity=Identity.load(args.key),
            tokens=[read_token(t) for t in args.token or ()],
            peer=AgentId.parse(args.peer) if args.peer else None,
            resource=args.resource,
            outbox=outbox,
        ) as sender:
            seq = sender.queue(value)
            with anyio.fail_after(args.timeout):
                await sender.flush()
            return seq
    finally:
        outbox.close()


async def _client(args: argparse.Namespace, value: Any) -> Any:
    from ..transport import connect

    if getattr(args, "reliable", False):
        return await _reliable_send(args, value)
    _state_path(args, "outbox.sqlite3")  # refuses --state-dir without --reliable
    identity = Identity.load(args.key)
    tokens = [read_token(t) for t in args.token or ()]
    host, port = parse_hostport(args.connect)
    expected = AgentId.parse(args.peer) if args.peer else None
    with anyio.fail_after(args.timeout):
        async with connect(
            (host, port),
            identity=identity,
            tokens=tokens,
            peer=expected,
            connect_timeout=args.timeout,
        ) as session:
            if getattr(args, "verbose", False):
                print(f"connected to {session.peer.agent_id.text} ({session.suite})",
                      file=sys.stderr, flush=True)  # fmt: skip
            if args.client_kind == "request":
                return await session.request(args.resource, value, timeout=args.timeout)
            await session.send(args.resource, value, confirm=True)
            return None


def cmd_client(args: argparse.Namespace) -> int:
    value = _parse_json(args.message)
    started = time.monotonic()
    try:
        reply = anyio.run(_client, args, value, backend=args.backend)
    except TimeoutError:
        raise M2MError(
            f"no answer from {args.connect} within {args.timeout} s", ErrorCode.TIMEOUT
        ) from None
    elapsed = time.monotonic() - started
    if args.client_kind == "request":
        print(json.dumps(to_json(reply)))
    elif getattr(args, "reliable", False):
        print(json.dumps({"sent": True, "resource": args.resource, "seq": reply,
                          "delivered": True, "seconds": round(elapsed, 3)}))  # fmt: skip
    else:
        print(json.dumps({"sent": True, "resource": args.resource, "seconds": round(elapsed, 3)}))
    return 0
