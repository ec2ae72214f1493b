"""Capabilities (resource + ability), wildcard matching, attenuation, caveats.

Theory of operation
-------------------
A *name* (resource or ability) is a non-empty sequence of segments joined by
``/``. A *pattern* is a name, or a name prefix followed by a final ``*``
segment, or ``*`` alone (spec/tokens.md, "Capabilities")::

    pattern "orders/eu/*" matches "orders/eu/x" and "orders/eu/x/y",
                          but not "orders/eu" nor "orders/euro"
    pattern "*"           matches every name
    pattern "msg/*"       matches "msg/send" and "msg/x/y", not "msg"

A pattern P *covers* a pattern C when every name C matches is matched by P;
a capability set S covers a set T when each member of T is covered by one
member of S. Attenuation (a delegated token never grants more than its
parent) is exactly "parent set covers child set".

Caveats narrow a grant further. Each known caveat has a *narrowing* relation;
an unknown caveat name makes the token invalid (``UNKNOWN_CAVEAT``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ErrorCode, LocalProtocolError, TokenError
from ..identity import AgentId

__all__ = [
    "MAX_ABILITY_LEN",
    "MAX_RESOURCE_LEN",
    "Capability",
    "Caveats",
    "concrete_name_ok",
    "covers_all",
    "name_error",
    "pattern_covers",
    "pattern_matches",
]

MAX_RESOURCE_LEN = 1024
MAX_ABILITY_LEN = 128
_SEGMENT_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~:@+%,;!$"
)


def name_error(text: object, *, pattern: bool, max_len: int) -> str | None:
    """Return why *text* is not a valid name (or pattern), or None if it is."""
    if not isinstance(text, str):
        return "must be text"
    if not text or len(text) > max_len:
        return f"must be 1..{max_len} characters"
    segments = text.split("/")
    for index, segment in enumerate(segments):
        if segment == "*":
            if not pattern:
                return "wildcard not allowed in a concrete name"
            if index != len(segments) - 1:
                return "'*' is only allowed as the last segment"
            continue
        if not segment:
            return "empty segment"
        if segment in (".", ".."):
            return "'.' and '..' segments are not allowed"
        if not set(segment) <= _SEGMENT_CHARS:
            return "character outside the segment alphabet"
    return None


#: Concrete names (by kind) already found valid: validation is a pure function of the
#: text, so each distinct name is checked once. Bounded: cleared when full, so a peer
#: naming many distinct resources costs at most the old per-call validation.
_VALID_NAMES: dict[tuple[str, int], None] = {}
_MAX_VALID_NAMES = 4096


def concrete_name_ok(text: object, max_len: int) -> bool:
    """True if *text* is a valid concrete name (no wildcard) of at most *max_len* characters.

    The result for a valid name is remembered (bounded), so checking a name that
    entered once (a stream's resource, a policy ability) again costs one lookup.
    """
    if type(text) is not str:
        return False
    key = (text, max_len)
    if key in _VALID_NAMES:
        return True
    if name_error(text, pattern=False, max_len=max_len) is not None:
        return False
    if len(_VALID_NAMES) >= _MAX_VALID_NAMES:
        _VALID_NAMES.clear()
    _VALID_NAMES[key] = None
    return True


def _split(pattern: str) -> tuple[tuple[str, ...], bool]:
    parts = tuple(pattern.split("/"))
    if parts[-1] == "*":
        return parts[:-1], True
    return parts, False


def pattern_matches(pattern: str, name: str) -> bool:
    """True if the concrete *name* is matched by *pattern* (both assumed valid)."""
    prefix, wild = _split(pattern)
    segments = tuple(name.split("/"))
    if not wild:
        return segments == prefix
    return len(segments) > len(prefix) and segments[: len(prefix)] == prefix


def pattern_covers(parent: str, child: str) -> bool:
    """True if every name matched by pattern *child* is matched by pattern *parent*."""
    p_prefix, p_wild = _split(parent)
    c_prefix, c_wild = _split(child)
    if not p_wild:
        return not c_wild and c_prefix == p_prefix
    if c_wild:
        return len(c_prefix) >= len(p_prefix) and c_prefix[: len(p_prefix)] == p_prefix
    return len(c_prefix) > len(p_prefix) and c_prefix[: len(p_prefix)] == p_prefix


def _prefix_matches(prefix: tuple[str, ...], wild: bool, segments: list[str]) -> bool:
    """:func:`pattern_matches` on a pattern and a name both already split."""
    if not wild:
        return len(segments) == len(prefix) and tuple(segments) == prefix
    n = len(prefix)
    return len(segments) > n and tuple(segments[:n]) == prefix


@dataclass(frozen=True, slots=True, order=True)
class Capability:
    """A resource pattern plus an ability pattern, e.g. ``orders/eu/*`` + ``msg/send``.

    Both patterns are validated once, here (the only way a capability is made),
    and kept split for matching.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) a pattern is not valid.
    """

    resource: str
    ability: str
    _resource_split: tuple[tuple[str, ...], bool] = field(
        init=False, repr=False, compare=False, hash=False
    )
    _ability_split: tuple[tuple[str, ...], bool] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        for what, value, limit in (
            ("resource", self.resource, MAX_RESOURCE_LEN),
            ("ability", self.ability, MAX_ABILITY_LEN),
        ):
            why = name_error(value, pattern=True, max_len=limit)
            if why is not None:
                raise LocalProtocolError(f"{what} {why}", ErrorCode.INVALID_ARGUMENT)
        object.__setattr__(self, "_resource_split", _split(self.resource))
        object.__setattr__(self, "_ability_split", _split(self.ability))

    @classmethod
    def parse(cls, text: str) -> Capability:
        """Parse ``"resource=ability"`` (e.g. ``"orders/eu/*=msg/send"``).

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) if the text is malformed.
        """
        if not isinstance(text, str) or text.count("=") != 1:
            raise LocalProtocolError(
                "capability must be written 'resource=ability'", ErrorCode.INVALID_ARGUMENT
            )
        resource, ability = text.split("=")
        return cls(resource, ability)

    @classmethod
    def from_wire(cls, item: object) -> Capability:
        """Decode the ``[resource, ability]`` wire form.

        Raises:
            TokenError: (``MALFORMED``) if *item* is not a valid capability.
        """
        if not isinstance(item, list) or len(item) != 2:
            raise TokenError("capability must be [resource, ability]", ErrorCode.MALFORMED)
        resource, ability = item
        if not isinstance(resource, str) or not isinstance(ability, str):
            raise TokenError("capability names must be text", ErrorCode.MALFORMED)
        try:
            return cls(resource, ability)  # validates both patterns, once
        except LocalProtocolError as exc:
            raise TokenError(f"capability {exc.message}", ErrorCode.MALFORMED) from None

    def to_wire(self) -> list[str]:
        """The ``[resource, ability]`` wire form."""
        return [self.resource, self.ability]

    def matches(self, resource: str, ability: str) -> bool:
        """True if this capability allows *ability* on the concrete *resource*.

        Invalid or wildcard names never match.
        """
        if not concrete_name_ok(resource, MAX_RESOURCE_LEN):
            return False
        if not concrete_name_ok(ability, MAX_ABILITY_LEN):
            return False
        return self.matches_split(resource.split("/"), ability.split("/"))

    def matches_split(self, resource: list[str], ability: list[str]) -> bool:
        """:meth:`matches` for names already validated and split at ``/``.

        Hazmat: no validation. The caller must have checked both names with
        :func:`concrete_name_ok` (a wildcard in an unchecked name could match).
        """
        return _prefix_matches(*self._resource_split, resource) and _prefix_matches(
            *self._ability_split, ability
        )

    def covers(self, other: Capability) -> bool:
        """True if everything *other* allows is allowed by this capability."""
        return pattern_covers(self.resource, other.resource) and pattern_covers(
            self.ability, other.ability
        )

    def __str__(self) -> str:
        return f"{self.resource}={self.ability}"


def covers_all(parent: Iterable[Capability], child: Iterable[Capability]) -> bool:
    """True if each capability in *child* is covered by one in *parent*."""
    parents = tuple(parent)
    return all(any(p.covers(c) for p in parents) for c in child)


# --------------------------------------------------------------------------
# Caveats
# --------------------------------------------------------------------------

#: Known caveat names. Anything else makes a token invalid (fail closed).
CAVEAT_MAX_MESSAGE_SIZE = "max_message_size"
CAVEAT_ALLOWED_PEERS = "allowed_peers"
MAX_ALLOWED_PEERS = 64
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Caveats:
    """Restrictions on a grant. ``None`` means "no restriction"."""

    #: Largest message (bytes) the holder may send under this grant.
    max_message_size: int | None = None
    #: The only peers (verifiers) the holder may use this grant with.
    allowed_peers: frozenset[AgentId] | None = None

    @classmethod
    def from_wire(cls, item: object) -> Caveats:
        """Decode the caveats map.

        Raises:
            TokenError: ``UNKNOWN_CAVEAT`` for an unknown name, ``MALFORMED``
                for a bad value.
        """
        if not isinstance(item, dict):
            raise TokenError("caveats must be a map", ErrorCode.MALFORMED)
        size: int | None = None
        peers: frozenset[AgentId] | None = None
        for name, value in item.items():
            if name == CAVEAT_MAX_MESSAGE_SIZE:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise TokenError(
                        "max_message_size must be an unsigned integer", ErrorCode.MALFORMED
                    )
                size = value
            elif name == CAVEAT_ALLOWED_PEERS:
                if not isinstance(value, list) or not 1 <= len(value) <= MAX_ALLOWED_PEERS:
                    raise TokenError(
                        f"allowed_peers must be an array of 1..{MAX_ALLOWED_PEERS} agent IDs",
                        ErrorCode.MALFORMED,
                    )
                parsed = []
                for text in value:
                    try:
                        parsed.append(AgentId.parse(text))
                    except LocalProtocolError:
                        raise TokenError(
                            "allowed_peers holds an invalid agent ID", ErrorCode.MALFORMED
                        ) from None
                if len(set(parsed)) != len(parsed):
                    raise TokenError("allowed_peers lists a peer twice", ErrorCode.MALFORMED)
                peers = frozenset(parsed)
            else:
                raise TokenError(f"unknown caveat {name!r}", ErrorCode.UNKNOWN_CAVEAT)
        return cls(size, peers)

    @classmethod
    def from_mapping(cls, caveats: Mapping[str, Any] | Caveats | None) -> Caveats:
        """Build caveats from the API form (``{"max_message_size": 1024, ...}``).

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) for unknown names or bad values.
        """
        if caveats is None:
            return cls()
        if isinstance(caveats, Caveats):
            return caveats
        wire: dict[str, Any] = {}
        for name, value in caveats.items():
            if name == CAVEAT_ALLOWED_PEERS and value is not None:
                wire[name] = sorted(
                    peer.text if isinstance(peer, AgentId) else str(peer) for peer in value
                )
            elif value is not None:
                wire[name] = value
        try:
            return cls.from_wire(wire)
        except TokenError as exc:
            raise LocalProtocolError(exc.message, ErrorCode.INVALID_ARGUMENT) from None

    def to_wire(self) -> dict[str, Any]:
        """The caveats map (empty when there is no restriction)."""
        out: dict[str, Any] = {}
        if self.max_message_size is not None:
            out[CAVEAT_MAX_MESSAGE_SIZE] = self.max_message_size
        if self.allowed_peers is not None:
            out[CAVEAT_ALLOWED_PEERS] = sorted(peer.text for peer in self.allowed_peers)
        return out

    def narrows(self, parent: Caveats) -> bool:
        """True if these caveats are at least as strict as *parent*'s."""
        if parent.max_message_size is not None and (
            self.max_message_size is None or self.max_message_size > parent.max_message_size
        ):
            return False
        return not (
            parent.allowed_peers is not None
            and (self.allowed_peers is None or not self.allowed_peers <= parent.allowed_peers)
        )

    def merge(self, stricter: Caveats) -> Caveats:
        """The intersection of two caveat sets (the stricter value of each)."""
        sizes = [s for s in (self.max_message_size, stricter.max_message_size) if s is not None]
        peers: frozenset[AgentId] | None = self.allowed_peers
        if stricter.allowed_peers is not None:
            peers = stricter.allowed_peers if peers is None else peers & stricter.allowed_peers
        return Caveats(min(sizes) if sizes else None, peers)

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly view."""
        return self.to_wire()
