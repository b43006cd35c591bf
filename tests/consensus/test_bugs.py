"""Every deliberate bug (``tests/consensus/bugs.py``) is caught, by the simulator and by a scenario.

The simulator must find each bug it is meant to find within a bounded number of seeds; those seeds
are below the CI soak's range (``test_sim_soak``), which proves them clean without the bug, so each
violation is the bug's doing. The measured first catching seed of each bug is in
``tests/consensus/RULES.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from ram.consensus.core import RaftCore
from ram.consensus.readyplan import split_sends
from ram.consensus.sim import SplitSends, run_seed, sizes_for
from tests.consensus import bugs, rules
from tests.consensus.rules import Core
from tests.consensus.test_sim_soak import SEEDS as SOAK_SEEDS

STEPS = 2000

# bug -> seeds the simulator may search (about twice the measured first catch, so small drifts in
# the scheduler do not break CI; the measured first catching seeds are in RULES.md).
SIM_BUDGET: dict[str, int] = {
    "CommitOldTermByCounting": 300,
    "DoubleVote": 10,
    "VoteBeforeDurable": 10,
    "ApplyUncommitted": 10,
    "NoTruncateConflict": 20,
    "VoteBeforeDurableSameTerm": 30,
    "LeaderCountsUndurable": 100,
    "FollowerCommitPastVerified": 60,
    "ReadIndexStaleConfirmation": 60,
    "ReadIndexAnyRound": 200,
    "StaleAck": 60,
    "ConfNoRollback": 40,
    "CheckQuorumNeverStepsDown": 40,
    "vote_reply_early": 10,
}

# bug -> the rule checks (tests/consensus/rules.py) that must fail on it.
SCENARIO: dict[type[RaftCore], tuple[Callable[[Core], None], ...]] = {
    bugs.CommitOldTermByCounting: (rules.check_leader_old_term_not_committed_by_counting,),
    bugs.DoubleVote: (rules.check_rv2_one_vote_per_term,),
    bugs.VoteBeforeDurable: (rules.check_vote_durable_before_reply,),
    bugs.ApplyUncommitted: (rules.check_all_apply_committed_in_order,),
    bugs.NoTruncateConflict: (rules.check_ae3_conflict_truncates,),
    bugs.VoteBeforeDurableSameTerm: (rules.check_vote_durable_before_reply,),
    bugs.LeaderCountsUndurable: (rules.check_leader_counts_self_only_durable,),
    bugs.FollowerCommitPastVerified: (rules.check_ae5_commit_min_last_new,),
    bugs.ReadIndexStaleConfirmation: (rules.check_read_not_from_recent_activity, rules.check_read_needs_fresh_round),
    bugs.ReadIndexAnyRound: (rules.check_read_needs_fresh_round,),
    bugs.StaleAck: (rules.check_stale_ack_dropped,),
    bugs.ConfNoRollback: (rules.check_conf_effect_on_append_and_rollback,),
    bugs.CheckQuorumNeverStepsDown: (rules.check_check_quorum_steps_down,),
}


def test_every_bug_has_a_sim_budget_and_a_scenario() -> None:
    assert {b.__name__ for b in bugs.ALL_CORE_BUGS} | {"vote_reply_early"} == set(SIM_BUDGET)
    assert set(bugs.ALL_CORE_BUGS) == set(SCENARIO)


@pytest.mark.parametrize(
    ("bug", "check"),
    [(b, c) for b, checks in SCENARIO.items() for c in checks],
    ids=lambda x: getattr(x, "__name__", str(x)).removeprefix("check_"),
)
def test_scenario_catches_bug(bug: type[RaftCore], check: Callable[[Core], None]) -> None:
    with pytest.raises(AssertionError):
        check(bug)


def first_violation(
    limit: int, core: Callable[..., RaftCore] = RaftCore, split: SplitSends = split_sends
) -> tuple[int, str] | None:
    for seed in range(limit):
        res = run_seed(seed, sizes_for(seed, None), STEPS, core=core, split=split)  # type: ignore[arg-type]
        if res.violation is not None:
            return seed, res.violation
    return None


@pytest.mark.parametrize("name", sorted(SIM_BUDGET))
def test_sim_catches_bug(name: str) -> None:
    limit = SIM_BUDGET[name]
    assert limit <= SOAK_SEEDS
    t0 = time.perf_counter()
    if name == "vote_reply_early":
        found = first_violation(limit, split=bugs.vote_reply_early)
    else:
        found = first_violation(limit, core=getattr(bugs, name))
    assert found is not None, f"{name} not caught in {limit} seeds"
    seed, why = found
    print(f"{name}: caught at seed {seed} in {time.perf_counter() - t0:.1f}s: {why}")


def test_cli_reports_violation_with_replay_command_and_json_last_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ram.consensus.sim", "--seeds", "3", "--core", "tests.consensus.bugs:ApplyUncommitted"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    lines = out.stdout.strip().splitlines()
    assert any(
        "python -m ram.consensus.sim --seeds 1 --seed-start" in ln
        and "--trace" in ln
        and "--core tests.consensus.bugs:ApplyUncommitted" in ln
        for ln in lines
    )
    summary = json.loads(lines[-1])
    assert summary["violations"] >= 1 and {"seeds", "steps", "seeds_per_s"} <= summary.keys()


def test_cli_reports_fault_and_crash_point_coverage() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "ram.consensus.sim", "--seeds", "12", "--steps", "1500"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stdout[-2000:]
    summary = json.loads(ok.stdout.strip().splitlines()[-1])
    assert summary["violations"] == 0
    faults, points = summary["faults"], summary["crash_points"]
    for kind in ("partition-halves", "partition-split_brain", "transfer", "read", "crash-now", "conf-add_learner"):
        assert faults.get(kind, 0) > 0, (kind, faults)
    assert set(points) == {
        "ready-before-persist",
        "snapshot-before-persist",
        "persisted-before-send",
        "sent-before-advance",
    }
    assert points["ready-before-persist"] > 0 and points["persisted-before-send"] > 0
