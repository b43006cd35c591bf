"""An end-to-end test cluster: real `ram node run` processes, each managing a real PostgreSQL on its
own loopback address, built with the same code as `ram cluster up` (ram.localcluster)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from ram import localcluster as lc
from ram.postgres import proctree
from tests.conftest import make_tempdir


def free_base_port(nodes: int = 3) -> int:
    """A base port whose pg/api/raft ports are free on every member's loopback address."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - 300, 10)
        if all(
            _free(lc.member_host(i), base + offset + i - 1)
            for i in range(1, nodes + 1)
            for offset in (0, 100, 200)
        ):
            return base
    raise RuntimeError("no free port range found")


def _free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class E2ECluster:
    def __init__(self, nodes: int = 3, ha: dict[str, Any] | None = None, *, tls: bool = False) -> None:
        self.root = make_tempdir("ram-e2e-")
        self.info = lc.plan(self.root / "cluster", nodes, free_base_port(nodes), name="e2e", tls=tls)
        self.ha = ha
        os.environ["PGPASSFILE"] = str(self.info.pgpass_file)

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self, timeout: float = 150) -> None:
        await lc.prepare(self.info, self.ha)
        for member in self.info.members:
            lc.start_node(self.info, member)
        try:
            await self.wait_healthy(timeout)
        except AssertionError as exc:
            # KNOWN OPEN BUG (see the session notes): about one new cluster in ten to fifteen, during a
            # full-suite run only, never becomes healthy (the initial primary's node stops talking Raft
            # for ~30 s after its initdb). The nodes' asyncio tasks are dumped into their logs (SIGUSR1)
            # and every node is restarted once, data kept; the tests then check what they check.
            print(f"cluster start stalled, restarting its nodes once: {exc}", file=sys.stderr)
            await asyncio.to_thread(record_stall, self.info, str(exc))
            for member in self.info.members:
                await asyncio.to_thread(lc.stop_node, member, timeout=20)
            for member in self.info.members:
                self._kill_postmaster(member)
            for member in self.info.members:
                lc.start_node(self.info, member)
            await self.wait_healthy(timeout)

    async def close(self) -> None:
        for member in self.info.members:
            await asyncio.to_thread(lc.stop_node, member, timeout=20)
        for member in self.info.members:  # a node killed with -9 leaves its PostgreSQL behind
            self._kill_postmaster(member)
        with contextlib.suppress(Exception):
            await lc.store_server(self.info).stop("immediate", 10)
        if os.environ.get("RAM_E2E_KEEP"):
            print(f"kept {self.root} (RAM_E2E_KEEP)", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def member(self, name: str) -> lc.MemberInfo:
        return next(m for m in self.info.members if m.name == name)

    def postmaster_pid(self, member: lc.MemberInfo) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((Path(member.pg_data_dir) / "postmaster.pid").read_text().split()[0])
        return None

    def instance_pids(self, name: str) -> list[int]:
        """The postmaster of ``name`` and its children (every process of that PostgreSQL)."""
        pm = self.postmaster_pid(self.member(name))
        return [] if pm is None else [pm, *proctree.children(pm)]

    def _kill_postmaster(self, member: lc.MemberInfo) -> None:
        pid = self.postmaster_pid(member)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def kill_node(self, name: str) -> None:
        """kill -9 of the node's `ram` and its postmaster together (node loss)."""
        member = self.member(name)
        pm = self.postmaster_pid(member)
        assert member.pid is not None
        os.kill(member.pid, signal.SIGKILL)
        if pm is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pm, signal.SIGKILL)
        lc.stop_node(member, sig=signal.SIGKILL, timeout=1)

    def crash_postgres(self, name: str) -> None:
        """kill -9 of the postmaster only; the node lives on."""
        pid = self.postmaster_pid(self.member(name))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    def restart_node(self, name: str) -> None:
        lc.start_node(self.info, self.member(name))

    # ------------------------------------------------------------------------------- queries

    async def cluster(self) -> dict[str, Any]:
        """The cluster as the Raft leader sees it (a follower's answer is fresh too, but when the
        read barrier fails it serves its own, possibly stale, state: the leader's is the reference)."""
        answers: list[dict[str, Any]] = []
        async with self.http(timeout=2) as client:
            for member in self.info.members:
                if not lc.pid_alive(member.pid):
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    reply = await client.get(f"{member.api_url}/cluster")
                    if reply.status_code == 200:
                        answers.append(reply.json())
        for doc in answers:
            if doc["raft_leader"] == doc["node"]:
                return doc
        if answers:
            raise AssertionError("no Raft leader answers right now")
        raise AssertionError("no node API answers")

    async def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with self.http(timeout=15) as client:
            for member in self.info.members:
                if lc.pid_alive(member.pid):
                    with contextlib.suppress(httpx.ConnectError):
                        return await client.request(method, f"{member.api_url}{path}", **kwargs)
        raise AssertionError("no node API answers")

    def http(self, timeout: float = 5) -> httpx.AsyncClient:
        """An API client with the cluster's admin token (the nodes require one, as in production)."""
        return httpx.AsyncClient(timeout=timeout, headers=self.info.api_headers(), verify=self.info.api_verify())

    async def wait_for(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError, httpx.HTTPError):
                last = await self.cluster()
                if predicate(last):
                    return last
            await asyncio.sleep(0.2)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}; last state: {summary(last)}\n{await self.diagnosis()}"
        )

    async def diagnosis(self, events: int = 40, log_lines: int = 15) -> str:
        """What a failed wait needs to be understood from CI output alone: the newest events as the
        cluster recorded them and the end of every node's warnings and errors."""
        out: list[str] = []
        with contextlib.suppress(Exception):
            reply = await self.api("GET", f"/events?last={events}")
            for e in reply.json().get("events", []):
                payload = e.get("payload") or {}
                why = payload.get("reason") or payload.get("detail") or ""
                out.append(f"  event {e.get('position')} {e.get('type')} {json_brief(payload)} {why}".rstrip())
        for member in self.info.members:
            with contextlib.suppress(OSError):
                text = await asyncio.to_thread(Path(member.log_file).read_text, errors="replace")
                lines = text.splitlines()
                bad = [ln for ln in lines if "level=warning" in ln or "level=error" in ln or "level=critical" in ln]
                out += [f"  {member.name}.log: {ln[:400]}" for ln in bad[-log_lines:]]
        return "diagnosis:\n" + "\n".join(out)

    async def wait_healthy(self, timeout: float = 90) -> dict[str, Any]:
        def ok(c: dict[str, Any]) -> bool:
            members = c["members"]
            return bool(c["primary"]) and all(
                m["healthy"] and (m["role"] == "primary" or m["following"] == c["primary"]) for m in members
            )

        return await self.wait_for(ok, timeout, "every member healthy and following the primary")

    async def connect(self, name: str) -> asyncpg.Connection:
        m = self.member(name)
        return await asyncpg.connect(host=m.host, port=m.pg_port, user="postgres", database="postgres", timeout=5)

    async def rows(self, name: str, table: str) -> list[int]:
        conn = await self.connect(name)
        try:
            return [r[0] for r in await conn.fetch(f"SELECT id FROM {table} ORDER BY id")]
        finally:
            await conn.close()

    async def streaming_from(self, name: str) -> str | None:
        """The host ``name``'s PostgreSQL streams WAL from right now (None: not a streaming standby)."""
        try:
            conn = await self.connect(name)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return None
        try:
            row = await conn.fetchrow("SELECT status, sender_host FROM pg_stat_wal_receiver")
        except (OSError, asyncpg.PostgresError):
            return None
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
        return str(row["sender_host"]) if row is not None and row["status"] == "streaming" else None

    async def writable(self, name: str) -> bool:
        try:
            conn = await self.connect(name)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        try:
            return not await conn.fetchval("SELECT pg_is_in_recovery()")
        except (OSError, asyncpg.PostgresError):
            return False
        finally:
            with contextlib.suppress(Exception):
                await conn.close()


