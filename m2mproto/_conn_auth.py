"""Authorization of a Connection: the user's authorizer, called contained.

Theory of operation
-------------------
:class:`Authorization` is the only caller of the user's
:class:`~m2mproto.config.Authorizer`. It supplies the authenticated peer and
Unix time (the caller's clock plus ``clock_offset``) and contains the call:
:class:`~m2mproto.errors.AuthorizationError` (and its subclass
``TokenError``) is the expected refusal and is re-raised; any other
exception is a fault of the callback, becomes ``_Fail(INTERNAL_ERROR)`` (the
connection closes) and never escapes ``next_event``. Without an authorizer
everything is allowed and grants are ``None`` (development only).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._conn_state import _Fail
from ._conn_timers import Timers
from .config import Authorizer, Grant
from .errors import AuthorizationError, ErrorCode
from .identity import AgentId

__all__ = ["Authorization"]


class Authorization:
    """Asks the authorizer about one peer; contains its faults."""

    __slots__ = ("_authorizer", "_timers", "enabled", "peer")

    def __init__(self, authorizer: Authorizer | None, timers: Timers) -> None:
        self._authorizer = authorizer
        self._timers = timers
        #: Whether an authorizer is configured (else everything is allowed).
        self.enabled = authorizer is not None
        #: The authenticated peer (set when the handshake completes).
        self.peer: AgentId | None = None

    def accept_tokens(self, tokens: Sequence[bytes]) -> object:
        """Verify *tokens* of the peer; return the authorizer's grant summary.

        Raises:
            AuthorizationError: a token is refused (``TokenError`` with the reason).
            _Fail: ``INTERNAL_ERROR`` if the authorizer raised anything else.
        """
        if self._authorizer is None:
            return None
        assert self.peer is not None
        try:
            return self._authorizer.accept_tokens(self.peer, tokens, self._timers.unix())
        except AuthorizationError:
            raise
        except Exception as exc:  # a fault of the callback, not of the peer
            raise _Fail(
                ErrorCode.INTERNAL_ERROR, f"authorizer failed: {type(exc).__name__}"
            ) from None

    def authorize(self, resource: str, ability: str) -> Grant | None:
        """The grant allowing *ability* on *resource* now (None without an authorizer).

        Raises:
            AuthorizationError: refused.
            _Fail: ``INTERNAL_ERROR`` if the authorizer raised anything else.
        """
        if self._authorizer is None:
            return None
        assert self.peer is not None
        try:
            return self._authorizer.authorize(self.peer, resource, ability, self._timers.unix())
        except AuthorizationError:
            raise
        except Exception as exc:  # a fault of the callback, not of the peer
            raise _Fail(
                ErrorCode.INTERNAL_ERROR, f"authorizer failed: {type(exc).__name__}"
            ) from None
