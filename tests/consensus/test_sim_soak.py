"""The CI soak: 500 seeds x 2,000 steps across 3, 5 and 7 nodes, every invariant checked per step.

``-m slow`` runs 100,000 seeds (and 10,000 of a single voter with learners), over all cores.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from ram.consensus.sim import replay_command, run_seed, sizes_for

SEEDS = 500
CHUNK = 50
STEPS = 2000
SLOW_SEEDS = 100_000
SLOW_SINGLE_VOTER_SEEDS = 10_000
SLOW_CHUNK = 500


def soak(start: int, count: int, nodes: int | None = None) -> list[str]:
    """Run seeds start..start+count; the failures, each with its replay command."""
    failures = []
    for seed in range(start, start + count):
        n = sizes_for(seed, nodes)
        res = run_seed(seed, n, STEPS)
        assert res.steps >= STEPS
        if res.violation is not None:
            failures.append(f"seed {seed}: {res.violation}\n  replay: {replay_command(seed, n, STEPS)}")
    return failures


@pytest.mark.parametrize("start", range(0, SEEDS, CHUNK))
def test_sim_seeds_clean(start: int) -> None:
    failures = soak(start, CHUNK)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_sim_100k_seeds_clean() -> None:
    jobs = [(s, SLOW_CHUNK, None) for s in range(SEEDS, SEEDS + SLOW_SEEDS, SLOW_CHUNK)]
    jobs += [(s, SLOW_CHUNK, 1) for s in range(0, SLOW_SINGLE_VOTER_SEEDS, SLOW_CHUNK)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        failures = [f for chunk in pool.map(soak, *zip(*jobs, strict=True)) for f in chunk]
    assert not failures, "\n".join(failures[:20])
