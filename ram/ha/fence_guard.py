"""The fence guard: a dead man's switch that fences the primary when `ram` itself stops working.

Lease fencing (:mod:`ram.ha.lease`) is done by the `ram` process. If that process is killed or
frozen (kill -9, SIGSTOP, an OOM kill, a hung event loop) while its PostgreSQL keeps running,
nobody fences it — and after the lease expires the arbiter promotes another node: two primaries.
So every node runs this small separate process beside `ram`, connected by a pipe:

* ``ARM <t>``: the lease is held; fence at CLOCK_MONOTONIC time ``t`` (the holder's ``fence_at``)
  unless a later ``ARM`` moves it. Both processes read the same system-wide monotonic clock.
* ``DISARM``: no lease is held (a replica, or after a clean demotion): nothing to fence.
* ``EXIT``: a clean stop of `ram` (which stops PostgreSQL itself).
* end of input while armed — `ram` died: fence at once (earlier than the lease requires; always safe).
  A server that still runs as a standby then is watched for ``WATCH_AFTER_EXIT_S`` more and fenced
  if it turns writable: `ram` may have died in the middle of promoting it.

Fencing is an immediate shutdown (SIGQUIT to the postmaster, which takes every backend down with
it), then SIGKILL of the postmaster and its children if they are still there after
``KILL_AFTER_S`` (:mod:`ram.postgres.proctree`, standard library only). The guard imports nothing
else from RAM, so it starts in milliseconds and has nothing to break; it exits after `ram` went away.

Run as ``python -m ram.ha.fence_guard DATA_DIR``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ram.postgres.proctree import quit_tree, reap

KILL_AFTER_S = 1.0
WATCH_AFTER_EXIT_S = 10.0


@dataclass
class GuardState:
    """What the guard knows: the deadline while armed (None: disarmed), and whether to stop."""

    deadline: float | None = None
    done: bool = False
    fence_now: bool = False
    #: With ``fence_now``: the lease's fence time when `ram` went away.
    armed_until: float | None = None


def apply_message(state: GuardState, line: str) -> GuardState:
    """One protocol line (see the module docstring); an unknown line is ignored, never fatal."""
    words = line.split()
    if not words:
        return state
    if words[0] == "ARM" and len(words) == 2:
        with contextlib.suppress(ValueError):
            return GuardState(deadline=float(words[1]))
    elif words[0] == "DISARM":
        return GuardState(deadline=None)
    elif words[0] == "EXIT":
        return GuardState(deadline=None, done=True)
    return state


def on_end_of_input(state: GuardState) -> GuardState:
    """`ram` went away without saying EXIT: a held lease can no longer be renewed nor fenced by it."""
    return GuardState(deadline=None, done=True, fence_now=state.deadline is not None, armed_until=state.deadline)


def postmaster_pid(data_dir: Path) -> int | None:
    """The running postmaster of ``data_dir`` (checked against /proc, so a reused pid is not hit)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
        recorded_dir = lines[1].strip() if len(lines) > 1 else ""
    except (OSError, ValueError, IndexError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if b"postgres" not in cmdline or (recorded_dir and Path(recorded_dir).resolve() != data_dir.resolve()):
        return None
    return pid


def fence(data_dir: Path) -> str:
    """Immediate shutdown of ``data_dir``'s postmaster; SIGKILL what is left after KILL_AFTER_S.

    A server started as a standby (standby.signal present) accepts no writes and is left alone: a
    candidate holds the lease before it promotes, and promotion removes the file."""
    pid = postmaster_pid(data_dir)
    if pid is None:
        return "no running postmaster"
    if (data_dir / "standby.signal").exists():
        return f"postmaster {pid} runs as a standby: {NOT_FENCED}"
    left = reap(quit_tree(pid), KILL_AFTER_S)
    return f"postmaster {pid} sent SIGQUIT" + (f"; SIGKILL to {left}" if left else "")


NOT_FENCED = "not fenced"


def fence_if_it_turns_writable(data_dir: Path, until: float) -> str:
    """Fence now, or — a standby — as soon as it stops being one, until ``until``."""
    while True:
        result = fence(data_dir)
        if not result.endswith(NOT_FENCED) or time.monotonic() >= until:
            return result
        time.sleep(0.02)


def _say(message: str) -> None:
    print(f"ram fence guard: {message}", file=sys.stderr, flush=True)


def run(data_dir: Path, stdin_fd: int = 0) -> int:
    state = GuardState()
    buffer = b""
    while not state.done:
        timeout = None if state.deadline is None else max(0.0, state.deadline - time.monotonic())
        ready, _, _ = select.select([stdin_fd], [], [], timeout)
        if not ready:
            _say(f"lease not renewed in time (ram is not responding): {fence(data_dir)}")
            state = GuardState(deadline=None)
            continue
        chunk = os.read(stdin_fd, 4096)
        if not chunk:
            state = on_end_of_input(state)
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            state = apply_message(state, line.decode(errors="replace"))
        if state.deadline is not None and time.monotonic() >= state.deadline:
            _say(f"lease expired: {fence(data_dir)}")
            state = GuardState(deadline=None, done=state.done)
    if state.fence_now:
        until = max(state.armed_until or 0.0, time.monotonic()) + WATCH_AFTER_EXIT_S
        _say(f"ram exited while holding the lease: {fence_if_it_turns_writable(data_dir, until)}")
    return 0


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m ram.ha.fence_guard DATA_DIR", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for ram must not kill the guard first
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return run(Path(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
