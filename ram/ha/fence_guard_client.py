"""`ram`'s side of the fence guard (:mod:`ram.ha.fence_guard`): start it, keep it told about the
lease, restart it if it dies, and say EXIT on a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

log = logging.getLogger("ram.ha.guard")


class FenceGuardProcess:
    """One guard process for one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._proc: asyncio.subprocess.Process | None = None
        self._last: str = "DISARM"
        self._closing = False

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ram.ha.fence_guard", str(self.data_dir),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=None,  # its rare messages belong in our log stream
        )
        log.info("fence guard started pid=%d", self._proc.pid)
        self._send(self._last)

    async def ensure_running(self) -> None:
        """Restart a guard that died (it is what fences if this process stops working)."""
        if self._closing:
            return
        if self._proc is None or self._proc.returncode is not None:
            code = None if self._proc is None else self._proc.returncode
            log.warning("fence guard not running (exit code %s); restarting it", code)
            await self.start()

    def arm(self, fence_at: float) -> None:
        """Fence at monotonic time ``fence_at`` unless re-armed later."""
        self._send(f"ARM {fence_at:.6f}")

    def disarm(self) -> None:
        self._send("DISARM")

    def _send(self, line: str) -> None:
        self._last = line
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            proc.stdin.write(line.encode() + b"\n")

    async def close(self) -> None:
        """Clean stop: tell the guard to exit without fencing (PostgreSQL was stopped by us)."""
        self._closing = True
        proc = self._proc
        if proc is None:
            return
        self._send("EXIT")
        with contextlib.suppress(Exception):
            if proc.stdin is not None:
                await proc.stdin.drain()
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 3)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
