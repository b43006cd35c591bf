"""Giving freed heap memory back to the operating system, for a long-running node.

A node's RSS rose slowly under a steady event rate (+0.12 to +0.18 MB/min per node in a 10-minute
soak, ``tests/chaos/test_soak.py``) although its Python heap did not grow (tracemalloc) and the
number of malloc arenas did not matter. glibc keeps memory freed in the middle of its heap mapped
until ``malloc_trim`` releases the free pages: with a trim every 30 s the same soak rose +0.02 to
+0.10 MB/min (and with ``PYTHONMALLOC=malloc``, every small object in glibc's heap, +0.8 to
+1.0 MB/min: the growth is fragmentation, not live data). A trim takes milliseconds and runs in a
worker thread, so the event loop does not wait for it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

__all__ = ["TRIM_INTERVAL_S", "malloc_trim", "trim_heap_periodically"]

log = logging.getLogger("ram.node")

#: How often freed heap pages are handed back.
TRIM_INTERVAL_S = 30.0


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None on a C library without it, e.g. musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


async def trim_heap_periodically(interval_s: float = TRIM_INTERVAL_S) -> None:
    """Every ``interval_s``, release the heap's free pages (until cancelled)."""
    trim = malloc_trim()
    if trim is None:
        log.info("heap trimming unavailable: the C library has no malloc_trim")
        return
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim, 0)
