"""Shared pieces of the benchmark: run settings, bounded timing loops, results.

Every loop here is bounded twice: by a wall-clock budget and by an iteration
cap, so a slow or stuck implementation can make a figure small but can never
hang the run. Figures are rates (per second) measured over at least one
batch; the caller reports ratios between implementations measured in the same
run, never absolute claims.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "NOT_AVAILABLE",
    "Settings",
    "Unavailable",
    "rate",
]

#: Marker text used in tables for a figure that could not be measured.
NOT_AVAILABLE = "not yet available"


class Unavailable(Exception):
    """A figure cannot be measured in this checkout (e.g. the m2mproto transport is missing)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How long and how wide to measure.

    ``duration`` is the time budget of one figure (seconds); ``levels`` the
    concurrency levels; ``mem_conns`` the number of idle connections used for
    the memory figure; ``max_iters`` caps every timing loop.
    """

    quick: bool = False
    duration: float = 2.0
    levels: tuple[int, ...] = (1, 10, 100, 1000)
    mem_conns: int = 1000
    max_iters: int = 10_000_000
    #: Seconds any single network phase may take before it is abandoned.
    phase_timeout: float = 120.0

    @classmethod
    def make(
        cls,
        *,
        quick: bool,
        duration: float | None = None,
        levels: tuple[int, ...] | None = None,
        mem_conns: int | None = None,
    ) -> Settings:
        lv: tuple[int, ...]
        if quick:
            d, lv, mc = 0.4, (1, 10, 100), 200
        else:
            d, lv, mc = 2.0, (1, 10, 100, 1000), 1000
        return cls(
            quick=quick,
            duration=d if duration is None else duration,
            levels=lv if levels is None else levels,
            mem_conns=mc if mem_conns is None else mem_conns,
            phase_timeout=60.0 if quick else 300.0,
        )


def rate(
    fn: Callable[[], object],
    duration: float,
    *,
    max_iters: int = 10_000_000,
    batch: int = 0,
    warmup: int = 1,
) -> float:
    """Call ``fn()`` repeatedly for about ``duration`` seconds; return calls per second.

    The loop runs in batches (sized so that one batch takes ~1/20 of the budget)
    and stops at the first batch boundary past the budget or past ``max_iters``
    calls. The garbage collector is paused while timing (and re-enabled after).
    """
    for _ in range(warmup):
        fn()
    if batch <= 0:
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        batch = max(1, min(10_000, int(duration / 20 / one)))
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        done = 0
        start = time.perf_counter()
        end = start + duration
        now = start
        while done < max_iters:
            for _ in range(batch):
                fn()
            done += batch
            now = time.perf_counter()
            if now >= end:
                break
        return done / max(now - start, 1e-9)
    finally:
        if was_enabled:
            gc.enable()
