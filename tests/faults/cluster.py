"""A real local cluster prepared for fault injection (an :class:`E2ECluster` with a few extras).

* **API token.** The nodes' APIs require a bearer token; the harness starts every node with
  ``RAM_ADMIN_TOKEN`` in its environment (a token of its own, ``ram.security`` adds it to the node's
  tokens) and sends it on every request. Works whether or not ``ram cluster up`` writes a tokens file.
* **A cgroup per node** (cgroup v2, ``/sys/fs/cgroup[/unified]/ramchaos-<id>/<member>``): the node's
  ``ram`` process goes there right after it is started, so its PostgreSQL (forked later) does too.
  Network cuts match on it (see :mod:`tests.faults.net`) and ``cgroup.freeze`` freezes a whole node.
* **A disk per node** (optional, root + loop devices): the member's PostgreSQL data directory is a bind
  mount of ``pgdata`` on a small ext4 image (``errors=remount-ro``), so a fault can fill it or make it
  read-only without touching the machine's own file systems.
* **Store access**: each node's store database (``ram_<member>`` on the cluster's store instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from ram import localcluster as lc
from tests.e2e.cluster import E2ECluster

#: The admin token of every node started by the harness (``RAM_ADMIN_TOKEN`` of the node processes).
CHAOS_TOKEN = os.environ.setdefault("RAM_ADMIN_TOKEN", "chaos-" + secrets.token_hex(16))
HEADERS = {"Authorization": f"Bearer {CHAOS_TOKEN}"}


def cgroup2_root() -> Path | None:
    """Where cgroup v2 is mounted (pure v2 or the hybrid layout's ``unified``), None if unusable."""
    unified = Path("/sys/fs/cgroup/unified")
    if (unified / "cgroup.procs").exists():
        return unified
    pure = Path("/sys/fs/cgroup")
    return pure if (pure / "cgroup.controllers").exists() else None


def have_root() -> bool:
    return os.geteuid() == 0


def loop_disks_usable() -> bool:
    return have_root() and Path("/dev/loop-control").exists() and shutil.which("mkfs.ext4") is not None


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class ChaosCluster(E2ECluster):
    """An E2ECluster whose nodes run in their own cgroups, optionally on their own small disks."""

    def __init__(self, nodes: int = 3, ha: dict[str, Any] | None = None, *, disks: bool = False,
                 disk_mb: int = 1024, raft: dict[str, Any] | None = None) -> None:
        super().__init__(nodes, ha)
        self.disks = disks and loop_disks_usable()
        self.disk_mb = disk_mb
        self.raft_extra = raft or {}
        self.tag = f"ramchaos-{self.root.name.rsplit('-', 1)[-1]}"
        root = cgroup2_root() if have_root() else None
        self.cgroup_root = root / self.tag if root is not None else None
        self.mounts: list[Path] = []  # mount points, in mount order (unmounted in reverse)

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self, timeout: float = 150, before_nodes: Callable[[], None] | None = None) -> None:
        """Prepare, make the cgroups (and disks), call ``before_nodes`` (e.g. install the connection
        marking of tests.faults.net), start every node and wait until the cluster is healthy."""
        await lc.prepare(self.info, self.ha)
        if self.raft_extra:
            await asyncio.to_thread(self._write_raft_extra)
        if self.cgroup_root is not None:
            for member in self.info.members:
                (self.cgroup_root / member.name).mkdir(parents=True, exist_ok=True)
        if self.disks:
            for member in self.info.members:
                await asyncio.to_thread(self._make_disk, member)
        if before_nodes is not None:
            before_nodes()
        for member in self.info.members:
            self.restart_node(member.name)
        await self.wait_healthy(timeout)

    def _write_raft_extra(self) -> None:
        extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.raft_extra.items())
        for member in self.info.members:
            path = Path(member.config_file)
            path.write_text(path.read_text().replace("[raft]\n", "[raft]\n" + extra, 1))

    async def close(self) -> None:
        for member in self.info.members:
            self.thaw(member.name)
        await asyncio.to_thread(lc.stop_nodes, self.info.members, timeout=20)
        for member in self.info.members:  # a node killed with -9 leaves its PostgreSQL behind
            self._kill_postmaster(member)
            self.kill_member_processes(member.name)
        with contextlib.suppress(Exception):
            await lc.store_server(self.info).stop("immediate", 10)
        await asyncio.to_thread(self._teardown_files)

    def _teardown_files(self) -> None:
        for mount in reversed(self.mounts):
            for _ in range(20):
                if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.25)
            else:
                subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        if self.cgroup_root is not None:
            for member in self.info.members:
                with contextlib.suppress(OSError):
                    (self.cgroup_root / member.name).rmdir()
            with contextlib.suppress(OSError):
                self.cgroup_root.rmdir()
        for member in self.info.members:
            dev = self.loop_device(member.name) if self.disks else None
            if dev:
                subprocess.run(["losetup", "-d", dev], capture_output=True)
        if os.environ.get("RAM_E2E_KEEP"):
            print(f"kept {self.root} (RAM_E2E_KEEP)", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart_node(self, name: str) -> None:
        member = self.member(name)
        pid = lc.start_node(self.info, member)
        self.place(name, [pid])

    # ------------------------------------------------------------------------------- cgroups

    def cgroup(self, name: str) -> Path | None:
        return self.cgroup_root / name if self.cgroup_root is not None else None

    def place(self, name: str, pids: list[int]) -> None:
        group = self.cgroup(name)
        if group is None:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                (group / "cgroup.procs").write_text(str(pid))

    def sweep(self) -> None:
        """Every process of every node (ram, its PostgreSQL and their children) into the node's cgroup."""
        for member in self.info.members:
            pids: list[int] = []
            for pid in (lc.ram_pid(member), lc.postmaster_pid(member)):
                if pid:
                    pids.extend(descendants(pid))
            self.place(member.name, pids)

    def freeze(self, name: str) -> bool:
        group = self.cgroup(name)
        if group is None or not (group / "cgroup.freeze").exists():
            return False
        self.sweep()
        (group / "cgroup.freeze").write_text("1")
        return True

    def thaw(self, name: str) -> None:
        group = self.cgroup(name)
        if group is not None and (group / "cgroup.freeze").exists():
            with contextlib.suppress(OSError):
                (group / "cgroup.freeze").write_text("0")

    def kill_member_processes(self, name: str) -> None:
        """SIGKILL whatever still runs in the node's cgroup (the harness's last resort at close)."""
        group = self.cgroup(name)
        if group is None:
            return
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), 9)

    # --------------------------------------------------------------------------------- disks

    def disk_image(self, name: str) -> Path:
        return Path(self.member(name).node_dir) / "disk.img"

    def disk_mount(self, name: str) -> Path:
        return Path(self.member(name).node_dir) / "disk"

    def loop_device(self, name: str) -> str | None:
        out = subprocess.run(["losetup", "-j", str(self.disk_image(name))], capture_output=True, text=True).stdout
        return out.split(":", 1)[0].strip() or None

    def _make_disk(self, member: lc.MemberInfo) -> None:
        img, mnt, data = self.disk_image(member.name), self.disk_mount(member.name), Path(member.pg_data_dir)
        with open(img, "wb") as fh:
            fh.truncate(self.disk_mb * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], check=True, capture_output=True)
        mnt.mkdir(exist_ok=True)
        self.mount_disk(member.name)
        (mnt / "pgdata").mkdir(exist_ok=True)
        shutil.chown(mnt / "pgdata", user=self._pg_owner(), group=None)
        os.chmod(mnt / "pgdata", 0o700)
        data.mkdir(exist_ok=True)
        subprocess.run(["mount", "--bind", str(mnt / "pgdata"), str(data)], check=True, capture_output=True)
        self.mounts.append(data)

    def mount_disk(self, name: str) -> None:
        mnt = self.disk_mount(name)
        subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(self.disk_image(name)), str(mnt)],
                       check=True, capture_output=True)
        if mnt not in self.mounts:
            self.mounts.append(mnt)

    @staticmethod
    def _pg_owner() -> str:
        from ram.postgres.commands import default_owner

        return default_owner()

    # ------------------------------------------------------------------------------- the API

    async def cluster(self) -> dict[str, Any]:
        """The cluster as the Raft leader answers it (as E2ECluster.cluster, with the token)."""
        answers = await self.cluster_answers()
        for doc in answers.values():
            if doc.get("raft_leader") == doc.get("node"):
                return doc
        if answers:
            raise AssertionError("no Raft leader answers right now")
        raise AssertionError("no node API answers")

    async def cluster_answers(self, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
        async def one(client: httpx.AsyncClient, member: lc.MemberInfo) -> tuple[str, dict[str, Any] | None]:
            if not lc.pid_alive(member.pid):
                return member.name, None
            with contextlib.suppress(httpx.HTTPError, ValueError):
                reply = await client.get(f"{member.api_url}/cluster")
                if reply.status_code == 200:
                    return member.name, reply.json()
            return member.name, None

        async with httpx.AsyncClient(timeout=timeout, headers=HEADERS) as client:
            got = await asyncio.gather(*(one(client, m) for m in self.info.members))
        return {name: doc for name, doc in got if doc is not None}

    async def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(timeout=15, headers=HEADERS) as client:
            for member in self.info.members:
                if lc.pid_alive(member.pid):
                    with contextlib.suppress(httpx.ConnectError, httpx.ConnectTimeout):
                        return await client.request(method, f"{member.api_url}{path}", **kwargs)
        raise AssertionError("no node API answers")

    async def events_after(self, position: int, types: list[str] | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        query = f"/events?after={position}&limit=500"
        reply = await self.api("GET", query)
        reply.raise_for_status()
        for ev in reply.json()["events"]:
            if types is None or ev["type"] in types:
                out.append(ev)
        return out

    async def last_position(self) -> int:
        reply = await self.api("GET", "/events?last=1")
        reply.raise_for_status()
        events = reply.json()["events"]
        return int(events[-1]["position"]) if events else 0

    # ------------------------------------------------------------------------------ the store

    def store_dsn(self, name: str | None = None) -> str:
        return lc.store_server(self.info).dsn(f"ram_{name}" if name else "postgres")

    async def store_fetch(self, name: str, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.store_dsn(name), timeout=5)
        try:
            return list(await conn.fetch(sql, *args, timeout=30))
        finally:
            await conn.close()