#: Stalled cluster starts seen in this test session (printed in pytest's terminal summary, so that a
#: CI log shows what the stalled nodes were doing even when the restart let the tests pass).
STALLS: list[str] = []


def record_stall(info: lc.ClusterInfo, why: str, tail: int = 80) -> None:
    """Ask every node for its thread stacks (SIGUSR2, faulthandler) and asyncio tasks (SIGUSR1),
    then keep the end of each node's log in :data:`STALLS`."""
    for member in info.members:
        if lc.pid_alive(member.pid) and member.pid is not None:
            for sig in (signal.SIGUSR2, signal.SIGUSR1):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.pid, sig)
    time.sleep(1.5)
    parts = [f"stalled start of {info.dir}: {why[:2000]}"]
    for member in info.members:
        with contextlib.suppress(OSError):
            lines = Path(member.log_file).read_text(errors="replace").splitlines()
            parts += [f"--- {member.name} ({member.log_file}), last {tail} lines:"]
            parts += [ln[:600] for ln in lines[-tail:]]
    STALLS.append("\n".join(parts))


def json_brief(payload: dict[str, Any], limit: int = 200) -> str:
    text = ",".join(f"{k}={v}" for k, v in payload.items() if k not in ("reason", "detail"))
    return text[:limit]


def summary(c: dict[str, Any]) -> str:
    if not c:
        return "{}"
    members = " ".join(
        f"{m['name']}:{m['role']}/{m['state']}/tl{m['timeline']}/f={m['following']}" for m in c.get("members", [])
    )
    return f"primary={c.get('primary')} {members}"


class Writer:
    """A client writing through the libpq multi-host string (target_session_attrs=read-write),
    recording every acknowledged write and when writes were unavailable."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        #: A table of its own: ids start at 1 for every writer and must never collide.
        self.table = f"w_{uuid.uuid4().hex[:10]}"
        self.acked: list[int] = []
        self.servers: list[tuple[float, str]] = []
        self.failures: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Writer:
        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            await conn.execute(f"CREATE TABLE {self.table} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        finally:
            await conn.close()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        conn: asyncpg.Connection | None = None
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                if conn is None:
                    conn = await asyncpg.connect(self.dsn, timeout=1)
                server = await conn.fetchval(
                    f"INSERT INTO {self.table} (id) VALUES ($1) RETURNING inet_server_addr()::text", i, timeout=1
                )
                self.acked.append(i)
                self.servers.append((time.monotonic(), str(server).split("/")[0]))
            except Exception:  # any failure is "write not acknowledged": record it, reconnect
                self.failures.append(time.monotonic())
                if conn is not None:
                    conn.terminate()
                    conn = None
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.01)
        if conn is not None:
            await conn.close()

    def unavailability(self, since: float) -> float:
        """Longest stretch without an acknowledged write after ``since``."""
        times = [since] + [t for t, _ in self.servers if t >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)
