"""The managed instance against real PostgreSQL servers: bootstrap, clone, stream, promote, re-point,
fence, rewind a diverged former primary, demote, clone fallback, stop escalation, errors and timeouts.

Every server runs as the PostgreSQL owner on 127.0.0.1 with a free port under a temp dir the owner
can traverse; the ``make_node`` fixture fences (immediate stop, SIGKILL last) and removes them all,
whatever happened in the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ram.postgres.clone import CloneProgress, parse_progress
from ram.postgres.commands import PostgresCommandError, default_owner, run_command
from ram.postgres.errors import InstanceStateError, SqlError
from ram.postgres.instance import ManagedInstance
from ram.postgres.spec import ManagedInstanceSpec, PrimaryEndpoint, Timeouts, slot_name_for
from ram.postgres.sql import execute, fetch
from ram.postgres.status import format_lsn, parse_lsn
from tests.conftest import free_port, make_tempdir

PASSWORD = "s3cr:et\\pw'x"  # ':' and '\' exercise passfile escaping, "'" SQL quoting
SMALL = {"shared_buffers": "16MB", "max_connections": "30", "fsync": "off", "max_wal_size": "64MB"}
TIMEOUTS = Timeouts(start=60, stop=20, stop_immediate=4, fence=4, follow=30, clone=120, rewind=120)

MakeNode = Callable[..., ManagedInstance]


@pytest.fixture
async def make_node() -> AsyncIterator[MakeNode]:
    base = make_tempdir("ram-pgm-")
    nodes: list[ManagedInstance] = []

    def make(name: str, **overrides: Any) -> ManagedInstance:
        fields: dict[str, Any] = {
            "name": name,
            "data_dir": base / name / "data",
            "host": "127.0.0.1",
            "port": free_port(),
            "replication_password": PASSWORD,
            "members": ["127.0.0.1"],
            "parameters": SMALL,
            "timeouts": TIMEOUTS,
            "sync_data": False,
        }
        spec = ManagedInstanceSpec(**{**fields, **overrides})
        node = ManagedInstance(spec)
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        await asyncio.gather(*(node.fence() for node in nodes), return_exceptions=True)
        shutil.rmtree(base, ignore_errors=True)


def endpoint(node: ManagedInstance) -> PrimaryEndpoint:
    return PrimaryEndpoint(node.spec.host, node.spec.port, node.spec.name)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def rows(node: ManagedInstance) -> list[str]:
    return [r["v"] for r in await fetch(node.spec, "SELECT v FROM t ORDER BY v")]


async def has_row(node: ManagedInstance, value: str) -> bool:
    try:
        return value in await rows(node)
    except SqlError:
        return False


# -- pure helpers --------------------------------------------------------------------------------


def test_lsn_text_int_roundtrip() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert format_lsn(0x16B374D848) == "16/B374D848"
    assert format_lsn(parse_lsn("FFFFFFFF/FFFFFFFF")) == "FFFFFFFF/FFFFFFFF"
    for bad in ("", "1", "1/", "/1", "x/1", "100000000/0"):
        with pytest.raises(ValueError):
            parse_lsn(bad)


def test_progress_and_slot_names_and_spec_validation() -> None:
    report = parse_progress("  22837/30584 kB (74%), 0/1 tablespace")
    assert report == CloneProgress(22837 * 1024, 30584 * 1024, 74, 0, 1)
    assert parse_progress("pg_basebackup: waiting for checkpoint") is None
    assert slot_name_for("Node-1.dc2") == "node_1_dc2"
    assert len(slot_name_for("x" * 100)) == 63
    good = {"name": "n1", "data_dir": Path("/tmp/x/data"), "host": "127.0.0.1", "port": 5432,
            "replication_password": "pw"}
    ManagedInstanceSpec(**good)  # type: ignore[arg-type]
    for bad in ({"host": "localhost"}, {"members": ["10.0.0.0/8"]}, {"port": 0}, {"replication_user": "Bad-Name"},
                {"replication_password": "a\nb"}, {"parameters": {"port": "1"}},
                {"parameters": {"primary_conninfo": "host=x"}}, {"replication_user": "postgres"},
                {"replication_password": "pässword"}):
        with pytest.raises(ValueError):
            ManagedInstanceSpec(**{**good, **bad})  # type: ignore[arg-type]


async def test_command_timeout_is_clean_and_reported() -> None:
    started = time.monotonic()
    with pytest.raises(PostgresCommandError, match=r"timed out after 0\.3 s"):
        await run_command(["sleep", "30"], owner=default_owner(), timeout=0.3)
    assert time.monotonic() - started < 5


# -- real servers ----------------------------------------------------------------------------------


async def test_start_failure_carries_postgresql_message(make_node: MakeNode) -> None:
    node = make_node("broken")
    with pytest.raises(InstanceStateError, match="no PostgreSQL cluster"):
        await node.start()
    await node.initdb_primary(start=False)
    (node.spec.data_dir / "PG_VERSION").write_text("9.6\n")
    with pytest.raises(PostgresCommandError) as info:
        await node.start()
    assert "database files are incompatible with server" in str(info.value)
    assert "initialized by PostgreSQL version 9.6" in str(info.value)


async def test_bootstrap_primary_settings_hba_and_auth(make_node: MakeNode) -> None:
    node = make_node("solo", members=["127.0.0.1", "10.1.2.3"])
    await node.initdb_primary()
    await execute(node.spec, "CREATE TABLE t (v text PRIMARY KEY)")
    await execute(node.spec, "INSERT INTO t VALUES ('one')")
    assert await rows(node) == ["one"]

    settings = {r["name"]: r["setting"] for r in await fetch(node.spec, "SELECT name, setting FROM pg_settings")}
    assert settings["wal_level"] == "replica"
    assert int(settings["max_wal_senders"]) >= 10 and int(settings["max_replication_slots"]) >= 10
    assert settings["hot_standby"] == settings["wal_log_hints"] == settings["hot_standby_feedback"] == "on"
    assert settings["listen_addresses"] == "127.0.0.1" and settings["port"] == str(node.spec.port)
    assert settings["unix_socket_directories"] == str(node.spec.sockdir)
    assert settings["password_encryption"] == "scram-sha-256" and int(settings["wal_keep_size"]) > 0
    assert settings["wal_retrieve_retry_interval"] == "1000"  # ms: a standby re-connects within a second

    hba = [(r["type"], r["database"], r["user_name"], r["address"], r["netmask"], r["auth_method"])
           for r in await fetch(node.spec, "SELECT * FROM pg_hba_file_rules ORDER BY line_number")]
    assert hba == [
        ("local", ["all"], ["postgres"], None, None, "peer"),
        ("host", ["replication"], ["replicator"], "127.0.0.1", "255.255.255.255", "scram-sha-256"),
        ("host", ["all"], ["all"], "127.0.0.1", "255.255.255.255", "scram-sha-256"),
        ("host", ["replication"], ["replicator"], "10.1.2.3", "255.255.255.255", "scram-sha-256"),
        ("host", ["all"], ["all"], "10.1.2.3", "255.255.255.255", "scram-sha-256"),
    ]
    stored = await fetch(node.spec, "SELECT rolpassword, rolreplication FROM pg_authid WHERE rolname = 'replicator'")
    assert stored[0]["rolpassword"].startswith("SCRAM-SHA-256$4096:") and stored[0]["rolreplication"]

    # Over TCP: the replication user with its password only; the superuser (no password) not at all.
    conn = await asyncpg.connect(host="127.0.0.1", port=node.spec.port, user="replicator", password=PASSWORD,
                                 database="postgres", timeout=5)
    await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host="127.0.0.1", port=node.spec.port, user="replicator", password="nope",
                              database="postgres", timeout=5)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host="127.0.0.1", port=node.spec.port, user="postgres", password="",
                              database="postgres", timeout=5)

    status = await node.status()
    assert status.running and status.accepting and status.in_recovery is False and status.timeline == 1
    assert status.current_lsn and status.flushed_lsn and status.pid == node.postmaster_pid()
    assert status.postmaster_start_time is not None

    assert (await node.reload()).errors == ()
    # A bad value is reported in PostgreSQL's words; a restart-only change is flagged, then applied.
    spec = node.spec
    bad = await node.reconfigure(replace(spec, parameters={**SMALL, "work_mem": "lots"}))
    assert bad is not None and any('invalid value for parameter "work_mem"' in e for e in bad.errors), bad
    pending = await node.reconfigure(replace(spec, parameters={**SMALL, "shared_buffers": "24MB"}))
    assert pending is not None and pending.errors == ()
    await wait_until(lambda: _pending(node, "shared_buffers"), what="pending_restart")
    pid = node.postmaster_pid()
    restarted = await node.restart()
    assert restarted.clean and node.postmaster_pid() != pid
    assert (await fetch(node.spec, "SHOW shared_buffers"))[0]["shared_buffers"] == "24MB"
    assert await rows(node) == ["one"]


async def _pending(node: ManagedInstance, name: str) -> bool:
    return bool(await fetch(node.spec, "SELECT 1 FROM pg_settings WHERE pending_restart AND name = $1", name))


async def test_stop_falls_back_to_immediate_when_fast_hangs(make_node: MakeNode) -> None:
    node = make_node("stuck")
    await node.initdb_primary()
    conn = await asyncpg.connect(host=str(node.spec.sockdir), port=node.spec.port, user="postgres", database="postgres")
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    os.kill(backend, signal.SIGSTOP)  # a backend that can not honour SIGTERM: fast shutdown waits for it
    try:
        started = time.monotonic()
        result = await node.stop("fast", timeout=1)
        assert result.mode in ("immediate", "kill") and not result.clean, result
        assert result.messages and "server does not shut down" in result.messages[0]
        assert time.monotonic() - started < 15
        assert not await node.is_running()
        assert (await node.status()).running is False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(backend, signal.SIGCONT)
        conn.terminate()
    await node.start()  # crash recovery, then back
    assert (await node.status()).in_recovery is False


async def test_stop_after_a_cancelled_start_leaves_no_postmaster(make_node: MakeNode) -> None:
    """pg_ctl puts the postmaster in a session of its own: a start cancelled (RAM shutting down) just
    after pg_ctl launched it left a postmaster that came up after the stop had found nothing running
    (seen in CI: `ram cluster down` left one behind). The stop now waits for it and stops it."""
    node = make_node("cancelled")
    await node.initdb_primary(start=False)
    for delay in (0.005, 0.02, 0.05, 0.1, 0.2):
        start = asyncio.create_task(node.start())
        await asyncio.sleep(delay)
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError, PostgresCommandError):
            await start
        await node.stop("fast")
        await asyncio.sleep(1.0)  # a postmaster the stop missed would be up by now
        assert not await node.is_running(), f"a postmaster survived a start cancelled after {delay} s"


async def test_fence_ends_an_open_transaction_at_once(make_node: MakeNode) -> None:
    """The fence is signals, not a subprocess: it returns quickly, the open transaction can not
    commit, nothing of it survives the restart, and a second fence finds nothing to do."""
    node = make_node("fenced")
    await node.initdb_primary()
    await execute(node.spec, "CREATE TABLE t (v text PRIMARY KEY)")
    conn = await asyncpg.connect(host=str(node.spec.sockdir), port=node.spec.port, user="postgres", database="postgres")
    try:
        await conn.execute("BEGIN; INSERT INTO t VALUES ('in-flight')")
        started = time.monotonic()
        fenced = await node.fence()
        took = time.monotonic() - started
        assert fenced.was_running and fenced.mode == "immediate", fenced
        assert took < 1.0, f"fence took {took:.3f} s"
        assert not await node.is_running()
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError, OSError)):
            await conn.execute("COMMIT")
    finally:
        conn.terminate()
    assert (await node.fence()).was_running is False
    await node.start()  # crash recovery
    assert await rows(node) == []


async def test_failover_fence_promote_follow_and_rewind(make_node: MakeNode) -> None:
    a, b, c = make_node("node-a"), make_node("node-b"), make_node("node-c")
    await a.initdb_primary()
    assert sorted(await a.ensure_slots(["node-a", "node-b", "node-c"])) == ["node_b", "node_c"]
    assert await a.ensure_slots(["node-b", "node-c"]) == []
    await execute(a.spec, "CREATE TABLE t (v text PRIMARY KEY)")

    reports: list[CloneProgress] = []
    await b.clone_from(endpoint(a), reports.append)
    assert reports, "no progress reported"
    assert reports[-1].done_bytes == reports[-1].total_bytes > 1_000_000
    assert all(r.done_bytes <= r.total_bytes for r in reports)
    await c.clone_from(endpoint(a))
    await b.start()
    await c.start()
    with pytest.raises(InstanceStateError, match="running instance"):
        await c.clone_from(endpoint(a), wipe=True)

    # Streaming: a row written on the primary appears on both replicas; both sides report it.
    await execute(a.spec, "INSERT INTO t VALUES ('row1')")
    for replica in (b, c):
        await wait_until(lambda r=replica: has_row(r, "row1"), what="row1 on replica")  # type: ignore[misc]
    sb = await b.status()
    assert sb.in_recovery and sb.timeline == 1 and sb.received_lsn and sb.replayed_lsn
    assert sb.wal_receiver and sb.wal_receiver.status == "streaming"
    assert (sb.wal_receiver.sender_port, sb.wal_receiver.slot_name) == (a.spec.port, "node_b")
    sa = await a.status()
    assert {r.application_name for r in sa.replication} == {"node-b", "node-c"}
    assert all(r.state == "streaming" and r.lag_bytes is not None and r.lag_bytes >= 0 for r in sa.replication)
    assert {s.name: s.active for s in sa.slots} == {"node_b": True, "node_c": True}
    with pytest.raises(SqlError, match="read-only transaction"):
        await execute(b.spec, "INSERT INTO t VALUES ('nope')")
    await wait_until(lambda: _caught_up(a, b, c), what="replicas caught up")

    # Fence the old primary: an open session and new sessions can no longer write.
    session = await asyncpg.connect(host=str(a.spec.sockdir), port=a.spec.port, user="postgres", database="postgres")
    await session.execute("INSERT INTO t VALUES ('before-fence')")
    await wait_until(lambda: has_row(c, "before-fence"), what="before-fence on c")
    await wait_until(lambda: _caught_up(a, b, c), what="replicas caught up")
    fenced = await a.fence()
    assert fenced.was_running and fenced.mode in ("immediate", "kill")
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await session.execute("INSERT INTO t VALUES ('after-fence')")
    session.terminate()
    with pytest.raises(SqlError):
        await execute(a.spec, "INSERT INTO t VALUES ('after-fence')")

    # Promote b: new timeline, writable, pg_control already on it (checkpoint after promotion).
    assert await b.promote() == 2
    sb = await b.status()
    assert sb.in_recovery is False and sb.timeline == sb.checkpoint_timeline == 2
    await execute(b.spec, "INSERT INTO t VALUES ('row2')")
    assert sorted(await b.ensure_slots(["node-a", "node-b", "node-c"])) == ["node_a", "node_c"]

    # Re-point c to b without a restart: same postmaster, walreceiver from b, on timeline 2.
    pid = c.postmaster_pid()
    assert await c.follow(endpoint(b)) is False
    assert c.postmaster_pid() == pid
    await wait_until(lambda: has_row(c, "row2"), what="row2 on c")
    sc = await c.status()
    assert sc.wal_receiver and sc.wal_receiver.sender_port == b.spec.port and sc.timeline == 2

    # The old primary comes back on its own (crash recovery), diverges, and crashes again.
    await a.start()
    assert (await a.status()).in_recovery is False
    await execute(a.spec, "INSERT INTO t VALUES ('diverged')")
    await a.stop("immediate")
    assert await a.cluster_state() == "in production"

    # Rejoin: single-user crash recovery, pg_rewind onto timeline 2, standby of b.
    result = await a.rejoin(endpoint(b))
    assert result.method == "rewind" and result.started, result
    assert result.rewind.ok and result.rewind.rewound and result.rewind.crash_recovered
    assert "Done" in result.rewind.message
    await execute(b.spec, "INSERT INTO t VALUES ('row3')")
    await wait_until(lambda: has_row(a, "row3"), what="row3 on rewound a")
    assert await rows(a) == await rows(b)
    assert "diverged" not in await rows(a)
    sa = await a.status()
    assert sa.in_recovery and sa.timeline == 2 and sa.wal_receiver and sa.wal_receiver.sender_port == b.spec.port
    # Its own settings survived pg_rewind copying b's configuration files.
    port = await fetch(a.spec, "SHOW port")
    assert port[0]["port"] == str(a.spec.port)
    await wait_until(lambda: _slot_active(b, "node_a"), what="a streams through its slot on b")


async def _caught_up(primary: ManagedInstance, *replicas: ManagedInstance) -> bool:
    target = (await primary.status()).current_lsn
    for replica in replicas:
        status = await replica.status()
        if target is None or status.replayed_lsn is None or status.replayed_lsn < target:
            return False
    return True


async def _slot_active(node: ManagedInstance, slot: str) -> bool:
    return any(s.name == slot and s.active for s in (await node.status()).slots)


async def test_switchover_demote_and_clone_fallback(make_node: MakeNode) -> None:
    a, b = make_node("sw-a"), make_node("sw-b")
    await a.initdb_primary()
    await a.ensure_slots(["sw-a", "sw-b"])
    await execute(a.spec, "CREATE TABLE t (v text PRIMARY KEY)")
    await b.clone_from(endpoint(a))
    await b.start()
    await execute(a.spec, "INSERT INTO t VALUES ('x1')")
    await wait_until(lambda: has_row(b, "x1"), what="x1 on b")

    # Planned switchover: clean stop (shutdown checkpoint reaches b), promote b, demote a under b.
    stopped = await a.stop()
    assert stopped.clean and stopped.mode == "fast"
    assert await b.promote() == 2
    await b.ensure_slots(["sw-a"])
    demoted = await a.demote(endpoint(b))
    assert not demoted.was_running
    await execute(b.spec, "INSERT INTO t VALUES ('x2')")
    await wait_until(lambda: has_row(a, "x2"), what="x2 on demoted a")
    sa = await a.status()
    assert sa.in_recovery and sa.timeline == 2

    # Dropping the slot of a streaming member needs force.
    await wait_until(lambda: _slot_active(b, "sw_a"), what="slot active")
    assert await b.drop_slot("sw-a") is False
    assert await b.drop_slot("sw-a", force=True) is True
    assert await b.drop_slot("sw-a") is False

    # Rejoin to an unrelated cluster: pg_rewind refuses in its own words; without permission to
    # clone the node stays down, with it the node is wiped and cloned.
    other = make_node("other")
    await other.initdb_primary()
    await other.ensure_slots(["sw-a"])
    await execute(other.spec, "CREATE TABLE t (v text PRIMARY KEY)")
    await execute(other.spec, "INSERT INTO t VALUES ('other')")
    refused = await a.rejoin(endpoint(other), allow_clone=False)
    assert refused.method == "none" and not refused.started and not refused.rewind.ok
    assert "different systems" in refused.rewind.message and refused.rewind.usable
    assert not refused.rewind.source_unreachable  # the source answered: this is not a network problem
    # A source that is down: the typed verdict says so, the data directory stays as it was.
    gone = PrimaryEndpoint(name="gone", host="127.0.0.1", port=free_port())
    unreachable = await a.rejoin(gone, allow_clone=False)
    assert unreachable.method == "none" and not unreachable.rewind.ok
    assert unreachable.rewind.source_unreachable and unreachable.rewind.usable
    assert not await a.is_running()
    with pytest.raises(InstanceStateError, match="not empty"):
        await a.clone_from(endpoint(other))  # stopped, but its data is not thrown away implicitly
    progress: list[CloneProgress] = []
    cloned = await a.rejoin(endpoint(other), allow_clone=True, progress_cb=progress.append)
    assert cloned.method == "clone" and cloned.started and progress
    assert await rows(a) == ["other"]
    sa = await a.status()
    assert sa.in_recovery and sa.wal_receiver and sa.wal_receiver.sender_port == other.spec.port
