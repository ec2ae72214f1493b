"""``m2m serve``, ``m2m send``, ``m2m request``: the reference peer and its client.

``serve`` accepts any agent that authenticates and presents a token chain
rooted at a ``--root``. It serves two built-in resources:

* ``echo`` — every message comes back as sent (a request gets its reply),
  stream bytes come back XOR 0xff (spec/interop.md §3);
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
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from ..cbor import to_json
from ..errors import ErrorCode, LocalProtocolError, M2MError
from ..identity import AgentId, Identity
from ._common import add_logging_args, command, log_level, setup_logging
from .token import open_revocations, read_token

__all__ = ["parse_hostport", "register", "require_backend"]

logger = logging.getLogger("m2mproto.cli")

#: Seconds between checks of the revocation file.
REVOCATION_POLL = 0.5

#: ``bytes.translate`` table: every byte XOR 0xff (the ``echo`` of stream bytes).
_XOR_FF = bytes(range(255, -1, -1))


def parse_hostport(text: str) -> tuple[str, int]:
    """:func:`m2mproto.transport.parse_hostport`, imported only when used (fast start-up)."""
    from ..transport import parse_hostport as parse

    return parse(text)


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LocalProtocolError(
            f"message is not valid JSON: {exc.msg} at column {exc.colno}",
            ErrorCode.INVALID_ARGUMENT,
        ) from None


def require_backend(backend: str) -> None:
    """Fail with one line if the optional async *backend* (trio) is not installed.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) ``--backend trio`` without trio.
    """
    if backend != "trio":
        return
    try:
        import trio  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "trio":
            raise
        raise LocalProtocolError(
            "--backend trio: trio is not installed: pip install 'm2mproto[trio]'",
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
    from ..reliable import ensure_state_dir

    return ensure_state_dir(args.state_dir) / name  # 0700; state files are 0600


def _nats_args(p: argparse.ArgumentParser, *, serve: bool) -> None:
    g = p.add_argument_group("NATS (spec/transports.md)")
    g.add_argument("--nats", metavar="URL", help="carry sessions over NATS at URL (nats://...)")
    g.add_argument(
        "--service",
        metavar="NAME",
        help="serve (or reach) this service name; replicas of a name share the load",
    )
    g.add_argument("--nats-creds", metavar="FILE", help="NATS credentials file")
    g.add_argument("--nats-prefix", default="m2m", metavar="TOKEN", help="subject prefix")
    g.add_argument("--nats-ca", metavar="FILE", help="CA file: connect to NATS over TLS")
    if serve:
        g.add_argument(
            "--feed-max-silence",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="warn when the revocation feed is unreachable this long (default 10)",
        )
        g.add_argument(
            "--refuse-when-stale",
            action="store_true",
            help="refuse new sessions while the revocation feed is unreachable",
        )


def _nats_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.nats_creds:
        options["user_credentials"] = args.nats_creds
    if args.nats_ca:
        import ssl

        options["tls"] = ssl.create_default_context(cafile=args.nats_ca)
    return options


def _check_target(args: argparse.Namespace, flag: str) -> None:
    """Exactly one of *flag* (``--listen`` / ``--connect``) and ``--nats``."""
    if bool(getattr(args, flag.strip("-"))) == bool(args.nats):
        raise LocalProtocolError(f"give {flag} or --nats (one of them)", ErrorCode.INVALID_ARGUMENT)
    if args.nats and not flag == "--listen" and not args.peer:
        raise LocalProtocolError("--nats needs --peer AGENT_ID", ErrorCode.INVALID_ARGUMENT)
    if args.service and not args.nats:
        raise LocalProtocolError("--service needs --nats", ErrorCode.INVALID_ARGUMENT)


def register(sub: Any) -> None:
    p = command(
        sub,
        "serve",
        "run the reference peer (echo and log resources)",
        "Run the reference peer: it accepts any agent that authenticates and presents a\n"
        "token chain rooted at a --root, and serves 'echo' (a request gets its message\n"
        "back) and 'log' (messages are logged). Prints one line 'listening on HOST:PORT'\n"
        "when ready; logs connections and refusals to stderr with the peer's ID and address.",
        "m2m serve --key server.key --listen 127.0.0.1:7000 --root ROOT_ID",
        "m2m serve --key server.key --listen 127.0.0.1:0 --root ROOT_ID "
        "--revocations revocations.bin -vv",
    )
    p.add_argument("--key", required=True, metavar="FILE", help="the server's private key file")
    p.add_argument("--listen", metavar="HOST:PORT", help="port 0 picks a free one")
    p.add_argument(
        "--root", action="append", required=True, metavar="AGENT_ID", help="a trust root"
    )
    p.add_argument("--revocations", metavar="FILE", help="revocation file (re-read on change)")
    p.add_argument("--log-file", metavar="FILE", help="append 'log' messages here as JSON lines")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    _nats_args(p, serve=True)
    add_logging_args(p, default="info")
    _reliable_args(p, "serve 'log' with reliable delivery (spec/reliability.md)")
    _backend_arg(p)
    p.set_defaults(handler=cmd_serve)

    for name, helptext, description, example in (
        (
            "send",
            "send a one-way message to a peer",
            "Connect to a peer, authenticate as --key, present --token, send one JSON\n"
            "message to RESOURCE and wait until the peer's handler has run. Prints\n"
            '{"sent": true, ...} on success.',
            "m2m send --key alice.key --token a.tok --connect 127.0.0.1:7000 "
            "--peer SERVER_ID log '{\"event\": 1}'",
        ),
        (
            "request",
            "send a request to a peer and print the reply",
            "Connect to a peer, authenticate as --key, present --token, send one JSON\n"
            "message to RESOURCE and print the reply as JSON.",
            "m2m request --key alice.key --token a.tok --connect 127.0.0.1:7000 "
            '--peer SERVER_ID echo \'{"hello": "world"}\'',
        ),
    ):
        q = command(sub, name, helptext, description, example)
        q.add_argument("--key", required=True, metavar="FILE", help="your private key file")
        q.add_argument("--token", action="append", metavar="FILE", help="token to present")
        q.add_argument("--connect", metavar="HOST:PORT", help="the peer's address (or --nats)")
        q.add_argument(
            "--peer",
            metavar="AGENT_ID",
            help="the server's agent ID (required unless --insecure-any-peer)",
        )
        q.add_argument(
            "--insecure-any-peer",
            action="store_true",
            help="accept any server that authenticates (it is NOT checked to be who you expect)",
        )
        q.add_argument(
            "--ik",
            action="store_true",
            help="remember the server's static key in a file (default "
            "$XDG_STATE_HOME/m2mproto/peer-keys.json) and reconnect with the IK "
            "handshake; a stale key falls back once to XX (needs --peer)",
        )
        q.add_argument(
            "--ik-cache", metavar="FILE", help="with --ik: keep the remembered keys in FILE (0600)"
        )
        q.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
        q.add_argument("resource", metavar="RESOURCE", help="the resource to call, e.g. echo")
        q.add_argument("message", metavar="JSON", help="the message, as JSON (e.g. '{\"n\": 1}')")
        add_logging_args(q)
        _nats_args(q, serve=False)
        if name == "send":
            _reliable_args(q, "deliver exactly once: resend across reconnects until acknowledged")
        _backend_arg(q)
        q.set_defaults(handler=cmd_client, client_kind=name)


# ---------------------------------------------------------------------------- serve


def _setup_logging(args: argparse.Namespace) -> None:
    setup_logging(logging.WARNING if getattr(args, "quiet", False) else log_level(args))


def _who(ctx: Any) -> str:
    """``short-id@address`` of a handler's caller, for log lines."""
    session = getattr(ctx, "session", None)
    address = getattr(session, "remote_address", "") if session is not None else ""
    return f"{ctx.peer.short_id}@{address}" if address else str(ctx.peer.short_id)


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
        _check_target(args, "--listen")
        self.args = args
        self.host, self.port = parse_hostport(args.listen) if args.listen else ("", 0)
        self.revocations = open_revocations(args.revocations) if args.revocations else None
        self.log_file = Path(args.log_file) if args.log_file else None
        store: Any = self.revocations
        if args.nats:  # statements pushed over NATS, kept beside the file's (never written to it)
            from ..transport.nats import FeedRevocationStore

            store = FeedRevocationStore(self.revocations)
        self.server = Server(self.identity, trust_roots=self.roots, revocations=store)
        self.server.stream("echo")(self.echo)
        self.dedup = None
        if getattr(args, "reliable", False):
            from ..reliable import MemoryDedup, ReliableReceiver, SqliteDedup

            path = _state_path(args, "dedup.sqlite3")
            self.dedup = SqliteDedup(path) if path is not None else MemoryDedup()
            ReliableReceiver(self.log_reliable, self.dedup).install(self.server, "log")
        else:
            _state_path(args, "dedup.sqlite3")  # refuses --state-dir without --reliable
            self.server.message("log")(self.log)

    async def echo(self, stream: Any, ctx: Any) -> None:
        """``echo`` (spec/interop.md §3): each message back on the stream, each
        byte back XOR 0xff; our end follows the peer's (the router ends it)."""
        kind = await stream.next_kind()
        logger.info("echo %s from %s on %r (%s)", kind or "(empty)", _who(ctx), ctx.resource,
                    ctx.session.suite)  # fmt: skip
        try:
            if kind == "message":
                messages = stream.as_message_stream()
                async for value in messages:
                    await messages.send(value)
            elif kind == "bytes":
                async for chunk in stream:
                    await stream.send(chunk.translate(_XOR_FF))
        except LocalProtocolError as exc:
            if exc.code != ErrorCode.PROTOCOL_ERROR:
                raise
            # the peer mixed messages and bytes: the stream is already reset
            logger.info("echo from %s on %r reset: %s", _who(ctx), ctx.resource, exc)

    async def log(self, message: Any, ctx: Any) -> None:
        suite = getattr(getattr(ctx, "session", None), "suite", None)  # None: reliable delivery
        logger.info("log from %s on %r%s: %s", _who(ctx), getattr(ctx, "resource", "log"),
                    f" ({suite})" if suite else "",
                    json.dumps(to_json(message)))  # fmt: skip
        if self.log_file is not None:
            line = json.dumps({"peer": ctx.peer.agent_id.text, "message": to_json(message)})
            with self.log_file.open("a") as fh:
                fh.write(line + "\n")

    async def log_reliable(self, message: Any, delivery: Any) -> None:
        await self.log(message, _ReliableContext(delivery.peer))

    async def watch_revocations(self) -> None:
        """Poll the revocation file; read and verify changes in a worker thread.

        Entries are only ever added (a file being rewritten never un-revokes),
        and only what changed is parsed, off the event loop.
        """
        store = self.revocations
        assert store is not None
        while True:
            await anyio.sleep(REVOCATION_POLL)
            try:
                update = await anyio.to_thread.run_sync(store.read_changes)
                if update is None:
                    continue
                store.apply(update)
            except M2MError as exc:
                logger.warning("revocation file: %s (keeping %d entries)", exc, len(store))
                continue
            if update.stamp is None or update.pending:
                logger.warning(
                    "revocation file %s: %s; keeping %d entries",
                    store.path,
                    "missing" if update.stamp is None else "a statement is being written",
                    len(store),
                )
            if update.statements:  # something new was recorded
                logger.info("revocations reloaded (%d entries)", len(store))
                for session in list(self.server.sessions):
                    session.reauthorize()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            if self.args.nats:
                from ..transport.nats import serve_nats

                listener = await tg.start(partial(
                    serve_nats, self.server, self.args.nats, service=self.args.service,
                    prefix=self.args.nats_prefix,
                    revocation_feed=True, max_feed_silence=self.args.feed_max_silence,
                    refuse_when_stale=self.args.refuse_when_stale,
                    nats_options=_nats_options(self.args)))  # fmt: skip
                print(f"listening on nats {' '.join(listener.subjects)}", flush=True)
            else:
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
    require_backend(args.backend)
    _setup_logging(args)
    peer = ReferencePeer(args)
    anyio.run(peer.run, backend=args.backend)
    return 0


