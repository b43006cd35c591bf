"""Exponential backoff, the one rule for "wait longer after each failure": the Raft transport's
reconnects and the Raft node's store retries use it (a fixed retry interval, as in
:mod:`ram.ha.facts`, is not backoff and does not).

Jitter is "equal jitter" - a delay in [d/2, d] - so peers that lost each other at the same instant
do not redial in lockstep, while the delay still grows; the random source is injectable so that
tests replay exactly."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """Delay ``initial * 2**attempt`` capped at ``maximum``; with ``jitter``, a uniform pick in its
    upper half."""

    initial: float
    maximum: float
    jitter: bool = False
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, not {self.initial} and {self.maximum}")

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (0 for the first retry)."""
        ceiling = min(self.maximum, self.initial * (2.0 ** min(max(attempt, 0), 32)))
        return ceiling * (0.5 + 0.5 * self.rng.random()) if self.jitter else ceiling
