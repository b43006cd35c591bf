"""The Raft log, hard state and snapshot in the node's store (schema `pgraft`), over asyncpg.

Durability is the whole job: a :class:`~ram.consensus.types.Ready` batch (snapshot, entries that
may replace a conflicting suffix, hard state) is written in ONE transaction with
``synchronous_commit = on`` (forced on the pool's connections, whatever the store's default), in one
round trip whatever its size: ``pgraft.save_log`` in general, a plain insert for the common case of
entries right after the last one written with term and vote unchanged. The caller's Ready
loop gives group commit for free: everything that arrived while one batch was being flushed is in
the next Ready, so the next flush carries it all.

A store that is down or slow surfaces as :class:`StoreUnavailable`; the node then stops handing out
anything that promises durability (votes, append acknowledgements) and retries, instead of crashing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

import asyncpg

from ram.consensus.types import ConfState, Entry, EntryType, HardState, PersistedState, Snapshot

log = logging.getLogger("ram.storage")


class StoreUnavailable(RuntimeError):
    """The store could not be reached or did not answer in time; nothing was made durable."""


class StoreIdentityMismatch(RuntimeError):
    """The store belongs to another cluster or node."""


_SAVE_LOG = "SELECT pgraft.save_log($1::bigint[], $2::bigint[], $3::smallint[], $4::bytea[], $5, $6, $7)"

# The common case, entries right after the last one written and no new term or vote: a plain insert
# (scalar parameters for one entry, arrays for more). It skips the function call, the
# conflicting-suffix delete and the array encoding of ``save_log``; the commit index goes along at
# most every COMMIT_WRITE_INTERVAL_S (Raft needs none of it durable: a restarted node learns it
# from the leader, and counts what its store applied as committed).
_INSERT_ONE = "INSERT INTO pgraft.log (idx, term, entry_type, data) VALUES ($1, $2, $3, $4)"
_INSERT_MANY = (
    "INSERT INTO pgraft.log (idx, term, entry_type, data) "
    "SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::smallint[], $4::bytea[])"
)
_COMMIT_ALONG = "WITH hs AS (UPDATE pgraft.hard_state SET commit_index = $5 WHERE commit_index < $5) "
#: (commit along?, several entries?) -> the statement.
_APPEND = {
    (False, False): _INSERT_ONE,
    (False, True): _INSERT_MANY,
    (True, False): _COMMIT_ALONG + _INSERT_ONE,
    (True, True): _COMMIT_ALONG + _INSERT_MANY,
}

#: Seconds between two writes of the commit index along with appended entries, at least: it is
#: for people reading ``pgraft.hard_state``, and an UPDATE on every append costs the store ~20 %
#: more per log write.
COMMIT_WRITE_INTERVAL_S = 0.1

_UPSERT_SNAPSHOT = """
INSERT INTO pgraft.snapshot (id, idx, term, voters, learners, data, created_at)
VALUES (true, $1, $2, $3, $4, $5, now())
ON CONFLICT (id) DO UPDATE SET idx = EXCLUDED.idx, term = EXCLUDED.term, voters = EXCLUDED.voters,
    learners = EXCLUDED.learners, data = EXCLUDED.data, created_at = EXCLUDED.created_at
"""

#: Errors that mean "the store is not reachable right now" (down, restarting, shutting down, too slow),
#: as opposed to a bug in our SQL: these make the node wait and retry, never crash.
STORE_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    # The client side of a connection the server cut mid-statement can be left inconsistent ("cannot
    # switch to state N; another operation is in progress"): the connection is lost, not the data.
    asyncpg.InternalClientError,
)


@contextlib.asynccontextmanager
async def store_connection(pool: asyncpg.Pool, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
    """A pooled store connection. ANY failure to get one is :class:`StoreUnavailable`: nothing was
    written yet, so retrying is always safe - whatever the server said while refusing the session
    (a database closed to new connections answers 55000, a starting server 57P03, a changed
    password 28P01: all of them pass, none of them is a reason to stop the node)."""
    try:
        conn = await pool.acquire(timeout=timeout)
    except (*STORE_ERRORS, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"store unavailable: {exc}") from exc
    broken = False
    try:
        yield conn
    except (asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresConnectionError, OSError):
        broken = True
        raise
    finally:
        if broken:
            conn.terminate()  # never hand a half-used protocol back to the pool
        await pool.release(conn)


#: Errors after which a connection can not be trusted any more (its protocol state is unknown).
_BROKEN = (*STORE_ERRORS, asyncio.CancelledError)


def _usable(conn: asyncpg.Connection) -> bool:
    """Open, and still ours: the pool takes back a connection that closed under us."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # "connection has been released back to the pool"
        return False


