"""Noise handshake patterns as data (Noise rev 34, §7 and §9).

A pattern is two pre-message token lists (initiator's, responder's) and a list
of message patterns; message ``i`` is sent by the initiator when ``i`` is even
and by the responder when it is odd (one-way patterns have one message). The
table below is the notation of the specification transcribed verbatim: the
fundamental one-way (§7.4) and interactive (§7.5) patterns and the deferred
patterns (§7.6). Modifiers (§9.2: ``psk0``, ``psk1``, ... combined with ``+``,
and ``hfs`` of the Noise HFS extension, which adds the KEM tokens ``e1`` and
``ekem1``) are applied to the data, so every psk position and every
interactive pattern with ``hfs`` works without special code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ErrorCode, LocalProtocolError

__all__ = [
    "DEFERRED_PATTERNS",
    "FUNDAMENTAL_PATTERNS",
    "ONE_WAY_PATTERNS",
    "PATTERNS",
    "TOKENS",
    "HandshakePattern",
    "apply_modifiers",
    "get_pattern",
]

#: The tokens of Noise §7.1, ``psk`` (§9.1) and the HFS KEM tokens ``e1`` / ``ekem1``.
TOKENS = frozenset({"e", "s", "ee", "es", "se", "ss", "psk", "e1", "ekem1"})
_DH_TOKENS = frozenset({"ee", "es", "se", "ss"})

# Notation: "<pre-messages> ... <messages>", messages separated by ";", the
# arrow giving the direction (checked against the alternation rule at import).
_NOTATION: dict[str, str] = {
    # §7.4 one-way
    "N": "<- s ... -> e, es",
    "K": "-> s; <- s ... -> e, es, ss",
    "X": "<- s ... -> e, es, s, ss",
    # §7.5 interactive, fundamental
    "NN": "-> e; <- e, ee",
    "NK": "<- s ... -> e, es; <- e, ee",
    "NX": "-> e; <- e, ee, s, es",
    "KN": "-> s ... -> e; <- e, ee, se",
    "KK": "-> s; <- s ... -> e, es, ss; <- e, ee, se",
    "KX": "-> s ... -> e; <- e, ee, se, s, es",
    "XN": "-> e; <- e, ee; -> s, se",
    "XK": "<- s ... -> e, es; <- e, ee; -> s, se",
    "XX": "-> e; <- e, ee, s, es; -> s, se",
    "IN": "-> e, s; <- e, ee, se",
    "IK": "<- s ... -> e, es, s, ss; <- e, ee, se",
    "IX": "-> e, s; <- e, ee, se, s, es",
    # §7.6 deferred
    "NK1": "<- s ... -> e; <- e, ee, es",
    "NX1": "-> e; <- e, ee, s; -> es",
    "X1N": "-> e; <- e, ee; -> s; <- se",
    "X1K": "<- s ... -> e, es; <- e, ee; -> s; <- se",
    "XK1": "<- s ... -> e; <- e, ee, es; -> s, se",
    "X1K1": "<- s ... -> e; <- e, ee, es; -> s; <- se",
    "X1X": "-> e; <- e, ee, s, es; -> s; <- se",
    "XX1": "-> e; <- e, ee, s; -> es, s, se",
    "X1X1": "-> e; <- e, ee, s; -> es, s; <- se",
    "K1N": "-> s ... -> e; <- e, ee; -> se",
    "K1K": "-> s; <- s ... -> e, es; <- e, ee; -> se",
    "KK1": "-> s; <- s ... -> e; <- e, ee, se, es",
    "K1K1": "-> s; <- s ... -> e; <- e, ee, es; -> se",
    "K1X": "-> s ... -> e; <- e, ee, s, es; -> se",
    "KX1": "-> s ... -> e; <- e, ee, se, s; -> es",
    "K1X1": "-> s ... -> e; <- e, ee, s; -> se, es",
    "I1N": "-> e, s; <- e, ee; -> se",
    "I1K": "<- s ... -> e, es, s; <- e, ee; -> se",
    "IK1": "<- s ... -> e, s; <- e, ee, se, es",
    "I1K1": "<- s ... -> e, s; <- e, ee, es; -> se",
    "I1X": "-> e, s; <- e, ee, s, es; -> se",
    "IX1": "-> e, s; <- e, ee, se, s; -> es",
    "I1X1": "-> e, s; <- e, ee, s; -> se, es",
}

ONE_WAY_PATTERNS = frozenset({"N", "K", "X"})


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """A handshake pattern: pre-messages and message token lists (after modifiers)."""

    #: Pattern name with modifiers, e.g. ``"XXpsk3"``.
    name: str
    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]
    #: N, K, X: a single message; transport goes only initiator -> responder.
    one_way: bool

    @property
    def hfs(self) -> bool:
        """True if the pattern carries the KEM tokens (``hfs`` modifier)."""
        return any("e1" in m for m in self.messages)

    @property
    def psk_count(self) -> int:
        """Number of ``psk`` tokens (the number of PSKs each side must supply)."""
        return sum(m.count("psk") for m in self.messages)

    def sends(self, initiator: bool) -> tuple[tuple[str, ...], ...]:
        """The message patterns that the given role writes."""
        first = 0 if initiator else 1
        return self.messages[first::2]

    def needs_local_static(self, initiator: bool) -> bool:
        """True if the given role must hold a static key pair."""
        pre = self.initiator_pre if initiator else self.responder_pre
        if "s" in pre or any("s" in m for m in self.sends(initiator)):
            return True
        mine = {"ss", "se"} if initiator else {"ss", "es"}
        return any(mine.intersection(m) for m in self.messages)

    def knows_remote_static(self, initiator: bool) -> bool:
        """True if the given role must know the peer's static public key in advance."""
        return "s" in (self.responder_pre if initiator else self.initiator_pre)


