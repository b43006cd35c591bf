"""Committing a node's facts (health, following, fenced, rejoined, action outcomes) through Raft.

A fact is proposed in the background so the caller (the keeper, the fence path) never waits on
consensus. While there is no leader or no quorum (an election, a partition) it is retried for up to
``retry_s``, as long as the caller's ``still_true`` says it has not been superseded — a stale
"following pg2" must not land after "following pg3". A refusal (unknown member, or a fact that a
member's older release could not apply) is final.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ram.cluster.node import ClusterNode
from ram.consensus.runtime.errors import CommandRefused, ProposalError, ProposalRefused
from ram.eventstore.commands import FactEvent, ReportFact

__all__ = ["FactReporter"]

log = logging.getLogger("ram.ha")


class FactReporter:
    def __init__(
        self,
        node: ClusterNode,
        still_true: Callable[[FactEvent], bool],
        *,
        proposal_timeout_s: float,
        retry_every_s: float,
        retry_s: float = 30.0,
    ) -> None:
        self._node = node
        self._still_true = still_true
        self._proposal_timeout_s = proposal_timeout_s
        self._retry_every_s = retry_every_s
        self._retry_s = retry_s
        self._tasks: set[asyncio.Task[None]] = set()

    def report(self, event: FactEvent) -> None:
        task = asyncio.get_running_loop().create_task(self._commit(event), name=f"ram.ha.fact.{event.type}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _commit(self, event: FactEvent) -> None:
        deadline = time.monotonic() + self._retry_s
        while True:
            try:
                await self._node.propose(ReportFact(event=event), timeout=self._proposal_timeout_s, visible=False)
                return
            except (CommandRefused, ProposalRefused) as exc:  # retrying would not change the answer
                log.info("fact refused type=%s error=%s", event.type, exc)
                return
            except ProposalError as exc:
                if time.monotonic() >= deadline:
                    log.warning("could not record fact type=%s error=%s", event.type, exc)
                    return
                log.info("fact not recorded yet, retrying type=%s error=%s", event.type, exc)
            await asyncio.sleep(self._retry_every_s)
            if not self._still_true(event):
                log.info("fact superseded before it could be recorded type=%s", event.type)
                return

    async def close(self) -> None:
        """Stop retrying (on shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
