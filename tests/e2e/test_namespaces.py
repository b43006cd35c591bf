"""Hosts that are really separate (issue #16): three network namespaces on a bridge of their own,
each with its own address, its own PostgreSQL, its own embedded store and its own ``ram node run``,
configured with ``ram node init`` the way docs/deploy.md tells an operator to (no ``ram cluster
up``, secret files made on the first host and copied to the others, ``client_cidrs`` edited in).

One cluster, one test, in order: bootstrap; a write replicated; node loss (the primary's host loses
power: its link goes down and every process in its namespace is killed) and the failover, timed;
the lost host powered on again and rejoined; a partition (a replica's veth link taken down) marked
and healed; a switchover; no acknowledged write lost. All along a virtual IP follows the primary,
moved by the documented callback script ``deploy/callbacks/vip.sh`` (on_start, on_stop,
on_role_change) - clients that connect to the VIP always reach the writable primary. Root only
(namespaces, veth, bridge); skipped otherwise with the reason.

The addresses are a private /24 on the bridge (``10.201.N.0/24``); nothing routes it anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import make_tempdir

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
VIP_SCRIPT = REPO / "deploy" / "callbacks" / "vip.sh"
NODES = 3
RAFT_PORT, API_PORT, PG_PORT = 7400, 8008, 5432


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces, veth pairs and a bridge need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@dataclass
class Host:
    """One 'machine': a namespace with an address, a directory standing for its disk, a ram process."""

    index: int
    ns: str
    veth: str  # the bridge side of its link (taking it down cuts the host off)
    address: str
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"pg{self.index}"

    @property
    def config(self) -> Path:
        return self.root / "etc" / "node.toml"

    @property
    def secrets(self) -> Path:
        return self.root / "etc"

    @property
    def api(self) -> str:
        return f"http://{self.address}:{API_PORT}"

    @property
    def log(self) -> Path:
        return self.root / "ram.log"


class Lab:
    """The namespaces, their links and the node processes; everything removed in :meth:`close`."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:4]
        self.subnet = random.randrange(1, 250)
        self.bridge = f"rnb{tag}"
        self.dir = make_tempdir("ram-ns-")
        self.hosts = [
            Host(i, f"ramns-{tag}-{i}", f"rnv{tag}{i}", f"10.201.{self.subnet}.{i}", self.dir / f"host{i}")
            for i in range(1, NODES + 1)
        ]
        self.made: list[tuple[str, ...]] = []  # undo commands, run in reverse
        self.vip = f"10.201.{self.subnet}.100"

    # ------------------------------------------------------------------------------- network

    def build_network(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", "del", self.bridge))
        _ip("addr", "add", f"10.201.{self.subnet}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for h in self.hosts:
            _ip("netns", "add", h.ns)
            self.made.append(("netns", "del", h.ns))
            _ip("link", "add", h.veth, "type", "veth", "peer", "name", f"{h.veth}p")
            self.made.append(("link", "del", h.veth))
            _ip("link", "set", f"{h.veth}p", "netns", h.ns)
            _ip("link", "set", h.veth, "master", self.bridge)
            _ip("link", "set", h.veth, "up")
            inside = ("netns", "exec", h.ns, "ip")
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "link", "set", f"{h.veth}p", "name", "eth0")
            _ip(*inside, "addr", "add", f"{h.address}/24", "dev", "eth0")
            _ip(*inside, "link", "set", "eth0", "up")

    def link(self, host: Host, up: bool) -> None:
        _ip("link", "set", host.veth, "up" if up else "down")

    # ---------------------------------------------------------------------------- configure

    def ram(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "ram"), *args], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)

    def configure(self) -> None:
        """docs/deploy.md step 2 on every host: the first host's ``ram node init`` creates the secret
        files, which are copied to the other hosts before their own ``ram node init`` (it keeps them)."""
        for h in self.hosts:
            h.secrets.mkdir(parents=True)
            if h.index > 1:
                for f in self.hosts[0].secrets.iterdir():
                    if f.name != "node.toml":
                        shutil.copy2(f, h.secrets / f.name)
            peers = [f"--peer={o.index}={o.name}@{o.address}:{RAFT_PORT}" for o in self.hosts if o is not h]
            result = self.ram(
                "node", "init", "-o", str(h.config), "--cluster-id", "nsprod", "--node-id", str(h.index),
                "--name", h.name, "--listen", f"{h.address}:{RAFT_PORT}", *peers,
                "--data-dir", str(h.root / "data"), "--manage", "--bootstrap",
                "--secret-file", str(h.secrets / "raft.secret"),
                "--replication-password-file", str(h.secrets / "replication.password"),
                "--superuser-password-file", str(h.secrets / "superuser.password"),
                "--api-tokens-file", str(h.secrets / "api-tokens.toml"),
            )
            assert result.returncode == 0, result.stdout + result.stderr
            # The operator's edit: the clients' network may log in to PostgreSQL (the test runs there).
            text = h.config.read_text()
            assert "# client_cidrs = []" in text, text
            text = text.replace("# client_cidrs = []", f'client_cidrs = ["10.201.{self.subnet}.0/24"]')
            assert "# extra_listen = []" in text, text
            text = text.replace("# extra_listen = []", 'extra_listen = ["*"]')  # PostgreSQL answers on the VIP
            # ... and the virtual IP follows the primary (docs/deploy.md, "Callbacks").
            vip = f'["{VIP_SCRIPT}", "{self.vip}/24", "eth0"]'
            for hook in ("on_start", "on_stop", "on_role_change"):
                assert f"\n# {hook} =\n" in text, text
                text = text.replace(f"\n# {hook} =\n", f"\n{hook} = {vip}\n")
            h.config.write_text(text)

    def token(self) -> str:
        return (self.hosts[0].secrets / "api-tokens.admin.token").read_text().strip()

    def superuser_password(self) -> str:
        return (self.hosts[0].secrets / "superuser.password").read_text().strip()

    # ------------------------------------------------------------------------------ processes

    def start(self, h: Host) -> None:
        log = open(h.log, "ab")  # noqa: SIM115 - handed to the child
        try:
            h.proc = subprocess.Popen(
                ["ip", "netns", "exec", h.ns, str(BIN / "ram"), "node", "run", "--config", str(h.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log.close()

    def kill_host(self, h: Host) -> None:
        """kill -9 of every process in the host's namespace."""
        for pid in self.pids(h):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if h.proc is not None:
            with contextlib.suppress(Exception):
                h.proc.wait(10)
        h.proc = None

    def power_off(self, h: Host) -> None:
        """Power loss: the host drops off the network and everything on it dies at once."""
        self.link(h, False)
        self.kill_host(h)

    def power_on(self, h: Host) -> None:
        """Boot: addresses added at run time are gone (the VIP it held), the link comes up, ram starts."""
        _ip("netns", "exec", h.ns, "ip", "address", "del", f"{self.vip}/24", "dev", "eth0", check=False)
        self.link(h, True)
        self.start(h)

    def pids(self, h: Host) -> list[int]:
        out = _ip("netns", "pids", h.ns, check=False).stdout
        return [int(p) for p in out.split()]

    def close(self) -> None:
        for h in self.hosts:
            if h.proc is not None and h.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(h.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(self.pids(h) for h in self.hosts if self._ns_exists(h)):
            time.sleep(0.2)
        for h in self.hosts:
            if self._ns_exists(h):
                self.kill_host(h)
        for undo in reversed(self.made):
            _ip(*undo, check=False)
        if os.environ.get("RAM_E2E_KEEP"):
            print(f"kept {self.dir} (RAM_E2E_KEEP)", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _ns_exists(self, h: Host) -> bool:
        return h.ns in _ip("netns", "list", check=False).stdout

    # --------------------------------------------------------------------------------- asking

    async def cluster(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """The Raft leader's view (asked of every host that answers)."""
        for h in self.hosts:
            with contextlib.suppress(httpx.HTTPError):
                reply = await client.get(f"{h.api}/cluster")
                if reply.status_code == 200 and reply.json()["raft_leader"] == reply.json()["node"]:
                    return dict(reply.json())
        raise AssertionError("no Raft leader answers")

    async def wait_for(self, client: httpx.AsyncClient, ok: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        dead: list[str] = []
        while time.monotonic() < deadline:
            dead = [h.name for h in self.hosts if h.proc is not None and h.proc.poll() is not None]
            if dead:
                break  # a node exited: its log says why
            with contextlib.suppress(AssertionError, httpx.HTTPError, KeyError):
                last = await self.cluster(client)
                if ok(last):
                    return last
            await asyncio.sleep(0.25)
        tails = "\n".join(f"--- {h.name}: " + "\n".join(h.log.read_text(errors="replace").splitlines()[-15:])
                          for h in self.hosts if h.log.exists())
        raise AssertionError(f"no {what} within {timeout} s (exited: {dead}); last: {last}\n{tails}")

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    async def connect(self, name: str) -> asyncpg.Connection:
        address = self.vip if name == "vip" else self.host(name).address
        return await asyncpg.connect(host=address, port=PG_PORT, user="postgres",
                                     password=self.superuser_password(), database="postgres", timeout=5)


def healthy(c: dict[str, Any], members: int = NODES) -> bool:
    ms = c["members"]
    return bool(c["primary"]) and len(ms) == members and all(
        m["healthy"] and (m["role"] == "primary" or m["following"] == c["primary"]) for m in ms
    )


@pytest.fixture(scope="module")
async def lab() -> AsyncIterator[Lab]:
    lab = Lab()
    try:
        await asyncio.to_thread(lab.build_network)
        await asyncio.to_thread(lab.configure)
        for h in lab.hosts:
            lab.start(h)
        yield lab
    finally:
        await asyncio.to_thread(lab.close)


async def _write(lab: Lab, name: str, value: int) -> None:
    conn = await lab.connect(name)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS ns_writes (v int PRIMARY KEY)")
        await conn.execute("INSERT INTO ns_writes VALUES ($1)", value)
    finally:
        await conn.close()


async def _values(lab: Lab, name: str) -> set[int]:
    conn = await lab.connect(name)
    try:
        return {r[0] for r in await conn.fetch("SELECT v FROM ns_writes")}
    finally:
        await conn.close()


async def _wait_values(lab: Lab, name: str, wanted: set[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            seen = await _values(lab, name)
            if wanted <= seen:
                return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{name} has {sorted(seen)}, wanted at least {sorted(wanted)}")


async def _vip_reaches_primary(lab: Lab, timeout: float = 60) -> None:
    """A client of the VIP lands on a writable server (neighbours' ARP caches may take a few
    seconds to notice a moved address: the test's bridge has no arping)."""
    deadline = time.monotonic() + timeout
    why = ""
    while time.monotonic() < deadline:
        try:
            conn = await lab.connect("vip")
            try:
                if await conn.fetchval("SELECT NOT pg_is_in_recovery()"):
                    return
                why = "the VIP leads to a standby"
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.5)
    raise AssertionError(f"the VIP {lab.vip} did not reach the primary within {timeout} s: {why}")


async def test_three_hosts_failover_partition_switchover_rejoin(lab: Lab) -> None:
    headers = {"Authorization": f"Bearer {lab.token()}"}
    async with httpx.AsyncClient(timeout=3, headers=headers) as client:
        c = await lab.wait_for(client, healthy, 180, "a healthy new cluster")
        first = c["primary"]
        # Every member's addresses are its namespace's own: nothing on a shared loopback.
        assert {m["pg_address"] for m in c["members"]} == {f"{h.address}:{PG_PORT}" for h in lab.hosts}, c["members"]
        assert {m["raft_address"] for m in c["members"]} == {f"{h.address}:{RAFT_PORT}" for h in lab.hosts}
        await _write(lab, first, 1)
        for h in lab.hosts:
            await _wait_values(lab, h.name, {1})
        await _vip_reaches_primary(lab)

        # Node loss: the primary's host loses power.
        lost = lab.host(first)
        await asyncio.to_thread(lab.power_off, lost)
        killed_at = time.monotonic()
        c = await lab.wait_for(client, lambda c: c["primary"] not in (None, first), 60, "a failover")
        second = c["primary"]
        while True:  # the write outage ends with the new primary's first acknowledged write
            try:
                await _write(lab, second, 2)
                break
            except (OSError, asyncpg.PostgresError, TimeoutError):
                assert time.monotonic() - killed_at < 90, "the new primary never took a write"
                await asyncio.sleep(0.1)
        failover_s = time.monotonic() - killed_at
        print(f"namespace failover: new primary {second} took a write {failover_s:.2f} s after the kill")
        assert 1 in await _values(lab, second)
        await _vip_reaches_primary(lab)  # the new primary's on_role_change took the VIP

        # The lost host comes back: it rejoins as a replica of the new primary (rewind or clone).
        await asyncio.to_thread(lab.power_on, lost)
        await lab.wait_for(client, healthy, 120, f"{first} rejoined")
        await _wait_values(lab, first, {1, 2})

        # Partition: a replica's link goes down; the majority marks it and keeps writing; it heals.
        replica = next(h for h in lab.hosts if h.name != second)
        await asyncio.to_thread(lab.link, replica, False)
        try:
            await lab.wait_for(
                client,
                lambda c: not next(m for m in c["members"] if m["name"] == replica.name)["healthy"],
                60, f"{replica.name} marked unhealthy behind its down link",
            )
            await _write(lab, second, 3)
        finally:
            await asyncio.to_thread(lab.link, replica, True)
        await lab.wait_for(client, healthy, 90, "the partition healed")
        await _wait_values(lab, replica.name, {1, 2, 3})

        # Switchover to that replica, over the API as ramctrl does.
        r = await client.post(f"{lab.host(second).api}/switchover", json={"candidate": replica.name})
        assert r.status_code == 202, r.text
        await lab.wait_for(client, lambda c: c["primary"] == replica.name and healthy(c), 90, "the switchover")
        await _write(lab, replica.name, 4)
        for h in lab.hosts:
            await _wait_values(lab, h.name, {1, 2, 3, 4})
        await _vip_reaches_primary(lab)  # on_stop released it on the old primary, on_role_change took it
        holders = [h.name for h in lab.hosts
                   if f"{lab.vip}/" in _ip("netns", "exec", h.ns, "ip", "-o", "address", "show", "dev", "eth0").stdout]
        assert holders == [replica.name], holders
        # Every callback's outcome is an event; none failed.
        r = await client.get(f"{lab.host(replica.name).api}/events", params={"type": "callback_ran", "limit": 1000})
        ran = [e["payload"] for e in r.json()["events"]]
        assert ran and all(p["outcome"] == "ok" for p in ran), ran
        assert {(p["hook"], p["role"]) for p in ran} >= {("on_start", "primary"), ("on_role_change", "primary")}
