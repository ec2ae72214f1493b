"""Case model of the conformance suite: expectations, observations, the registry.

Theory of operation
-------------------
A case is a small script (a function of :class:`Ctx`) that drives a hostile
peer against the IUT and returns what it *observed* as an :class:`Actual`:
the kind of outcome (``ok``, ``conn_error``, ``stream_error``, ``abort``) and
the codes seen on the wire and, where the attachment shows it, locally. The
runner compares it with the case's :class:`Expect`; cases never decide their
own verdict, so a case cannot pass by accident of its own logic.

Outcome kinds (spec/interop.md §2):

* ``ok``: the conversation completed and the positive checks held;
* ``conn_error``: the IUT sent CLOSE(code) (or a cleartext ABORT(code) before
  it had transport keys) and closed;
* ``stream_error``: the IUT sent RESET(code) on the stream and stayed usable
  (checked by a PING and an echo on another stream);
* ``abort``: the IUT closed without a CLOSE or ABORT (e.g. the peer vanished).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from m2mproto.errors import ErrorCode, code_name
from m2mproto.frames import CloseFrame, ResetFrame, TokenFrame

from . import mint
from .inprocess import IUT_STATIC_PUBLIC, IUTProfile
from .peer import Bugs, HostilePeer, Link, PeerError, Received, Session

__all__ = [
    "CASES",
    "Actual",
    "Case",
    "CaseError",
    "Ctx",
    "Expect",
    "case",
    "select",
]


@dataclass(frozen=True, slots=True)
class Expect:
    """What the IUT must do."""

    #: ``ok``, ``conn_error``, ``stream_error`` or ``abort``.
    kind: str
    #: Code name expected on the wire (CLOSE, ABORT or RESET); None: none.
    wire: str | None = None
    #: Code name the IUT must report locally (None: not checked / same as wire).
    local: str | None = None

    def describe(self) -> str:
        if self.kind == "ok":
            return "ok"
        out = f"{self.kind}({self.wire or '-'})"
        if self.local and self.local != self.wire:
            out += f" local {self.local}"
        return out

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "wire": self.wire, "local": self.local}


def ok() -> Expect:
    return Expect("ok")


def conn(wire: str, local: str | None = None) -> Expect:
    return Expect("conn_error", wire, local or wire)


def stream(wire: str, local: str | None = None, *, app: bool = False) -> Expect:
    """A stream error; ``app``: the application reset it (no local error event)."""
    return Expect("stream_error", wire, None if app else local or wire)


def gone(local: str) -> Expect:
    return Expect("abort", None, local)


@dataclass(slots=True)
class Actual:
    """What the runner observed."""

    kind: str
    wire: str | None = None
    local: str | None = None
    detail: str = ""
    #: Further codes the case observed and checked (e.g. a stream reset with CANCELLED).
    also: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "ok":
            return "ok"
        out = f"{self.kind}({self.wire or '-'})"
        if self.local is not None:
            out += f" local {self.local}"
        if self.detail:
            out += f" [{self.detail}]"
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "wire": self.wire,
            "local": self.local,
            "detail": self.detail,
            "also": list(self.also),
        }


class CaseError(Exception):
    """The runner itself could not carry out the case (reported as ERROR)."""


@dataclass(frozen=True)
class Case:
    """One conformance case."""

    id: str
    name: str
    requirement: str
    expect: Expect
    run: Callable[[Ctx], Actual]
    profile: IUTProfile = field(default_factory=IUTProfile)
    hostile: bool = True
    #: What the attachment must offer beyond bytes: ``iut-keys`` (the IUT's identity and
    #: static key are the runner's), ``trust-list`` (the IUT's trust decision is the runner's
    #: list), ``iut-identity`` (tokens name the IUT as audience), ``revocations``,
    #: ``frozen-clock`` (the IUT's clock stands still unless advanced), ``app-profile``
    #: (the IUT serves all of spec/interop.md §3, not just ``echo`` and ``log``).
    needs: frozenset[str] = frozenset()

    @property
    def section(self) -> str:
        return self.id.split("/", 1)[0]

    @property
    def chapter(self) -> str:
        return self.id.split(".", 1)[0]


CASES: list[Case] = []


def case(
    id: str,
    name: str,
    requirement: str,
    expect: Expect,
    *,
    profile: IUTProfile | None = None,
    hostile: bool | None = None,
    needs: frozenset[str] | set[str] = frozenset(),
) -> Callable[[Callable[[Ctx], Actual]], Callable[[Ctx], Actual]]:
    """Register a case (decorator). Positive (``ok``) cases are not hostile by default."""

    def wrap(fn: Callable[[Ctx], Actual]) -> Callable[[Ctx], Actual]:
        if any(c.id == id for c in CASES):
            raise ValueError(f"duplicate case id {id}")
        CASES.append(
            Case(
                id,
                name,
                requirement,
                expect,
                fn,
                profile or IUTProfile(),
                expect.kind != "ok" if hostile is None else hostile,
                frozenset(needs),
            )
        )
        return fn

    return wrap


def select(cases: list[Case], patterns: list[str]) -> list[Case]:
    """Cases whose ID or name matches any pattern (glob, ID prefix, or name substring)."""
    if not patterns:
        return list(cases)
    out = []
    for c in cases:
        for p in patterns:
            if (
                fnmatch.fnmatchcase(c.id, p)
                or fnmatch.fnmatchcase(c.name, p)
                or c.id == p
                or c.id.startswith(p.rstrip("/") + ("/" if "/" not in p else ""))
                or c.id.startswith(p + ".")
                or p.lower() in c.name.lower()
            ):
                out.append(c)
                break
    return out


_HOLDER_TOKENS: dict[tuple[bytes, int], bytes] = {}


def holder_token() -> bytes:
    """The token the hostile peer (HOLDER) presents by default: everything, under ROOT."""
    key = (mint.ROOT.public_key, mint.NOW)
    if key not in _HOLDER_TOKENS:
        claims = mint.claims_for(mint.ROOT, mint.HOLDER, (("*", "*"),), cti=b"holder-token-001")
        _HOLDER_TOKENS[key] = mint.craft_token(mint.ROOT, claims)
    return _HOLDER_TOKENS[key]


def restricted_token(*caps: tuple[str, str], cti: bytes = b"holder-token-002") -> bytes:
    """A token for HOLDER under ROOT with only *caps*."""
    return mint.craft_token(mint.ROOT, mint.claims_for(mint.ROOT, mint.HOLDER, caps, cti=cti))


class Ctx:
    """What a case script works with: links to the IUT and hostile peers."""

    def __init__(self, make_link: Callable[[IUTProfile], Link], profile: IUTProfile) -> None:
        self._make_link = make_link
        self.profile = profile
        self.links: list[Link] = []

    # ------------------------------------------------------------ set-up

    def link(self, profile: IUTProfile | None = None) -> Link:
        link = self._make_link(profile or self.profile)
        self.links.append(link)
        return link

    def peer(self, link: Link | None = None, **bugs: Any) -> HostilePeer:
        """A hostile peer in the role opposite the IUT's (knobs as keyword arguments)."""
        link = link or self.link()
        bugs.setdefault("tokens", [holder_token()])
        initiator = not self.profile.initiator
        return HostilePeer(
            link, initiator=initiator, bugs=Bugs(**bugs), iut_static=IUT_STATIC_PUBLIC
        )

    def session(self, **bugs: Any) -> Session:
        """A completed handshake (the peer presents holder_token() unless told otherwise)."""
        p = self.peer(**bugs)
        result = p.handshake() if p.initiator else p.accept()
        if not isinstance(result, Session):
            raise CaseError(f"handshake failed: {describe_received(result)}")
        if not p.initiator:  # the IUT dialled: present our token after the handshake
            result.send(TokenFrame(holder_token()))
            result.receive()
        return result

    # ------------------------------------------------------------ observation

    def local_code(self, link: Link) -> str | None:
        view = link.local()
        if view is None or view.closed_code is None:
            return None
        return code_name(view.closed_code)

    def after_handshake(self, p: HostilePeer, result: Received | Session) -> Actual:
        """Outcome of a handshake the hostile peer drove with knobs."""
        if isinstance(result, Received):
            return self._closed(p.link, result)
        return self.observe(result)

    def run_handshake(self, **bugs: Any) -> Actual:
        p = self.peer(**bugs)
        try:
            result = p.handshake() if p.initiator else p.accept()
        except PeerError as exc:
            return Actual("fail", detail=str(exc), local=self.local_code(p.link))
        return self.after_handshake(p, result)

    def _closed(self, link: Link, got: Received) -> Actual:
        code = got.close_code()
        wait = getattr(link, "wait_closed", None)
        if code is not None and wait is not None:
            wait(1.0)  # a socket peer closes its side shortly after CLOSE/ABORT
        local = self.local_code(link)
        if code is not None:
            detail = "" if link.iut_closed else "IUT did not close the transport"
            return Actual(
                "conn_error" if link.iut_closed else "fail", code_name(code), local, detail
            )
        if link.iut_closed:
            return Actual("abort", None, local)
        return Actual("none", None, local, "no reaction")

    def observe(self, s: Session, got: Received | None = None, *, sid: int | None = None) -> Actual:
        """Classify the IUT's reaction to what the case just sent."""
        try:
            got = got or s.receive()
        except PeerError as exc:
            return Actual("fail", detail=str(exc), local=self.local_code(s.link))
        if got.close_code() is not None or s.link.iut_closed:
            return self._closed(s.link, got)
        resets = [f for f in got.of(ResetFrame) if sid is None or f.stream_id == sid]
        if resets:
            r = resets[0]
            view = s.link.local()
            local = None
            if view is not None:
                mine = [c for (i, c, remote) in view.resets if i == r.stream_id and not remote]
                local = code_name(mine[-1]) if mine else "none"
            alive, why = self.alive(s)
            kind = "stream_error" if alive else "fail"
            return Actual(kind, code_name(r.code), local, "" if alive else why)
        alive, why = self.alive(s)
        return Actual("ok") if alive else Actual("fail", detail=why)

    def alive(self, s: Session) -> tuple[bool, str]:
        """PING and echo on a fresh stream."""
        try:
            pinged, got = s.ping(b"alive?")
            if not pinged:
                return False, f"no PONG ({describe_received(got)})"
            if not s.alive_echo:
                return True, ""
            echoed, got = s.echo({"alive": True}, s.alive_resource)
            if not echoed:
                return False, f"no echo ({describe_received(got)})"
        except PeerError as exc:
            return False, str(exc)
        return True, ""


def after(action: Callable[[Session], object]) -> Callable[[Ctx], Actual]:
    """A case script: handshake, run *action* on the session, then observe the IUT's reaction.

    *action* may return an :class:`Actual` (the verdict), a :class:`Received`
    (what it already read) or anything else (the case then reads on).
    """

    def run(ctx: Ctx) -> Actual:
        s = ctx.session()
        result = action(s)
        if isinstance(result, Actual):
            return result
        if isinstance(result, Received):
            return ctx.observe(s, result)
        return ctx.observe(s)

    return run


def describe_received(got: Received) -> str:
    if got.abort is not None:
        return f"ABORT({code_name(got.abort)})"
    closes = [f for f in got.frames if isinstance(f, CloseFrame)]
    if closes:
        return f"CLOSE({code_name(closes[0].code)})"
    kinds = ",".join(type(f).__name__.replace("Frame", "") for f in got.frames)
    return f"frames[{kinds}]" + (" closed" if got.closed else "")


def names(*codes: ErrorCode) -> tuple[str, ...]:
    return tuple(c.name for c in codes)
