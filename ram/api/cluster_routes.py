"""Read endpoints: the cluster as this node's projection shows it, members, events, history."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from litestar import get
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from ram.api.context import Ctx
from ram.api.errors import ApiError, error_responses
from ram.api.schemas import (
    ClusterOut,
    EventOut,
    EventPage,
    HistoryOut,
    MemberOut,
    OperationOut,
    SyncOut,
    TimelineOut,
)
from ram.api.views import member_out, raft_leader_name
from ram.eventstore.events import EVENT_TYPES, MAX_INT64, StoredEvent, encode_event
from ram.eventstore.store import follow, read_range

KEEPALIVE_S = 15.0
STREAM_QUEUE = 256

Types = Annotated[
    list[str] | None,
    QueryParameter(name="type", required=False, description="Only events of these types (repeatable)."),
]


def _check_types(types: list[str] | None) -> list[str] | None:
    if not types:
        return None
    unknown = sorted({t for t in types if t not in EVENT_TYPES})
    if unknown:
        raise ApiError(
            400,
            f"query parameter 'type': unknown event type {unknown[0]!r}; known types: {', '.join(sorted(EVENT_TYPES))}",
        )
    return list(dict.fromkeys(types))


def event_out(stored: StoredEvent) -> EventOut:
    type_name, _, payload = encode_event(stored.event)
    return EventOut(
        position=stored.position,
        sub=stored.sub,
        id=f"{stored.position}.{stored.sub}",
        type=type_name,
        term=stored.term,
        proposer=stored.proposer,
        ts=stored.ts,
        data=payload,
    )


@get("/cluster", summary="Cluster status", tags=["cluster"], sync_to_thread=False)
def get_cluster(ctx: Ctx) -> ClusterOut:
    node = ctx.node
    state = node.state
    return ClusterOut(
        cluster_id=state.cluster_id,
        cluster_name=state.cluster_name,
        members=[member_out(node, state, m) for _, m in sorted(state.members.items())],
        raft_leader=raft_leader_name(node),
        raft_term=node.term,
        primary=state.primary,
        timeline=state.timeline,
        synchronous=SyncOut(mode=state.sync_mode, num_sync=state.num_sync, standbys=list(state.sync_standbys)),
        maintenance=state.maintenance,
        maintenance_reason=state.maintenance_reason,
        pending_restart=list(state.pending_restart),
        applied_index=node.applied_index,
        commit_index=node.commit_index,
        node=ctx.name,
    )


@get(
    "/members/{name:str}",
    summary="One member",
    tags=["cluster"],
    sync_to_thread=False,
    responses=error_responses(400, 404),
)
def get_member(ctx: Ctx, name: FromPath[str]) -> MemberOut:
    state = ctx.node.state
    member = state.members.get(name)
    if member is None:
        raise ApiError(404, f"no member named {name!r}; members: {', '.join(sorted(state.members)) or '(none)'}")
    return member_out(ctx.node, state, member)


@get("/events", summary="Events, oldest first, paged", tags=["events"], responses=error_responses(400))
async def get_events(
    ctx: Ctx,
    types: Types = None,
    after: Annotated[int, QueryParameter(ge=0, le=MAX_INT64, description="Events after this position.")] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=1000, description="About this many events (whole entries).")] = 100,
) -> EventPage:
    selected = _check_types(types)
    async with ctx.pool.acquire() as conn:
        events = await read_range(conn, after=after, limit=limit, types=selected)
    out = [event_out(e) for e in events]
    return EventPage(events=out, next_after=out[-1].position if out else after, more=len(out) >= limit)


def _parse_last_event_id(value: str | None) -> tuple[int, int] | None:
    if value is None or not value.strip():
        return None
    position, sep, sub = value.strip().partition(".")
    if not position.isdigit() or (sep and not sub.isdigit()) or len(position) > 18 or len(sub) > 9:
        raise ApiError(400, f"header 'Last-Event-ID': expected '<position>.<sub>', got {value[:40]!r}")
    return int(position), int(sub or 0)


async def _event_stream(
    ctx: Ctx, after: int, skip_through: tuple[int, int] | None, types: list[str] | None
) -> AsyncIterator[ServerSentEventMessage]:
    """Relay follow() through a queue: follow's connection lives in a task of its own, so a client
    disconnect (which cancels this generator) ends it cleanly and closes its connection."""
    queue: asyncio.Queue[StoredEvent | BaseException | None] = asyncio.Queue(STREAM_QUEUE)

    async def pump() -> None:
        try:
            async for stored in follow(ctx.store_dsn, after=after, types=types):
                await queue.put(stored)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # store down: tell the client, end the stream
            await queue.put(exc)
        finally:
            while True:  # make room for the end marker; the reader is done or will be soon
                try:
                    queue.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    queue.get_nowait()

    task = asyncio.get_running_loop().create_task(pump(), name="ram.api.events-stream")
    ctx.track(task)
    try:
        yield ServerSentEventMessage(data=None, comment=f"following events after position {after}", retry=2000)
        while not ctx.closing.is_set():
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield ServerSentEventMessage(data=None, comment="keepalive")
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                yield ServerSentEventMessage(event="error", data=json.dumps({"error": f"event stream ended: {item}"}))
                return
            if skip_through is not None and (item.position, item.sub) <= skip_through:
                continue
            out = event_out(item)
            yield ServerSentEventMessage(id=out.id, event=out.type, data=out.model_dump_json())
    finally:
        task.cancel()


@get(
    "/events/stream",
    summary="Live events (server-sent events)",
    description="Each event as `id: <position>.<sub>`, `event: <type>`, `data: <json>`. Without `after` the "
    "stream starts at the events applied on this node now; `Last-Event-ID` resumes after that event.",
    tags=["events"],
    responses=error_responses(400),
    sync_to_thread=False,
)
def events_stream(
    ctx: Ctx,
    types: Types = None,
    after: Annotated[
        int | None, QueryParameter(ge=0, le=MAX_INT64, required=False, description="Events after this position.")
    ] = None,
    last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID", required=False)] = None,
) -> ServerSentEvent:
    selected = _check_types(types)
    resume = _parse_last_event_id(last_event_id)
    skip_through: tuple[int, int] | None = None
    if resume is not None:
        start, skip_through = max(0, resume[0] - 1), resume
    elif after is not None:
        start = after
    else:
        start = ctx.node.applied_index
    return ServerSentEvent(_event_stream(ctx, start, skip_through, selected))


@get("/history", summary="Failovers, switchovers and timelines", tags=["cluster"], sync_to_thread=False)
def get_history(ctx: Ctx) -> HistoryOut:
    state = ctx.node.state
    return HistoryOut(
        operations=[
            OperationOut(
                kind=op.kind,
                outcome=op.outcome,
                started_position=op.started_position,
                started_at=op.started_at,
                old_primary=op.old_primary,
                new_primary=op.new_primary,
                candidate=op.candidate,
                reason=op.reason,
                requested_by=op.requested_by,
                scheduled_at=op.scheduled_at,
                error=op.error,
                completed_position=op.completed_position,
                completed_at=op.completed_at,
                duration_ms=op.duration_ms,
                timeline=op.timeline,
                lsn=op.lsn,
            )
            for op in state.operations
        ],
        timelines=[
            TimelineOut(timeline=t.timeline, primary=t.primary, lsn=t.lsn, position=t.position, at=t.at)
            for t in state.timeline_history
        ],
    )


ROUTES = [get_cluster, get_member, get_events, events_stream, get_history]
