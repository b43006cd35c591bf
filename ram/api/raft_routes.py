"""``POST /raft/leader``: move Raft leadership to another member (etcd's ``move-leader``).

Operators use it before maintenance of the leader's host; tests use it to check that a change of
arbiter is invisible to the cluster (no health flaps, no sync-set degrade). Only the leader can hand
leadership over: any other node answers 503 naming the leader's API, where the client retries.
"""

from __future__ import annotations

import asyncio
import time

from litestar import post
from litestar.params import JSONBody
from pydantic import BaseModel, ConfigDict, Field

from ram.api.context import Ctx
from ram.api.errors import ApiError, error_responses
from ram.api.views import raft_leader_name
from ram.consensus.types import Role

__all__ = ["ROUTES", "LeaderMoveOut", "LeaderMoveRequest"]


class LeaderMoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    to: str | None = Field(
        default=None, max_length=200, description="Member to lead next (default: the most up-to-date voter)."
    )


class LeaderMoveOut(BaseModel):
    previous: str | None = Field(description="Who led when the request arrived.")
    leader: str | None = Field(description="Who leads now.")
    term: int
    seconds: float = Field(description="How long the hand-over took.")


@post(
    "/raft/leader",
    summary="Move Raft leadership to another member",
    tags=["cluster"],
    status_code=200,
    responses=error_responses(400, 404, 409, 503),
)
async def move_leader(ctx: Ctx, data: JSONBody[LeaderMoveRequest | None] = None) -> LeaderMoveOut:
    node = ctx.node
    body = data or LeaderMoveRequest()
    state = node.state
    among: set[int] | None = None
    if body.to is not None:
        member = state.members.get(body.to)
        if member is None:
            raise ApiError(404, f"no member named {body.to!r}; members: {', '.join(sorted(state.members))}")
        if member.is_learner:
            raise ApiError(409, f"{body.to} is a Raft learner: it can not lead")
        if member.node_id == node.config.node_id and node.role is Role.LEADER:
            return LeaderMoveOut(previous=body.to, leader=body.to, term=node.term, seconds=0.0)
        among = {member.node_id}
    if node.role is not Role.LEADER:
        raise ApiError(503, "this node does not lead Raft; ask the leader (see leader_api)")
    previous = raft_leader_name(node)
    started = time.monotonic()
    target = node.transfer_leadership(among)
    if target is None:
        raise ApiError(409, "no voter is caught up and reachable enough to take over")
    deadline = started + node.config.raft.election_ms / 1000 * 2
    # The runtime offers no public leader-change event; a 10 ms poll bounded by two election timeouts.
    while node.leader_id in (0, node.config.node_id) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if node.leader_id in (0, node.config.node_id):
        raise ApiError(503, "leadership did not move within two election timeouts; retry")
    return LeaderMoveOut(
        previous=previous, leader=raft_leader_name(node), term=node.term, seconds=round(time.monotonic() - started, 3)
    )


ROUTES = [move_leader]
