"""Budgets for non-productive traffic (spec/streams.md §6).

Theory of operation
-------------------
A peer can keep a connection busy without moving application data: pings,
window updates, empty frames and records, ignored extension frames, tokens,
key updates, stream open/reset churn. :class:`Budgets` counts them and raises
:class:`_Fail` (``ENHANCE_YOUR_CALM``) when one is exceeded:

* ``no_progress``: non-productive frames since the last productive one (or
  since we last sent payload), at most ``max_no_progress_frames``;
* ``key_updates_in``: KEY_UPDATE frames without data in between, at most
  ``max_key_updates_without_data``;
* ``small_grants``: small WINDOW_UPDATEs (increment below
  ``min(min_window_increment, advertised window // 2)``: credit dribbled to
  make us send tiny frames, CVE-2019-9511), at most
  ``max_small_window_updates``; only a grant that is not small and lets
  queued data move resets it (application data does not: a dribbler makes
  us send data);
* churn: a token bucket (``stream_churn_burst`` tokens, refilled at
  ``stream_churn_rate`` per second of the caller's clock) charged by each
  RESET received and each refused OPEN.
"""

from __future__ import annotations

from ._conn_state import _Fail
from .config import Configuration
from .errors import ErrorCode

__all__ = ["Budgets"]


class Budgets:
    """Counters and the churn token bucket of one connection."""

    __slots__ = (
        "_cfg",
        "churn_at",
        "churn_tokens",
        "key_updates_in",
        "no_progress",
        "small_grants",
    )

    def __init__(self, cfg: Configuration) -> None:
        self._cfg = cfg
        self.no_progress = 0
        self.key_updates_in = 0
        self.small_grants = 0
        self.churn_tokens = float(cfg.stream_churn_burst)
        self.churn_at: float | None = None

    def no_progress_frame(self, what: str) -> None:
        """Count one non-productive frame.

        Raises:
            _Fail: ``ENHANCE_YOUR_CALM`` past ``max_no_progress_frames``.
        """
        self.no_progress += 1
        if self.no_progress > self._cfg.max_no_progress_frames:
            raise _Fail(ErrorCode.ENHANCE_YOUR_CALM, f"too many non-productive frames ({what})")

    def progress(self) -> None:
        """A productive frame arrived: reset the counters."""
        self.no_progress = 0
        self.key_updates_in = 0

    def data_sent(self) -> None:
        """We sent application data: the peer's non-productive count starts over."""
        self.no_progress = 0

    def window_update(self, increment: int, advertised: int, waiting: bool) -> None:
        """Judge one received WINDOW_UPDATE for dribbling (spec/streams.md §6).

        *advertised* is the window the peer advertised for the level the update
        applies to; *waiting* whether we have data queued at that level.

        Raises:
            _Fail: ``ENHANCE_YOUR_CALM`` past ``max_small_window_updates``.
        """
        cfg = self._cfg
        if increment < min(cfg.min_window_increment, advertised // 2):
            self.small_grants += 1
            if self.small_grants > cfg.max_small_window_updates:
                raise _Fail(ErrorCode.ENHANCE_YOUR_CALM, "too many small window updates")
        elif waiting:
            self.small_grants = 0

    def key_update(self) -> None:
        """Count one received KEY_UPDATE.

        Raises:
            _Fail: ``ENHANCE_YOUR_CALM`` past ``max_key_updates_without_data``.
        """
        self.key_updates_in += 1
        if self.key_updates_in > self._cfg.max_key_updates_without_data:
            raise _Fail(ErrorCode.ENHANCE_YOUR_CALM, "too many key updates without data")

    def charge_churn(self, now: float | None) -> None:
        """Charge one stream open/reset against the token bucket.

        Raises:
            _Fail: ``ENHANCE_YOUR_CALM`` when the bucket is empty.
        """
        t = now if now is not None else 0.0
        cfg = self._cfg
        if self.churn_at is not None:
            refill = (t - self.churn_at) * cfg.stream_churn_rate
            self.churn_tokens = min(float(cfg.stream_churn_burst), self.churn_tokens + refill)
        self.churn_at = t
        if self.churn_tokens < 1.0:
            raise _Fail(ErrorCode.ENHANCE_YOUR_CALM, "stream open/reset budget exhausted")
        self.churn_tokens -= 1.0
