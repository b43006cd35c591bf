"""The CI soak: 500 seeds x 2,000 steps across 3, 5 and 7 nodes, every invariant checked per step."""

from __future__ import annotations

import pytest

from ram.consensus.sim import replay_command, run_seed, sizes_for

SEEDS = 500
CHUNK = 50
STEPS = 2000


@pytest.mark.parametrize("start", range(0, SEEDS, CHUNK))
def test_sim_seeds_clean(start: int) -> None:
    failures = []
    for seed in range(start, start + CHUNK):
        n = sizes_for(seed, None)
        res = run_seed(seed, n, STEPS)
        assert res.steps >= STEPS
        if res.violation is not None:
            failures.append(f"seed {seed}: {res.violation}\n  replay: {replay_command(seed, n, STEPS, None)}")
    assert not failures, "\n".join(failures)
