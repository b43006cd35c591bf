"""RaftStorage against a real store: what each kind of Ready leaves in ``pgraft.log`` and
``pgraft.hard_state``, and that the plain-insert path for appends never loses a conflicting suffix."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ram.consensus.runtime import storage as storage_module
from ram.consensus.runtime.storage import RaftStorage, open_store_pool
from ram.consensus.types import ConfState, Entry, EntryType, HardState, Snapshot
from ram.postgres.server import PostgresServer
from tests.runtime.helpers import create_store_databases, drop_databases


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, EntryType.NORMAL, f"t{term}-{i}".encode()) for i in range(first, last + 1)]


@pytest.fixture
async def store(pg_server: PostgresServer) -> AsyncIterator[asyncpg.Pool]:
    dsns = await create_store_databases(pg_server, 1)
    pool = await open_store_pool(dsns[0])
    try:
        yield pool
    finally:
        await pool.close()
        await drop_databases(pg_server, dsns)


async def rows(pool: asyncpg.Pool) -> tuple[list[tuple[int, int, bytes]], tuple[int, int, int] | None]:
    async with pool.acquire() as conn:
        log = [tuple(r) for r in await conn.fetch("SELECT idx, term, data FROM pgraft.log ORDER BY idx")]
        hs = await conn.fetchrow("SELECT term, vote, commit_index FROM pgraft.hard_state")
    return log, (tuple(hs) if hs else None)  # type: ignore[return-value]


async def test_appends_replacements_and_hard_state(store: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_module, "COMMIT_WRITE_INTERVAL_S", 0.0)  # the commit index on every append
    storage = RaftStorage(store)
    try:
        loaded = await storage.load()
        assert loaded.entries == [] and loaded.snapshot is None
        await storage.save(hard_state=HardState(1, 1, 0), entries=entries(1, 3), snapshot=None)
        # Appends right after the last entry, one and several, with only the commit index moving.
        await storage.save(hard_state=HardState(1, 1, 3), entries=entries(4, 4), snapshot=None)
        await storage.save(hard_state=None, entries=entries(5, 7), snapshot=None)
        await storage.save(hard_state=HardState(1, 1, 5), entries=entries(8, 8), snapshot=None)
        log, hs = await rows(store)
        assert [r[0] for r in log] == list(range(1, 9)) and hs == (1, 1, 5)
        # A new leader's entries replace the conflicting suffix from index 6 on; a new term is written.
        await storage.save(hard_state=HardState(2, 2, 5), entries=entries(6, 6, term=2), snapshot=None)
        await storage.save(hard_state=None, entries=entries(7, 7, term=2), snapshot=None)
        log, hs = await rows(store)
        assert [(r[0], r[1]) for r in log] == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 2), (7, 2)]
        assert hs == (2, 2, 5)
        # The commit index never goes back.
        await storage.save(hard_state=HardState(2, 2, 4), entries=entries(8, 8, term=2), snapshot=None)
        assert (await rows(store))[1] == (2, 2, 5)
    finally:
        await storage.close()
    # A restarted node's storage reads what was written and appends after it.
    again = RaftStorage(store)
    try:
        loaded = await again.load()
        assert [e.index for e in loaded.entries] == list(range(1, 9)) and loaded.entries[-1].term == 2
        await again.save(hard_state=None, entries=entries(9, 9, term=2), snapshot=None)
        assert [r[0] for r in (await rows(store))[0]] == list(range(1, 10))
    finally:
        await again.close()


async def test_commit_index_goes_along_at_most_every_interval(
    store: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_module, "COMMIT_WRITE_INTERVAL_S", 1.0)  # longer than a loaded CI machine takes
    storage = RaftStorage(store)
    try:
        await storage.load()
        await storage.save(hard_state=HardState(1, 1, 0), entries=entries(1, 1), snapshot=None)
        await storage.save(hard_state=HardState(1, 1, 1), entries=entries(2, 2), snapshot=None)
        assert (await rows(store))[1] == (1, 1, 1)
        # Right after: the entry is written, the commit index waits for the interval to pass.
        await storage.save(hard_state=HardState(1, 1, 2), entries=entries(3, 3), snapshot=None)
        log, hs = await rows(store)
        assert [r[0] for r in log] == [1, 2, 3] and hs == (1, 1, 1)
        await asyncio.sleep(1.0)
        await storage.save(hard_state=HardState(1, 1, 3), entries=entries(4, 5), snapshot=None)
        log, hs = await rows(store)
        assert [r[0] for r in log] == [1, 2, 3, 4, 5] and hs == (1, 1, 3)
    finally:
        await storage.close()


async def test_a_log_longer_than_known_is_replaced_not_refused(store: asyncpg.Pool) -> None:
    """If the log ever holds an entry the storage did not know of (a write whose answer was lost),
    the append replaces it instead of failing for ever on the duplicate index."""
    storage = RaftStorage(store)
    try:
        await storage.load()
        await storage.save(hard_state=HardState(1, 1, 0), entries=entries(1, 2), snapshot=None)
        async with store.acquire() as conn:
            await conn.execute("INSERT INTO pgraft.log (idx, term, entry_type, data) VALUES (3, 1, 0, 'old')")
        await storage.save(hard_state=None, entries=entries(3, 4, term=1), snapshot=None)
        log, _ = await rows(store)
        assert [(r[0], r[2]) for r in log] == [(1, b"t1-1"), (2, b"t1-2"), (3, b"t1-3"), (4, b"t1-4")]
    finally:
        await storage.close()


async def test_snapshot_replaces_the_log(store: asyncpg.Pool) -> None:
    storage = RaftStorage(store)
    try:
        await storage.load()
        await storage.save(hard_state=HardState(1, 1, 0), entries=entries(1, 5), snapshot=None)
        snap = Snapshot(index=10, term=2, conf=ConfState(frozenset({1, 2, 3}), frozenset()), data=b"")
        await storage.save(hard_state=HardState(2, 1, 10), entries=[], snapshot=snap)
        await storage.save(hard_state=None, entries=entries(11, 12, term=2), snapshot=None)
        log, hs = await rows(store)
        assert [r[0] for r in log] == [11, 12] and hs == (2, 1, 10)
        loaded = await storage.load()
        assert loaded.snapshot is not None and loaded.snapshot.index == 10
        assert [e.index for e in loaded.entries] == [11, 12]
    finally:
        await storage.close()
