"""In-process attachment: the IUT is the sans-IO ``Connection`` of this package.

Theory of operation
-------------------
:class:`InProcessLink` owns one :class:`~m2mproto.connection.Connection` and a
tiny reference application (the conformance profile of ``m2m serve``):

* ``echo`` (and ``echo/...``): every message is sent back on the same stream,
  every STREAM byte is sent back XOR 0xFF (BoGo's trick: proves the IUT
  decrypted and re-encrypted rather than reflected), the end of the peer's
  half ends ours;
* ``log`` (and ``log/...``, ``data``): messages and bytes are consumed silently;
* ``fail``: the handler fails: RESET(APPLICATION_ERROR);
* anything else: RESET(REFUSED).

Bytes written by the runner are fed with ``receive_data`` and the connection
is pumped until it needs more data; everything it outputs is buffered for
``read``. Time is a fake monotonic clock advanced only by ``advance``; the
Unix time it maps to is ``mint.NOW`` at the start. Nothing here blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from m2mproto.config import Configuration
from m2mproto.connection import NEED_DATA, Connection, ConnectionState, Role
from m2mproto.errors import AuthenticationError, ErrorCode, LocalProtocolError
from m2mproto.events import (
    ConnectionClosed,
    DataReceived,
    Event,
    MessageReceived,
    StreamEnded,
    StreamOpened,
    StreamReset,
    TokenRejected,
)
from m2mproto.identity import AgentId, Identity
from m2mproto.noise import x25519_public_key
from m2mproto.tokens import InMemoryRevocationStore, TokenAuthorizer

from . import mint
from .peer import LocalView

__all__ = ["START", "IUTProfile", "InProcessLink"]

#: The fake monotonic clock's start.
START = 1000.0


@dataclass(frozen=True)
class IUTProfile:
    """How the in-process IUT is configured for one case (the shim's flags, in-process)."""

    #: True if the IUT dials (the hostile peer is the responder).
    initiator: bool = False
    #: Configuration overrides (``Configuration`` field -> value).
    config: dict[str, Any] = field(default_factory=dict)
    #: Agents the IUT trusts (None: the runner's identities, see ``trusted``).
    trust: frozenset[AgentId] | None = None
    #: Initiator only: the peer the IUT expects (AUTH_UNEXPECTED_PEER otherwise).
    expect_peer: AgentId | None = None
    #: Token IDs revoked by the IUT's local policy.
    revoked: tuple[bytes, ...] = ()
    #: Tokens the IUT presents (initiator: in message 3; responder: TOKEN frames).
    tokens: tuple[bytes, ...] = ()
    #: Authorize with tokens (False: authorizer=None, everything allowed).
    authorize: bool = True


def trusted() -> frozenset[AgentId]:
    """The runner's identities: the holder, the other agent and the chain links."""
    ids = {mint.HOLDER.agent_id, mint.OTHER.agent_id, mint.ROOT.agent_id}
    ids |= {mint.identity(f"link{i}").agent_id for i in range(1, 9)}
    return frozenset(ids)


#: The IUT's Noise static private key in-process (fixed, so reflection can be tested).
IUT_STATIC = mint.seed("iut noise static")
IUT_STATIC_PUBLIC = x25519_public_key(IUT_STATIC)


class InProcessLink:
    """One IUT connection driven in memory (implements :class:`peer.Link`)."""

    def __init__(
        self,
        profile: IUTProfile,
        identity: Identity | None = None,
        *,
        static_key: bytes = IUT_STATIC,
        trust_roots: Sequence[AgentId] | None = None,
        revocations: Sequence[bytes] | None = None,
        unix_now: float = mint.NOW,
    ) -> None:
        identity = identity or mint.VERIFIER
        self.profile = profile
        self.now = START
        trust = profile.trust if profile.trust is not None else trusted()
        cfg = replace(
            Configuration(
                entropy=mint.entropy("iut"),
                clock_offset=unix_now - START,
                static_key=static_key,
            ),
            **profile.config,
        )
        self.authorizer: TokenAuthorizer | None = None
        if profile.authorize:
            store = InMemoryRevocationStore(
                [mint.revocation_statement()] if revocations is None else revocations
            )
            for cti in profile.revoked:
                store.revoke_locally(cti)
            self.authorizer = TokenAuthorizer(
                trust_roots=[mint.ROOT.agent_id] if trust_roots is None else trust_roots,
                audience=identity.agent_id,
                revocations=store,
            )

        def authenticate(peer: AgentId) -> None:
            if profile.expect_peer is not None and peer != profile.expect_peer:
                raise AuthenticationError("not the expected peer", ErrorCode.AUTH_UNEXPECTED_PEER)
            if peer not in trust:
                raise AuthenticationError("peer not trusted", ErrorCode.AUTH_UNTRUSTED)

        self.conn = Connection(
            Role.INITIATOR if profile.initiator else Role.RESPONDER,
            identity,
            cfg,
            authorizer=self.authorizer,
            tokens=profile.tokens,
            authenticate_peer=authenticate,
        )
        self.conn.start(self.now)
        self._out = bytearray(self.conn.data_to_send())
        self.events: list[Event] = []
        self.closed_code: int | None = None
        self._ended_local: set[int] = set()
        self._resources: dict[int, str] = {}
        self.app_errors: list[str] = []

    # ------------------------------------------------------------------ Link

    def write(self, data: bytes) -> None:
        if self.conn.state is ConnectionState.CLOSED:
            return  # the transport is gone; bytes fall on the floor
        self.conn.receive_data(data, self.now)
        self._pump()

    def read(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def write_eof(self) -> None:
        if self.conn.state is ConnectionState.CLOSED:
            return
        self.conn.receive_data(b"", self.now)
        self._pump()

    @property
    def iut_closed(self) -> bool:
        return self.conn.state is ConnectionState.CLOSED

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        for _ in range(10_000):  # bounded: each round fires one deadline
            deadline = self.conn.get_timer()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self.conn.handle_timer(self.now)
            self._pump()
        self.now = target
        self._pump()

    def local(self) -> LocalView:
        resets = tuple(
            (e.stream_id, e.code, e.remote) for e in self.events if isinstance(e, StreamReset)
        )
        return LocalView(
            closed_code=self.closed_code,
            resets=resets,
            events=tuple(type(e).__name__ for e in self.events),
            peer=self.conn.peer.text if self.conn.peer is not None else None,
            token_rejected=tuple(e.code for e in self.events if isinstance(e, TokenRejected)),
        )

    # ------------------------------------------------------------------ engine

    def _pump(self) -> None:
        for _ in range(100_000):  # bounded: each round consumes input or ends
            if self.conn.state is ConnectionState.CLOSED and self.closed_code is not None:
                break
            try:
                ev = self.conn.next_event()
            except LocalProtocolError:
                break
            if ev is NEED_DATA:
                break
            self.events.append(ev)
            self._app(ev)
        self._out += self.conn.data_to_send()

    def _app(self, ev: Event) -> None:
        c = self.conn
        try:
            if isinstance(ev, ConnectionClosed):
                self.closed_code = ev.code
            elif isinstance(ev, StreamOpened):
                self._resources[ev.stream_id] = ev.resource
                kind = _kind(ev.resource)
                if kind == "fail":
                    c.reset_stream(ev.stream_id, ErrorCode.APPLICATION_ERROR)
                elif kind is None:
                    c.refuse_stream(ev.stream_id, ErrorCode.REFUSED)
            elif isinstance(ev, MessageReceived):
                if _kind(self._resources.get(ev.stream_id, "")) == "echo":
                    c.send_message(ev.stream_id, ev.value)
            elif isinstance(ev, DataReceived):
                if _kind(self._resources.get(ev.stream_id, "")) == "echo":
                    c.send(ev.stream_id, bytes(b ^ 0xFF for b in ev.data))
            elif (
                isinstance(ev, StreamEnded)
                and ev.stream_id in c.streams
                and ev.stream_id not in self._ended_local
            ):
                self._ended_local.add(ev.stream_id)
                c.send(ev.stream_id, b"", end_stream=True)
        except LocalProtocolError as exc:  # e.g. the stream is already gone
            self.app_errors.append(f"{type(ev).__name__}: {exc}")


def _kind(resource: str) -> str | None:
    head = resource.split("/", 1)[0]
    if head == "echo":
        return "echo"
    if head in ("log", "data"):
        return "log"
    if head == "fail":
        return "fail"
    return None


def make_link(profile: IUTProfile) -> InProcessLink:
    """Factory used by the runner."""
    return InProcessLink(profile)


def iut_identity() -> Identity:
    return mint.VERIFIER


def iut_tokens(caps: Sequence[tuple[str, str]] = (("*", "*"),)) -> tuple[bytes, ...]:
    """A token for the IUT (as initiator) under the runner's root."""
    claims = mint.claims_for(mint.ROOT, mint.VERIFIER, caps, cti=b"iut-token-000001")
    return (mint.craft_token(mint.ROOT, claims),)
