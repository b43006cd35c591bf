"""Read endpoints: the cluster as this node's projection shows it, members, events, history.

Each read is read-your-cluster fresh by default (``ram.api.freshness``): a Raft read barrier first
makes sure this node has applied everything committed before the request, and the answer says how
current it is (``stale``, ``read_index``). The live event stream is not: it follows what this node
applies.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import asyncpg
from litestar import Request, get
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from ram.api.context import Ctx
from ram.api.errors import ApiError, error_responses
from ram.api.freshness import READ_BARRIER_TIMEOUT_S, Stale, fresh_read, read_fields
from ram.api.schemas import (
    ClusterOut,
    EventOut,
    EventPage,
    HistoryOut,
    MemberReadOut,
    OperationOut,
    SyncOut,
    TimelineOut,
)
from ram.api.streams import EventHub, StreamUnavailable, Subscription, TooManyStreams
from ram.api.views import leader_api_url, member_out, raft_leader_name
from ram.consensus.runtime.errors import ProposalError
from ram.eventstore.events import EVENT_TYPES, MAX_INT64, StoredEvent, encode_event
from ram.eventstore.store import read_last, read_range
from ram.ha.live import LocalLive, MemberLive

KEEPALIVE_S = 15.0
MAX_PAGE = 1000
#: How long an event page waits for this node's store to have what the node applied.
STORE_CATCH_UP_TIMEOUT_S = 0.5

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
        payload=payload,
    )


def _live(ctx: Ctx) -> tuple[dict[str, MemberLive] | None, LocalLive | None]:
    """The HA controller's measurements: every member on the Raft leader, this node elsewhere."""
    if ctx.ha is None:
        return None, None
    return ctx.ha.members_live(), ctx.ha.local()


def _pending_restart(ctx: Ctx, live: dict[str, MemberLive] | None) -> list[str]:
    """Parameters some member's PostgreSQL reports pending a restart (measured, on the leader);
    elsewhere the keys recorded when they were changed."""
    if live:
        return sorted({p for m in live.values() for p in m.pending_restart})
    return list(ctx.node.state.pending_restart)


@get(
    "/cluster",
    summary="Cluster status",
    description="This node's applied cluster state, confirmed current by a Raft read barrier (ReadIndex): it "
    "is at least as new as every write acknowledged before the request, on any node. When the barrier fails "
    f"or takes over {READ_BARRIER_TIMEOUT_S:g} s (no leader, partitioned node) the local state is served "
    "anyway with `stale: true` and `stale_reason`; `?stale=ok` skips the barrier. `applied_index` is how far "
    "this node has applied the Raft log.",
    tags=["cluster"],
    responses=error_responses(400),
)
async def get_cluster(ctx: Ctx, stale: Stale = None) -> ClusterOut:
    freshness = await fresh_read(ctx, stale)
    node = ctx.node
    state = node.state
    live, local = _live(ctx)  # once per request: the live view walks every member's report
    return ClusterOut(
        cluster_id=state.cluster_id,
        cluster_name=state.cluster_name,
        members=[member_out(node, state, m, live, local) for _, m in sorted(state.members.items())],
        raft_leader=raft_leader_name(node),
        raft_leader_api=leader_api_url(node),
        raft_term=node.term,
        primary=state.primary,
        timeline=state.timeline,
        synchronous=SyncOut(mode=state.sync_mode, num_sync=state.num_sync, standbys=list(state.sync_standbys)),
        maintenance=state.maintenance,
        maintenance_reason=state.maintenance_reason,
        pending_restart=_pending_restart(ctx, live),
        commit_index=node.commit_index,
        **read_fields(ctx, freshness),
    )


@get(
    "/members/{name:str}",
    summary="One member",
    description="Read like `GET /cluster`: confirmed current by a Raft read barrier unless `?stale=ok`.",
    tags=["cluster"],
    responses=error_responses(400, 404),
)
async def get_member(ctx: Ctx, name: FromPath[str], stale: Stale = None) -> MemberReadOut:
    freshness = await fresh_read(ctx, stale)
    node = ctx.node
    state = node.state
    member = state.members.get(name)
    if member is None:
        raise ApiError(404, f"no member named {name!r}; members: {', '.join(sorted(state.members)) or '(none)'}")
    out = member_out(node, state, member, *_live(ctx))
    return MemberReadOut(
        **out.model_dump(),
        **read_fields(ctx, freshness),
    )


