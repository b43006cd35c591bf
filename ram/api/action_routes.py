"""Write endpoints: each is a command that becomes a Raft entry; the answer comes once it is
committed and applied on this node (a follower forwards the proposal to the leader itself)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from litestar import Request, delete, get, patch, post, put
from litestar.params import Body, FromPath, JSONBody, QueryParameter
from pydantic import JsonValue

from ram.api.auth import identity_of
from ram.api.context import ApiContext, Ctx
from ram.api.errors import ApiError, error_responses
from ram.api.freshness import Stale, fresh_read, read_fields
from ram.api.schemas import (
    AddMemberRequest,
    ConfigPatchOut,
    ConfigReadOut,
    FailoverRequest,
    MaintenanceOut,
    MaintenanceRequest,
    MemberWriteOut,
    OperationAcceptedOut,
    SwitchoverRequest,
    WriteOut,
)
from ram.cluster.node import ApplyResult
from ram.eventstore.commands import (
    AddMember,
    Command,
    PatchConfig,
    RemoveMember,
    RequestMemberAction,
    RequestSwitchover,
    SetMaintenance,
    SetTags,
    StartFailover,
)
from ram.eventstore.events import MemberSpec, MemberTags, check_json_value
from ram.ha.candidates import switchover_precheck
from ram.ha.dynconfig import (
    DYNAMIC_HA_KEYS,
    NODE_ONLY_HA_KEYS,
    PG_PREFIX,
    DynamicConfigError,
    effective_settings,
    pg_parameters,
    validate_changes,
)
from ram.ha.settings import HASettings
from ram.postgres.parameters import needs_restart
from ram.projections.state import ClusterState

WRITE_ERRORS = (400, 409, 503)
MAX_CONFIG_KEY = 200
HA_MISSING = "the high-availability layer is not running on this node"


async def _commit(ctx: ApiContext, command: Command) -> ApplyResult:
    """Commit an operator's command. A write that reaches a node while Raft leadership changes hands
    waits for the next leader (at most two election timeouts) instead of failing with a 503: the
    runtime retries only a proposal that certainly did not go in, so nothing is applied twice."""
    return await ctx.node.propose(command, ride_out_elections=True)


def _write_out(result: ApplyResult) -> WriteOut:
    return WriteOut(index=result.index, term=result.term, events=[ev.type for ev in result.events])


def _who(request: Request[Any, Any, Any], by: str) -> str:
    """Who asked, for the event: the authenticated token (``token:<name>``), never only what the client
    says. A client's own note (``by`` in the body, e.g. ``ramctrl:alice@laptop``) is kept after it,
    in parentheses, as a hint that nobody checked. Without authentication (``api.auth = "none"``)
    the client's address stands first, so a claimed name is never mistaken for a checked one."""
    identity = identity_of(request)
    note = " ".join(by.split())[:120]
    if identity is not None:
        who = identity.label
    else:
        client = request.client
        who = f"api:{client.host}" if client else "api"
    return f"{who} ({note})" if note and note != who else who


# --------------------------------------------------------------------------------- maintenance


@post(
    "/maintenance",
    summary="Turn maintenance mode on (no automatic failover)",
    tags=["actions"],
    status_code=200,
    responses=error_responses(*WRITE_ERRORS),
)
async def maintenance_on(
    ctx: Ctx, request: Request[Any, Any, Any], data: JSONBody[MaintenanceRequest | None] = None
) -> MaintenanceOut:
    body = data or MaintenanceRequest()
    by = _who(request, body.by)
    result = await _commit(ctx, SetMaintenance(enabled=True, reason=body.reason, by=by))
    state = ctx.node.state
    return MaintenanceOut(
        maintenance=state.maintenance, reason=state.maintenance_reason, by=state.maintenance_by,
        write=_write_out(result),
    )


@delete(
    "/maintenance",
    summary="Turn maintenance mode off",
    tags=["actions"],
    status_code=200,
    responses=error_responses(*WRITE_ERRORS),
)
async def maintenance_off(ctx: Ctx, request: Request[Any, Any, Any]) -> MaintenanceOut:
    result = await _commit(ctx, SetMaintenance(enabled=False, by=_who(request, "")))
    state = ctx.node.state
    return MaintenanceOut(
        maintenance=state.maintenance, reason=state.maintenance_reason, by=state.maintenance_by,
        write=_write_out(result),
    )