class StoreSession:
    """One pooled connection kept by one sequential writer (the Ready loop's log writes, the apply
    task's applies): no pool acquire, release and session-reset round trip per write, and API reads
    can never take the connection the log needs. After any failure that leaves the connection in
    doubt it is terminated and dropped; the next use takes a fresh one."""

    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[asyncpg.Connection]:
        """The session's connection; any failure to get one is :class:`StoreUnavailable`."""
        conn = self._conn
        if conn is None or not _usable(conn):
            self._conn = None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await self._pool.release(conn)
            try:
                conn = await self._pool.acquire(timeout=self._timeout)
            except (*STORE_ERRORS, asyncpg.PostgresError) as exc:
                raise StoreUnavailable(f"store unavailable: {exc}") from exc
            self._conn = conn
        try:
            yield conn
        except _BROKEN:
            self._conn = None
            conn.terminate()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)
            raise

    async def close(self) -> None:
        """Give the connection back to the pool."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(conn)


async def open_store_pool(dsn: str, *, size: int = 4) -> asyncpg.Pool:
    """The node's connection pool to its store; ``synchronous_commit`` is forced on for every session
    (a store whose default is ``off`` would silently break the durability Raft relies on)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(2, size),
        max_size=size,
        server_settings={"synchronous_commit": "on", "application_name": "ram"},
    )
    assert pool is not None
    return pool


