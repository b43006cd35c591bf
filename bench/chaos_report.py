"""Render bench/chaos.py's JSON as the README's Reliability paragraph and fault table (markdown on
stdout), so that a quoted run and its numbers can not drift apart:

    python bench/chaos.py --minutes 60 --seed 7 --sync on > run.json
    python bench/chaos_report.py run.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

LEFT_OUT = ("fault_log", "events", "split_brain_examples", "lost_examples", "api_mismatches")


def render(doc: dict[str, Any], machine: str) -> str:
    w, u, c = doc["writes"], doc["unavailability_s"], doc["convergence_s"]
    by_kind = c.get("max_by_fault") or {}
    rows = "\n".join(
        f"| {kind} | {count} | {u['per_fault'].get(kind, 0):.1f} s | {by_kind.get(kind, 0):.1f} s |"
        for kind, count in sorted(doc["faults"].items(), key=lambda kv: -kv[1])
    )
    summary = {k: v for k, v in doc.items() if k not in LEFT_OUT}
    faults = sum(doc["faults"].values())
    ran = f"it ran {doc['duration_s'] / 60:.1f} min"
    return f"""**A {doc['minutes']:g}-minute run** (`{doc['replay']}`, {machine}; {ran}): {faults} faults of
{len(doc['faults'])} kinds, {doc['failovers']} failovers and {doc['switchovers']} switchovers, {w['acknowledged']:,}
acknowledged writes, {doc['lost_acked_writes']} lost, {doc['split_brain']} split brain, convergence max {c['max']} s
(median {c['median']} s), worst write unavailability {u['worst']} s (median {u['median']} s), worst gap
outside fault windows {u['worst_outside_faults']} s; checker failures: {'; '.join(doc['failures']) or 'none'}.

| fault | count | worst write unavailability | longest convergence after it |
|---|---|---|---|
{rows}

```json
{json.dumps(summary)}
```
"""


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python bench/chaos_report.py RUN.json [MACHINE DESCRIPTION]")
    text = Path(sys.argv[1]).read_text().strip().splitlines()[-1]
    print(render(json.loads(text), sys.argv[2] if len(sys.argv) > 2 else "2-core Debian 12 machine"))
