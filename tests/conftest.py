"""Shared fixtures: real PostgreSQL servers, started as an unprivileged OS user when we are root."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from ram.postgres.server import PostgresServer

#: Ports tests listen on: below the kernel's ephemeral range (32768-60999 here), which outbound
#: connections draw from - a port the kernel picked for us could be taken by one of the suite's
#: many client connections between the check and the server's bind (CI saw it once).
_LISTEN_PORTS = range(20_000, 32_768)
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, outside the ephemeral range, not handed out before
    in this test run."""
    for _ in range(1000):
        port = random.choice(_LISTEN_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_LISTEN_PORTS} on {host}")


@contextlib.asynccontextmanager
async def holding(dsn: str, lock_sql: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Run ``lock_sql`` in a transaction of a session of its own and keep its locks until the
    yielded ``release()`` is awaited (or the block ends)."""
    conn = await asyncpg.connect(dsn)
    tx = conn.transaction()
    await tx.start()
    released = False

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            await tx.rollback()

    try:
        await conn.execute(lock_sql)
        yield release
    finally:
        await release()
        await conn.close()


def make_tempdir(prefix: str) -> Path:
    """A temp dir the PostgreSQL owner can traverse (pytest's own tmp dirs are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole test session; every test gets its own database.

    Started by RAM's own :class:`~ram.postgres.server.PostgresServer` rather than pytest-postgresql's
    process fixture: as root (CI) PostgreSQL must run as an unprivileged OS user with directories it
    owns, which that fixture does not do; ours is also the code under test for the embedded store."""
    base = make_tempdir("ram-test-pg-")
    server = PostgresServer(datadir=base / "data", port=free_port(), listen_addresses="127.0.0.1")
    try:
        asyncio.run(server.init())
        asyncio.run(server.start())
        yield server
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(server.stop("immediate", 10))
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def store_dsn(pg_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh, empty database on the session server; dropped afterwards (connections still open
    to it are terminated first). pytest-postgresql's DatabaseJanitor does the creating and dropping;
    the server itself is ours (see :func:`pg_server`)."""
    janitor = DatabaseJanitor(
        user=pg_server.superuser,
        host=str(pg_server.sockdir),
        port=pg_server.port,
        dbname=f"t_{uuid.uuid4().hex[:12]}",
    )
    await asyncio.to_thread(janitor.init)
    try:
        yield pg_server.dsn(janitor.dbname)
    finally:
        await asyncio.to_thread(janitor.drop)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Stalled new-cluster starts (a known open bug) with what the nodes were doing, even when the
    fixtures' one restart let the tests pass: CI output is the only place they can be seen."""
    from tests.e2e.cluster import STALLS

    if STALLS:
        terminalreporter.section(f"stalled cluster starts: {len(STALLS)}")
        for text in STALLS:
            terminalreporter.write_line(text)


# ---------------------------------------------------------------------------------------- test tiers

#: Whole real clusters (``ram node run`` processes, each with its PostgreSQL): tier ``e2e``.
_E2E_PATHS = (
    "tests/e2e/",
    "tests/chaos/",
    "tests/fuzz/test_cluster_inputs.py",
    "tests/cli/test_cluster_cmd.py",
    "tests/cli/test_cluster_sync.py",
    "tests/cli/test_cluster_up_tour.py",
    "tests/security/test_no_secret_leaks.py",
    "tests/test_wheel.py",
)
#: Modules that start PostgreSQL servers of their own (not through the ``pg_server`` fixture).
_PG_PATHS = ("tests/postgres/", "tests/runtime/", "tests/test_pg_fixture.py")


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "unit: pure logic, no PostgreSQL, no cluster (./scripts/test.sh -m unit: seconds)",
        "pg: real PostgreSQL servers, no whole cluster",
        "e2e: whole local clusters of real ram node run processes",
    ):
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test gets exactly one tier marker, from where it lives and what it uses: a test that
    asks (directly or through another fixture) for ``pg_server`` is ``pg``; a whole-cluster module
    is ``e2e``; everything else is ``unit``. Derived, so a new test can not be left untiered.
    ``slow`` tests (the hour-long runs) get none: ``-m unit`` must never start one."""
    root = Path(str(config.rootpath))
    for item in items:
        if item.get_closest_marker("slow") is not None:
            continue  # the long runs are a tier of their own (-m slow), never part of -m unit/pg/e2e
        rel = Path(str(item.path)).relative_to(root).as_posix()
        if rel.startswith(_E2E_PATHS):
            tier = "e2e"
        elif rel.startswith(_PG_PATHS) or "pg_server" in getattr(item, "fixturenames", ()):
            tier = "pg"
        else:
            tier = "unit"
        item.add_marker(getattr(pytest.mark, tier))
