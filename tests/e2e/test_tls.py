"""TLS everywhere on a real cluster (issue #11): ``ram cluster up --tls``'s layout gives the API HTTPS,
the Raft peers mutual TLS and PostgreSQL replication ``hostssl`` with ``sslmode=verify-full`` — the
primary's ``pg_stat_ssl`` shows every replication connection encrypted."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.cluster import E2ECluster


@pytest.fixture(scope="module")
async def tls_cluster() -> AsyncIterator[E2ECluster]:
    cluster = E2ECluster(tls=True)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()


def _tls_handshake(host: str, port: int, ca: Path, cert: Path | None, key: Path | None) -> str:
    """Open a TLS session to a Raft port (trusting the cluster CA); returns the TLS version."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        return str(tls.version())


async def test_api_raft_and_replication_are_encrypted(tls_cluster: E2ECluster) -> None:
    e2e = tls_cluster
    info = e2e.info
    c = await e2e.wait_healthy(90)
    assert all(m.api_url.startswith("https://") for m in info.members)
    ca = info.ca_file
    assert ca is not None
    # The API answers HTTPS (verified against the cluster CA) and nothing in clear text.
    async with httpx.AsyncClient(timeout=5) as plain:
        m = info.members[0]
        with pytest.raises(httpx.HTTPError):
            await plain.get(m.api_url.replace("https://", "http://") + "/health")
    # The primary's replication connections are TLS.
    primary = c["primary"]
    conn = await e2e.connect(primary)
    try:
        rows = await conn.fetch(
            "SELECT r.application_name, s.ssl, s.version FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)"
        )
    finally:
        await conn.close()
    assert len(rows) == len(info.members) - 1 and all(r["ssl"] for r in rows), rows
    # Raft listens with TLS and wants a member's certificate.
    member = info.members[1]
    tls_dir = Path(info.dir) / "tls"
    port = member.raft_port
    version = await asyncio.to_thread(
        _tls_handshake, member.host, port, ca, tls_dir / f"{info.members[0].name}.crt",
        tls_dir / f"{info.members[0].name}.key",
    )
    assert version.startswith("TLSv1."), version
    # A switchover works over all of it.
    target = next(x["name"] for x in c["members"] if x["name"] != primary)
    r = await e2e.api("POST", "/switchover", json={"candidate": target})
    assert r.status_code == 202, r.text
    await e2e.wait_for(lambda c: c["primary"] == target, 60, "the switchover over TLS")
