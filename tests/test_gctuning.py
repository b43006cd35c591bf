"""The node's collector setup (ram.gctuning), checked in a fresh interpreter: it changes
process-wide state that the test process must keep as it is."""

from __future__ import annotations

import json
import subprocess
import sys

from ram.gctuning import THRESHOLDS

_PROBE = """
import gc, json, weakref
import ram.cluster.node  # what a node has loaded when it tunes
from ram.gctuning import tune_collector
before = gc.get_freeze_count()
tune_collector()
class Cycle:
    pass
a, b = Cycle(), Cycle()
a.other, b.other = b, a
alive = weakref.ref(a)
del a, b
kept = [[] for _ in range(3 * 10_000)]  # enough live allocations for young collections to run on their own
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "thresholds": gc.get_threshold(),
                  "enabled": gc.isenabled(), "cycle_collected": alive() is None}))
"""


def test_tune_collector_freezes_startup_objects_and_still_collects_cycles() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60)
    probe = json.loads(out.stdout)
    assert probe["before"] == 0
    # Everything the node modules loaded is out of the collector's walk from now on.
    assert probe["frozen"] > 10_000
    assert tuple(probe["thresholds"]) == THRESHOLDS
    assert probe["enabled"]
    # Garbage cycles made after tuning are still collected, without an explicit gc.collect().
    assert probe["cycle_collected"]
