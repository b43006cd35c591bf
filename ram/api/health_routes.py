"""Health checks for load balancers and orchestrators: 200 when true, 503 when not (GET and HEAD).

``/primary`` and ``/read-write``: this node is the committed primary (and not fenced, and knows a
Raft leader). ``/replica``: a healthy, unfenced member that is not the primary, not tagged
noloadbalance, optionally within ``?lag=`` (bytes, or ``16MB``, ``1GB``, ``512kB``).
``/read-only``: primary or replica. ``/sync`` / ``/async``: a replica in / not in the synchronous
set. ``/health``: Raft and the store work here. ``/liveness``: the event loop answers.
``/readiness``: a leader is known and everything it committed (as far as we know) is applied.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Response, get, head
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter

from ram.api.context import ApiContext, Ctx
from ram.api.errors import ApiError, error_responses
from ram.api.schemas import HealthOut
from ram.api.views import member_role, member_state, raft_leader_name

#: /health fails when this node's applied index trails its commit index by more entries than this.
MAX_APPLY_BACKLOG = 1000
STORE_CHECK_TIMEOUT_S = 2.0

_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_LAG = re.compile(r"^\s*(\d{1,19})\s*([A-Za-z]{0,2})\s*$")


def parse_lag(text: str) -> int:
    """``"16MB"`` -> 16777216 (units B, kB, MB, GB, TB: powers of 1024, as PostgreSQL counts)."""
    match = _LAG.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ApiError(400, f"query parameter 'lag': expected bytes or a size like 16MB, 1GB, 512kB; got {text[:40]!r}")
    value = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if value > 2**63 - 1:
        raise ApiError(400, f"query parameter 'lag': {text[:40]!r} is too large")
    return value


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


def _primary(ctx: Ctx) -> Verdict:
    node, state, me = ctx.node, ctx.node.state, ctx.name
    member = state.members.get(me)
    if state.primary != me:
        return Verdict(False, f"the committed primary is {state.primary or 'nobody'}")
    if member is not None and member.fenced:
        return Verdict(False, f"fenced: {member.fence_reason}")
    if not node.leader_id:
        return Verdict(False, "no Raft leader known")
    return Verdict(True)


def _replica(ctx: Ctx, lag: int | None) -> Verdict:
    """A replica that serves reads: committed healthy (it streams from the primary, as the arbiter
    judged from the primary's side), and — on this node's own measurement — streaming right now and
    within ``lag`` bytes (replay lag: what a reader sees) of the primary's WAL end."""
    state, me = ctx.node.state, ctx.name
    member = state.members.get(me)
    if member is None:
        return Verdict(False, "not a member of the cluster")
    if state.primary is None:
        return Verdict(False, "the cluster has no primary (unknown): nothing to replicate from")
    if state.primary == me:
        return Verdict(False, "this member is the primary")
    if member.fenced:
        return Verdict(False, f"fenced: {member.fence_reason}")
    if member.healthy is not True or member.pg_running is not True:
        return Verdict(False, member.health_reason or "PostgreSQL not reported healthy")
    if member.tags.noloadbalance:
        return Verdict(False, "tagged noloadbalance")
    local = ctx.ha.local() if ctx.ha is not None else None
    if local is not None and not local.streaming:
        return Verdict(False, f"not streaming from the primary {state.primary}: {local.reason}")
    if lag is not None:
        # Measured here when this node manages PostgreSQL; otherwise the figure last recorded.
        measured = local.replay_lag_bytes if local is not None else (None if ctx.ha is not None else member.lag_bytes)
        if measured is None:
            return Verdict(False, "replication lag unknown (not streaming, or this node manages no PostgreSQL)")
        if measured > lag:
            return Verdict(False, f"replay lag {measured} bytes exceeds {lag}")
    return Verdict(True)


def _read_only(ctx: Ctx, lag: int | None) -> Verdict:
    primary = _primary(ctx)
    if primary.ok:
        return primary
    replica = _replica(ctx, lag)
    return replica if replica.ok else Verdict(False, f"{primary.reason}; {replica.reason}")


def _sync(ctx: Ctx, lag: int | None, want: bool) -> Verdict:
    replica = _replica(ctx, lag)
    if not replica.ok:
        return replica
    in_set = ctx.name in ctx.node.state.sync_standbys
    if in_set != want:
        return Verdict(False, "in the synchronous set" if in_set else "not in the synchronous set")
    return Verdict(True)


async def _health(ctx: Ctx) -> Verdict:
    node = ctx.node
    if node.core is None:
        return Verdict(False, "Raft not started")
    if not node.leader_id:
        return Verdict(False, "no Raft leader known")
    backlog = node.commit_index - node.applied_index
    if backlog > MAX_APPLY_BACKLOG:
        return Verdict(False, f"applied index trails commit by {backlog} entries")
    try:
        async with asyncio.timeout(STORE_CHECK_TIMEOUT_S):
            async with ctx.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
    except (TimeoutError, OSError, Exception) as exc:  # any store failure makes the node unhealthy
        return Verdict(False, f"store not reachable: {type(exc).__name__}: {exc}")
    return Verdict(True)


def _readiness(ctx: Ctx) -> Verdict:
    node = ctx.node
    if not node.leader_id:
        return Verdict(False, "no Raft leader known")
    if node.decided_index < node.commit_index:  # the in-memory state reads are served from
        return Verdict(False, f"applied {node.decided_index} < commit {node.commit_index}")
    return Verdict(True)


def _body(ctx: Ctx, verdict: Verdict) -> HealthOut:
    node = ctx.node
    state = node.state
    member = state.members.get(ctx.name)
    return HealthOut(
        ok=verdict.ok,
        name=ctx.name,
        role=member_role(state, member) if member is not None else "unknown",
        state=member_state(member) if member is not None else "unknown",
        raft_role=node.role.value,
        raft_leader=raft_leader_name(node),
        reason=verdict.reason,
    )


Check = Callable[[ApiContext, int | None], Awaitable[Verdict]]
LagParam = Annotated[
    str | None,
    QueryParameter(name="lag", required=False, description="Maximum replication lag: bytes, or e.g. 16MB, 1GB, 512kB."),
]

_GET_RESPONSES = {
    503: ResponseSpec(data_container=HealthOut, description="The check is false."),
    **error_responses(400),
}


def _check_pair(path: str, check: Check, summary: str, *, with_lag: bool) -> list[HTTPRouteHandler]:
    name = path.strip("/").replace("-", "_")

    async def verdict(ctx: Ctx, lag: str | None) -> Verdict:
        return await check(ctx, parse_lag(lag) if lag is not None else None)

    if with_lag:

        async def get_with_lag(ctx: Ctx, lag: LagParam = None) -> Response[HealthOut]:
            result = await verdict(ctx, lag)
            return Response(_body(ctx, result), status_code=200 if result.ok else 503)

        async def head_with_lag(ctx: Ctx, lag: LagParam = None) -> Response[None]:
            result = await verdict(ctx, lag)
            return Response(None, status_code=200 if result.ok else 503)

        get_fn: Callable[..., Any] = get_with_lag
        head_fn: Callable[..., Any] = head_with_lag
    else:

        async def get_plain(ctx: Ctx) -> Response[HealthOut]:
            result = await verdict(ctx, None)
            return Response(_body(ctx, result), status_code=200 if result.ok else 503)

        async def head_plain(ctx: Ctx) -> Response[None]:
            result = await verdict(ctx, None)
            return Response(None, status_code=200 if result.ok else 503)

        get_fn, head_fn = get_plain, head_plain

    get_fn.__name__ = f"health_{name}_get"
    head_fn.__name__ = f"health_{name}_head"
    return [
        get(path, summary=summary, tags=["health"], responses=_GET_RESPONSES, operation_id=f"get_{name}")(get_fn),
        head(
            path,
            summary=summary,
            tags=["health"],
            responses={503: ResponseSpec(data_container=None, description="The check is false.")},
            operation_id=f"head_{name}",
        )(head_fn),
    ]


async def _c_primary(ctx: Ctx, _: int | None) -> Verdict:
    return _primary(ctx)


async def _c_replica(ctx: Ctx, lag: int | None) -> Verdict:
    return _replica(ctx, lag)


async def _c_read_only(ctx: Ctx, lag: int | None) -> Verdict:
    return _read_only(ctx, lag)


async def _c_sync(ctx: Ctx, lag: int | None) -> Verdict:
    return _sync(ctx, lag, True)


async def _c_async(ctx: Ctx, lag: int | None) -> Verdict:
    return _sync(ctx, lag, False)


async def _c_health(ctx: Ctx, _: int | None) -> Verdict:
    return await _health(ctx)


async def _c_liveness(_ctx: Ctx, _: int | None) -> Verdict:
    return Verdict(True)


async def _c_readiness(ctx: Ctx, _: int | None) -> Verdict:
    return _readiness(ctx)


ROUTES: list[HTTPRouteHandler] = [
    *_check_pair("/primary", _c_primary, "This node is the primary", with_lag=False),
    *_check_pair("/read-write", _c_primary, "This node accepts writes (the primary)", with_lag=False),
    *_check_pair("/replica", _c_replica, "This node is a healthy replica", with_lag=True),
    *_check_pair("/read-only", _c_read_only, "This node serves reads (primary or replica)", with_lag=True),
    *_check_pair("/sync", _c_sync, "This node is a synchronous standby", with_lag=True),
    *_check_pair("/async", _c_async, "This node is an asynchronous replica", with_lag=True),
    *_check_pair("/health", _c_health, "Raft and the store work on this node", with_lag=False),
    *_check_pair("/liveness", _c_liveness, "The process answers", with_lag=False),
    *_check_pair("/readiness", _c_readiness, "This node has caught up with the Raft leader", with_lag=False),
]
