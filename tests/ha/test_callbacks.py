"""Operator callbacks: which hooks fire (pure), and how scripts run (real processes): arguments in
the Patroni order, in order, never blocking the caller, failures and hangs recorded and contained."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

import pytest

from ram.config import ConfigError, parse_config
from ram.eventstore.events import CallbackRan
from ram.ha.callbacks import QUEUE_MAX, CallbackRunner, Seen, hooks_for

UP_P, UP_R, DOWN = Seen(True, "primary"), Seen(True, "replica"), Seen(False)


@pytest.mark.parametrize(
    ("previous", "now", "last_role", "expected"),
    [
        (None, UP_P, "unknown", [("on_start", "primary")]),  # RAM starts, PostgreSQL already runs
        (None, DOWN, "unknown", []),
        (DOWN, UP_R, "unknown", [("on_start", "replica")]),
        (UP_R, DOWN, "replica", [("on_stop", "replica")]),
        (UP_R, UP_P, "replica", [("on_role_change", "primary")]),  # promotion
        (DOWN, UP_R, "primary", [("on_start", "replica"), ("on_role_change", "replica")]),  # demoted via restart
        (UP_P, UP_P, "primary", []),
        (DOWN, DOWN, "replica", []),
        (UP_R, Seen(True, "unknown"), "replica", []),  # a status read that could not tell the role
    ],
)
def test_hooks_for(previous: Seen | None, now: Seen, last_role: str, expected: list[tuple[str, str]]) -> None:
    assert hooks_for(previous, now, last_role=last_role) == expected  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    """Running (a killed child re-parented to an init that does not reap it stays a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _runner(scripts: dict[str, list[str]], timeout_s: float = 5.0) -> tuple[CallbackRunner, list[CallbackRan]]:
    recorded: list[CallbackRan] = []
    return CallbackRunner("pg1", "main", scripts, timeout_s=timeout_s, record=recorded.append), recorded  # type: ignore[arg-type]


async def test_arguments_order_and_outcomes(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    ok = _script(tmp_path, "ok.sh", f'echo "$@" >> {log}; echo done')
    bad = _script(tmp_path, "bad.sh", "echo something broke >&2; exit 3")
    runner, recorded = _runner({"on_start": [ok, "--extra"], "on_role_change": [ok], "on_stop": [bad]})
    runner.observed(DOWN)
    runner.observed(UP_R)
    runner.observed(UP_P)
    runner.observed(DOWN)
    runner.fire("on_reload", "primary")  # no script configured: nothing
    await runner.drain(10)
    assert log.read_text().splitlines() == ["--extra on_start replica main", "on_role_change primary main"]
    assert [(e.hook, e.role, e.outcome, e.exit_code) for e in recorded] == [
        ("on_start", "replica", "ok", 0),
        ("on_role_change", "primary", "ok", 0),
        ("on_stop", "primary", "failed", 3),
    ]
    assert recorded[0].output == "done" and "something broke" in recorded[2].output
    assert all(e.name == "pg1" for e in recorded)
    await runner.close()


async def test_an_operators_restart_fires_only_on_restart(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    ok = _script(tmp_path, "ok.sh", f'echo "$@" >> {log}')
    runner, recorded = _runner({"on_start": [ok], "on_stop": [ok], "on_restart": [ok]})
    runner.observed(UP_P)  # RAM starts, PostgreSQL runs: on_start
    runner.restarting = True
    runner.observed(DOWN)
    runner.observed(UP_P)
    runner.restarting = False
    runner.fire("on_restart", runner.role)
    runner.observed(UP_P)  # unchanged after the restart: nothing more
    await runner.drain(10)
    assert [e.hook for e in recorded] == ["on_start", "on_restart"]
    await runner.close()


async def test_hanging_script_is_killed_with_its_children_and_never_blocks(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    hang = _script(tmp_path, "hang.sh", f"sleep 300 & echo $! > {pidfile}; wait")
    after = tmp_path / "after"
    ok = _script(tmp_path, "ok.sh", f"touch {after}")
    runner, recorded = _runner({"on_role_change": [hang], "on_stop": [ok]}, timeout_s=1.0)
    started = time.monotonic()
    runner.fire("on_role_change", "primary")
    runner.fire("on_stop", "primary")
    assert time.monotonic() - started < 0.1  # queued, not run, by the caller
    await runner.drain(10)
    assert [(e.hook, e.outcome) for e in recorded] == [("on_role_change", "timeout"), ("on_stop", "ok")]
    assert 1000 <= recorded[0].duration_ms < 5000 and after.exists()
    child = int(pidfile.read_text())
    await asyncio.sleep(0.2)
    assert not _alive(child)  # the script's background child went with its process group
    await runner.close()


async def test_missing_script_and_overflow(tmp_path: Path) -> None:
    runner, recorded = _runner({"on_start": [str(tmp_path / "nope.sh")]})
    runner.fire("on_start", "replica")
    await runner.drain(5)
    assert recorded[0].outcome == "error" and "could not start" in recorded[0].output
    slow = _script(tmp_path, "slow.sh", "sleep 0.2")
    runner2, _ = _runner({"on_reload": [slow]})
    for _ in range(QUEUE_MAX + 10):
        runner2.fire("on_reload", "replica")
    assert runner2.dropped >= 9
    await runner2.close()
    await runner.close()


def test_config_accepts_words_or_a_command_line(tmp_path: Path) -> None:
    base = {
        "cluster_id": "c", "node_id": 1, "name": "n1", "data_dir": str(tmp_path), "raft": {"listen": "127.0.0.1:7400"}
    }
    cfg = parse_config({**base, "callbacks": {"on_role_change": "/usr/local/bin/vip.sh --dev 'eth 0'",
                                              "on_stop": ["/bin/true"], "timeout_s": 5}})
    assert cfg.callbacks.on_role_change == ["/usr/local/bin/vip.sh", "--dev", "eth 0"]
    assert cfg.callbacks.on_stop == ["/bin/true"] and cfg.callbacks.on_start is None
    with pytest.raises(ConfigError, match=r"callbacks\.timeout_s"):
        parse_config({**base, "callbacks": {"timeout_s": 0}})
    with pytest.raises(ConfigError, match=r"callbacks\.on_start"):
        parse_config({**base, "callbacks": {"on_start": "'unterminated"}})
    with pytest.raises(ConfigError, match=r"callbacks\.on_bogus"):
        parse_config({**base, "callbacks": {"on_bogus": "x"}})
