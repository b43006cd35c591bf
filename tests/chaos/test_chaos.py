"""The chaos run in CI (3 minutes of faults, ~4 minutes in all) and the long one (``-m slow``).

CI asserts the safety properties: no acknowledged write lost (synchronous mode), no split brain,
identical pgraft.events on every node, the API agreeing with PostgreSQL, and convergence after
every fault. Availability outside fault windows is reported (CI machines stall); the slow run
asserts every checker. The seed is random unless ``RAM_CHAOS_SEED`` is set; a failure names it
and the command that replays it (``python bench/chaos.py ...``).
"""

from __future__ import annotations

import json
import os
import random
import sys

import pytest

from tests.faults.net import usable as net_usable
from tests.faults.runner import ChaosConfig, run

pytestmark = pytest.mark.skipif(net_usable() is not None or os.geteuid() != 0,
                                reason=net_usable() or "chaos runs need root (iptables, cgroups, disks)")

SAFETY = ("acknowledged writes missing", "split brain", "pgraft.events differ", "no convergence",
          "no final convergence", "API and PostgreSQL disagree", "harness", "applying", "undoing")


def _seed() -> int:
    return int(os.environ.get("RAM_CHAOS_SEED") or random.randrange(1, 1_000_000))


def _summary(report: dict[str, object]) -> str:
    keep = {k: v for k, v in report.items() if k not in ("fault_log", "events", "split_brain_examples")}
    return json.dumps(keep, default=str)


async def test_chaos_ci_run_sync_mode() -> None:
    cfg = ChaosConfig(minutes=float(os.environ.get("RAM_CHAOS_MINUTES", "3")), seed=_seed(), sync="on", nodes=3,
                      hold_s=(2.0, 8.0))
    report = await run(cfg)
    print(_summary(report), file=sys.stderr)
    safety = [f for f in report["failures"] if f.startswith(SAFETY)]
    assert not safety, f"seed {cfg.seed}: {safety}\nreplay: {cfg.replay()}\n{_summary(report)}"
    assert report["lost_acked_writes"] == 0, (cfg.replay(), report["lost_examples"])
    assert report["split_brain"] == 0, (cfg.replay(), report["split_brain_examples"])
    assert report["convergence_s"]["final"] is not None, cfg.replay()
    assert sum(report["faults"].values()) >= 5, f"too few faults ran: {report['faults']} ({cfg.replay()})"


@pytest.mark.slow
@pytest.mark.parametrize("sync, nodes", [("on", 3), ("off", 5)])
async def test_chaos_long_run(sync: str, nodes: int) -> None:
    cfg = ChaosConfig(minutes=float(os.environ.get("RAM_CHAOS_MINUTES", "15")), seed=_seed(), sync=sync, nodes=nodes)
    report = await run(cfg)
    print(_summary(report), file=sys.stderr)
    assert report["ok"], f"seed {cfg.seed}: {report['failures']}\nreplay: {cfg.replay()}\n{_summary(report)}"
    if sync == "on":
        assert report["lost_acked_writes"] == 0
    assert report["split_brain"] == 0
