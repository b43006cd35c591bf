"""``ram cluster up --sync on``: synchronous replication in one command, on a real local cluster.

Two nodes (a primary and its one possible standby) keep it light; the cluster is a real one (``ram node
run`` processes managing PostgreSQL 15), cleaned up whatever happens like the tour's.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ram.config import load_config
from tests.cli.test_cluster_up_tour import BIN, CTL_TIMEOUT_S, TOKEN_VARIABLES, UP_TIMEOUT_S, Tour, describe
from tests.conftest import make_tempdir
from tests.e2e.cluster import free_base_port

NODES = 2


@pytest.fixture(scope="module")
def sync_tour() -> Iterator[Tour]:
    root = make_tempdir("ram-sync-tour-")
    env = {k: v for k, v in os.environ.items() if k not in ("RAM_API", "PGPASSFILE", "PGUSER", "PGHOST", "PGPORT",
                                                            *TOKEN_VARIABLES)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    tour = Tour(root=root, base_port=free_base_port(NODES), env=env)
    try:
        tour.up = tour.ram("cluster", "up", "--nodes", str(NODES), "--dir", str(tour.dir),
                           "--base-port", str(tour.base_port), "--timeout", str(UP_TIMEOUT_S), "--sync", "on")
        assert tour.up.returncode == 0, describe(tour.up)
        env["RAM_API"] = ",".join(tour.api_urls())
        env["RAM_TOKEN_FILE"] = str(tour.info()["admin_token_file"])
        env["PGPASSFILE"] = str(tour.info()["pgpass_file"])
        yield tour
    finally:
        tour.cleanup()


def test_sync_on_reaches_the_configs_and_the_running_cluster(sync_tour: Tour) -> None:
    tour = sync_tour
    assert tour.up is not None and "synchronous mode on" in tour.up.stdout, tour.up.stdout
    for member in tour.info()["members"]:
        path = Path(member["config_file"])
        assert tomllib.loads(path.read_text())["ha"] == {
            "synchronous_mode": "on", "synchronous_node_count": 1, "synchronous_strict": False,
        }
        settings = load_config(path).ha
        assert settings.synchronous_mode == "on" and not settings.synchronous_strict
    # The arbiter commits a synchronous standby, and the primary's PostgreSQL enforces it.
    doc = tour.wait_status(lambda d: bool(d.get("primary")) and bool(d["synchronous"]["standbys"]), 60,
                           "a committed synchronous standby")
    primary, standby = doc["primary"], doc["synchronous"]["standbys"][0]
    assert doc["synchronous"]["mode"] == "on" and standby != primary, doc["synchronous"]
    writers = tour.ctl_json("dsn")["writers"]
    names = tour.psql(writers, "SHOW synchronous_standby_names")
    assert names.startswith("FIRST 1") and standby in names, names
    tour.psql(writers, "CREATE TABLE sync_demo (id int)")
    tour.psql(writers, "INSERT INTO sync_demo VALUES (1)")  # committed: the standby confirmed it
    row = next(m for m in tour.status()["members"] if m["name"] == standby)
    assert row["sync_standby"] is True
    status = tour.ctl("status")
    assert status.returncode == 0 and standby in status.stdout, describe(status)
    print(f"sync on: primary {primary}, synchronous standby {standby}")


def test_sync_options_are_refused_on_the_existing_cluster(sync_tour: Tour) -> None:
    result = sync_tour.ram("cluster", "up", "--dir", str(sync_tour.dir), "--sync", "quorum", timeout=CTL_TIMEOUT_S)
    assert result.returncode == 1 and "already holds a cluster" in result.stderr, describe(result)
