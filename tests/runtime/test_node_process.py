"""Real `ram node run` processes: election, kill -9 of the leader, restart of everything.

The nodes are observed through their stores (every decision is an event in `pgraft.events`), which is
also how an operator would check them with psql.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml

from ram.config import NodeConfig
from ram.postgres.server import PostgresServer
from tests.runtime.helpers import cluster_configs, create_store_databases, drop_databases


class ProcessCluster:
    def __init__(self, configs: list[NodeConfig], dsns: list[str], workdir: Path) -> None:
        self.configs = configs
        self.dsns = dsns
        self.workdir = workdir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, i: int) -> None:
        path = self.workdir / f"node{i + 1}.yaml"
        path.write_text(yaml.safe_dump(self.configs[i].model_dump(mode="json")))
        log = (self.workdir / f"node{i + 1}.log").open("ab")
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "ram.cli.ram_cmd", "node", "run", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(i)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for i in list(self.procs):
            proc = self.procs[i]
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            del self.procs[i]

    async def leaders(self, indexes: list[int]) -> list[tuple[int, int]]:
        """(term, leader node id) of the newest raft_leader_elected event in each store."""
        found = []
        for i in indexes:
            conn = await asyncpg.connect(self.dsns[i])
            try:
                row = await conn.fetchrow(
                    "SELECT (payload->>'term')::bigint AS term, (payload->>'leader_node_id')::int AS leader "
                    "FROM pgraft.events WHERE type = 'raft_leader_elected' ORDER BY position DESC LIMIT 1"
                )
            finally:
                await conn.close()
            found.append((row["term"], row["leader"]) if row else (0, 0))
        return found

    async def wait_agreed_leader(self, indexes: list[int], newer_than: int = 0, timeout: float = 20) -> tuple[int, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = await self.leaders(indexes)
            if len(set(seen)) == 1 and seen[0][0] > newer_than:
                return seen[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no agreed leader newer than term {newer_than}: {await self.leaders(indexes)}")

    async def events(self, i: int) -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(self.dsns[i])
        try:
            rows = await conn.fetch("SELECT position, sub, type, payload::text, term FROM pgraft.events ORDER BY 1, 2")
        finally:
            await conn.close()
        return [tuple(r) for r in rows]


@pytest.fixture
async def procs(pg_server: PostgresServer, tmp_path: Path) -> AsyncIterator[ProcessCluster]:
    dsns = await create_store_databases(pg_server, 3)
    # The writers here test durability, not API authentication (tests/api and tests/security do).
    cluster = ProcessCluster(cluster_configs(dsns, tmp_path, api={"auth": "none"}), dsns, tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        await drop_databases(pg_server, dsns)


async def test_kill_leader_new_leader_within_two_election_timeouts(procs: ProcessCluster) -> None:
    for i in range(3):
        procs.start(i)
    term, leader = await procs.wait_agreed_leader([0, 1, 2])
    election_s = procs.configs[0].raft.election_ms / 1000
    procs.kill(leader - 1)
    killed_at = time.monotonic()
    survivors = [i for i in range(3) if i != leader - 1]
    _, new_leader = await procs.wait_agreed_leader(survivors, newer_than=term)
    elapsed = time.monotonic() - killed_at
    assert new_leader != leader
    # The leader's own announcement is committed by then, so this bounds election + one commit.
    assert elapsed < 2 * 2 * election_s + 1.0, f"new leader after {elapsed:.2f} s"
    # The killed node restarts from its store and catches up; every store holds the same events.
    procs.start(leader - 1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        logs = [await procs.events(i) for i in range(3)]
        if logs[0] == logs[1] == logs[2]:
            break
        await asyncio.sleep(0.1)
    assert logs[0] == logs[1] == logs[2]


async def test_kill_leader_mid_load_loses_no_acknowledged_write(procs: ProcessCluster) -> None:
    """Writers go through every node's HTTP API; a write answered 2xx is committed, so it must be in
    every store afterwards, even though the leader was killed with SIGKILL in the middle of the load."""
    for i in range(3):
        procs.start(i)
    term, leader = await procs.wait_agreed_leader([0, 1, 2])
    apis = [f"http://{c.api.listen}" for c in procs.configs]
    acked: dict[str, int] = {}
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        value = 0
        async with httpx.AsyncClient(timeout=5) as client:
            while not stop.is_set():
                value += 1
                for attempt in range(len(apis)):
                    url = apis[(w + attempt + value) % len(apis)]
                    try:
                        reply = await client.patch(f"{url}/config", json={f"postgresql.parameters.load.w{w}": value})
                    except httpx.HTTPError:
                        continue
                    if reply.status_code == 200:
                        acked[f"postgresql.parameters.load.w{w}"] = value
                        break
                    await asyncio.sleep(0.02)

    writers = [asyncio.create_task(writer(w)) for w in range(4)]
    try:
        await asyncio.sleep(1.5)
        procs.kill(leader - 1)
        await asyncio.sleep(3.0)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert len(acked) == 4 and min(acked.values()) > 5, f"too few writes acknowledged: {acked}"
    procs.start(leader - 1)
    await procs.wait_agreed_leader([0, 1, 2], newer_than=term)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        logs = [await procs.events(i) for i in range(3)]
        if logs[0] == logs[1] == logs[2]:
            break
        await asyncio.sleep(0.1)
    assert logs[0] == logs[1] == logs[2], "stores differ after recovery"
    written: dict[str, set[int]] = {}
    for _, _, kind, payload, _ in logs[0]:
        if kind == "dynamic_config_changed":
            for key, change in json.loads(str(payload))["changes"].items():
                written.setdefault(key, set()).add(change["new"])
    for key, value in acked.items():
        assert value in written.get(key, set()), f"acknowledged write {key}={value} is missing"


async def test_kill_all_then_restart_keeps_everything(procs: ProcessCluster) -> None:
    for i in range(3):
        procs.start(i)
    term, _ = await procs.wait_agreed_leader([0, 1, 2])
    before = [await procs.events(i) for i in range(3)]
    for i in range(3):
        procs.kill(i)
    for i in range(3):
        procs.start(i)
    await procs.wait_agreed_leader([0, 1, 2], newer_than=term)
    after = [await procs.events(i) for i in range(3)]
    for i in range(3):
        assert after[i][: len(before[i])] == before[i]


async def test_wrong_cluster_id_is_refused(procs: ProcessCluster, tmp_path: Path) -> None:
    for i in range(3):
        procs.start(i)
    await procs.wait_agreed_leader([0, 1, 2])
    # A stranger claiming node 1's id but another cluster id dials node 2: refused, logged.
    stranger = procs.configs[0].model_copy(update={"cluster_id": "other"})
    stranger_cfg = stranger.model_copy(
        update={"raft": stranger.raft.model_copy(update={"listen": "127.0.0.1:1", "peers": stranger.raft.peers})}
    )
    from ram.consensus.runtime.transport import PeerAddress, Transport

    host, port = procs.configs[1].raft.listen.split(":")
    transport = Transport(
        cluster_id=stranger_cfg.cluster_id,
        node_id=1,
        listen=PeerAddress("127.0.0.1", 0),
        peers={2: PeerAddress(host, int(port))},
        on_frame=lambda *_: None,
    )
    await transport.start()
    try:
        transport.send(2, b"hello")
        deadline = time.monotonic() + 10
        log = tmp_path / "node2.log"
        while time.monotonic() < deadline and "wrong cluster id 'other'" not in log.read_text():
            await asyncio.sleep(0.05)
        assert "wrong cluster id 'other'" in log.read_text()
        assert not transport.stats()[2].connected
    finally:
        await transport.stop()


async def test_sigterm_stops_every_node_cleanly_and_logs_each_shutdown_step(procs: ProcessCluster) -> None:
    for i in range(3):
        procs.start(i)
    await procs.wait_agreed_leader([0, 1, 2])
    started = time.monotonic()
    exits = []
    for i in list(procs.procs):
        proc = procs.procs.pop(i)
        proc.terminate()
        exits.append(proc.wait(timeout=30))
    assert exits == [0, 0, 0]
    assert time.monotonic() - started < 20
    for i in range(3):
        log = (procs.workdir / f"node{i + 1}.log").read_text()
        # What a slow stop would be explained by: each step and how long it took.
        for step in ("api", "raft", "store-pool"):
            assert f"shutdown step done step={step} took_s=" in log, (step, log[-3000:])


async def test_store_pool_close_does_not_wait_for_ever_on_a_held_connection(
    pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ram import node_process

    monkeypatch.setattr(node_process, "_POOL_CLOSE_S", 0.5)
    pool = await asyncpg.create_pool(pg_server.dsn(), min_size=1, max_size=2)
    assert pool is not None
    held = await pool.acquire()  # a task that never gives its connection back
    started = time.monotonic()
    await node_process._close_pool(pool)
    assert time.monotonic() - started < 3
    assert pool.is_closing()
    with pytest.raises(asyncpg.InterfaceError):  # cut, not handed back for further use
        await held.fetchval("SELECT 1")