def _parse(name: str, notation: str) -> HandshakePattern:
    pre_text, _, msg_text = notation.rpartition("...")
    pre: dict[str, tuple[str, ...]] = {"->": (), "<-": ()}
    for part in filter(None, (p.strip() for p in pre_text.split(";"))):
        arrow, tokens = part[:2], tuple(t.strip() for t in part[2:].split(","))
        pre[arrow] = tokens
    messages = []
    for i, part in enumerate(p.strip() for p in msg_text.split(";")):
        arrow = part[:2]
        if arrow != ("->" if i % 2 == 0 else "<-"):  # pragma: no cover - table check
            raise AssertionError(f"pattern {name}: message {i} breaks the alternation")
        tokens = tuple(t.strip() for t in part[2:].split(","))
        if not TOKENS.issuperset(tokens):  # pragma: no cover - table check
            raise AssertionError(f"pattern {name}: unknown token in {tokens}")
        messages.append(tokens)
    return HandshakePattern(name, pre["->"], pre["<-"], tuple(messages), name in ONE_WAY_PATTERNS)


#: Every pattern the engine knows, without modifiers.
PATTERNS: dict[str, HandshakePattern] = {n: _parse(n, t) for n, t in _NOTATION.items()}
FUNDAMENTAL_PATTERNS = (
    "N", "K", "X", "NN", "NK", "NX", "KN", "KK", "KX", "XN", "XK", "XX", "IN", "IK", "IX",
)  # fmt: skip
DEFERRED_PATTERNS = tuple(n for n in PATTERNS if n not in FUNDAMENTAL_PATTERNS)

_PSK_RE = re.compile(r"psk(0|[1-9][0-9]?)")


def _unsupported(reason: str) -> LocalProtocolError:
    return LocalProtocolError(reason, ErrorCode.UNSUPPORTED)


def _apply_hfs(name: str, messages: list[list[str]]) -> None:
    """The ``hfs`` modifier (Noise HFS extension): add ``e1`` and ``ekem1``.

    ``e1`` goes into the first message with an ``e``: directly after that
    message's first DH token if it has one (so the KEM public key is
    encrypted), else directly after ``e``. ``ekem1`` goes directly after the
    first ``ee``. A pattern without ``ee`` (one-way) cannot take ``hfs``.
    """
    for msg in messages:
        if "e" in msg:
            dh = [i for i, t in enumerate(msg) if t in _DH_TOKENS]
            msg.insert((dh[0] if dh else msg.index("e")) + 1, "e1")
            break
    for msg in messages:
        if "ee" in msg:
            msg.insert(msg.index("ee") + 1, "ekem1")
            return
    raise _unsupported(f"hfs: pattern {name} has no ee token")


def apply_modifiers(base: HandshakePattern, modifiers: tuple[str, ...]) -> HandshakePattern:
    """Return *base* with the §9.2 psk modifiers and the HFS ``hfs`` modifier applied.

    ``psk0`` puts a ``psk`` token at the start of the first message, ``pskN``
    (N >= 1) at the end of message N; ``hfs`` adds the KEM tokens (see
    :func:`_apply_hfs`). Modifiers apply in the order given.

    Raises:
        LocalProtocolError: (UNSUPPORTED) an unknown modifier (``fallback``, ...),
            a psk position past the last message, ``hfs`` on a pattern without
            ``ee``, or a repeat.
    """
    messages = [list(m) for m in base.messages]
    seen: set[str] = set()
    for mod in modifiers:
        if mod == "hfs":
            if mod in seen:
                raise _unsupported("pattern modifier 'hfs' is repeated")
            seen.add(mod)
            _apply_hfs(base.name, messages)
            continue
        match = _PSK_RE.fullmatch(mod)
        if match is None:
            raise _unsupported(f"pattern modifier {mod!r} is not supported")
        if mod in seen:
            raise _unsupported(f"pattern modifier {mod!r} is repeated")
        seen.add(mod)
        pos = int(match.group(1))
        if pos > len(messages):
            raise _unsupported(f"{mod}: pattern {base.name} has only {len(messages)} message(s)")
        if pos == 0:
            messages[0].insert(0, "psk")
        else:
            messages[pos - 1].append("psk")
    name = base.name + "+".join(modifiers)
    return HandshakePattern(
        name,
        base.initiator_pre,
        base.responder_pre,
        tuple(tuple(m) for m in messages),
        base.one_way,
    )


def get_pattern(name: str) -> HandshakePattern:
    """Look up a pattern without modifiers by its name (``"XX"``, ``"X1K1"``).

    Raises:
        LocalProtocolError: (UNSUPPORTED) the pattern is unknown.
    """
    try:
        return PATTERNS[name]
    except KeyError:
        raise _unsupported(f"handshake pattern {name!r} is not supported") from None
