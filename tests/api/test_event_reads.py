"""The store read behind ``GET /events?last=``: the newest events in whole entries, a cursor both ways.

A live cluster today commits one event per entry, so entries with several events (which the event
model allows and the cursors must never split) are written here directly into a fresh store.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import asyncpg
import httpx

from ram.eventstore import schema
from ram.eventstore.events import MaintenanceModeChanged, RaftLeaderElected
from ram.eventstore.store import EntryEvents, append_entries, read_last, read_range
from tests.api.conftest import ADMIN, ApiCluster

#: Events per entry at positions 1..9 (0: an entry that produced none, which still takes a position).
SHAPE = [1, 3, 0, 2, 1, 4, 1, 0, 2]


def _entries() -> list[EntryEvents]:
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    entries = []
    for i, count in enumerate(SHAPE):
        position = i + 1
        events = [
            MaintenanceModeChanged(enabled=bool(sub % 2), reason=f"p{position}.{sub}") if sub % 2
            else RaftLeaderElected(term=position, leader_name="node1", leader_node_id=1)
            for sub in range(count)
        ]
        entries.append(EntryEvents(position=position, term=1, proposer=1, ts=ts, events=events))
    return entries


def _ids(events: list[object]) -> list[tuple[int, int]]:
    return [(e.position, e.sub) for e in events]  # type: ignore[attr-defined]


async def test_read_last_pages_back_in_whole_entries(store_dsn: str) -> None:
    await asyncio.to_thread(schema.upgrade, store_dsn)
    conn = await asyncpg.connect(store_dsn)
    try:
        await append_entries(conn, _entries())
        everything = _ids(await read_range(conn, after=0, limit=1000))
        assert len(everything) == sum(SHAPE)

        for limit in (1, 2, 3, 5, 100):
            pages: list[list[tuple[int, int]]] = []
            before: int | None = None
            while page := _ids(await read_last(conn, before=before, limit=limit)):
                positions = {p for p, _ in page}
                # Whole entries, oldest first, at least ``limit`` events unless the history ran out.
                assert page == [i for i in everything if i[0] in positions] and page == sorted(page)
                assert len(page) >= limit or page[0] == everything[0]
                pages.append(page)
                before = page[0][0]
            assert [i for page in reversed(pages) for i in page] == everything, limit

        # The newest 2 events: the whole last entry (position 9, two events); 3 reaches into position 7.
        assert _ids(await read_last(conn, limit=2)) == [(9, 0), (9, 1)]
        assert _ids(await read_last(conn, limit=3)) == [(7, 0), (9, 0), (9, 1)]
        assert await read_last(conn, before=1, limit=10) == []
        assert _ids(await read_last(conn, before=3, limit=1)) == [(2, 0), (2, 1), (2, 2)]
        typed = await read_last(conn, limit=2, types=["maintenance_mode_changed"])
        assert _ids(typed) == [(6, 1), (6, 3), (9, 1)]  # position 6 whole: both of its matching events
        assert {e.event.type for e in typed} == {"maintenance_mode_changed"}
    finally:
        await conn.close()


async def test_the_event_body_is_called_payload_in_sql_the_api_and_the_stream(api_cluster: ApiCluster) -> None:
    """One name for an event's body: ``payload``, the column of ``pgraft.events``, in GET /events and in
    each server-sent event of /events/stream (whose SSE field is, by the protocol, ``data``)."""
    await api_cluster.settled()
    url = api_cluster.url(1)
    async with httpx.AsyncClient(timeout=15, headers=ADMIN) as http:
        async with http.stream("GET", url + "/events/stream", params={"type": "dynamic_config_changed"}) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            r = await http.patch(api_cluster.url(0) + "/config", json={"postgresql.parameters.payload.probe": 5})
            assert r.status_code == 200, r.text
            index = r.json()["write"]["index"]
            async with asyncio.timeout(10):
                async for line in lines:
                    if line.startswith("data:"):
                        streamed = json.loads(line.removeprefix("data:").strip())
                        break
        await api_cluster.barrier()
        page = (await http.get(url + "/events", params={"after": index - 1, "limit": 1})).json()
    listed = page["events"][0]
    conn = await asyncpg.connect(api_cluster.dsns[1])
    try:
        in_sql = json.loads(await conn.fetchval(
            "SELECT payload::text FROM pgraft.events WHERE position = $1 AND sub = 0", index))
    finally:
        await conn.close()
    assert listed["position"] == streamed["position"] == index
    assert listed["payload"] == streamed["payload"] == in_sql
    assert in_sql["changes"]["postgresql.parameters.payload.probe"]["new"] == 5
    assert "data" not in listed and "data" not in streamed