# ---------------------------------------------------------------------------------- config


def _config_out(ctx: ApiContext) -> dict[str, Any]:
    """What GET /config and PATCH /config answer: the committed keys, what is in force on this node
    (node file overridden by dynamic keys), the defaults, and which members still need a restart."""
    state = ctx.node.state
    base = ctx.node.config.ha
    effective = effective_settings(base, state.dynamic_config)
    defaults = HASettings()
    live = ctx.ha.pending_restart() if ctx.ha is not None else {}
    measured = sorted({p for names in live.values() for p in names})
    return {
        "config": dict(state.dynamic_config),
        "pending_restart": measured if live else sorted(state.pending_restart),
        "effective": {k: getattr(effective, k) for k in (*DYNAMIC_HA_KEYS, *NODE_ONLY_HA_KEYS)}
        | {PG_PREFIX + k: v for k, v in pg_parameters(state.dynamic_config).items()},
        "defaults": {k: getattr(defaults, k) for k in (*DYNAMIC_HA_KEYS, *NODE_ONLY_HA_KEYS)},
        "pending_restart_members": {name: list(names) for name, names in sorted(live.items()) if names},
    }


@get(
    "/config",
    summary="Dynamic configuration",
    description="Read like `GET /cluster`: confirmed current by a Raft read barrier unless `?stale=ok`.",
    tags=["config"],
    responses=error_responses(400),
)
async def get_config(ctx: Ctx, stale: Stale = None) -> ConfigReadOut:
    freshness = await fresh_read(ctx, stale)
    return ConfigReadOut(**_config_out(ctx), **read_fields(ctx, freshness))


def validate_patch(
    changes: object, base: HASettings | None = None, current: Mapping[str, JsonValue] | None = None
) -> dict[str, JsonValue]:
    """The body of PATCH /config: key -> JSON value (null removes); raises ApiError(400) naming the key."""
    if not isinstance(changes, dict):
        raise ApiError(400, f"body must be a JSON object of key -> value, not {type(changes).__name__}")
    out: dict[str, JsonValue] = {}
    for key, value in changes.items():
        if not isinstance(key, str) or not key.strip():
            raise ApiError(400, "config keys must be non-empty strings")
        if len(key) > MAX_CONFIG_KEY or "\x00" in key or key != key.strip():
            raise ApiError(
                400, f"config key {key[:60]!r}: at most {MAX_CONFIG_KEY} characters, no NUL, no outer whitespace"
            )
        try:
            check_json_value(value, key)
        except ValueError as exc:
            raise ApiError(400, f"config key {key[:80]!r}: {exc}") from None
        out[key] = value
    try:
        return validate_changes(base or HASettings(), current or {}, out)
    except DynamicConfigError as exc:
        raise ApiError(400, str(exc)) from None


def pending_restart_after(state: ClusterState, changes: dict[str, JsonValue]) -> tuple[str, ...]:
    """All keys awaiting a restart after ``changes``: those already pending plus the restart-only
    parameters this patch really changes (setting, or removing back to the default)."""
    pending = set(state.pending_restart)
    for key, value in changes.items():
        if needs_restart(key) and state.dynamic_config.get(key) != value:
            pending.add(key)
    return tuple(sorted(pending))


@patch(
    "/config",
    summary="Change dynamic configuration (null removes a key)",
    description="Keys `postgresql.parameters.<name>` set PostgreSQL parameters; those that need a restart "
    "(see ram/postgres/parameters.py) are listed in `pending_restart`.",
    tags=["config"],
    status_code=200,
    responses=error_responses(*WRITE_ERRORS),
)
async def patch_config(
    ctx: Ctx,
    request: Request[Any, Any, Any],
    data: Annotated[
        dict[str, Any],
        Body(description="key -> new value (any JSON); null removes the key", title="ConfigPatch"),
    ],
) -> ConfigPatchOut:
    changes = validate_patch(data, ctx.node.config.ha, ctx.node.state.dynamic_config)
    state = ctx.node.state
    if all(state.dynamic_config.get(k) == v for k, v in changes.items()):
        return ConfigPatchOut(**_config_out(ctx), write=None)
    command = PatchConfig(changes=changes, pending_restart=pending_restart_after(state, changes), by=_who(request, ""))
    result = await _commit(ctx, command)
    return ConfigPatchOut(**_config_out(ctx), write=_write_out(result))