# ---------------------------------------------------------------------------- clients


def _expected(args: argparse.Namespace) -> Any:
    """The server's agent ID from ``--peer``, or ``ANY_PEER`` with ``--insecure-any-peer``.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) neither, or both, were given.
    """
    from ..transport import ANY_PEER

    if args.peer and args.insecure_any_peer:
        raise LocalProtocolError(
            "--peer and --insecure-any-peer exclude each other", ErrorCode.INVALID_ARGUMENT
        )
    if args.peer:
        return AgentId.parse(args.peer)
    if args.insecure_any_peer:
        return ANY_PEER
    raise LocalProtocolError(
        "--peer AGENT_ID is required (the server's agent ID), or --insecure-any-peer",
        ErrorCode.INVALID_ARGUMENT,
    )


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
            peer=_expected(args),
            resource=args.resource,
            outbox=outbox,
        ) as sender:
            seq = sender.queue(value)
            with anyio.fail_after(args.timeout):
                await sender.flush()
            return seq
    finally:
        outbox.close()


def _ik_memory(args: argparse.Namespace) -> Any:
    """The persistent key memory for ``--ik`` (``--ik-cache`` or the default file), or False.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) ``--ik-cache`` without ``--ik``, or
            ``--ik`` without ``--peer``; (``KEY_FILE_*``) the file is unusable.
    """
    from ..transport import PeerStaticKeys

    if not getattr(args, "ik", False):
        if getattr(args, "ik_cache", None):
            raise LocalProtocolError("--ik-cache needs --ik", ErrorCode.INVALID_ARGUMENT)
        return False
    if not args.peer:
        raise LocalProtocolError(
            "--ik needs --peer (IK is only used towards a named server)",
            ErrorCode.INVALID_ARGUMENT,
        )
    if args.ik_cache:
        return PeerStaticKeys(args.ik_cache)
    from .._files import ensure_private_dir

    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return PeerStaticKeys(ensure_private_dir(Path(base) / "m2mproto") / "peer-keys.json")


