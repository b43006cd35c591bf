"""A real HAProxy in front of the cluster, configured the way operators configure it for Patroni:
a write frontend checked with ``GET /primary`` and a read frontend checked with
``GET /replica?lag=16MB`` on each node's API (docs/operations.md carries this configuration).

A client writing through HAProxy keeps working across a node loss and a switchover; the write
frontend reaches the new primary shortly after its promotion (the figure is printed and bounded);
the read frontend never routes to the primary or to a lagging replica.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ram import localcluster as lc
from tests.conftest import free_port
from tests.e2e.cluster import E2ECluster, Writer

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = pytest.mark.skipif(
    not os.path.exists(HAPROXY),
    reason="haproxy is not installed (scripts/test.sh installs it: apt-get install haproxy)",
)

#: The check timing operators use with Patroni: a check every 200 ms, down after 2 failures, up after 1.
CONFIG = """\
global
    maxconn 200
defaults
    mode tcp
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    default-server inter 200ms fall 2 rise 1 on-marked-down shutdown-sessions
listen writes
    bind 127.0.0.1:{write_port}
    option httpchk GET /primary
    http-check expect status 200
{write_servers}
listen reads
    bind 127.0.0.1:{read_port}
    balance roundrobin
    option httpchk GET /replica?lag=16MB
    http-check expect status 200
{read_servers}
"""


def haproxy_config(info: lc.ClusterInfo, write_port: int, read_port: int) -> str:
    servers = "\n".join(
        f"    server {m.name} {m.host}:{m.pg_port} check port {m.api_url.rsplit(':', 1)[1]}" for m in info.members
    )
    return CONFIG.format(write_port=write_port, read_port=read_port, write_servers=servers, read_servers=servers)


class HAProxy:
    def __init__(self, e2e: E2ECluster) -> None:
        self.dir = e2e.root / "haproxy"
        self.dir.mkdir(exist_ok=True)
        self.write_port, self.read_port = free_port(), free_port()
        self.cfg = self.dir / "haproxy.cfg"
        self.cfg.write_text(haproxy_config(e2e.info, self.write_port, self.read_port))
        # The same password as the members', for the proxy's address too.
        password = Path(e2e.info.pgpass_file).read_text().splitlines()[0].rsplit(":", 1)[1]
        self.passfile = self.dir / "pgpass"
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(Path(e2e.info.pgpass_file).read_text())
            f.write(f"127.0.0.1:{self.write_port}:*:postgres:{password}\n127.0.0.1:{self.read_port}:*:postgres:{password}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.cfg)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.cfg)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "haproxy.log", "wb"))  # noqa: SIM115

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def dsn(self, port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"


@pytest.fixture(scope="module")
async def proxied() -> AsyncIterator[tuple[E2ECluster, HAProxy]]:
    cluster = E2ECluster()
    proxy: HAProxy | None = None
    try:
        await cluster.start()
        proxy = HAProxy(cluster)
        os.environ["PGPASSFILE"] = str(proxy.passfile)
        proxy.start()
        # HAProxy starts with every server up until its checks say otherwise (fall 2 x 200 ms).
        await asyncio.sleep(1.5)
        yield cluster, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        await cluster.close()


async def _server_of(dsn: str) -> tuple[str, bool] | None:
    """(server address, in recovery) of a fresh connection through ``dsn``; None when refused."""
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        row = await conn.fetchrow("SELECT inet_server_addr()::text AS a, pg_is_in_recovery() AS r", timeout=2)
        assert row is not None
        return str(row["a"]).split("/")[0], bool(row["r"])
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    finally:
        conn.terminate()


async def _wait(what: str, timeout: float, check: object) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def _reads_only_from_replicas(proxy: HAProxy, primary_host: str, n: int = 12) -> list[str]:
    seen = []
    for _ in range(n):
        got = await _server_of(proxy.dsn(proxy.read_port))
        if got is None:
            continue
        host, in_recovery = got
        assert in_recovery and host != primary_host, f"the read frontend routed to {host} (in recovery: {in_recovery})"
        seen.append(host)
    return seen


async def test_writes_follow_the_primary_and_reads_never_hit_it(proxied: tuple[E2ECluster, HAProxy]) -> None:
    e2e, proxy = proxied
    c = await e2e.wait_healthy(60)
    old = c["primary"]

    async def routes_to_primary() -> bool:
        got = await _server_of(proxy.dsn(proxy.write_port))
        return got is not None and got == (e2e.member(old).host, False)

    await _wait("the write frontend on the primary", 10, routes_to_primary)
    seen = await _reads_only_from_replicas(proxy, e2e.member(old).host)
    assert len(set(seen)) == 2, f"reads should be balanced over both replicas: {seen}"

    async with Writer(proxy.dsn(proxy.write_port)) as writer:
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        e2e.kill_node(old)
        # When does the new primary accept writes, and when do writes through HAProxy reach it?
        promoted_at: float | None = None
        new_host: str | None = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and promoted_at is None:
            for m in e2e.info.members:
                if m.name != old and await e2e.writable(m.name):
                    promoted_at, new_host = time.monotonic(), m.host
                    break
            await asyncio.sleep(0.02)
        assert promoted_at is not None and new_host is not None, "no replica was promoted"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(s == new_host for _, s in writer.servers):
            await asyncio.sleep(0.02)
        first = next((t for t, s in writer.servers if s == new_host), None)
        assert first is not None, "writes through HAProxy never reached the new primary"
        through_proxy = max(0.0, first - promoted_at)
        print(f"\nHAProxy write frontend on the new primary {through_proxy:.2f} s after its promotion "
              f"({first - killed_at:.2f} s after the node loss)")
        assert through_proxy < 1.0, f"HAProxy reached the new primary {through_proxy:.2f} s after its promotion"
        await asyncio.sleep(0.5)
    assert len(writer.acked) > 20

    # The dead node comes back (rewound) and the read frontend again spreads over the replicas only.
    e2e.restart_node(old)
    c = await e2e.wait_healthy(90)
    await asyncio.sleep(1.0)
    await _reads_only_from_replicas(proxy, e2e.member(c["primary"]).host)


async def test_switchover_through_haproxy(proxied: tuple[E2ECluster, HAProxy]) -> None:
    e2e, proxy = proxied
    for m in e2e.info.members:
        if not lc.pid_alive(m.pid):
            e2e.restart_node(m.name)
    c = await e2e.wait_healthy(90)
    old = c["primary"]
    target = next(m["name"] for m in c["members"] if m["name"] != old)
    async with Writer(proxy.dsn(proxy.write_port)) as writer:
        await asyncio.sleep(0.5)
        r = await e2e.api("POST", "/switchover", json={"candidate": target})
        assert r.status_code == 202, r.text
        since = time.monotonic()
        host = e2e.member(target).host
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(s == host for t, s in writer.servers if t > since):
            await asyncio.sleep(0.05)
        assert any(s == host for t, s in writer.servers if t > since), "writes never reached the new primary"
        await asyncio.sleep(0.5)
        gap = writer.unavailability(since)
    print(f"\nswitchover through HAProxy: longest write gap {gap:.2f} s")
    assert gap < 5.0
    await e2e.wait_healthy(60)
    await asyncio.sleep(1.0)  # a few check intervals for HAProxy to see the roles swapped
    await _reads_only_from_replicas(proxy, host)
