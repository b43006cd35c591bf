"""Operator callbacks: scripts RAM runs when this member's PostgreSQL starts, stops, restarts,
changes role or reloads its configuration - to move a virtual IP, repoint PgBouncer, register in
service discovery. The Patroni convention: ``SCRIPT ACTION ROLE CLUSTER_NAME``, e.g.
``/usr/local/bin/vip.sh on_role_change primary main``.

Two halves, as everywhere in ``ram/ha``:

* :func:`hooks_for` is pure: from two consecutive observations of the local PostgreSQL it says which
  hooks fire (tested without processes);
* :class:`CallbackRunner` runs them. :meth:`CallbackRunner.fire` only queues (the HA loop never
  waits on a script); one worker runs the queue in order (a VIP script must see "replica" before
  "primary" if that is how it happened), each script in its own process group with a timeout, after
  which the whole group is killed. The outcome is logged and recorded as a ``callback_ran`` event. A
  script that fails or hangs changes nothing else: RAM's decisions never read callback outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ram.eventstore.events import CallbackRan

__all__ = ["HOOKS", "CallbackRunner", "Hook", "Role", "Seen", "hooks_for"]

log = logging.getLogger("ram.ha.callbacks")

Hook = Literal["on_start", "on_stop", "on_restart", "on_role_change", "on_reload"]
Role = Literal["primary", "replica", "unknown"]
HOOKS: tuple[Hook, ...] = ("on_start", "on_stop", "on_restart", "on_role_change", "on_reload")

#: Queued invocations beyond this are dropped, oldest first (a script slower than the changes it
#: reacts to must not grow RAM's memory without bound); each drop is logged.
QUEUE_MAX = 64
#: The end of a script's output kept for the log and the event.
OUTPUT_TAIL_CHARS = 800


@dataclass(frozen=True)
class Seen:
    """One observation of the local PostgreSQL: running (and accepting connections) and its role."""

    running: bool
    role: Role = "unknown"


def hooks_for(previous: Seen | None, now: Seen, *, last_role: Role) -> list[tuple[Hook, Role]]:
    """The hooks that fire between two observations (``previous`` None: RAM just started).

    ``last_role`` is the role PostgreSQL last ran with (kept across a stop). Observations made during
    an operator's restart are not fed here at all (:meth:`CallbackRunner.observed`): the stop and
    start inside it fire nothing, the executor fires ``on_restart`` once it is done.

    * RAM starts and finds PostgreSQL running: ``on_start`` (a script can set up what the role needs).
    * stopped -> running: ``on_start``; and ``on_role_change`` as well when it came back in another
      role than it last ran with (a demoted primary restarting as a standby).
    * running -> stopped: ``on_stop`` with the role it had.
    * running in both, the role changed (a promotion): ``on_role_change`` with the new role.
    """
    if previous is None:
        return [("on_start", now.role)] if now.running else []
    if previous.running and not now.running:
        return [("on_stop", previous.role)]
    if not previous.running and now.running:
        out: list[tuple[Hook, Role]] = [("on_start", now.role)]
        if last_role != "unknown" and now.role != "unknown" and now.role != last_role:
            out.append(("on_role_change", now.role))
        return out
    if previous.running and now.running and previous.role != now.role and now.role != "unknown":
        return [("on_role_change", now.role)]
    return []


@dataclass
class _Call:
    hook: Hook
    role: Role
    argv: list[str]
    queued_at: float


class CallbackRunner:
    """Runs the configured scripts one after another, in the order the hooks fired."""

    def __init__(
        self,
        member: str,
        cluster_name: str,
        scripts: dict[Hook, list[str]],
        *,
        timeout_s: float,
        record: Callable[[CallbackRan], None],
    ) -> None:
        self.member = member
        self.cluster_name = cluster_name
        self.scripts = scripts
        self.timeout_s = timeout_s
        self._record = record
        self._queue: deque[_Call] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._previous: Seen | None = None
        self._last_role: Role = "unknown"
        #: Set by the executor around an operator's restart (its stop and start fire nothing).
        self.restarting = False
        self.ran = 0
        self.dropped = 0
        #: Set while nothing is queued or running.
        self._idle = asyncio.Event()
        self._idle.set()

    def observed(self, now: Seen) -> None:
        """Feed one observation; fires what :func:`hooks_for` says."""
        if self.restarting:
            return  # the stop and start inside an operator's restart: on_restart comes afterwards
        for hook, role in hooks_for(self._previous, now, last_role=self._last_role):
            self.fire(hook, role)
        self._previous = now
        if now.running and now.role != "unknown":
            self._last_role = now.role

    @property
    def role(self) -> Role:
        """The role PostgreSQL last ran with (for hooks fired from outside an observation)."""
        return self._last_role

    def fire(self, hook: Hook, role: Role) -> None:
        """Queue ``hook`` (if a script is configured for it); never blocks, never raises."""
        argv = self.scripts.get(hook)
        if not argv:
            return
        if len(self._queue) >= QUEUE_MAX:
            lost = self._queue.popleft()
            self.dropped += 1
            log.warning("callback queue full; dropped hook=%s role=%s queued %.1f s ago", lost.hook, lost.role,
                        time.monotonic() - lost.queued_at)
        self._queue.append(_Call(hook, role, [*argv, hook, role, self.cluster_name], time.monotonic()))
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._work(), name="ram.ha.callbacks")

    async def _work(self) -> None:
        while True:
            while self._queue:
                call = self._queue.popleft()
                event = await self._run(call)
                self.ran += 1
                with contextlib.suppress(Exception):  # recording is best effort; the log has it too
                    self._record(event)
            self._idle.set()
            self._wake.clear()
            await self._wake.wait()

    async def _run(self, call: _Call) -> CallbackRan:
        started = time.monotonic()
        exit_code: int | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *call.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout kills what it started too
            )
        except OSError as exc:
            return self._done(call, started, "error", None, f"could not start {call.argv[0]}: {exc.strerror or exc}")
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
            return self._done(call, started, "timeout", None, f"killed after {self.timeout_s:g} s")
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        exit_code = proc.returncode
        text = output.decode(errors="replace")[-OUTPUT_TAIL_CHARS:].replace("\x00", "")
        return self._done(call, started, "ok" if exit_code == 0 else "failed", exit_code, text)

    def _done(self, call: _Call, started: float, outcome: Literal["ok", "failed", "timeout", "error"],
              exit_code: int | None, output: str) -> CallbackRan:
        took_ms = int((time.monotonic() - started) * 1000)
        level = logging.INFO if outcome == "ok" else logging.WARNING
        log.log(level, "callback ran hook=%s role=%s outcome=%s exit_code=%s duration_ms=%d output=%r",
                call.hook, call.role, outcome, exit_code, took_ms, output[-200:])
        return CallbackRan(name=self.member, hook=call.hook, role=call.role, outcome=outcome, exit_code=exit_code,
                           duration_ms=min(took_ms, 2**31 - 1), output=output.strip()[-OUTPUT_TAIL_CHARS:])

    async def drain(self, timeout: float) -> None:
        """Wait until every queued callback ran (at most ``timeout`` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def close(self) -> None:
        """Stop the worker (a running script's process group is killed)."""
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
