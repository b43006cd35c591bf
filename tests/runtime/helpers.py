"""Building blocks for runtime tests: store databases and node configs on real PostgreSQL and TCP."""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from pathlib import Path

import asyncpg

from ram.config import NodeConfig, parse_config
from ram.eventstore import schema
from ram.postgres.server import PostgresServer
from tests.conftest import free_port


async def create_store_databases(server: PostgresServer, count: int) -> list[str]:
    """``count`` fresh databases with schema pgraft, returned as DSNs."""
    names = [f"n_{uuid.uuid4().hex[:10]}" for _ in range(count)]
    admin = await asyncpg.connect(server.dsn())
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsns = [server.dsn(name) for name in names]
    for dsn in dsns:
        await asyncio.to_thread(schema.upgrade, dsn)
    return dsns


async def drop_databases(server: PostgresServer, dsns: list[str]) -> None:
    admin = await asyncpg.connect(server.dsn())
    try:
        for dsn in dsns:
            name = dsn.rsplit("/", 1)[1].split("?")[0]
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def write_secret(path: Path, secret: str | None = None) -> Path:
    """A cluster secret file as RAM wants it: created 0600 (never chmod'ed after the write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write((secret or secrets.token_hex(32)) + "\n")
    return path


def cluster_configs(
    dsns: list[str], data_root: Path, *, cluster_id: str = "test", api: dict[str, object] | None = None,
    **raft: object,
) -> list[NodeConfig]:
    """Configs for a bootstrapping cluster, one node per store DSN, on free loopback ports.

    The peers authenticate with a cluster secret written under ``data_root`` (pass ``secret_file``,
    TLS keys or ``insecure`` in ``raft`` to test something else)."""
    if not any(k in raft for k in ("secret_file", "tls_cert", "insecure")):
        raft["secret_file"] = str(write_secret(data_root / "cluster.secret"))
    ports = [free_port() for _ in dsns]
    api_ports = [free_port() for _ in dsns]
    names = [f"node{i + 1}" for i in range(len(dsns))]
    configs = []
    for i, dsn in enumerate(dsns):
        peers = [
            {
                "id": j + 1,
                "name": names[j],
                "address": f"127.0.0.1:{ports[j]}",
                "api_address": f"127.0.0.1:{api_ports[j]}",
            }
            for j in range(len(dsns))
            if j != i
        ]
        configs.append(
            parse_config(
                {
                    "cluster_id": cluster_id,
                    "node_id": i + 1,
                    "name": names[i],
                    "data_dir": str(data_root / names[i]),
                    "bootstrap": True,
                    "raft": {"listen": f"127.0.0.1:{ports[i]}", "peers": peers, **raft},
                    "store": {"dsn": dsn},
                    "api": {"listen": f"127.0.0.1:{api_ports[i]}", **(api or {})},
                }
            )
        )
    return configs