# --------------------------------------------------------------------------------- members


@post(
    "/members",
    summary="Add a member (as a Raft learner; promoted to voter once caught up)",
    tags=["members"],
    status_code=201,
    responses=error_responses(*WRITE_ERRORS),
)
async def add_member(ctx: Ctx, data: JSONBody[AddMemberRequest]) -> MemberWriteOut:
    state = ctx.node.state
    if data.name in state.members:
        raise ApiError(409, f"member {data.name!r} already exists")
    taken = next((m.name for m in state.members.values() if m.node_id == data.node_id), None)
    if taken is not None:
        raise ApiError(409, f"node id {data.node_id} is already used by member {taken!r}")
    spec = MemberSpec(**data.model_dump())
    result = await _commit(ctx, AddMember(member=spec, as_learner=True))
    return MemberWriteOut(member=data.name, node_id=data.node_id, write=_write_out(result))


@delete(
    "/members/{name:str}",
    summary="Remove a member",
    tags=["members"],
    status_code=200,
    responses=error_responses(404, *WRITE_ERRORS),
)
async def remove_member(
    ctx: Ctx,
    name: FromPath[str],
    reason: Annotated[str, QueryParameter(name="reason", max_length=1000, required=False)] = "",
) -> MemberWriteOut:
    state = ctx.node.state
    member = state.members.get(name)
    if member is None:
        raise ApiError(404, f"no member named {name!r}")
    if state.primary == name:
        raise ApiError(409, f"member {name!r} is the primary; switch over to another member first")
    if "\x00" in reason:
        raise ApiError(400, "query parameter 'reason': must not contain NUL")
    result = await _commit(ctx, RemoveMember(node_id=member.node_id, reason=reason))
    return MemberWriteOut(member=name, node_id=member.node_id, write=_write_out(result))


@put(
    "/members/{name:str}/tags",
    summary="Replace a member's tags",
    tags=["members"],
    status_code=200,
    responses=error_responses(404, *WRITE_ERRORS),
)
async def set_member_tags(ctx: Ctx, name: FromPath[str], data: JSONBody[MemberTags]) -> MemberWriteOut:
    """nofailover (never promoted), noloadbalance (out of /replica), nosync (never a synchronous
    standby), failover_priority (tie-break among equally up-to-date candidates; 0 = never)."""
    member = ctx.node.state.members.get(name)
    if member is None:
        raise ApiError(404, f"no member named {name!r}")
    result = await _commit(ctx, SetTags(name=name, tags=data))
    return MemberWriteOut(member=name, node_id=member.node_id, write=_write_out(result))


# ------------------------------------------------------------- operations of the HA layer


def _require_ha(ctx: ApiContext, what: str) -> None:
    """Operations on PostgreSQL need the HA layer, which runs only where ``postgres.manage`` is on."""
    if not ctx.node.config.postgres.manage:
        raise _not_yet(what)


def _not_yet(what: str) -> ApiError:
    return ApiError(501, f"{what} not available yet: {HA_MISSING}")


def _known(state: ClusterState, name: str, field: str) -> None:
    if name not in state.members:
        raise ApiError(400, f"body field {field!r}: no member named {name!r}")


_HA_ERRORS = error_responses(400, 404, 409, 501, 503)


