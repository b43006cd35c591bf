"""Raft benchmark: 3 nodes on loopback, each in its own process with its own store.

Each node's store is its own PostgreSQL server, as deployed (``--stores shared`` puts the three
store databases in one server instead: one WAL, so the three nodes' fsyncs queue behind each other).

Measures committed entries per second and commit latency with 1, 16 and 64 concurrent proposers
(each proposal is a real command: committed through Raft, persisted in every store, applied into
`pgraft.events` and the projections). Commit latency ends when the proposer has its outcome (the
entry is committed and decided; the store write that makes it visible to SQL follows), as the HA
layer is answered; ``visible`` repeats the measure for proposers that also wait for that write (as
API commands do). Also the time to elect a new leader after kill -9 of the leader (several times),
and each node's memory and idle CPU. Prints one JSON object as its last line.

    python bench/raft_bench.py --duration 10 --elections 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from ram.config import NodeConfig, parse_config
from ram.postgres.server import STORE_SETTINGS, PostgresServer


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------ worker


def worker_main(config_json: str, conn: Connection) -> None:
    """One node process: runs a ClusterNode and answers the bench's requests over a pipe."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_worker(parse_config(json.loads(config_json)), conn))


async def _worker(config: NodeConfig, conn: Connection) -> None:
    from ram.cluster.node import ClusterNode
    from ram.consensus.runtime.errors import ProposalError
    from ram.consensus.runtime.storage import open_store_pool
    from ram.consensus.types import Role
    from ram.eventstore.commands import PatchConfig
    from ram.gctuning import tune_collector

    assert config.store.dsn is not None
    pool = await open_store_pool(config.store.dsn, size=config.store.pool_size)
    node = ClusterNode(config, pool)
    await node.start()
    tune_collector()  # as `ram node run` does once it runs
    loop = asyncio.get_running_loop()

    async def load(proposers: int, duration: float, visible: bool) -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        deadline = time.monotonic() + duration
        counter = 0

        async def proposer(k: int) -> None:
            nonlocal errors, counter
            while time.monotonic() < deadline:
                counter += 1
                started = time.perf_counter()
                try:
                    await node.propose(PatchConfig(changes={f"bench.p{k}": counter}), visible=visible)
                except ProposalError:
                    errors += 1
                    await asyncio.sleep(0.01)
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.monotonic()
        await asyncio.gather(*(proposer(k) for k in range(proposers)))
        elapsed = time.monotonic() - started
        latencies.sort()

        def pct(q: float) -> float:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3) if latencies else -1

        return {
            "entries": len(latencies),
            "entries_per_s": round(len(latencies) / elapsed, 1),
            "commit_p50_ms": pct(0.50),
            "commit_p99_ms": pct(0.99),
            "errors": errors,
        }

    try:
        while True:
            # (sequence number, kind, arguments...); the answer carries the sequence number back.
            request = await loop.run_in_executor(None, conn.recv)
            seq, kind = request[0], request[1]
            if kind == "status":
                status = {"leader": node.role is Role.LEADER, "term": node.term, "applied": node.applied_index}
                conn.send((seq, status))
            elif kind == "load":
                conn.send((seq, await load(request[2], request[3], request[4])))
            elif kind == "stop":
                break
    finally:
        await node.stop(transfer=False)
        await pool.close()


# ------------------------------------------------------------------------------------ driver


