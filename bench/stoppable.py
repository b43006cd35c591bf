"""Run a benchmark's coroutine so that SIGTERM or SIGINT stops it cleanly.

A long run (a 60-minute chaos run, a 10-minute stress run) is often started in the background, where
a shell hands it SIGINT ignored and SIGTERM would end Python without running a single ``finally``:
the cluster's processes, network rules, loop disks and cgroups would stay behind. Here both signals
cancel the main task instead, so every ``finally`` (undo the faults, stop the cluster, remove the
temporary directories) runs before the process exits with status 130.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["run_stoppable"]


async def _guarded(main: Coroutine[Any, Any, T]) -> T:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    return await main


def run_stoppable(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``; on SIGTERM/SIGINT: clean up, say so on stderr, exit 130."""
    try:
        return asyncio.run(_guarded(main))
    except asyncio.CancelledError:
        print("stopped by a signal: faults undone, cluster stopped, temporary files removed", file=sys.stderr)
        raise SystemExit(130) from None