async def _client(args: argparse.Namespace, value: Any) -> Any:
    from ..transport import connect

    if getattr(args, "reliable", False):
        if args.nats:
            message = "--reliable over --nats is not supported"
            raise LocalProtocolError(message, ErrorCode.UNSUPPORTED)
        if args.ik or args.ik_cache:
            message = "--ik is not supported with --reliable"
            raise LocalProtocolError(message, ErrorCode.UNSUPPORTED)
        return await _reliable_send(args, value)
    _state_path(args, "outbox.sqlite3")  # refuses --state-dir without --reliable
    identity = Identity.load(args.key)
    tokens = [read_token(t) for t in args.token or ()]
    _check_target(args, "--connect")
    expected = _expected(args)
    if args.nats:
        if args.ik or args.ik_cache:
            message = "--ik is not supported with --nats"
            raise LocalProtocolError(message, ErrorCode.UNSUPPORTED)
        return await _nats_client(args, value, identity, tokens)
    host, port = parse_hostport(args.connect)
    memory = _ik_memory(args)
    with anyio.fail_after(args.timeout):
        async with connect(
            (host, port),
            identity=identity,
            tokens=tokens,
            peer=expected,
            connect_timeout=args.timeout,
            ik=memory,
        ) as session:
            if getattr(args, "verbose", False):
                print(f"connected to {session.peer.agent_id.text} ({session.suite})",
                      file=sys.stderr, flush=True)  # fmt: skip
            if args.client_kind == "request":
                return await session.request(args.resource, value, timeout=args.timeout)
            await session.send(args.resource, value, confirm=True)
            return None


