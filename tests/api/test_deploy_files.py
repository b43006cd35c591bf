"""deploy/: the Prometheus alerts and the Grafana dashboard use only metrics a node exports, and the
systemd unit passes systemd-analyze."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import ApiCluster

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_METRIC = re.compile(r"\bram_[a-z_]+\b")
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _expressions() -> dict[str, str]:
    """Every PromQL expression of the alerts and the dashboard, by where it is."""
    out: dict[str, str] = {}
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in alerts["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule), rule
            out[f"alert {rule['alert']}"] = str(rule["expr"])
    dashboard = json.loads((DEPLOY / "grafana" / "ram.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out[f"panel {panel['title']}"] = target["expr"]
    return out


def _family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


async def test_every_metric_used_by_alerts_and_dashboard_is_exported(
    api_cluster: ApiCluster, client: httpx.AsyncClient
) -> None:
    await api_cluster.settled()
    r = await client.get(api_cluster.url(0) + "/metrics")
    assert r.status_code == 200
    exported = {f.name for f in text_string_to_metric_families(r.text)}
    used = {where: set(_METRIC.findall(expr)) for where, expr in _expressions().items()}
    assert used and all(used.values()), used
    missing = {where: sorted(n for n in names if _family(n) not in exported) for where, names in used.items()}
    assert not {w: m for w, m in missing.items() if m}, missing


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the unit, with ExecStart pointed at this environment's ``ram``
    (verify insists the command exists)."""
    ram = Path(sys.executable).parent / "ram"
    unit = (DEPLOY / "systemd" / "ram.service").read_text()
    assert "/opt/ram/bin/ram node run" in unit and "KillMode=mixed" in unit and "User=postgres" in unit
    (tmp_path / "ram.service").write_text(unit.replace("/opt/ram/bin/ram", str(ram)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "ram.service")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
