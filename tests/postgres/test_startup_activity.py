"""The startup process's title is found among the postmaster's children (what tells a standby that
replays its way to consistency from one whose recovery stands still)."""

from __future__ import annotations

import os
import subprocess

from ram.postgres.status import startup_activity


def test_startup_title_of_a_child() -> None:
    title = "postgres: main: startup recovering 000000100000000000000004"
    child = subprocess.Popen(["bash", "-c", f'exec -a "{title}" sleep 30'])
    other = subprocess.Popen(["bash", "-c", 'exec -a "postgres: checkpointer" sleep 30'])
    try:
        for _ in range(100):
            found = startup_activity(os.getpid())
            if found is not None:
                break
            subprocess.run(["sleep", "0.02"], check=True)
        assert found is not None and found.startswith("startup recovering 000000100000000000000004"), found
        assert startup_activity(child.pid) is None  # a process without such a child
    finally:
        for p in (child, other):
            p.kill()
            p.wait()
