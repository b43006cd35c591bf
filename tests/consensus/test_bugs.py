"""The simulator must find every deliberate bug within a bounded number of seeds.

And the same seeds must be clean without the bug, so the violation is the bug's doing.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from ram.consensus.sim import run_seed, sizes_for
from ram.consensus.types import BUGS
from tests.consensus.test_scenarios_replication import figure8_commit_after_majority

MAX_SEEDS = 200
STEPS = 2000


def first_violation(bug: str | None, limit: int) -> tuple[int, str] | None:
    for seed in range(limit):
        res = run_seed(seed, sizes_for(seed, None), STEPS, bug)
        if res.violation is not None:
            return seed, res.violation
    return None


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_sim_catches_bug(bug: str) -> None:
    found = first_violation(bug, MAX_SEEDS)
    assert found is not None, f"{bug} not caught in {MAX_SEEDS} seeds"
    seed, why = found
    # Without the bug, the seeds up to the catching one are clean.
    for s in range(seed + 1):
        res = run_seed(s, sizes_for(s, None), STEPS, None)
        assert res.violation is None, (s, res.violation)
    print(f"{bug}: caught at seed {seed}: {why}")


def test_figure8_scenario_catches_commit_bug() -> None:
    assert figure8_commit_after_majority()[0] < 2
    assert figure8_commit_after_majority(bug="commit_old_term_by_counting")[0] >= 2


def test_cli_reports_violation_with_replay_command_and_json_last_line() -> None:
    import json

    out = subprocess.run(
        [sys.executable, "-m", "ram.consensus.sim", "--seeds", "3", "--bug", "apply_uncommitted"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    lines = out.stdout.strip().splitlines()
    assert any("python -m ram.consensus.sim --seeds 1 --seed-start" in ln and "--trace" in ln for ln in lines)
    summary = json.loads(lines[-1])
    assert summary["violations"] >= 1 and {"seeds", "steps", "seeds_per_s"} <= summary.keys()
    ok = subprocess.run(
        [sys.executable, "-m", "ram.consensus.sim", "--seeds", "2", "--steps", "500"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and json.loads(ok.stdout.strip().splitlines()[-1])["violations"] == 0