async def _nats_client(
    args: argparse.Namespace, value: Any, identity: Identity, tokens: list[bytes]
) -> Any:
    from ..transport.nats import connect_nats

    with anyio.fail_after(args.timeout):
        async with connect_nats(
            args.nats, identity=identity, peer=args.peer, service=args.service,
            tokens=tokens, open_timeout=args.timeout, nats_options=_nats_options(args),
            prefix=args.nats_prefix,
        ) as session:  # fmt: skip
            if args.client_kind == "request":
                return await session.request(args.resource, value, timeout=args.timeout)
            await session.send(args.resource, value, confirm=True)
            return None


def cmd_client(args: argparse.Namespace) -> int:
    require_backend(args.backend)
    if args.verbose or args.log_level:
        _setup_logging(args)
    value = _parse_json(args.message)
    if not getattr(args, "reliable", False):
        _state_path(args, "outbox.sqlite3")  # refuses --state-dir without --reliable
    _expected(args)  # before any connection (connect() warns about --insecure-any-peer)
    started = time.monotonic()
    try:
        reply = anyio.run(_client, args, value, backend=args.backend)
    except TimeoutError:
        raise M2MError(
            f"no answer from {args.connect or args.nats} within {args.timeout} s",
            ErrorCode.TIMEOUT,
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
