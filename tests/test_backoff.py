"""The one backoff rule: doubling from ``initial``, capped, jitter in the upper half, bad bounds refused."""

from __future__ import annotations

import random

import pytest

from ram.backoff import Backoff


def test_doubles_and_caps() -> None:
    b = Backoff(0.05, 1.0)
    assert [b.delay(n) for n in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert b.delay(10_000) == 1.0


def test_jitter_stays_in_the_upper_half_and_replays() -> None:
    a = Backoff(0.1, 2.0, jitter=True, rng=random.Random(7))
    b = Backoff(0.1, 2.0, jitter=True, rng=random.Random(7))
    delays = [a.delay(n) for n in range(8)]
    assert delays == [b.delay(n) for n in range(8)]
    for n, d in enumerate(delays):
        ceiling = min(2.0, 0.1 * 2**n)
        assert ceiling / 2 <= d <= ceiling


@pytest.mark.parametrize("initial, maximum", [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_bad_bounds_refused(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(initial, maximum)
