"""A RAM node's replicated core: the Raft runtime running the cluster state machine.

:class:`ClusterNode` is what the API, the HA controller and ``ram node run`` talk to: it proposes
commands (not bytes), exposes the cluster state, and does the cluster's own chores on the Raft
leader — record the bootstrap and each new leadership as events, promote learners that caught up.
The Raft runtime underneath (:mod:`ram.consensus.runtime.node`) knows none of this.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ram.cluster.machine import ClusterMachine
from ram.config import ConfigError, NodeConfig, api_address, check_secrets, pg_address, raft_secret
from ram.consensus.core import RaftCore
from ram.consensus.runtime.errors import CommandRefused, ProposalError, ProposalRefused
from ram.consensus.runtime.node import RaftNode, RuntimeStats
from ram.consensus.runtime.settings import PeerSpec, RuntimeSettings
from ram.consensus.runtime.transport import PeerAuth, Transport, tls_contexts
from ram.consensus.types import Role
from ram.eventstore.commands import (
    APP_LEVEL,
    BootstrapCluster,
    CommandEnvelope,
    PromoteLearner,
    RecordLeader,
    encode_envelope,
    required_level,
)
from ram.eventstore.events import CommandRejected, Event, MemberSpec
from ram.projections.state import ClusterState

log = logging.getLogger("ram.node")


def runtime_settings(config: NodeConfig) -> RuntimeSettings:
    """The Raft runtime's settings from a node's configuration."""
    raft = config.raft
    return RuntimeSettings(
        cluster_id=config.cluster_id,
        node_id=config.node_id,
        name=config.name,
        listen=raft.listen,
        peers=tuple(PeerSpec(p.id, p.name, p.address) for p in raft.peers),
        tick_ms=raft.tick_ms,
        heartbeat_ticks=raft.heartbeat_ticks,
        election_ticks=raft.election_ticks,
        pre_vote=raft.pre_vote,
        check_quorum=raft.check_quorum,
        proposal_timeout_s=raft.proposal_timeout_s,
        snapshot_entries=raft.snapshot_entries,
        bootstrap=config.bootstrap,
        app_level=APP_LEVEL,
    )


def peer_auth(config: NodeConfig) -> PeerAuth:
    """How this node's transport authenticates peers, from ``raft.secret_file`` / ``raft.tls_*``.

    Refuses (ConfigError, one line) a multi-node configuration with neither unless ``raft.insecure``,
    and secret files that others may read (:func:`ram.config.check_secrets`).
    """
    check_secrets(config)
    raft = config.raft
    server = client = None
    if raft.tls_cert is not None and raft.tls_key is not None and raft.tls_ca is not None:
        try:
            server, client = tls_contexts(raft.tls_cert, raft.tls_key, raft.tls_ca)
        except OSError as exc:  # ssl.SSLError included
            raise ConfigError(f"raft.tls_*: cannot load the certificate, key or CA: {exc}") from None
    return PeerAuth(secret=raft_secret(config), server_context=server, client_context=client)


@dataclass(frozen=True)
class ApplyResult:
    """Where a committed command landed and the events it produced."""

    index: int
    term: int
    events: tuple[Event, ...]


class ClusterNode:
    """One member of the cluster: proposes commands, holds the cluster state, leads the cluster's chores."""

    def __init__(
        self,
        config: NodeConfig,
        pool: asyncpg.Pool,
        *,
        rng: random.Random | None = None,
        on_applied: Callable[[ClusterState], None] | None = None,
    ) -> None:
        self.config = config
        self.machine = ClusterMachine()
        self.raft = RaftNode(
            runtime_settings(config),
            pool,
            self.machine,
            auth=peer_auth(config),
            rng=rng,
            on_applied=self._applied,
            on_leader=self._became_leader,
            after_ready=self._after_ready,
        )
        #: Called with the new state after every applied batch or installed snapshot (HA wakes on it).
        self.on_applied = on_applied
        self._promoting: set[int] = set()

    # ----------------------------------------------------------------------------------- life

    async def start(self) -> None:
        await self.raft.start()
        if self.config.join and not self.raft.is_member():
            # Joining needs a leader to accept the request: an operator adds the node (AddMember,
            # `ramctrl member add`); until then it only listens.
            log.info("waiting to be added to the cluster join=%s", ",".join(self.config.join))

    async def stop(self, *, transfer: bool = True) -> None:
        await self.raft.stop(transfer=transfer)

    # ------------------------------------------------------------------------------ accessors

    @property
    def state(self) -> ClusterState:
        return self.machine.state

    @property
    def core(self) -> RaftCore | None:
        return self.raft.core

    @property
    def transport(self) -> Transport:
        return self.raft.transport

    @property
    def stats(self) -> RuntimeStats:
        return self.raft.stats

    @property
    def failed(self) -> asyncio.Event:
        return self.raft.failed

    @property
    def role(self) -> Role:
        return self.raft.role

    @property
    def leader_id(self) -> int:
        return self.raft.leader_id

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def commit_index(self) -> int:
        return self.raft.commit_index

    @property
    def applied_index(self) -> int:
        return self.raft.applied_index

    @property
    def decided_index(self) -> int:
        return self.raft.decided_index

    @property
    def leader_since(self) -> float:
        return self.raft.leader_since

    def address_of(self, node_id: int) -> str | None:
        return self.raft.address_of(node_id)

    def transfer_leadership(self, among: set[int] | None = None) -> int | None:
        return self.raft.transfer_leadership(among)

    async def read_barrier(self, *, timeout: float | None = None) -> int:
        return await self.raft.read_barrier(timeout=timeout)

    async def wait_applied(self, index: int, timeout: float) -> None:
        await self.raft.wait_applied(index, timeout)

    # ------------------------------------------------------------------------------- proposals

    async def propose(
        self, command: Any, *, timeout: float | None = None, visible: bool = True, ride_out_elections: bool = False
    ) -> ApplyResult:
        """Commit ``command`` and wait until it is applied here; returns its events.

        ``visible`` (the default): also wait until this node's store has the events, so that SQL
        readers of ``pgraft`` (operators, the API's event pages) see them once this returns. The HA
        layer, which only reads the in-memory state, passes False: it is answered once the command
        is decided, before the store write.

        On a follower the command is forwarded to the leader. Raises
        :class:`~ram.consensus.runtime.errors.NoLeaderError` at once when no leader is known,
        :class:`~ram.consensus.runtime.errors.ProposalTimeout` when it does not commit in time and
        :class:`CommandRefused` when it committed but did not fit the state. ``ride_out_elections``:
        see :meth:`RaftNode.propose <ram.consensus.runtime.node.RaftNode.propose>`.
        """
        level = required_level(command)
        if level and (behind := self.members_behind(level)):
            raise ProposalRefused(
                f"not proposed: {', '.join(behind)} run(s) an older release of RAM that can not apply a "
                f"{getattr(command, 'kind', type(command).__name__)} entry of this kind; upgrade every node first"
            )
        envelope = CommandEnvelope(command=command, proposer=self.config.node_id, ts=datetime.now(UTC))
        applied = await self.raft.propose(
            encode_envelope(envelope), timeout=timeout, visible=visible, ride_out_elections=ride_out_elections
        )
        events = applied.result
        assert isinstance(events, tuple)  # ClusterMachine.decide gives every entry its events
        for event in events:
            if isinstance(event, CommandRejected):
                raise CommandRefused(event.reason)
        return ApplyResult(applied.index, applied.term, events)

    def members_behind(self, level: int) -> list[str]:
        """Members known to run a release below ``level`` (as they announced when they last
        connected; a member not connected since this node started is not counted)."""
        behind = []
        for member in self.state.members.values():
            if member.node_id == self.config.node_id:
                continue
            known = self.raft.peer_app_level(member.node_id)
            if known is not None and known < level:
                behind.append(member.name)
        return sorted(behind)

    # ------------------------------------------------------------------------ leader's chores

    def _applied(self) -> None:
        if self.on_applied is not None:
            self.on_applied(self.machine.state)

    def _became_leader(self, term: int) -> None:
        self.raft.spawn(self._announce_leadership(term), "ram.raft.announce")

    async def _announce_leadership(self, term: int) -> None:
        """The new leader records itself (and, on a brand-new cluster, the bootstrap) as events."""
        try:
            if self.state.cluster_id is None and self.config.bootstrap:
                await self.propose(
                    BootstrapCluster(
                        cluster_id=self.config.cluster_id,
                        cluster_name=self.config.cluster_name,
                        members=tuple(self._initial_members()),
                    ),
                    visible=False,
                )
            if self.term == term and self.role is Role.LEADER:
                await self.propose(RecordLeader(node_id=self.config.node_id), visible=False)
        except ProposalError as exc:
            log.info("could not record leadership term=%d error=%s", term, exc)

    def _initial_members(self) -> list[MemberSpec]:
        cfg = self.config
        pg_host, pg_port = pg_address(cfg)
        members = [
            MemberSpec(
                name=cfg.name, node_id=cfg.node_id, raft_address=cfg.raft.listen, api_address=api_address(cfg),
                pg_host=pg_host, pg_port=pg_port,
            )
        ]
        for peer in cfg.raft.peers:
            host, port = peer.pg()
            members.append(
                MemberSpec(
                    name=peer.name, node_id=peer.id, raft_address=peer.address, api_address=peer.api(),
                    pg_host=host, pg_port=port,
                )
            )
        return sorted(members, key=lambda m: m.node_id)

    def _after_ready(self) -> None:
        for node_id in self.raft.learners_caught_up():
            if node_id not in self._promoting:
                self._promoting.add(node_id)
                self.raft.spawn(self._promote(node_id), "ram.raft.promote")

    async def _promote(self, node_id: int) -> None:
        try:
            await self.propose(PromoteLearner(node_id=node_id), visible=False)
            log.info("learner promoted to voter node_id=%d", node_id)
        except ProposalError as exc:
            log.info("learner promotion deferred node_id=%d reason=%s", node_id, exc)
        finally:
            self._promoting.discard(node_id)
