"""Is a PostgreSQL server's port open? The probe RAM takes before it depends on a source server
(a clone, a rewind, a reinit) and after pg_rewind failed: the answer is a fact observed on the
network, never read out of a tool's error text."""

from __future__ import annotations

import asyncio


async def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Does a TCP connection to ``host:port`` open within ``timeout`` seconds?"""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True