@post("/switchover", summary="Planned switchover", tags=["actions"], status_code=202, responses=_HA_ERRORS)
async def switchover(request: Request[Any, Any, Any], ctx: Ctx,
                     data: JSONBody[SwitchoverRequest | None] = None) -> OperationAcceptedOut:
    """Hand the primary role to ``candidate`` (or the best replica): the primary stops cleanly, the
    candidate receives all of its WAL, then promotes; the old primary follows it without a rewind."""
    body = data or SwitchoverRequest()
    state = ctx.node.state
    if body.candidate is not None:
        _known(state, body.candidate, "candidate")
    _require_ha(ctx, "switchover is")
    if state.primary is None:
        raise ApiError(409, "the cluster has no primary to switch over from")
    if body.candidate == state.primary:
        raise ApiError(400, f"body field 'candidate': {body.candidate!r} is already the primary")
    # The same rule the arbiter applies (ram.ha.candidates), on committed state; the arbiter then
    # checks what needs live reports (positions, lag, synchronous quorum) and, with no candidate
    # named, picks the replica itself, so the API never names one the arbiter would refuse.
    problem = switchover_precheck(state, body.candidate)
    if problem is not None:
        raise ApiError(409, problem)
    result = await _commit(
        ctx, RequestSwitchover(candidate=body.candidate, scheduled_at=body.scheduled_at, requested_by=_who(request, ""))
    )
    target = body.candidate or "the best eligible replica (chosen by the arbiter)"
    return OperationAcceptedOut(operation=f"switchover {state.primary} -> {target}", write=_write_out(result))


@post("/failover", summary="Manual failover", tags=["actions"], status_code=202, responses=_HA_ERRORS)
async def failover(request: Request[Any, Any, Any], ctx: Ctx, data: JSONBody[FailoverRequest]) -> OperationAcceptedOut:
    """Force ``candidate`` to become primary when the cluster has no healthy primary (for a healthy
    primary, use a switchover). The candidate promotes only once the old primary's lease expired."""
    state = ctx.node.state
    _known(state, data.candidate, "candidate")
    _require_ha(ctx, "failover is")
    if data.candidate == state.primary:
        raise ApiError(400, f"body field 'candidate': {data.candidate!r} is already the primary")
    primary = state.members.get(state.primary or "")
    if primary is not None and primary.healthy:
        raise ApiError(409, f"the primary {primary.name} is healthy: use a switchover instead")
    # StartFailover has no requested_by field: who asked goes into the reason the events carry.
    reason = f"{data.reason or 'manual failover requested'} (requested by {_who(request, '')})"
    result = await _commit(
        ctx, StartFailover(old_primary=state.primary, candidate=data.candidate, reason=reason, forced=True)
    )
    return OperationAcceptedOut(operation=f"failover to {data.candidate}", write=_write_out(result))


def _member_or_404(ctx: ApiContext, name: str) -> None:
    if name not in ctx.node.state.members:
        raise ApiError(404, f"no member named {name!r}")


async def _member_action(request: Request[Any, Any, Any], ctx: Ctx, name: str,
                         action: Literal["restart", "reinit"]) -> OperationAcceptedOut:
    _member_or_404(ctx, name)
    _require_ha(ctx, f"{action} is")
    state = ctx.node.state
    if action == "reinit" and name == state.primary:
        raise ApiError(409, f"{name} is the primary and can not be re-cloned; switch over first")
    result = await _commit(ctx, RequestMemberAction(name=name, action=action, requested_by=_who(request, "")))
    return OperationAcceptedOut(operation=f"{action} {name}", write=_write_out(result))


@post("/members/{name:str}/restart", summary="Restart a member's PostgreSQL", tags=["members"], status_code=202,
      responses=_HA_ERRORS)
async def restart_member(request: Request[Any, Any, Any], ctx: Ctx, name: FromPath[str]) -> OperationAcceptedOut:
    """Ask NAME to restart its PostgreSQL in the same role (fast stop, start), e.g. to apply parameters
    pending restart. Answered once the request is committed; NAME reports ``member_action_completed``
    when done. Refused (409) while another restart / reinit of NAME or a failover / switchover is pending."""
    return await _member_action(request, ctx, name, "restart")


@post("/members/{name:str}/reinit", summary="Re-clone a member from the primary", tags=["members"],
      status_code=202, responses=_HA_ERRORS)
async def reinit_member(request: Request[Any, Any, Any], ctx: Ctx, name: FromPath[str]) -> OperationAcceptedOut:
    """Ask replica NAME to discard its data directory and clone it again from the primary (only when
    the primary is reachable; otherwise the data is kept and the request reported failed). Answered
    once committed; NAME reports ``member_action_completed`` when done. The primary is refused (409)."""
    return await _member_action(request, ctx, name, "reinit")


ROUTES = [
    maintenance_on, maintenance_off, get_config, patch_config, add_member, remove_member, set_member_tags,
    switchover, failover, restart_member, reinit_member,
]
