"""Run a session's lifetime outside the caller's cancel scopes (``await connect()``).

A session opened by ``await connect(...)`` outlives the call: its task group
cannot nest in the caller's task, or leaving a ``fail_after`` around the call
(or closing the session from another task) would exit a cancel scope out of
order. The session's lifetime coroutine then runs as a task of the event loop
(asyncio) or a system task (trio). It is still bounded: it ends when the
session closes, and the event loop cancels it when the run ends. It never
raises (the session records its failures).
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["start_detached"]

logger = logging.getLogger("m2mproto.transport")

#: Running asyncio tasks (the loop keeps only weak references to tasks).
_TASKS: set[Any] = set()


async def _guard(func: Callable[[], Awaitable[None]]) -> None:
    try:
        await func()
    except Exception:  # pragma: no cover - a lifetime records its failures and returns
        logger.exception("detached session failed")


def _in_trio() -> bool:
    """Whether the calling task runs under trio (without importing it, or sniffio)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def start_detached(func: Callable[[], Awaitable[None]]) -> None:
    """Run ``func()`` in a new task that no cancel scope of the caller encloses."""
    if _in_trio():
        import trio

        trio.lowlevel.spawn_system_task(_guard, func, context=contextvars.copy_context())
        return
    import asyncio

    task = asyncio.get_running_loop().create_task(_guard(func))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
