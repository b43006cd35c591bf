"""The arbiter runner: on the Raft leader, feeds :func:`ram.ha.arbiter.arbitrate` with the member
reports, the lease view and its clocks, and proposes the decisions as one Raft entry; answers lease
requests (:func:`ram.ha.arbiter.decide_grant`); moves Raft leadership off the primary's node when
:func:`ram.ha.leadership.plan_leadership_move` says so. Everything it decides is a pure rule of
those modules; here are only the clocks, the proposal and the lease view's bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from ram.cluster.node import ClusterNode
from ram.consensus.runtime.errors import ProposalError
from ram.consensus.runtime.node import LeaderAnswer
from ram.consensus.types import Role
from ram.eventstore.commands import Arbitrate
from ram.ha.arbiter import ArbiterInput, arbitrate, decide_grant, steady_holder
from ram.ha.candidates import MemberObservation
from ram.ha.leadership import plan_leadership_move
from ram.ha.lease import ArbiterLeaseView, announced_lease
from ram.ha.reports import parse_report
from ram.ha.settings import HASettings
from ram.ha.streaming import StreamingTracker
from ram.ha.timers import ArbiterClocks, advance_arbiter_clocks, due_switchover
from ram.ha.wire import LeaseRequest, MemberReport

__all__ = ["ArbiterRunner"]

log = logging.getLogger("ram.ha")

_ARBITER_MIN_GAP_S = 0.02


class ArbiterRunner:
    def __init__(self, node: ClusterNode, me: str, node_id: int, settings: Callable[[], HASettings]) -> None:
        self.node = node
        self.me = me
        self.node_id = node_id
        self._settings = settings
        self.view = ArbiterLeaseView(settings())
        self.observations: dict[str, MemberObservation] = {}
        #: The arbiter's evidence of who streams from the primary (primary-side, see ram.ha.streaming).
        self.streaming = StreamingTracker()
        #: The Raft term this node leads as arbiter (0: not the arbiter).
        self.leader_term = 0
        self.clocks = ArbiterClocks()
        self._arbiter_since: float | None = None
        self._leadership_moved_at = 0.0
        self._steady_primary_since: float | None = None
        self.wake = asyncio.Event()

    # ------------------------------------------------------------------------ reports and leadership

    def on_member_report(self, node_id: int, report: MemberReport) -> None:
        """A member's report reached this (leader) node over the runtime's leader channel."""
        self.on_report(node_id, report.body)

    async def serve_lease(self, node_id: int, request: LeaseRequest) -> LeaderAnswer:
        """A lease renewal (``node_id``: who asked, as the transport authenticated it). Granted only
        with leadership confirmed by a quorum round started after the request arrived and the state
        applied up to that point."""
        if self.node.role is not Role.LEADER:
            return LeaderAnswer(False, "not the leader")
        try:
            await self.node.read_barrier(timeout=self._settings().renew_interval_s * 4)
        except ProposalError as exc:
            return LeaderAnswer(False, str(exc))
        if self.node.role is not Role.LEADER:
            return LeaderAnswer(False, "lost leadership")
        granted, reason = self.decide_lease(node_id, time.monotonic(), request.lease_s)
        return LeaderAnswer(granted, reason)

    def on_report(self, node_id: int, body: bytes) -> None:
        now = time.monotonic()
        try:
            obs = parse_report(body, now)
        except ValueError as exc:
            log.warning("dropping malformed member report node_id=%d error=%s", node_id, exc)
            return
        member = self.node.state.members.get(obs.name)
        if member is None or member.node_id != node_id:
            # A node speaks only for itself: a report about another member is dropped.
            log.warning("dropping a report about %s from node %d (not that member)", obs.name[:64], node_id)
            return
        self.observations[obs.name] = obs
        if obs.name == self.node.state.primary and obs.role == "primary" and obs.pg_running:
            self.streaming.observe_primary(obs.name, obs.wal_position, obs.standbys, now)
        self.wake.set()

    def leading(self, now: float) -> bool:
        """Leader, with the announcement of our term applied (so the state is current for this term)."""
        node = self.node
        if node.role is not Role.LEADER:
            if self.leader_term:
                self.leader_term = 0
                self.view.on_lost_leadership()
                self.clocks = ArbiterClocks()  # another arbiter's clock is not ours
                self._arbiter_since = None
                self.streaming.reset()
            return False
        state = node.state
        if state.raft_term != node.term or state.raft_leader_node_id != self.node_id:
            return False
        if self.leader_term != node.term:
            self.leader_term = node.term
            self._arbiter_since = now
            self.streaming.reset()
            self.view.on_became_leader(now, steady_holder(state), (m.lease_s for m in state.members.values()))
            log.info(
                "arbiter active term=%d steady_holder=%s presumed_wait_s=%.2f",
                node.term, steady_holder(state), self.view.presumed_wait,
            )
        return True

    # ------------------------------------------------------------------------ deciding

    def arbiter_input(self, now: float) -> ArbiterInput:
        state = self.node.state
        settings = self._settings()
        self.clocks = advance_arbiter_clocks(self.clocks, state, self.observations, now, settings)
        return ArbiterInput(
            now=now,
            state=state,
            observations=dict(self.observations),
            lease=self.view,
            settings=settings,
            primary_down_since=self.clocks.primary_down_since,
            primary_last_ok_at=self.clocks.primary_last_ok_at,
            pending_switchover=due_switchover(state.current_operation, datetime.now(UTC)),
            operation_since=self.clocks.operation_since,
            arbiter_since=self._arbiter_since,
            streaming={
                name: self.streaming.verdict(name, now, settings.report_timeout_s)
                for name in state.members
                if name != state.primary
            },
        )

    def decide_lease(self, node_id: int, now: float, lease_s: float) -> tuple[bool, str]:
        if not self.leading(now):
            return False, "arbiter not ready (new leader)"
        holder = next((m.name for m in self.node.state.members.values() if m.node_id == node_id), None)
        if holder is None:
            return False, f"node {node_id} is not a member"
        verdict = decide_grant(self.arbiter_input(now), holder, announced_lease(lease_s))
        return verdict.granted, verdict.reason

    async def loop(self) -> None:
        """Arbitrate on every tick, on every applied change and on every member report (at most
        every ``_ARBITER_MIN_GAP_S``), so a decision waits for no timer."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self._next_tick(time.monotonic()))
            self.wake.clear()
            try:
                await self.arbitrate()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ha step failed step=arbitrate")
            await asyncio.sleep(_ARBITER_MIN_GAP_S)

    def _next_tick(self, now: float) -> float:
        """Seconds until the next arbitration without a wake-up: the report interval, or sooner when
        the primary's lease runs out before it (a failover then starts on the lease's expiry, not
        at the next report)."""
        wait = self._settings().report_interval_s
        primary = self.node.state.primary
        if self.leader_term and primary is not None:
            left = self.view.seconds_until_expired(primary, now)
            if 0 < left < wait:
                wait = left + 0.001
        return wait

    def _move_leadership(self, now: float) -> None:
        node = self.node
        move = plan_leadership_move(
            state=node.state,
            me=self.me,
            now=now,
            leader_since=node.leader_since,
            steady_primary_since=self._steady_primary_since,
            moved_at=self._leadership_moved_at,
            observations=self.observations,
            settings=self._settings(),
        )
        self._steady_primary_since = move.steady_primary_since
        if not move.targets:
            return
        target = node.transfer_leadership(among=set(move.targets))
        if target is not None:
            self._leadership_moved_at = now
            log.info("moving raft leadership off the primary's node target=%d rule=%s reason=%s", target, move.rule,
                     move.reason)

    async def arbitrate(self) -> None:
        now = time.monotonic()
        if not self.leading(now):
            return
        self._move_leadership(now)
        inp = self.arbiter_input(now)
        decisions = [d for d in arbitrate(inp) if not d.waits]
        if not decisions:
            return
        events = [ev for d in decisions for ev in d.to_events()]
        revoked = [name for d in decisions if (name := d.revokes)]
        for d in decisions:
            kinds = ",".join(e.type for e in d.events)
            log.info("arbiter decision rule=%s events=%s reason=%s", d.rule, kinds, d.reason)
        for name in revoked:
            self.view.revoke(name)
        try:
            result = await self.node.propose(
                Arbitrate(events=tuple(events), based_on=inp.state.last_position, reason=decisions[0].why[:1000]),
                visible=False,
            )
        except ProposalError as exc:
            log.warning("arbiter decision not committed error=%s", exc)
            for name in revoked:
                self.view.restore(name)
            return
        for name in revoked:
            if result.events:
                self.view.revoke(name, until_position=result.index)
            else:
                self.view.restore(name)
