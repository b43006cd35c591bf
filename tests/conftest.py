"""Shared fixtures: real PostgreSQL servers, started as an unprivileged OS user when we are root."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from ram.postgres.server import PostgresServer


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def make_tempdir(prefix: str) -> Path:
    """A temp dir the PostgreSQL owner can traverse (pytest's own tmp dirs are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole test session; every test gets its own database."""
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
    """A fresh, empty database on the session server; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield pg_server.dsn(name)
    admin = await asyncpg.connect(pg_server.dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Stalled new-cluster starts (a known open bug) with what the nodes were doing, even when the
    fixtures' one restart let the tests pass: CI output is the only place they can be seen."""
    from tests.e2e.cluster import STALLS

    if STALLS:
        terminalreporter.section(f"stalled cluster starts: {len(STALLS)}")
        for text in STALLS:
            terminalreporter.write_line(text)
