"""Read-your-cluster freshness for the API's read endpoints.

Every read of the replicated state (``/cluster``, ``/members/{name}``, ``/config``, ``/history``,
``/events``) first passes a Raft read barrier (ReadIndex through the leader): this node has then
applied everything committed before the request, so a follower never shows a state older than a
write that was already acknowledged - on any node. When the barrier can not complete (no leader,
partitioned, store stuck) the node still answers from its own state, marked ``stale`` with the
reason: an operator of a cut-off node needs an answer most. Health checks never take that round
trip: load balancers poll them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from litestar.params import QueryParameter

from ram.api.context import ApiContext
from ram.api.errors import ApiError
from ram.consensus.runtime.errors import ProposalError

#: Longest a fresh read waits for the Raft read barrier before answering from the local state
#: (marked stale): long enough for a leader round trip and a short apply backlog, short enough
#: that ``ramctrl status`` on a partitioned node still answers at once.
READ_BARRIER_TIMEOUT_S = 0.5
_SKIP_BARRIER = ("ok", "true", "1", "yes")
_DO_BARRIER = ("false", "0", "no")

Stale = Annotated[
    str | None,
    QueryParameter(
        name="stale",
        required=False,
        description="`ok`: answer from this node's applied state at once, without a Raft read barrier "
        "(the answer is then marked stale). Default: confirm the state is current first.",
    ),
]


@dataclass(frozen=True)
class Freshness:
    """How current a read is: ``read_index`` is the barrier's commit index when it completed."""

    stale: bool
    reason: str = ""
    read_index: int | None = None


def _skip_barrier(value: str | None) -> bool:
    if value is None:
        return False
    text = value.strip().lower()
    if text in _SKIP_BARRIER:
        return True
    if text in _DO_BARRIER or not text:
        return False
    raise ApiError(
        400,
        f"query parameter 'stale': expected 'ok' (answer without a Raft read barrier) or 'false' (the default); "
        f"got {value[:40]!r}",
    )


async def fresh_read(ctx: ApiContext, stale: str | None) -> Freshness:
    """Wait (briefly) until this node has applied everything committed before now.

    Never fails the request: without a leader or a quorum the caller serves its own state, marked.
    """
    if _skip_barrier(stale):
        return Freshness(stale=True, reason="not checked: stale=ok skips the Raft read barrier")
    try:
        async with asyncio.timeout(READ_BARRIER_TIMEOUT_S):
            index = await ctx.node.read_barrier(timeout=READ_BARRIER_TIMEOUT_S)
    except TimeoutError:
        return Freshness(
            stale=True, reason=f"Raft read barrier not complete within {READ_BARRIER_TIMEOUT_S:g} s"
        )
    except ProposalError as exc:
        return Freshness(stale=True, reason=f"Raft read barrier failed: {' '.join(str(exc).split())}")
    return Freshness(stale=False, read_index=index)


def read_fields(ctx: ApiContext, freshness: Freshness) -> dict[str, object]:
    """What every fresh read says about itself (``schemas.ReadFreshness``): who answered, how far
    it had applied, how current."""
    return {
        "applied_index": ctx.node.applied_index,
        "node": ctx.name,
        "stale": freshness.stale,
        "stale_reason": freshness.reason,
        "read_index": freshness.read_index,
    }
