"""Writing and reading `pgraft.events`.

Writing happens only in the apply path, inside the caller's transaction, together with the
projection update and the applied index — so an entry's events are there exactly once or not at
all, across crashes. Reading serves operators: a range by position, the tail, and a live follow
driven by LISTEN/NOTIFY (a trigger on `pgraft.events` notifies on every insert; nobody polls).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from ram.eventstore.events import Event, StoredEvent, decode_event, encode_event_json

NOTIFY_CHANNEL = "pgraft_events"

_SELECT_COLUMNS = "position, sub, type, schema_version, payload::text AS payload, term, proposer, ts"


@dataclass(frozen=True)
class EntryEvents:
    """The events one committed Raft entry yields (possibly none: the index still counts as applied)."""

    position: int
    term: int
    proposer: int
    ts: datetime
    events: Sequence[Event] = field(default_factory=tuple)


async def applied_index(conn: asyncpg.Connection) -> int:
    """The highest Raft index whose events are written."""
    return int(await conn.fetchval("SELECT applied_index FROM pgraft.applied"))


async def append_entries(conn: asyncpg.Connection, batch: Sequence[EntryEvents]) -> int:
    """Write the events of consecutive committed entries, update projections and the applied index.

    One statement (``pgraft.append_entries``), so it is atomic on its own and joins the caller's
    transaction when there is one. Entries at or below the applied index are skipped, which makes
    re-applying after a crash between commit and acknowledgement harmless. One round trip whatever
    the batch size. Returns the new applied index.
    """
    if not batch:
        return int(await conn.fetchval("SELECT applied_index FROM pgraft.applied"))
    return int(
        await conn.fetchval(
            "SELECT pgraft.append_entries($1, $2, $3, $4, $5, $6, $7::jsonb[], $8, $9, $10)",
            batch[0].position,
            batch[-1].position,
            *batch_columns(batch),
        )
    )


def batch_columns(batch: Sequence[EntryEvents]) -> tuple[list[Any], ...]:
    """The events of consecutive entries as column arrays (position, sub, type, schema_version,
    payload JSON text, term, proposer, ts) for one ``unnest`` insert."""
    for previous, entry in itertools.pairwise(batch):
        if entry.position != previous.position + 1:
            raise ValueError(
                f"entries must be consecutive: position {entry.position} follows {previous.position}"
            )
    positions: list[int] = []
    subs: list[int] = []
    types: list[str] = []
    versions: list[int] = []
    payloads: list[str] = []
    terms: list[int] = []
    proposers: list[int] = []
    stamps: list[datetime] = []
    for entry in batch:
        for sub, event in enumerate(entry.events):
            type_name, version, payload = encode_event_json(event)
            positions.append(entry.position)
            subs.append(sub)
            types.append(type_name)
            versions.append(version)
            payloads.append(payload)
            terms.append(entry.term)
            proposers.append(entry.proposer)
            stamps.append(entry.ts)
    return positions, subs, types, versions, payloads, terms, proposers, stamps


def _row_to_event(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        position=row["position"],
        sub=row["sub"],
        term=row["term"],
        proposer=row["proposer"],
        ts=row["ts"],
        event=decode_event(row["type"], row["schema_version"], row["payload"]),
    )


async def read_range(
    conn: asyncpg.Connection,
    *,
    after: int = 0,
    limit: int = 100,
    types: Sequence[str] | None = None,
) -> list[StoredEvent]:
    """Events with position > ``after``, oldest first, optionally of some types.

    About ``limit`` events: the page never ends inside an entry (all events of its last position
    are included), so ``after=<last position seen>`` is a correct cursor for the next page.
    A stored event this code can not decode raises :class:`ram.eventstore.events.EventDecodeError`.
    """
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    rows = await conn.fetch(
        f"""
        WITH page_end AS (
            SELECT max(position) AS position FROM (
                SELECT position FROM pgraft.events
                WHERE position > $1 AND ($3::text[] IS NULL OR type = ANY($3))
                ORDER BY position, sub LIMIT $2) picked)
        SELECT {_SELECT_COLUMNS} FROM pgraft.events
        WHERE position > $1 AND position <= (SELECT position FROM page_end)
          AND ($3::text[] IS NULL OR type = ANY($3))
        ORDER BY position, sub
        """,
        after,
        limit,
        list(types) if types else None,
    )
    return [_row_to_event(row) for row in rows]


async def read_last(
    conn: asyncpg.Connection,
    *,
    before: int | None = None,
    limit: int = 20,
    types: Sequence[str] | None = None,
) -> list[StoredEvent]:
    """The newest events with position < ``before`` (all when None), returned oldest first.

    The mirror of :func:`read_range` for "what happened lately" on a long-lived cluster: about
    ``limit`` events, and the page never starts inside an entry (every event of its first position is
    included), so ``before=<first position seen>`` pages further back without skipping anything and
    ``after=<last position seen>`` continues forward: a correct cursor. One statement; both scans are
    ranges of the (position, sub) key (the bound is written so that a generic plan can still use it
    as an index condition).
    """
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    rows = await conn.fetch(
        f"""
        WITH page_start AS (
            SELECT min(position) AS position FROM (
                SELECT position FROM pgraft.events
                WHERE position <= COALESCE($1::bigint - 1, 9223372036854775807)
                  AND ($3::text[] IS NULL OR type = ANY($3))
                ORDER BY position DESC, sub DESC LIMIT $2) picked)
        SELECT {_SELECT_COLUMNS} FROM pgraft.events
        WHERE position >= (SELECT position FROM page_start)
          AND position <= COALESCE($1::bigint - 1, 9223372036854775807)
          AND ($3::text[] IS NULL OR type = ANY($3))
        ORDER BY position, sub
        """,
        before,
        limit,
        list(types) if types else None,
    )
    return [_row_to_event(row) for row in rows]


async def follow(
    dsn: str,
    *,
    after: int = 0,
    types: Sequence[str] | None = None,
    batch: int = 500,
) -> AsyncIterator[StoredEvent]:
    """Yield every event after ``after`` and then each new one as it is committed, forever.

    One dedicated connection LISTENs before the first read so that nothing committed in between is
    missed; a notification only wakes the reader, which then reads everything new in order.
    """
    conn = await asyncpg.connect(dsn)
    wake = asyncio.Event()

    def on_notify(*_: object) -> None:
        wake.set()

    try:
        await conn.add_listener(NOTIFY_CHANNEL, on_notify)
        position = after
        while True:
            wake.clear()
            while events := await read_range(conn, after=position, limit=batch, types=types):
                for stored in events:
                    position = stored.position
                    yield stored
            await wake.wait()
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
