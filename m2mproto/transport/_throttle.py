"""LogThrottle: at most a few lines per source and kind per interval.

A peer that fails handshakes or presents tokens in a loop must not be able to
fill the server's log (or its disk) with one line per attempt. Each
``(kind, source)`` key may log *burst* lines per *interval* seconds; the first
line over the limit says that similar lines are being suppressed, and the
first line of the next interval says how many were. The number of keys
remembered is bounded (the oldest is forgotten first).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LogThrottle"]


@dataclass(slots=True)
class _Window:
    ends: float
    logged: int = 0
    suppressed: int = 0


class LogThrottle:
    """Rate-limit log lines per ``(kind, source)`` (see the module doc)."""

    def __init__(
        self,
        *,
        burst: int = 5,
        interval: float = 10.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()

    def log(
        self,
        log: logging.Logger | logging.LoggerAdapter[Any],
        level: int,
        kind: str,
        source: str,
        msg: str,
        *args: Any,
    ) -> bool:
        """Log ``msg % args`` at *level* unless *source* used up its lines of *kind*.

        Returns whether the line was logged.
        """
        if not log.isEnabledFor(level):
            return False
        key = (kind, source or "?")
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now >= window.ends:
            if window is not None and window.suppressed:
                log.log(level, "%s from %s: suppressed %d similar lines", kind, key[1],
                        window.suppressed)  # fmt: skip
            window = _Window(now + self.interval)
            self._windows[key] = window
            self._windows.move_to_end(key)
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
        if window.logged < self.burst:
            window.logged += 1
            log.log(level, msg, *args)
            return True
        window.suppressed += 1
        if window.suppressed == 1:
            log.log(level, "%s from %s: more than %d lines in %g s, suppressing similar lines",
                    kind, key[1], self.burst, self.interval)  # fmt: skip
        return False

    def reset(self) -> None:
        """Forget every window (tests; a fresh start)."""
        self._windows.clear()
