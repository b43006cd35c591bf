"""Chaos runner: random faults at random times on a real local cluster under write load, then checks.

    python bench/chaos.py --minutes 3 --seed 7                 # synchronous mode, 3 nodes
    python bench/chaos.py --minutes 30 --seed 8 --sync off --nodes 5
    python bench/chaos.py --minutes 2 --seed 1 --faults kill_node,isolate_primary,switchover

Faults (tests/faults/faults.py): kill -9 of ram / postmaster / both, SIGSTOP of ram / PostgreSQL /
the whole node, network cuts (primary isolated, one node isolated, random halves, a bridge, one way),
the store database down, the data disk full or read-only, a wall-clock jump (only with
RAM_CHAOS_CLOCK=1: it moves the whole machine's clock), and planned switchovers. Needs root for the
network cuts, cgroups and disks; what can not run here is listed under "skipped".

Prints ONE JSON object on stdout: faults by kind, failovers, worst and median write unavailability,
lost acknowledged writes, split-brain incidents, convergence time, every checker failure, and the
command line that replays the seed. Progress goes to stderr. Exit status 1 when a checker failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stoppable import run_stoppable
from tests.faults.faults import KINDS
from tests.faults.runner import ChaosConfig, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="how long faults are injected (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sync", choices=("on", "off"), default="on", help="synchronous_mode (default on)")
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    parser.add_argument("--faults", default=",".join(KINDS), help="comma-separated fault kinds (default: all)")
    parser.add_argument("--hold", default="2,10", help="min,max seconds a fault is held (default 2,10)")
    args = parser.parse_args()
    kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown fault kinds {unknown}; known: {', '.join(KINDS)}")
    lo, hi = (float(x) for x in args.hold.split(","))
    cfg = ChaosConfig(minutes=args.minutes, seed=args.seed, sync=args.sync, nodes=args.nodes, kinds=kinds,
                      hold_s=(lo, hi))
    report = run_stoppable(run(cfg))
    print(json.dumps(report, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
