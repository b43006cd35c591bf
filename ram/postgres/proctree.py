"""A postmaster's process tree, read from /proc, and the signals that end it.

One home for "is this process alive", "which processes are its children" and "take this server down
now", shared by the `ram` process (:meth:`ram.postgres.instance.ManagedInstance.fence`) and by the
fence guard (:mod:`ram.ha.fence_guard`). Standard library only: the guard must start in
milliseconds and import nothing that can break.

Why signals and not ``pg_ctl stop -m immediate`` on the fence path: spawning ``pg_ctl`` (through
``runuser`` when `ram` runs as root) costs tens of milliseconds on an idle machine and far more on a
saturated one, and every millisecond of fence time is a millisecond the lease must reserve
(``fence_duration_s``). A SIGQUIT sent directly to the postmaster AND to each of its children makes
every backend exit at once (PostgreSQL's ``quickdie``: no commit is acknowledged after it), without
waiting for the postmaster to be scheduled to forward it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = ["alive", "children", "quit_tree", "reap"]


def alive(pid: int) -> bool:
    """Does ``pid`` exist and is it not a zombie? (``kill(pid, 0)`` calls a zombie alive.)"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``.

    Reads ``/proc/<pid>/task/<tid>/children`` (one small file per thread of the parent) where the
    kernel offers it, instead of the status of every process on the machine; falls back to that
    scan otherwise. A postmaster's backends are in their own sessions, so a process group would
    not find them.
    """
    tasks = Path(f"/proc/{pid}/task")
    try:
        found: list[int] = []
        for task in tasks.iterdir():
            found.extend(int(word) for word in (task / "children").read_text().split())
        return found
    except FileNotFoundError:
        if not tasks.exists():
            return []  # the parent is gone
    except (OSError, ValueError):
        pass
    return _children_by_scan(pid)


def _children_by_scan(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(entry.name))
    return out


def quit_tree(pid: int) -> list[int]:
    """Immediate shutdown of postmaster ``pid``: SIGQUIT to it and to every child at once.

    When this returns, no backend acknowledges another commit (each exits in its signal handler);
    returns the tree it signalled, for :func:`reap`. Cheap enough for an event loop: a few small
    /proc reads and ``kill`` calls, no subprocess, no wait.
    """
    tree = [pid, *children(pid)]
    for p in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGQUIT)
    return tree


def reap(tree: list[int], kill_after: float, poll: float = 0.01) -> list[int]:
    """Wait up to ``kill_after`` seconds for ``tree`` (postmaster first) to be gone, then SIGKILL
    what is left, children first (a backend whose postmaster is gone could still answer a client).
    Returns the pids that needed SIGKILL. Blocks: run it in a thread from async code.

    The wait matters for what comes next, not for the fence: a new postmaster must not meet old
    backends still attached to the shared memory.
    """
    deadline = time.monotonic() + kill_after
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        time.sleep(poll)
    left = [p for p in tree if alive(p)]
    for p in sorted(left, key=lambda q: q == tree[0]):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    return left
