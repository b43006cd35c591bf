"""PostgreSQL TLS between members and password rotation, against real servers (issue #11).

A primary and a standby with member certificates: pg_basebackup, streaming and pg_rewind all run
over TLS with verify-full and channel binding (``pg_stat_ssl`` on the primary shows the replication
connection encrypted), plain TCP is refused, the passfile names each member's host:port. Rotating
the replication password: the primary alters the role (a new SCRAM verifier), every node rewrites
its passfile, and the standby reconnects with the new password.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ram.postgres import conffiles
from ram.postgres.bootstrap import scram_verifier, verifier_matches
from ram.postgres.instance import ManagedInstance
from ram.postgres.spec import ManagedInstanceSpec, PrimaryEndpoint, Timeouts, TlsFiles
from ram.postgres.sql import execute, fetch
from ram.tls import make_ca, make_cert
from tests.conftest import free_port, make_tempdir

SMALL = {"shared_buffers": "16MB", "max_connections": "30", "fsync": "off", "max_wal_size": "64MB"}
TIMEOUTS = Timeouts(start=60, stop=20, stop_immediate=4, fence=4, follow=30, clone=120, rewind=120)
HOST = "127.0.0.1"


class Pair:
    def __init__(self, a: ManagedInstance, b: ManagedInstance, base: Path) -> None:
        self.a, self.b, self.base = a, b, base


def _spec(
    base: Path, name: str, port: int, ports: list[int], tls: TlsFiles | None, password: str
) -> ManagedInstanceSpec:
    return ManagedInstanceSpec(
        name=name, data_dir=base / name / "data", host=HOST, port=port, replication_password=password,
        members=[HOST], member_endpoints=[(HOST, p) for p in ports], tls=tls, parameters=SMALL, timeouts=TIMEOUTS,
        sync_data=False,
    )


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    base = make_tempdir("ram-pgtls-")
    ca = make_ca(base / "pki" / "ca")
    ports = [free_port(), free_port()]
    nodes = []
    for name, port in zip(("tls-a", "tls-b"), ports, strict=True):
        files = make_cert(ca, name, [HOST], base / "pki" / "certs")
        tls = TlsFiles(cert=files.cert, key=files.key, ca=ca.cert_path)
        nodes.append(ManagedInstance(_spec(base, name, port, ports, tls, "first-password")))
    try:
        yield Pair(nodes[0], nodes[1], base)
    finally:
        await asyncio.gather(*(n.fence() for n in nodes), return_exceptions=True)
        shutil.rmtree(base, ignore_errors=True)


def endpoint(node: ManagedInstance) -> PrimaryEndpoint:
    return PrimaryEndpoint(node.spec.host, node.spec.port, node.spec.name)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def replication_ssl(primary: ManagedInstance) -> list[Any]:
    return await fetch(
        primary.spec,
        "SELECT r.application_name, r.state, s.ssl, s.version FROM pg_stat_replication r JOIN pg_stat_ssl s "
        "USING (pid)",
    )


async def streaming_over_tls(primary: ManagedInstance, name: str) -> bool:
    return any(r["application_name"] == name and r["state"] == "streaming" and r["ssl"]
               for r in await replication_ssl(primary))


async def test_replication_clone_and_rewind_over_tls_and_password_rotation(pair: Pair) -> None:
    a, b = pair.a, pair.b
    await a.initdb_primary()
    await a.ensure_slots(["tls-a", "tls-b"])
    conf = (a.spec.data_dir / "postgresql.conf").read_text()
    assert "ssl = 'on'" in conf and str(a.spec.tls_dir / "member.key") in conf
    hba = (a.spec.data_dir / "pg_hba.conf").read_text()
    assert "hostssl replication   replicator" in hba and "clientcert=verify-ca" in hba
    assert "\nhost " not in hba
    # The key copy belongs to the owner, 0600, outside the data directory.
    key_mode = stat.S_IMODE((a.spec.tls_dir / "member.key").stat().st_mode)
    assert key_mode == 0o600 and not str(a.spec.tls_dir).startswith(str(a.spec.data_dir))
    # One passfile line per member endpoint, never *:*.
    passfile = sorted(a.spec.pgpass.read_text().splitlines())
    assert passfile == [f"{HOST}:{p}:*:replicator:first-password" for p in sorted((a.spec.port, b.spec.port))]
    assert stat.S_IMODE(a.spec.pgpass.stat().st_mode) == 0o600

    # pg_basebackup over TLS (verify-full against the IP SAN, client certificate, channel binding).
    await b.clone_from(endpoint(a))
    info = conffiles.primary_conninfo(b.spec, endpoint(a))
    assert "sslmode=verify-full" in info and "channel_binding=require" in info and "password" not in info.replace(
        "passfile", "")
    await b.start()
    await wait_until(lambda: streaming_over_tls(a, "tls-b"), what="b streams from a over TLS")
    row = next(r for r in await replication_ssl(a) if r["application_name"] == "tls-b")
    assert row["ssl"] is True and row["version"].startswith("TLSv1.")

    # Plain TCP is refused (no host line), even with the right password.
    with pytest.raises(asyncpg.PostgresError, match=r"no pg_hba\.conf entry|SSL off"):
        await asyncpg.connect(host=HOST, port=a.spec.port, user="replicator", password="first-password",
                              database="postgres", ssl=False, timeout=5)
    # A TLS client without a member certificate may not log in as the replication user.
    ctx = ssl.create_default_context(cafile=str(a.spec.tls_dir / "ca.crt"))
    ctx.check_hostname = False
    with pytest.raises((asyncpg.PostgresError, ConnectionError, ssl.SSLError)):
        await asyncpg.connect(host=HOST, port=a.spec.port, user="replicator", password="first-password",
                              database="postgres", ssl=ctx, timeout=5)

    # Rotation: every node adopts the new password, the primary alters the role.
    before = (await fetch(a.spec, "SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'"))[0][0]
    assert verifier_matches(before, "first-password") and not verifier_matches(before, "second-password")
    assert await a.sync_passwords("first-password", primary=True) == ()  # nothing to do, nothing done
    changed = await a.sync_passwords("second-password", superuser_password="super-pw", primary=True)
    assert changed == ("passfile", "replicator", "postgres")
    assert await b.sync_passwords("second-password", primary=False) == ("passfile",)
    after = (await fetch(a.spec, "SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'"))[0][0]
    assert after != before and verifier_matches(after, "second-password")
    assert "second-password" not in a.spec.logfile.read_text()  # only the verifier reached the server
    assert b.spec.pgpass.read_text().count(":second-password") == 2
    assert "second-password" not in repr(b.spec) and "first-password" not in repr(a.spec)
    # The standby's next connection uses the new password.
    await execute(a.spec, "SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
    await wait_until(lambda: streaming_over_tls(a, "tls-b"), what="b reconnects with the rotated password")

    # pg_rewind over TLS: a stops cleanly, b is promoted, a rejoins as b's standby.
    await a.stop("fast")
    assert await b.promote() == 2
    await b.ensure_slots(["tls-a", "tls-b"])
    result = await a.rejoin(endpoint(b))
    assert result.method == "rewind" and result.rewind.ok and result.started, result
    await wait_until(lambda: streaming_over_tls(b, "tls-a"), what="rewound a streams from b over TLS")


def test_passfile_escaping_and_wildcard_only_without_endpoints(tmp_path: Path) -> None:
    spec = ManagedInstanceSpec(name="x", data_dir=tmp_path / "d", host=HOST, port=5432,
                               replication_password="a:b\\c", member_endpoints=[("10.0.0.2", 5432), ("10.0.0.1", 5433)])
    assert conffiles.render_passfile(spec) == (
        "10.0.0.2:5432:*:replicator:a\\:b\\\\c\n10.0.0.1:5433:*:replicator:a\\:b\\\\c\n"
    )
    bare = ManagedInstanceSpec(name="x", data_dir=tmp_path / "d", host=HOST, port=5432, replication_password="pw")
    assert conffiles.render_passfile(bare) == "*:*:*:replicator:pw\n"
    assert "pw" not in repr(bare)
    assert verifier_matches(scram_verifier("pw"), "pw") and not verifier_matches("md5abc", "pw")
