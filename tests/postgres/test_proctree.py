"""The process-tree helpers on real processes: children are found, SIGQUIT ends a tree at once, and a
child that ignores SIGQUIT is SIGKILLed after the grace period (children before the parent)."""

from __future__ import annotations

import subprocess
import sys
import time

from ram.postgres import proctree

#: A parent with two children; the second ignores SIGQUIT (like PostgreSQL's logger does).
_PARENT = """
import signal, subprocess, sys, time
IGNORING = "import signal, time; signal.signal(signal.SIGQUIT, signal.SIG_IGN); print('x', flush=True); time.sleep(60)"
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]),
        subprocess.Popen([sys.executable, "-c", IGNORING], stdout=subprocess.PIPE)]
kids[1].stdout.readline()
print("ready", flush=True)
time.sleep(60)
"""


def _spawn() -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_children_and_quit_then_kill() -> None:
    proc = _spawn()
    try:
        kids = proctree.children(proc.pid)
        assert len(kids) == 2 and all(proctree.alive(k) for k in kids)
        assert proctree.children(kids[0]) == []
        tree = proctree.quit_tree(proc.pid)
        assert sorted(tree[1:]) == sorted(kids)
        started = time.monotonic()
        left = proctree.reap(tree, kill_after=0.3)
        took = time.monotonic() - started
        # The parent and the plain child exit on SIGQUIT; the one that ignores it needs SIGKILL.
        assert len(left) == 1 and left[0] in kids, left
        assert 0.3 <= took < 2.0
        proc.wait(5)
        deadline = time.monotonic() + 5
        while any(proctree.alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not any(proctree.alive(k) for k in kids)
    finally:
        for pid in [proc.pid, *proctree.children(proc.pid)]:
            proctree.reap([pid], 0.0)
        proc.wait(5)


def test_gone_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(5)
    assert not proctree.alive(proc.pid)
    assert proctree.children(proc.pid) == []
    assert proctree.reap(proctree.quit_tree(proc.pid), 0.1) == []