@get(
    "/events",
    summary="Events, oldest first, paged forward from a position or the newest ones",
    description="Two ways to read, both returning events oldest first and whole entries (all events of a "
    "position):\n\n"
    "* forward (default): `?after=P&limit=N` — about N events with position > P (`after` defaults to 0); "
    "continue with `after=next_after` while `more` is true.\n"
    "* newest: `?last=N` — about the N newest events (what happened lately); page further back with "
    "`?last=N&before=next_before` while `more` is true, and follow on from the newest with "
    "`after=next_after` (or `/events/stream?after=next_after`).\n\n"
    "`type` (repeatable) filters both. `last` can not be combined with `after` or `limit`, and `before` "
    "needs `last`.\n\n"
    "Read like `GET /cluster`: confirmed current by a Raft read barrier unless `?stale=ok`, so a page "
    "includes every event of a write acknowledged before the request, on any node.",
    tags=["events"],
    responses=error_responses(400),
)
async def get_events(
    ctx: Ctx,
    request: Request[Any, Any, Any],
    types: Types = None,
    after: Annotated[int, QueryParameter(ge=0, le=MAX_INT64, description="Events after this position.")] = 0,
    limit: Annotated[
        int, QueryParameter(ge=1, le=MAX_PAGE, description="About this many events (whole entries).")
    ] = 100,
    last: Annotated[
        int | None,
        QueryParameter(
            ge=1, le=MAX_PAGE, required=False,
            description="Instead of paging forward: about this many of the newest events (whole entries).",
        ),
    ] = None,
    before: Annotated[
        int | None,
        QueryParameter(
            ge=0, le=MAX_INT64, required=False,
            description="With `last`: only events before this position (page back with `next_before`).",
        ),
    ] = None,
    stale: Stale = None,
) -> EventPage:
    selected = _check_types(types)
    freshness = await fresh_read(ctx, stale)
    await _store_caught_up(ctx)
    if last is None:
        if before is not None:
            raise ApiError(400, "query parameter 'before' needs 'last' (e.g. ?last=20&before=1234)")
        async with ctx.pool.acquire() as conn:
            events = await read_range(conn, after=after, limit=limit, types=selected)
        out = [event_out(e) for e in events]
        return EventPage(
            events=out,
            next_after=out[-1].position if out else after,
            more=len(out) >= limit,
            next_before=out[0].position if out else None,
            **read_fields(ctx, freshness),
        )
    given = request.query_params
    for other in ("after", "limit"):
        if other in given:
            raise ApiError(
                400,
                f"query parameter 'last' can not be combined with '{other}': 'last' reads the newest events "
                "(page back with 'before'), 'after'/'limit' page forward from a position",
            )
    async with ctx.pool.acquire() as conn:
        events = await read_last(conn, before=before, limit=last, types=selected)
    out = [event_out(e) for e in events]
    # Nothing (of these types) before the bound: continuing forward starts at the bound.
    bound = max(0, before - 1) if before is not None else 0
    next_after = out[-1].position if out else bound
    return EventPage(
        events=out,
        next_after=next_after,
        more=len(out) >= last,
        next_before=out[0].position if out else None,
        **read_fields(ctx, freshness),
    )


async def _store_caught_up(ctx: Ctx) -> None:
    """Read-your-writes for event pages: everything this node applied is in its store too (a
    command is answered when decided; its store write follows within a round trip). A store that
    lags longer (it is down) does not hold the page back."""
    with contextlib.suppress(ProposalError):
        await ctx.node.wait_applied(ctx.node.decided_index, STORE_CATCH_UP_TIMEOUT_S)


def _parse_last_event_id(value: str | None) -> tuple[int, int] | None:
    if value is None or not value.strip():
        return None
    position, sep, sub = value.strip().partition(".")
    if not position.isdigit() or (sep and not sub.isdigit()) or len(position) > 18 or len(sub) > 9:
        raise ApiError(400, f"header 'Last-Event-ID': expected '<position>.<sub>', got {value[:40]!r}")
    return int(position), int(sub or 0)


async def _event_stream(
    ctx: Ctx, sub: Subscription, skip_through: tuple[int, int] | None
) -> AsyncIterator[ServerSentEventMessage]:
    """The events of ``sub`` (one place in the node's shared :class:`EventHub`) as SSE messages.

    A client disconnect cancels this generator, which gives the place back; a subscriber that fell
    behind (its bounded queue full) is ended with a comment, and the client resumes from its
    ``Last-Event-ID`` (catching up from the store) instead of the node buffering for it."""
    try:
        yield ServerSentEventMessage(data=None, comment=f"following events after position {sub.after}", retry=2000)
        async for item in sub.events(KEEPALIVE_S):
            if ctx.closing.is_set():
                return
            if item is None:
                yield ServerSentEventMessage(data=None, comment="keepalive")
                continue
            if skip_through is not None and (item.position, item.sub) <= skip_through:
                continue
            out = event_out(item)
            yield ServerSentEventMessage(id=out.id, event=out.type, data=out.model_dump_json())
        if sub.overflowed:
            yield ServerSentEventMessage(
                data=None,
                comment=f"too slow: more than {sub.queue.maxsize} events waiting; reconnect with Last-Event-ID",
            )
    except (StreamUnavailable, asyncpg.PostgresError, OSError) as exc:  # store down: tell the client, end
        message = " ".join(str(exc).split()) or type(exc).__name__
        yield ServerSentEventMessage(event="error", data=json.dumps({"error": f"event stream ended: {message}"}))
    finally:
        sub.close()


def _hub(ctx: Ctx) -> EventHub:
    if ctx.events is None:
        ctx.events = EventHub(ctx.store_dsn, ctx.pool, max_streams=ctx.security.max_event_streams)
    return ctx.events


@get(
    "/events/stream",
    summary="Live events (server-sent events)",
    description="Each event as `id: <position>.<sub>`, `event: <type>`, `data: <json>`. Without `after` the "
    "stream starts at the events applied on this node now; `Last-Event-ID` resumes after that event. A node "
    "serves at most `api.max_event_streams` streams (503 beyond); a client that falls more than 1000 events "
    "behind is disconnected and resumes with `Last-Event-ID`.",
    tags=["events"],
    responses=error_responses(400, 503),
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
    try:
        sub = _hub(ctx).subscribe(start, selected)
    except TooManyStreams as exc:
        raise ApiError(
            503, f"{exc}; retry later, or read pages with GET /events?after=N", headers={"Retry-After": "5"}
        ) from None
    except StreamUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    return ServerSentEvent(_event_stream(ctx, sub, skip_through))


@get(
    "/history",
    summary="Failovers, switchovers and timelines",
    description="Read like `GET /cluster`: confirmed current by a Raft read barrier unless `?stale=ok`.",
    tags=["cluster"],
    responses=error_responses(400),
)
async def get_history(ctx: Ctx, stale: Stale = None) -> HistoryOut:
    freshness = await fresh_read(ctx, stale)
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
        **read_fields(ctx, freshness),
    )


ROUTES = [get_cluster, get_member, get_events, events_stream, get_history]