class RaftStorage:
    """Reads and writes the Raft state of one node in its store."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 5.0) -> None:
        self._pool = pool
        self._timeout = timeout
        #: The Ready loop's connection for log writes (the hot path).
        self._writer = StoreSession(pool, timeout)
        #: The last index in ``pgraft.log`` and the stored term and vote, as of our last load or
        #: write; None when unknown (before loading, after a write whose outcome we did not learn).
        self._last_index: int | None = None
        self._term_vote: tuple[int, int] | None = None
        #: When the commit index last went along with appended entries (time.monotonic()).
        self._commit_written_at = 0.0

    async def close(self) -> None:
        await self._writer.close()

    async def check_identity(self, cluster_id: str, node_id: int, node_name: str) -> None:
        """Claim an empty store for this node, or refuse a store that belongs to someone else."""
        try:
            async with store_connection(self._pool, self._timeout) as conn:
                row = await conn.fetchrow("SELECT cluster_id, node_id, node_name FROM pgraft.node_identity")
                if row is None:
                    await conn.execute(
                        "INSERT INTO pgraft.node_identity (cluster_id, node_id, node_name) VALUES ($1, $2, $3)",
                        cluster_id,
                        node_id,
                        node_name,
                    )
                    return
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc
        if row["cluster_id"] != cluster_id or row["node_id"] != node_id:
            raise StoreIdentityMismatch(
                f"store belongs to cluster {row['cluster_id']!r} node {row['node_id']} ({row['node_name']}), "
                f"not cluster {cluster_id!r} node {node_id}"
            )

    async def load(self) -> PersistedState:
        """Hard state, latest snapshot and the log after it, as they were last made durable."""
        try:
            async with store_connection(self._pool, self._timeout) as conn, conn.transaction(readonly=True):
                hs_row = await conn.fetchrow("SELECT term, vote, commit_index FROM pgraft.hard_state")
                snap_row = await conn.fetchrow("SELECT idx, term, voters, learners, data FROM pgraft.snapshot")
                after = snap_row["idx"] if snap_row else 0
                rows = await conn.fetch(
                    "SELECT idx, term, entry_type, data FROM pgraft.log WHERE idx > $1 ORDER BY idx", after
                )
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc
        hard_state = (
            HardState(term=hs_row["term"], vote=hs_row["vote"], commit=hs_row["commit_index"])
            if hs_row
            else HardState(term=0, vote=0, commit=0)
        )
        snapshot = _snapshot_from_row(snap_row) if snap_row and snap_row["idx"] > 0 else None
        entries = [
            Entry(index=r["idx"], term=r["term"], type=EntryType(r["entry_type"]), data=bytes(r["data"])) for r in rows
        ]
        # Rows at or below the snapshot may remain (compaction is lazy); appends start above it.
        self._last_index = entries[-1].index if entries else after
        self._term_vote = (hard_state.term, hard_state.vote) if hs_row else None
        return PersistedState(hard_state=hard_state, snapshot=snapshot, entries=entries)

    async def save(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
    ) -> None:
        """Make one Ready's log durable atomically: snapshot, then entries, then hard state."""
        if hard_state is None and not entries and snapshot is None:
            return
        hs = hard_state
        try:
            async with self._writer.use() as conn:
                if (
                    snapshot is None
                    and entries
                    and self._last_index is not None
                    and entries[0].index == self._last_index + 1
                    and (hs is None or (hs.term, hs.vote) == self._term_vote)
                ):
                    try:
                        await self._append(conn, entries, hs.commit if hs else 0)
                    except asyncpg.UniqueViolationError:
                        # The log holds more than we knew (a bug if it ever happens): the general
                        # statement replaces the conflicting suffix, as it would have anyway.
                        log.warning("log append found index %d taken; replacing the suffix", entries[0].index)
                        await self._save_ready(conn, hs, entries, snapshot)
                else:
                    await self._save_ready(conn, hs, entries, snapshot)
        except STORE_ERRORS as exc:
            self._last_index = self._term_vote = None  # committed or not: read the log as it is next time
            raise StoreUnavailable(f"store unavailable: {exc}") from exc
        if entries:
            self._last_index = entries[-1].index
        elif snapshot is not None:
            self._last_index = snapshot.index
        if hs is not None:
            self._term_vote = (hs.term, hs.vote)

    async def _append(self, conn: asyncpg.Connection, entries: Sequence[Entry], commit: int) -> None:
        """Entries right after the last one written, term and vote unchanged: a plain insert."""
        now = time.monotonic()
        along = commit > 0 and now - self._commit_written_at >= COMMIT_WRITE_INTERVAL_S
        extra = (commit,) if along else ()
        if len(entries) == 1:
            e = entries[0]
            query = _APPEND[along, False]
            await conn.execute(query, e.index, e.term, int(e.type), e.data, *extra, timeout=self._timeout)
        else:
            await conn.execute(
                _APPEND[along, True],
                [e.index for e in entries],
                [e.term for e in entries],
                [int(e.type) for e in entries],
                [e.data for e in entries],
                *extra,
                timeout=self._timeout,
            )
        if along:
            self._commit_written_at = now

    async def _save_ready(
        self, conn: asyncpg.Connection, hs: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        """Any Ready: entries may replace a conflicting suffix, a snapshot replaces the whole log."""
        log_args = (
            [e.index for e in entries],
            [e.term for e in entries],
            [int(e.type) for e in entries],
            [e.data for e in entries],
            hs.term if hs else None,
            hs.vote if hs else None,
            hs.commit if hs else None,
        )
        if snapshot is None:
            # One statement, one round trip, one fsync.
            await conn.execute(_SAVE_LOG, *log_args, timeout=self._timeout)
            return
        async with conn.transaction():
            # An installed snapshot replaces the whole log: the core restarts its log at it.
            await self._write_snapshot(conn, snapshot)
            await conn.execute("DELETE FROM pgraft.log")
            await conn.execute(_SAVE_LOG, *log_args, timeout=self._timeout)

    async def compact(self, snapshot: Snapshot) -> None:
        """Record a locally taken snapshot and drop the log it covers (events stay forever)."""
        try:
            async with store_connection(self._pool, self._timeout) as conn, conn.transaction():
                await self._write_snapshot(conn, snapshot)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc

    @staticmethod
    async def _write_snapshot(conn: asyncpg.Connection, snapshot: Snapshot) -> None:
        current = await conn.fetchval("SELECT idx FROM pgraft.snapshot")
        if current is not None and current >= snapshot.index:
            return
        await conn.execute(
            _UPSERT_SNAPSHOT,
            snapshot.index,
            snapshot.term,
            sorted(snapshot.conf.voters),
            sorted(snapshot.conf.learners),
            snapshot.data,
        )
        await conn.execute("DELETE FROM pgraft.log WHERE idx <= $1", snapshot.index)


def _snapshot_from_row(row: asyncpg.Record) -> Snapshot:
    return Snapshot(
        index=row["idx"],
        term=row["term"],
        conf=ConfState(voters=frozenset(row["voters"]), learners=frozenset(row["learners"])),
        data=bytes(row["data"]),
    )
