"""The write workload: clients inserting unique ids, every operation recorded with monotonic times.

* ``writers`` clients write through the libpq multi-host string (``target_session_attrs=read-write``):
  what an application does; they measure availability.
* One client pinned to each member's address: it keeps writing to that server whatever its role, so
  a member that accepts writes when it should not (an isolated old primary) is caught acknowledging.

Every insert returns the server's address and its WAL insert timeline
(``pg_walfile_name(pg_current_wal_insert_lsn())``), so the split-brain checker knows who
acknowledged which write on which timeline. An operation ends ``ok`` (acknowledged), ``fail``
(certainly not done: refused, or no connection) or ``info`` (unknown: timeout or connection lost
after sending — it may or may not have committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field

import asyncpg

TABLE = "chaos_w"


@dataclass
class Op:
    client: str
    id: int
    invoke: float
    complete: float = 0.0
    status: str = "pending"  # ok | fail | info
    node: str | None = None  # the server's address (ok only)
    timeline: int | None = None
    error: str | None = None


@dataclass
class Workload:
    writer_dsn: str
    pinned: dict[str, str]  # member name -> its address (host)
    pinned_ports: dict[str, int]
    writers: int = 2
    timeout: float = 5.0
    ops: list[Op] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def setup(self) -> None:
        conn = await asyncpg.connect(self.writer_dsn, timeout=10)
        try:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, client text, at timestamptz DEFAULT now())"
            )
        finally:
            await conn.close()

    async def start(self) -> None:
        await self.setup()
        loop = asyncio.get_running_loop()
        for i in range(self.writers):
            self._tasks.append(loop.create_task(self._client(f"w{i}", self.writer_dsn, pause=0.01)))
        for name, host in self.pinned.items():
            dsn = f"postgresql://postgres@{host}:{self.pinned_ports[name]}/postgres"
            self._tasks.append(loop.create_task(self._client(f"pin-{name}", dsn, pause=0.05)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _client(self, name: str, dsn: str, pause: float) -> None:
        conn: asyncpg.Connection | None = None
        sql = (f"INSERT INTO {TABLE} (id, client) VALUES ($1, $2) "
               "RETURNING inet_server_addr()::text, pg_walfile_name(pg_current_wal_insert_lsn())")
        while not self._stop.is_set():
            op = Op(name, next(self._ids), time.monotonic())
            self.ops.append(op)
            sent = False
            try:
                if conn is None:
                    conn = await asyncpg.connect(dsn, timeout=2)
                sent = True
                row = await conn.fetchrow(sql, op.id, name, timeout=self.timeout)
                op.complete = time.monotonic()
                op.status = "ok"
                op.node = str(row[0]).split("/")[0]
                op.timeline = int(str(row[1])[:8], 16)
            except Exception as exc:  # recorded, then reconnect
                op.complete = time.monotonic()
                refused = isinstance(exc, asyncpg.PostgresError) and not isinstance(
                    exc, asyncpg.exceptions.QueryCanceledError | asyncpg.exceptions.AdminShutdownError
                    | asyncpg.exceptions.CrashShutdownError
                )
                op.status = "fail" if (not sent or refused) else "info"
                op.error = f"{type(exc).__name__}: {str(exc)[:120]}"
                if conn is not None:
                    conn.terminate()
                    conn = None
                await asyncio.sleep(0.05 if name.startswith("w") else 0.2)
            await asyncio.sleep(pause)
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    # ------------------------------------------------------------------------------- queries

    def acked(self) -> list[Op]:
        return [op for op in self.ops if op.status == "ok"]

    def writer_ops(self) -> list[Op]:
        return [op for op in self.ops if op.client.startswith("w")]
