"""The fault library: every fault is an object with ``apply`` and ``undo``.

A :class:`FaultInjector` applies faults to a :class:`~tests.faults.cluster.ChaosCluster`, records each
one's window (monotonic times of apply and undo) and removes every fault still in force when it is
closed — from ``finally`` in tests and the runner, and from an ``atexit`` hook as a last resort.

Kinds (``KINDS``): ``kill_ram``, ``kill_postgres``, ``kill_node`` (kill -9; undo: start ``ram`` again,
which restarts or rewinds its PostgreSQL), ``freeze_ram``, ``freeze_postgres`` (SIGSTOP of the
postmaster and all its children), ``freeze_node`` (cgroup v2 ``cgroup.freeze`` of ram and PostgreSQL
together, like a paused VM; undo SIGCONT / thaw), ``isolate_primary``, ``isolate_node``,
``random_halves``, ``bridge``, ``one_way`` (network cuts, see :mod:`tests.faults.net`), ``store_down``
(the node's store database refuses connections and loses the ones it had), ``disk_full``,
``disk_readonly`` (the data directory's file system, see ``ChaosCluster(disks=True)``), ``clock_jump``
(the machine's wall clock jumps; opt-in with ``RAM_CHAOS_CLOCK=1`` because it moves the clock of
everything on the machine), and ``switchover`` (an operation, not a fault: ``POST /switchover``, then
the outcome from ``GET /events``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from ram import localcluster as lc
from tests.faults.cluster import ChaosCluster, descendants
from tests.faults.net import NetFilter
from tests.faults.net import usable as net_usable

PROCESS_KINDS = ("kill_ram", "kill_postgres", "kill_node", "freeze_ram", "freeze_postgres", "freeze_node")
NET_KINDS = ("isolate_primary", "isolate_node", "random_halves", "bridge", "one_way")
OTHER_KINDS = ("store_down", "disk_full", "disk_readonly", "clock_jump", "switchover")
KINDS = PROCESS_KINDS + NET_KINDS + OTHER_KINDS


class FaultSkipped(Exception):
    """The fault can not be applied here (the reason says why); nothing was changed."""


@dataclass
class Fault:
    kind: str
    targets: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    applied_at: float | None = None
    undone_at: float | None = None

    async def apply(self, fx: FaultInjector) -> None:
        raise NotImplementedError

    async def undo(self, fx: FaultInjector) -> None:
        raise NotImplementedError

    def undo_sync(self, fx: FaultInjector) -> None:
        """Best-effort removal without an event loop (atexit)."""
        with contextlib.suppress(Exception):
            asyncio.run(self.undo(fx))

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "targets": self.targets, **self.detail,
                "applied_at": self.applied_at, "undone_at": self.undone_at}


# ---------------------------------------------------------------------------------- processes


@dataclass
class KillProcess(Fault):
    """kill -9 of a node's ``ram`` (what="ram"), its postmaster ("postgres") or both ("node")."""

    what: str = "node"

    async def apply(self, fx: FaultInjector) -> None:
        member = fx.cluster.member(self.targets[0])
        killed = await asyncio.to_thread(
            lc.kill_member, member, ram=self.what in ("ram", "node"), postgres=self.what in ("postgres", "node")
        )
        self.detail["killed"] = [what for what, _ in killed]
        if not killed:
            raise FaultSkipped(f"{member.name}: nothing to kill ({self.what})")

    async def undo(self, fx: FaultInjector) -> None:
        # A killed postmaster is restarted by its own ram; a killed ram is started again (as an
        # operator's supervisor would), and it restarts / rewinds its PostgreSQL.
        member = fx.cluster.member(self.targets[0])
        if lc.ram_pid(member) is None:
            fx.cluster.restart_node(member.name)

    def undo_sync(self, fx: FaultInjector) -> None:
        pass  # the cluster is being torn down anyway


@dataclass
class Freeze(Fault):
    """SIGSTOP of ``ram`` ("ram"), of the postmaster and its children ("postgres"), or cgroup.freeze of
    the whole node ("node"); undo: SIGCONT / thaw."""

    what: str = "ram"
    pids: list[int] = field(default_factory=list)
    frozen_group: bool = False

    async def apply(self, fx: FaultInjector) -> None:
        member = fx.cluster.member(self.targets[0])
        if self.what == "node" and fx.cluster.freeze(member.name):
            self.frozen_group = True
            return
        pids: list[int] = []
        if self.what in ("ram", "node"):
            pid = lc.ram_pid(member)
            pids += [pid] if pid else []
        if self.what in ("postgres", "node"):
            pm = lc.postmaster_pid(member)
            pids += descendants(pm) if pm else []
        if not pids:
            raise FaultSkipped(f"{member.name}: no {self.what} process to freeze")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self.pids = pids

    async def undo(self, fx: FaultInjector) -> None:
        self.undo_sync(fx)

    def undo_sync(self, fx: FaultInjector) -> None:
        if self.frozen_group:
            fx.cluster.thaw(self.targets[0])
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# ------------------------------------------------------------------------------------ network