class Bench:
    def __init__(self, workdir: Path, servers: list[PostgresServer], nodes: int = 3) -> None:
        self.workdir = workdir
        #: One store server per node (as deployed: each node's embedded store), or one shared by all.
        self.servers = servers
        self.count = nodes
        self.configs: list[dict[str, Any]] = []
        self.procs: dict[int, tuple[mp.process.BaseProcess, Connection]] = {}
        self.ctx = mp.get_context("spawn")
        #: Numbers the requests to the nodes (answers carry it back).
        self.sequence = 0

    async def setup(self) -> None:
        from ram.eventstore import schema

        for i in range(self.count):
            admin = await asyncpg.connect(self.server_of(i).dsn())
            try:
                await admin.execute(f"DROP DATABASE IF EXISTS bench{i}")
                await admin.execute(f"CREATE DATABASE bench{i}")
            finally:
                await admin.close()
        ports = [free_port() for _ in range(self.count)]
        # Peers authenticate as in production: a shared cluster secret, in a file only we can read.
        self.workdir.mkdir(parents=True, exist_ok=True)
        secret_file = self.workdir / "cluster.secret"
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        for i in range(self.count):
            dsn = self.server_of(i).dsn(f"bench{i}")
            await asyncio.to_thread(schema.upgrade, dsn)
            peers = [
                {"id": j + 1, "name": f"n{j + 1}", "address": f"127.0.0.1:{ports[j]}"}
                for j in range(self.count)
                if j != i
            ]
            self.configs.append(
                {
                    "cluster_id": "bench",
                    "node_id": i + 1,
                    "name": f"n{i + 1}",
                    "data_dir": str(self.workdir / f"n{i + 1}"),
                    "bootstrap": True,
                    "raft": {"listen": f"127.0.0.1:{ports[i]}", "peers": peers, "secret_file": str(secret_file)},
                    "store": {"dsn": dsn, "pool_size": 4},
                }
            )

    def server_of(self, i: int) -> PostgresServer:
        return self.servers[i % len(self.servers)]

    def start(self, i: int) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker_main, args=(json.dumps(self.configs[i]), child), daemon=True)
        proc.start()
        self.procs[i] = (proc, parent)

    def ask(self, i: int, *request: Any, timeout: float = 120) -> Any:
        """Send a request to node ``i`` and return its answer. An answer that comes after its
        request timed out is skipped (by its sequence number), never taken for a later one's."""
        _, pipe = self.procs[i]
        self.sequence += 1
        seq = self.sequence
        pipe.send((seq, *request))
        deadline = time.monotonic() + timeout
        while pipe.poll(max(0.0, deadline - time.monotonic())):
            answered, answer = pipe.recv()
            if answered == seq:
                return answer
        raise TimeoutError(f"node {i + 1} did not answer {request[0]!r}")

    def kill(self, i: int) -> None:
        proc, pipe = self.procs.pop(i)
        assert proc.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        pipe.close()

    def stop_all(self) -> None:
        for i in list(self.procs):
            proc, _ = self.procs[i]
            with contextlib.suppress(Exception):
                self.ask(i, "stop", timeout=10)
            proc.join(10)
            if proc.is_alive():
                self.kill(i)
            else:
                self.procs.pop(i)

    def leader(self, among: list[int] | None = None, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in among if among is not None else list(self.procs):
                with contextlib.suppress(Exception):
                    if self.ask(i, "status", timeout=2)["leader"]:
                        return i
            time.sleep(0.01)
        raise TimeoutError("no leader")

    def rss_mb(self) -> float:
        worst = 0.0
        for proc, _ in self.procs.values():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        worst = max(worst, int(line.split()[1]) / 1024)
        return round(worst, 1)

    def cpu_seconds(self) -> dict[int, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        out = {}
        for i, (proc, _) in self.procs.items():
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[i] = (int(fields[11]) + int(fields[12])) / ticks
        return out


def machine_busy_s() -> float:
    """CPU seconds the machine spent busy (all CPUs: user, system, interrupts; not idle, I/O wait
    or time stolen by the hypervisor) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def machine_steal_s() -> float:
    """CPU seconds the hypervisor gave to others while this machine wanted them (all CPUs), since
    boot: on a shared host, the figures of a run with much of it are not comparable."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7] / os.sysconf("SC_CLK_TCK") if len(fields) > 7 else 0.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="ram-bench-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    settings = dict(STORE_SETTINGS, max_connections="60", shared_buffers="64MB")
    count = 3 if args.stores == "per-node" else 1
    servers = [
        PostgresServer(datadir=workdir / f"store{i}", port=free_port(), settings=settings) for i in range(count)
    ]
    bench = Bench(workdir, servers)
    result: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores",
        "duration_s": args.duration,
        "stores": args.stores,
    }
    try:
        for server in servers:
            await server.init()
            await server.start()
        await bench.setup()
        for i in range(3):
            bench.start(i)
        bench.leader()
        time.sleep(1.0)
        # Idle cost: CPU over a quiet window, per node.
        before = bench.cpu_seconds()
        time.sleep(args.idle_window)
        after = bench.cpu_seconds()
        result["idle_cpu_percent_max"] = round(max((after[i] - before[i]) / args.idle_window * 100 for i in after), 2)
        result["idle_rss_mb_max"] = bench.rss_mb()
        rss = bench.rss_mb()

        def load(count: int, visible: bool) -> dict[str, Any]:
            leader = bench.leader()
            busy_before, steal_before, started = machine_busy_s(), machine_steal_s(), time.monotonic()
            nodes_before = bench.cpu_seconds()
            figures: dict[str, Any] = bench.ask(
                leader, "load", count, args.duration, visible, timeout=args.duration + 120
            )
            # What one entry costs the whole machine: 3 node processes, 3 stores, the kernel.
            busy = machine_busy_s() - busy_before
            steal = machine_steal_s() - steal_before
            wall = (time.monotonic() - started) * (os.cpu_count() or 1)
            figures["cpu_steal_percent"] = round(steal * 100 / wall, 1)
            nodes_after = bench.cpu_seconds()
            entries = figures["entries"]
            figures["cpu_ms_per_entry"] = round(busy * 1000 / entries, 3) if entries else None
            # ... and each node process's share of it, the leader first.
            figures["node_cpu_ms_per_entry"] = [
                round((nodes_after[i] - nodes_before[i]) * 1000 / entries, 3) if entries else None
                for i in sorted(nodes_after, key=lambda i: i != leader)
            ]
            return figures

        proposers: dict[str, Any] = {}
        for count in args.proposers:
            proposers[str(count)] = load(count, False)
            rss = max(rss, bench.rss_mb())
        result["proposers"] = proposers
        visible: dict[str, Any] = {}
        for count in args.visible_proposers:
            visible[str(count)] = load(count, True)
            rss = max(rss, bench.rss_mb())
        result["visible"] = visible
        elections = []
        for _ in range(args.elections):
            leader = bench.leader()
            survivors = [i for i in bench.procs if i != leader]
            killed = time.monotonic()
            bench.kill(leader)
            bench.leader(survivors)
            elections.append((time.monotonic() - killed) * 1000)
            bench.start(leader)
            time.sleep(1.5)
        result["election_ms"] = [round(e, 1) for e in elections]
        result["election_ms_median"] = round(statistics.median(elections), 1) if elections else None
        result["rss_mb_max"] = max(rss, bench.rss_mb())
    finally:
        bench.stop_all()
        for server in servers:
            with contextlib.suppress(Exception):
                await server.stop("immediate", 10)
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per proposer count")
    parser.add_argument("--proposers", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--visible-proposers",
        type=int,
        nargs="*",
        default=[1],
        help="also measure these proposer counts waiting until the leader's store has each entry "
        "(visible to SQL, what API commands wait for)",
    )
    parser.add_argument("--elections", type=int, default=5, help="kill -9 of the leader, this many times")
    parser.add_argument(
        "--stores",
        choices=["per-node", "shared"],
        default="per-node",
        help="a store server per node (as deployed) or one server holding the three store databases",
    )
    parser.add_argument("--idle-window", type=float, default=5.0, help="seconds to measure idle CPU")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
