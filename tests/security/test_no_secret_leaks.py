"""Secrets stay secret (issue #11): after a real cluster has bootstrapped, switched over, changed its
configuration and answered every read, no password, token or cluster secret appears in any node's
log, PostgreSQL's logs, the recorded events, an API response or the process list (``ps``)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from tests.e2e.cluster import E2ECluster


def _ps_and_logs(root: Path) -> dict[str, str]:
    """The process list with full command lines, and every log file of the cluster (RAM's nodes,
    their PostgreSQL, the store)."""
    out = {"ps": subprocess.run(["ps", "-eo", "pid,args", "ww"], capture_output=True, text=True, check=True).stdout}
    for log in sorted([*root.rglob("*.log"), *root.rglob("log/*")]):
        if log.is_file():
            out[str(log)] = log.read_text(errors="replace")
    return out


async def test_no_secret_in_logs_events_api_or_ps() -> None:
    e2e = E2ECluster()
    try:
        await e2e.start()
        info = e2e.info
        secrets = {
            "replication password": info.replication_password,
            "superuser password": info.superuser_password,
            "raft secret": (Path(info.dir) / "raft.secret").read_text().strip(),
            "admin token": info.admin_token(),
            "read token": info.read_token_file.read_text().strip(),
        }
        assert all(len(v) >= 16 for v in secrets.values()), "a secret is too short to be found reliably"
        c = await e2e.wait_healthy(90)
        target = next(m["name"] for m in c["members"] if m["name"] != c["primary"])
        r = await e2e.api("POST", "/switchover", json={"candidate": target})
        assert r.status_code == 202, r.text
        await e2e.wait_for(lambda c: c["primary"] == target, 60, "the switchover")
        r = await e2e.api("PATCH", "/config", json={"postgresql.parameters.work_mem": "8MB"})
        assert r.status_code == 200, r.text
        seen: dict[str, str] = {}
        async with e2e.http() as client:
            for m in info.members:
                for path in ("/cluster", "/config", "/history", "/members/" + m.name, "/metrics",
                             "/events?after=0&limit=10000", "/schema/openapi.json", "/health", "/replica"):
                    seen[f"{m.name} GET {path}"] = (await client.get(m.api_url + path)).text
        seen.update(await asyncio.to_thread(_ps_and_logs, Path(info.dir)))
        assert len(seen) > 20
        leaks = [f"{what} in {where}" for where, text in seen.items() for what, s in secrets.items() if s in text]
        assert not leaks, leaks[:10]
    finally:
        await e2e.close()