@dataclass
class NetCut(Fault):
    """Drop what each ``(src, dst)`` pair of ``drops`` sends (see tests.faults.net)."""

    drops: list[tuple[str, str]] = field(default_factory=list)

    async def apply(self, fx: FaultInjector) -> None:
        net = fx.net()
        fx.cluster.sweep()
        for src, dst in self.drops:
            net.drop(src, dst)

    async def undo(self, fx: FaultInjector) -> None:
        self.undo_sync(fx)

    def undo_sync(self, fx: FaultInjector) -> None:
        if fx.netfilter is not None:
            for src, dst in self.drops:
                fx.netfilter.allow(src, dst)


def partition_drops(*sides: list[str]) -> list[tuple[str, str]]:
    out = []
    for i, left in enumerate(sides):
        for right in sides[i + 1:]:
            for a in left:
                for b in right:
                    out += [(a, b), (b, a)]
    return out


# -------------------------------------------------------------------------------------- store


@dataclass
class StoreDown(Fault):
    """The node's store database refuses new connections and its open ones are terminated."""

    async def apply(self, fx: FaultInjector) -> None:
        db = f"ram_{self.targets[0]}"
        conn = await asyncpg.connect(fx.cluster.store_dsn(), timeout=5)
        try:
            await conn.execute(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS false')
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", db)
        finally:
            await conn.close()

    async def undo(self, fx: FaultInjector) -> None:
        conn = await asyncpg.connect(fx.cluster.store_dsn(), timeout=5)
        try:
            await conn.execute(f'ALTER DATABASE "ram_{self.targets[0]}" WITH ALLOW_CONNECTIONS true')
        finally:
            await conn.close()


# --------------------------------------------------------------------------------------- disks


@dataclass
class DiskFull(Fault):
    """Fill the file system of the node's data directory (a file next to pgdata, on the same disk)."""

    async def apply(self, fx: FaultInjector) -> None:
        if not fx.cluster.disks:
            raise FaultSkipped("the data directories are not on their own disks (ChaosCluster(disks=True), root)")
        mnt = fx.cluster.disk_mount(self.targets[0])
        st = os.statvfs(mnt)
        free = st.f_bavail * st.f_frsize
        path = mnt / "chaos-fill"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            size = max(free - 64 * 1024, 0)
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
        self.detail["filled_bytes"] = free

    async def undo(self, fx: FaultInjector) -> None:
        self.undo_sync(fx)

    def undo_sync(self, fx: FaultInjector) -> None:
        with contextlib.suppress(OSError):
            (fx.cluster.disk_mount(self.targets[0]) / "chaos-fill").unlink()


@dataclass
class DiskReadOnly(Fault):
    """The data directory's ext4 file system turns read-only (an ext4 error with errors=remount-ro,
    as after an I/O error). Undo is an operator's repair: the node's PostgreSQL is stopped (its ram
    paused meanwhile), the file system unmounted, checked (e2fsck) and mounted again; then ram
    starts PostgreSQL again."""

    async def apply(self, fx: FaultInjector) -> None:
        if not fx.cluster.disks:
            raise FaultSkipped("the data directories are not on their own disks (ChaosCluster(disks=True), root)")
        dev = fx.cluster.loop_device(self.targets[0])
        if dev is None:
            raise FaultSkipped("no loop device for the data disk")
        await asyncio.to_thread(Path(f"/sys/fs/ext4/{Path(dev).name}/trigger_fs_error").write_text,
                                "ram chaos: disk_readonly\n")

    async def undo(self, fx: FaultInjector) -> None:
        await asyncio.to_thread(self.undo_sync, fx)

    def undo_sync(self, fx: FaultInjector) -> None:
        c = fx.cluster
        name = self.targets[0]
        member = c.member(name)
        ram = lc.ram_pid(member)
        if ram:
            os.kill(ram, signal.SIGSTOP)
        try:
            pm = lc.postmaster_pid(member)
            pids = descendants(pm) if pm else []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while any(lc.pid_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            data, mnt = Path(member.pg_data_dir), c.disk_mount(name)
            for mount in (data, mnt):
                for _ in range(40):
                    if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                        break
                    time.sleep(0.25)
                else:
                    raise RuntimeError(f"could not unmount {mount}")
            fsck = subprocess.run(["e2fsck", "-fy", str(c.disk_image(name))], capture_output=True, text=True)
            self.detail["e2fsck_rc"] = fsck.returncode
            c.mount_disk(name)
            subprocess.run(["mount", "--bind", str(mnt / "pgdata"), str(data)], check=True, capture_output=True)
        finally:
            if ram:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(ram, signal.SIGCONT)


# --------------------------------------------------------------------------------------- clock


@dataclass
class ClockJump(Fault):
    """The wall clock (CLOCK_REALTIME, the whole machine's) jumps by ``seconds``; undo restores it
    from the monotonic clock. RAM's timeouts use monotonic time, so nothing should notice but logs
    and timestamps."""

    seconds: float = 0.0
    wall0: float = 0.0
    mono0: float = 0.0

    async def apply(self, fx: FaultInjector) -> None:
        if os.environ.get("RAM_CHAOS_CLOCK") != "1":
            raise FaultSkipped("clock jumps move the clock of the whole machine (other tests, other users); "
                               "set RAM_CHAOS_CLOCK=1 to allow them")
        self.wall0, self.mono0 = time.time(), time.monotonic()
        proc = await asyncio.to_thread(subprocess.run, ["date", "-s", f"@{self.wall0 + self.seconds:.3f}"],
                                       capture_output=True, text=True)
        if proc.returncode != 0:
            raise FaultSkipped(f"can not set the clock here: {proc.stderr.strip()}")
        self.detail["seconds"] = self.seconds

    async def undo(self, fx: FaultInjector) -> None:
        self.undo_sync(fx)

    def undo_sync(self, fx: FaultInjector) -> None:
        if self.wall0:
            now = self.wall0 + (time.monotonic() - self.mono0)
            subprocess.run(["date", "-s", f"@{now:.3f}"], capture_output=True)
            self.wall0 = 0.0


# ----------------------------------------------------------------------------------- operation


@dataclass
class Switchover(Fault):
    """``POST /switchover`` (to a named or the best replica), then the outcome from GET /events:
    switchover_completed / switchover_failed after the request's position (the 202 arrives before
    anything happened)."""

    timeout: float = 60.0

    async def apply(self, fx: FaultInjector) -> None:
        body = {"candidate": self.targets[0]} if self.targets else {}
        reply = await fx.cluster.api("POST", "/switchover", json=body)
        if reply.status_code != 202:
            raise FaultSkipped(f"switchover refused: {reply.status_code} {reply.text[:200]}")
        since = int(reply.json()["write"]["index"]) - 1
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                for ev in await fx.cluster.events_after(since, ["switchover_completed", "switchover_failed"]):
                    self.detail["outcome"] = ev["type"]
                    self.detail["took_s"] = round(time.monotonic() - (self.applied_at or 0), 3)
                    return
            await asyncio.sleep(0.2)
        self.detail["outcome"] = "timeout"

    async def undo(self, fx: FaultInjector) -> None:
        pass

    def undo_sync(self, fx: FaultInjector) -> None:
        pass


# ------------------------------------------------------------------------------------ injector


class FaultInjector:
    """Applies faults to one cluster; removes all of them on close (and at exit)."""

    def __init__(self, cluster: ChaosCluster) -> None:
        self.cluster = cluster
        self.netfilter: NetFilter | None = None
        self.active: list[Fault] = []
        self.done: list[Fault] = []
        self.skipped: dict[str, str] = {}
        atexit.register(self.close_sync)

    def net(self) -> NetFilter:
        if self.netfilter is None:
            problem = net_usable()
            if problem is None and self.cluster.cgroup_root is None:
                problem = "no cgroup v2 to tell the nodes' connections apart"
            if problem is not None:
                raise FaultSkipped(problem)
            self.open_net()
        assert self.netfilter is not None
        return self.netfilter

    def open_net(self) -> None:
        """Install connection marking. Call before the nodes start so that every connection is marked."""
        if self.netfilter is not None or net_usable() is not None or self.cluster.cgroup_root is None:
            return
        c = self.cluster
        nodes = {m.name: (m.host, f"{c.tag}/{m.name}") for m in c.info.members}
        self.netfilter = NetFilter(c.tag, nodes)
        self.netfilter.open()

    async def apply(self, fault: Fault) -> Fault:
        fault.applied_at = time.monotonic()
        try:
            await fault.apply(self)
        except FaultSkipped as exc:
            self.skipped[fault.kind] = str(exc)
            fault.applied_at = None
            raise
        except BaseException:
            # Half applied: undo what can be undone right away.
            with contextlib.suppress(Exception):
                await fault.undo(self)
            fault.undone_at = time.monotonic()
            self.done.append(fault)
            raise
        self.active.append(fault)
        return fault

    async def undo(self, fault: Fault) -> None:
        if fault in self.active:
            self.active.remove(fault)
            try:
                await fault.undo(self)
            finally:
                fault.undone_at = time.monotonic()
                self.done.append(fault)

    async def undo_all(self) -> None:
        for fault in list(reversed(self.active)):
            with contextlib.suppress(Exception):
                await self.undo(fault)

    async def close(self) -> None:
        await self.undo_all()
        if self.netfilter is not None:
            self.netfilter.close()

    def close_sync(self) -> None:
        for fault in list(reversed(self.active)):
            fault.undo_sync(self)
            self.active.remove(fault)
        if self.netfilter is not None:
            self.netfilter.close()
        for member in self.cluster.info.members:
            self.cluster.thaw(member.name)

    def windows(self) -> list[tuple[float, float]]:
        now = time.monotonic()
        return [(f.applied_at, f.undone_at or now) for f in self.done + self.active if f.applied_at is not None]


# ----------------------------------------------------------------------------- random faults


def make_fault(kind: str, rng: random.Random, cluster_doc: dict[str, Any], names: list[str]) -> Fault:
    """A fault of ``kind`` with targets drawn by ``rng`` (the primary is drawn more often)."""
    primary = cluster_doc.get("primary")
    replicas = [n for n in names if n != primary]

    def node() -> str:
        return primary if primary and rng.random() < 0.5 else rng.choice(names)

    if kind in ("kill_ram", "kill_postgres", "kill_node"):
        return KillProcess(kind, [node()], what=kind.split("_", 1)[1])
    if kind in ("freeze_ram", "freeze_postgres", "freeze_node"):
        return Freeze(kind, [node()], what=kind.split("_", 1)[1])
    if kind == "isolate_primary":
        target = primary or rng.choice(names)
        rest = [n for n in names if n != target]
        return NetCut(kind, [target], drops=partition_drops([target], rest))
    if kind == "isolate_node":
        target = rng.choice(names)
        return NetCut(kind, [target], drops=partition_drops([target], [n for n in names if n != target]))
    if kind == "random_halves":
        shuffled = names[:]
        rng.shuffle(shuffled)
        k = len(names) // 2
        left, right = sorted(shuffled[:k]), sorted(shuffled[k:])
        return NetCut(kind, left, detail={"sides": [left, right]}, drops=partition_drops(left, right))
    if kind == "bridge":
        # One node (the bridge) sees both sides; the sides do not see each other.
        shuffled = names[:]
        rng.shuffle(shuffled)
        bridge, rest = shuffled[0], shuffled[1:]
        k = len(rest) // 2
        left, right = sorted(rest[:k]), sorted(rest[k:])
        return NetCut(kind, [bridge], detail={"sides": [left, right]}, drops=partition_drops(left, right))
    if kind == "one_way":
        src = node()
        dst = rng.choice([n for n in names if n != src])
        return NetCut(kind, [src, dst], detail={"direction": f"{src}->{dst} dropped"}, drops=[(src, dst)])
    if kind == "store_down":
        return StoreDown(kind, [node()])
    if kind == "disk_full":
        return DiskFull(kind, [node()])
    if kind == "disk_readonly":
        return DiskReadOnly(kind, [node()])
    if kind == "clock_jump":
        return ClockJump(kind, [], seconds=rng.choice([-1, 1]) * rng.uniform(30, 600))
    if kind == "switchover":
        # In synchronous mode only a synchronous standby is eligible: name one of those.
        sync = [m["name"] for m in cluster_doc.get("members", []) if m.get("sync_standby")]
        pool = sync or replicas
        return Switchover(kind, [rng.choice(pool)] if pool and rng.random() < 0.5 else [])
    raise ValueError(f"unknown fault kind {kind!r}")
