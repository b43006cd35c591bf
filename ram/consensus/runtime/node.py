"""A Raft node: the pure core wrapped with the store, the TCP transport, timers and the apply loop.

One asyncio task drives the core through its Ready contract (see :mod:`ram.consensus.types`):
persist (one transaction) → send → apply (one transaction) → advance. Everything that arrives while
a batch is being persisted lands in the next batch, which is the group commit: under load one
fsync carries many entries, with no per-entry round trip anywhere.

Applying is exactly-once across crashes: a Ready's log entries and hard state AND the events,
projection rows and applied index of its committed entries are written in ONE transaction
(``pgraft.save_ready``), so the log and what was applied from it can never disagree — not after a
crash of the node, nor after a crash of the store while the node lives on. Entries at or below the
applied index are skipped on replay.

When the store is down or slow, persisting fails; the node then sends nothing that would promise
durability (no vote, no append acknowledgement), retries with backoff and resumes once the store is
back. It never crashes for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from ram.backoff import Backoff
from ram.config import ConfigError, NodeConfig, api_address, check_secrets, parse_address, pg_address, raft_secret
from ram.consensus.core import ConfChangeInProgress, NotLeader, ProposalDropped, RaftCore
from ram.consensus.readyplan import split_sends
from ram.consensus.runtime.codec import (
    ForwardedProposal,
    LeaseRequest,
    MemberReport,
    PayloadError,
    ProposalOutcome,
    RaftPayload,
    decode_payload,
    encode_payload,
)
from ram.consensus.runtime.forwarding import forwarded_refusal
from ram.consensus.runtime.storage import STORE_ERRORS, RaftStorage, StoreUnavailable, store_connection
from ram.consensus.runtime.transport import PeerAddress, PeerAuth, Transport, tls_contexts
from ram.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    PersistedState,
    RaftConfig,
    Ready,
    Role,
    Snapshot,
)
from ram.eventstore.commands import (
    MEMBERSHIP_COMMANDS,
    AddMember,
    BootstrapCluster,
    CommandDecodeError,
    CommandEnvelope,
    PromoteLearner,
    RecordLeader,
    RemoveMember,
    decide,
    decode_envelope,
    encode_envelope,
)
from ram.eventstore.events import CommandRejected, Event, MemberSpec, StoredEvent, decode_event, encode_event
from ram.eventstore.store import EntryEvents, append_entries
from ram.projections.sql import load_state
from ram.projections.state import ClusterState, fold

log = logging.getLogger("ram.node")

#: Store writes are retried after 0.05 s, doubling up to 1 s (the store is local: it is back soon or
#: the operator is at work).
_STORE_RETRY = Backoff(0.05, 1.0)

#: Forwarded proposals and lease requests one peer may have in flight at this node; more are
#: answered "busy" at once instead of spawning a task each (a peer must not make us spawn without bound).
MAX_REQUESTS_PER_PEER = 64


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


class ProposalError(RuntimeError):
    """A proposal did not commit; the message says why and what to do."""


class NoLeaderError(ProposalError):
    """No leader is known (election in progress or no quorum); ``leader_id`` hints where to retry."""

    def __init__(self, message: str, leader_id: int = 0, leader_address: str | None = None) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


class ProposalTimeout(ProposalError):
    """The proposal was not committed in time (typically: no quorum reachable)."""


class CommandRefused(ProposalError):
    """The command committed but did not fit the cluster state; nothing changed."""


@dataclass(frozen=True)
class ApplyResult:
    """Where a committed command landed and the events it produced."""

    index: int
    term: int
    events: tuple[Event, ...]


@dataclass
class _Pending:
    term: int
    future: asyncio.Future[ApplyResult]


@dataclass
class _Applying:
    """Committed entries decided in memory, waiting to be stored with the Ready that carries them."""

    state: ClusterState
    batch: list[EntryEvents] = field(default_factory=list)
    results: dict[int, tuple[int, tuple[Event, ...]]] = field(default_factory=dict)
    conf_entries: list[Entry] = field(default_factory=list)


@dataclass
class _Stats:
    persisted_batches: int = 0
    persisted_entries: int = 0
    applied_entries: int = 0
    store_failures: int = 0
    elections_seen: int = 0
    snapshots_installed: int = 0
    snapshots_taken: int = 0
    started_at: float = field(default_factory=time.monotonic)


_SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()
_SNAPSHOT_DECODER = msgspec.msgpack.Decoder(list[tuple[int, int, str, int, str, int, int, int]])


class RaftNode:
    """One member of the Raft cluster, persisting to its store and applying into `pgraft.events`."""

    def __init__(
        self,
        config: NodeConfig,
        pool: asyncpg.Pool,
        *,
        rng: random.Random | None = None,
        on_applied: Callable[[ClusterState], None] | None = None,
    ) -> None:
        self.config = config
        self._pool = pool
        self._rng = rng or random.Random()
        self._storage = RaftStorage(pool)
        #: Called with the new state after every applied batch or installed snapshot (HA wakes on it).
        self.on_applied = on_applied
        host, port = parse_address(config.raft.listen)
        self._addresses: dict[int, str] = {p.id: p.address for p in config.raft.peers}
        self._addresses[config.node_id] = config.raft.listen
        #: Member names by node id: what a peer's TLS certificate must name.
        self._names: dict[int, str] = {p.id: p.name for p in config.raft.peers}
        self._names[config.node_id] = config.name
        self.transport = Transport(
            cluster_id=config.cluster_id,
            node_id=config.node_id,
            listen=PeerAddress(host, port, config.name),
            peers=self._peer_map(),
            on_frame=self._on_frame,
            rng=random.Random(self._rng.random()),  # own stream: transport jitter must not shift Raft's draws
            auth=peer_auth(config),
        )
        #: In-flight forwarded proposals / lease requests per peer (bounded by MAX_REQUESTS_PER_PEER).
        self._peer_requests: dict[int, int] = {}
        #: request id -> the peer asked: an answer counts only from that peer.
        self._forward_targets: dict[int, int] = {}
        self.core: RaftCore | None = None
        self.state = ClusterState.empty()
        self.applied_index = 0
        self.stats = _Stats()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[int, _Pending] = {}
        self._forwards: dict[int, asyncio.Future[ProposalOutcome]] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._request_ids = itertools.count(1)
        self._last_leader = 0
        self._last_term = 0
        self._stopping = False
        self._snapshot_index = 0
        self._promoting: set[int] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._leader_changed = asyncio.Event()
        #: Set when a core loop died unexpectedly; the process must exit (fail-stop, never limp on).
        self.failed = asyncio.Event()
        #: Monotonic time this node last became leader (0 when it is not the leader).
        self.leader_since = 0.0
        #: HA hooks. ``on_report(node_id, body)``: a member's report reached this (leader) node.
        #: ``lease_decider(node_id, now, lease_s) -> (granted, reason)``: as leader, with leadership
        #: just confirmed by a quorum and the state applied up to that point, may ``node_id`` hold the
        #: lease? ``lease_s`` is what the requester announced (0: nothing).
        self.on_report: Callable[[int, bytes], None] | None = None
        self.lease_decider: Callable[[int, float, float], tuple[bool, str]] | None = None

    # ----------------------------------------------------------------------------------- life

    def _spawn(self, coro: Any, name: str) -> None:
        """Run a fire-and-forget task that is kept referenced and cancelled on stop."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        """Load durable state, start the transport, timers and the Ready loop."""
        cfg = self.config
        await self._storage.check_identity(cfg.cluster_id, cfg.node_id, cfg.name)
        persisted = await self._storage.load()
        async with self._pool.acquire() as conn:
            if persisted.snapshot is not None:
                await self._restore_snapshot_events(conn, persisted.snapshot)
            self.applied_index = int(await conn.fetchval("SELECT applied_index FROM pgraft.applied"))
            self.state = await load_state(conn)
        self._snapshot_index = persisted.snapshot.index if persisted.snapshot else 0
        persisted = PersistedState(
            hard_state=persisted.hard_state,
            snapshot=persisted.snapshot,
            entries=persisted.entries,
            applied=self.applied_index,
        )
        conf: ConfState | None = None
        fresh = persisted.hard_state.term == 0 and persisted.snapshot is None and not persisted.entries
        if fresh and cfg.bootstrap:
            conf = ConfState(voters=frozenset(self._addresses), learners=frozenset())
        raft_config = RaftConfig(
            id=cfg.node_id,
            election_ticks=cfg.raft.election_ticks,
            heartbeat_ticks=cfg.raft.heartbeat_ticks,
            pre_vote=cfg.raft.pre_vote,
            check_quorum=cfg.raft.check_quorum,
        )
        self.core = RaftCore(raft_config, self._rng, persisted, conf=conf)
        await self.transport.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._ticker(), name="ram.raft.ticker"),
            loop.create_task(self._ready_loop(), name="ram.raft.ready"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._on_task_done)
        log.info(
            "node started node_id=%d name=%s term=%d applied=%d log_entries=%d bootstrap=%s",
            cfg.node_id, cfg.name, persisted.hard_state.term, self.applied_index, len(persisted.entries), bool(conf),
        )
        if cfg.join and not self._is_member():
            self._spawn(self._join(), "ram.raft.join")

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        """A core loop must never end on its own: if one does, the node is broken — say so, fail-stop."""
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        log.critical("raft loop died task=%s error=%r; stopping the node", task.get_name(), exc, exc_info=exc)
        self.failed.set()

    async def stop(self, *, transfer: bool = True) -> None:
        """Stop cleanly; a leader first hands leadership to the most up-to-date voter."""
        if self._stopping:
            return
        if transfer and self.core is not None and self.core.role is Role.LEADER:
            await self._transfer_before_stop()
        self._stopping = True
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.transport.stop()
        self._fail_all(ProposalError("node is shutting down"))
        log.info("node stopped node_id=%d", self.config.node_id)

    def transfer_leadership(self, among: set[int] | None = None) -> int | None:
        """As leader, hand leadership to the most up-to-date active voter (``among`` these node ids,
        when given); returns the target, or None when there is none. Does not wait for the result."""
        core = self.core
        if core is None or core.role is not Role.LEADER:
            return None
        candidates = [
            (info.match, pid)
            for pid, info in core.progress.items()
            if pid != core.id and not info.is_learner and info.recent_active and (among is None or pid in among)
        ]
        if not candidates:
            return None
        _, target = max(candidates)
        core.transfer_leadership(target)
        self._wake.set()
        return target

    async def _transfer_before_stop(self) -> None:
        core = self.core
        assert core is not None
        target = self.transfer_leadership()
        if target is None:
            return
        log.info("transferring leadership before stop target=%d", target)
        deadline = time.monotonic() + self.config.raft.election_ms / 1000 * 2
        while core.role is Role.LEADER and (left := deadline - time.monotonic()) > 0:
            self._leader_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_changed.wait(), left)

    # ------------------------------------------------------------------------------ accessors

    @property
    def role(self) -> Role:
        return self.core.role if self.core else Role.FOLLOWER

    @property
    def leader_id(self) -> int:
        return self.core.leader_id if self.core else 0

    @property
    def term(self) -> int:
        return self.core.term if self.core else 0

    @property
    def commit_index(self) -> int:
        return self.core.commit_index if self.core else 0

    def address_of(self, node_id: int) -> str | None:
        return self._addresses.get(node_id)

    def _is_member(self) -> bool:
        assert self.core is not None
        conf = self.core.conf
        return self.config.node_id in conf.voters or self.config.node_id in conf.learners

    # ------------------------------------------------------------------------------- proposals

    def _peer_map(self) -> dict[int, PeerAddress]:
        return {
            pid: PeerAddress(*parse_address(a), self._names.get(pid, ""))
            for pid, a in self._addresses.items()
            if pid != self.config.node_id
        }

    def _envelope(self, command: Any) -> CommandEnvelope:
        return CommandEnvelope(command=command, proposer=self.config.node_id, ts=datetime.now(UTC))

    async def propose(self, command: Any, *, timeout: float | None = None) -> ApplyResult:
        """Commit ``command`` and wait until it is applied here; returns its events.

        On a follower the command is forwarded to the leader. Raises :class:`NoLeaderError` at once
        when no leader is known, :class:`ProposalTimeout` when it does not commit in time and
        :class:`CommandRefused` when it committed but did not fit the state.
        """
        timeout = timeout or self.config.raft.proposal_timeout_s
        data = encode_envelope(self._envelope(command))
        if self.role is Role.LEADER:
            result = await self._propose_local(data, timeout)
        else:
            result = await self._forward(data, timeout, read_only=False)
        for event in result.events:
            if isinstance(event, CommandRejected):
                raise CommandRefused(event.reason)
        return result

    async def _propose_local(self, data: bytes, timeout: float) -> ApplyResult:
        core = self.core
        assert core is not None
        envelope = decode_envelope(data)
        command = envelope.command
        deadline = time.monotonic() + timeout
        while True:
            try:
                if isinstance(command, MEMBERSHIP_COMMANDS) and self._fits_membership(command):
                    index, term = core.propose_conf_change(self._conf_change_for(command, data))
                else:
                    # Also membership commands that do not fit: committed as a plain entry, so that
                    # every node records the same rejection when it applies it.
                    index, term = core.propose(data)
                break
            except NotLeader as exc:
                raise self._no_leader(exc.leader_id) from None
            except ProposalDropped as exc:
                raise NoLeaderError(f"proposal dropped: {exc}", core.leader_id) from None
            except ConfChangeInProgress as exc:
                # One membership change at a time: wait for the previous one to commit.
                if time.monotonic() >= deadline:
                    raise ProposalTimeout(f"membership change not started within {timeout:g} s: {exc}") from None
                await asyncio.sleep(self.config.raft.tick_ms / 1000)
            except ValueError as exc:
                raise CommandRefused(str(exc)) from None
        future: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        self._pending[index] = _Pending(term, future)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise ProposalTimeout(
                f"not committed within {timeout:g} s (entry {index} of term {term}); is a quorum reachable?"
            ) from None
        finally:
            pending = self._pending.get(index)
            if pending is not None and pending.future is future:
                del self._pending[index]

    def _fits_membership(self, command: Any) -> bool:
        """Whether a membership command makes sense for the current configuration."""
        assert self.core is not None
        conf = self.core.conf
        if isinstance(command, AddMember):
            node_id = command.member.node_id
            return (node_id not in conf.voters and (command.as_learner or node_id not in conf.learners)) or (
                not command.as_learner and node_id in conf.learners
            )
        if isinstance(command, PromoteLearner):
            return command.node_id in conf.learners
        return command.node_id in conf.voters or command.node_id in conf.learners

    @staticmethod
    def _conf_change_for(command: Any, data: bytes) -> ConfChange:
        if isinstance(command, AddMember):
            kind = ConfChangeType.ADD_LEARNER if command.as_learner else ConfChangeType.ADD_VOTER
            return ConfChange(kind, command.member.node_id, data)
        if isinstance(command, PromoteLearner):
            return ConfChange(ConfChangeType.ADD_VOTER, command.node_id, data)
        assert isinstance(command, RemoveMember)
        return ConfChange(ConfChangeType.REMOVE_NODE, command.node_id, data)

    def _no_leader(self, leader_id: int) -> NoLeaderError:
        if leader_id:
            address = self.address_of(leader_id)
            return NoLeaderError(f"not the leader; the leader is node {leader_id} at {address}", leader_id, address)
        return NoLeaderError("no leader is known right now (election in progress or no quorum); retry shortly")

    async def _forward(self, data: bytes, timeout: float, *, read_only: bool) -> ApplyResult:
        leader = self.leader_id
        if not leader or leader == self.config.node_id:
            raise self._no_leader(0)
        request_id = next(self._request_ids)
        future: asyncio.Future[ProposalOutcome] = asyncio.get_running_loop().create_future()
        self._forwards[request_id] = future
        self._forward_targets[request_id] = leader
        try:
            if not self.transport.send(leader, encode_payload(ForwardedProposal(request_id, data, read_only))):
                raise NoLeaderError(f"cannot reach the leader (node {leader}): send queue full", leader)
            try:
                outcome = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise ProposalTimeout(f"leader (node {leader}) did not answer within {timeout:g} s") from None
        finally:
            self._forwards.pop(request_id, None)
            self._forward_targets.pop(request_id, None)
        if not outcome.ok:
            if outcome.leader_id and outcome.leader_id != leader:
                raise NoLeaderError(outcome.error, outcome.leader_id, self.address_of(outcome.leader_id))
            raise ProposalError(outcome.error)
        if read_only:
            await self.wait_applied(outcome.index, timeout)
            return ApplyResult(outcome.index, outcome.term, ())
        await self.wait_applied(outcome.index, timeout)
        events = tuple(_decode_result(outcome.result))
        return ApplyResult(outcome.index, outcome.term, events)

    async def _serve_forward(self, peer: int, request: ForwardedProposal) -> None:
        timeout = self.config.raft.proposal_timeout_s
        try:
            if request.read_only:
                index = await self._read_index_local(timeout)
                outcome = ProposalOutcome(request.request_id, True, index=index)
            elif self.role is not Role.LEADER:
                outcome = ProposalOutcome(request.request_id, False, error="not the leader", leader_id=self.leader_id)
            elif (refusal := forwarded_refusal(self.state, peer, decode_envelope(request.data))) is not None:
                log.warning("forwarded proposal refused peer=%d reason=%s", peer, refusal)
                outcome = ProposalOutcome(request.request_id, False, error=f"refused: {refusal}")
            else:
                result = await self._propose_local(request.data, timeout)
                outcome = ProposalOutcome(
                    request.request_id, True, result.index, result.term, _encode_result(result.events)
                )
        except NoLeaderError as exc:
            outcome = ProposalOutcome(request.request_id, False, error=str(exc), leader_id=exc.leader_id)
        except (ProposalError, CommandDecodeError) as exc:
            outcome = ProposalOutcome(request.request_id, False, error=str(exc), leader_id=self.leader_id)
        self.transport.send(peer, encode_payload(outcome))

    # -------------------------------------------------------------------------------- reads

    async def read_barrier(self, *, timeout: float | None = None) -> int:
        """Linearizable read point (ReadIndex): returns once this node has applied everything
        committed before the call; reads of the projections after it are up to date."""
        timeout = timeout or self.config.raft.proposal_timeout_s
        if self.role is Role.LEADER:
            index = await self._read_index_local(timeout)
            await self.wait_applied(index, timeout)
            return index
        result = await self._forward(b"", timeout, read_only=True)
        return result.index

    async def request_lease(self, *, timeout: float, lease_s: float) -> tuple[bool, str]:
        """Ask the leader to grant (renew) this node's primary lease of ``lease_s`` seconds:
        (granted, reason)."""
        if self.role is Role.LEADER:
            return await self._decide_lease(self.config.node_id, timeout, lease_s)
        leader = self.leader_id
        if not leader:
            return False, "no leader known"
        request_id = next(self._request_ids)
        future: asyncio.Future[ProposalOutcome] = asyncio.get_running_loop().create_future()
        self._forwards[request_id] = future
        self._forward_targets[request_id] = leader
        try:
            if not self.transport.send(leader, encode_payload(LeaseRequest(request_id, lease_s))):
                return False, f"cannot reach the leader (node {leader})"
            try:
                outcome = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                return False, f"leader (node {leader}) did not answer within {timeout:g} s"
        finally:
            self._forwards.pop(request_id, None)
            self._forward_targets.pop(request_id, None)
        return outcome.ok, outcome.error

    async def _decide_lease(self, node_id: int, timeout: float, lease_s: float) -> tuple[bool, str]:
        if self.lease_decider is None:
            return False, "this node does not arbitrate leases"
        try:
            index = await self._read_index_local(timeout)
            await self.wait_applied(index, timeout)
        except ProposalError as exc:
            return False, str(exc)
        if self.role is not Role.LEADER:
            return False, "lost leadership"
        return self.lease_decider(node_id, time.monotonic(), lease_s)

    async def _serve_lease(self, peer: int, request: LeaseRequest) -> None:
        granted, reason = await self._decide_lease(peer, self.config.ha.renew_interval_s * 4, request.lease_s)
        self.transport.send(peer, encode_payload(ProposalOutcome(request.request_id, granted, error=reason)))

    def send_report(self, body: bytes) -> bool:
        """Hand a member report to the current leader (directly when we lead). False: no leader known."""
        leader = self.leader_id
        if not leader:
            return False
        if leader == self.config.node_id:
            if self.on_report is not None:
                self.on_report(self.config.node_id, body)
            return True
        return self.transport.send(leader, encode_payload(MemberReport(body)))

    async def _read_index_local(self, timeout: float) -> int:
        core = self.core
        assert core is not None
        context = next(self._request_ids).to_bytes(8, "big") + self.config.node_id.to_bytes(4, "big")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[context] = future
        try:
            core.read_index(context)
        except NotLeader as exc:
            self._reads.pop(context, None)
            raise self._no_leader(exc.leader_id) from None
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ProposalTimeout(f"leadership not confirmed within {timeout:g} s (no quorum?)") from None
        finally:
            self._reads.pop(context, None)

    async def wait_applied(self, index: int, timeout: float) -> None:
        if self.applied_index >= index:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ProposalTimeout(f"index {index} not applied within {timeout:g} s") from None

    # ------------------------------------------------------------------------------- inbound

    def _on_frame(self, peer: int, body: bytes) -> None:
        """A frame from ``peer`` — the node id the transport authenticated for the connection, so every
        check below is against who the sender proved to be, never what the frame says."""
        try:
            payload = decode_payload(body)
        except PayloadError as exc:
            log.warning("dropping invalid payload peer=%d size=%d error=%s", peer, len(body), exc)
            return
        if isinstance(payload, RaftPayload):
            message = payload.message
            if message.frm != peer or message.to != self.config.node_id:
                log.warning(
                    "dropping message with forged sender or wrong recipient peer=%d frm=%d to=%d",
                    peer, message.frm, message.to,
                )
                return
            if self.core is not None:
                if message.type is MessageType.TIMEOUT_NOW and message.frm != self.core.leader_id:
                    # Only the leader may hand over leadership; anyone else could force elections at will.
                    log.warning(
                        "dropping timeout_now from a node that is not the leader peer=%d leader=%d term=%d",
                        peer, self.core.leader_id, message.term,
                    )
                    return
                self.core.step(message)
                self._wake.set()
        elif isinstance(payload, (ForwardedProposal, LeaseRequest)):
            busy = self._peer_requests.get(peer, 0)
            if busy >= MAX_REQUESTS_PER_PEER:
                log.warning("peer request refused: %d in flight already peer=%d", busy, peer)
                self.transport.send(
                    peer, encode_payload(ProposalOutcome(payload.request_id, False, error="busy: too many requests"))
                )
                return
            self._peer_requests[peer] = busy + 1
            if isinstance(payload, ForwardedProposal):
                self._spawn(self._counted(peer, self._serve_forward(peer, payload)), "ram.raft.forward")
            else:
                self._spawn(self._counted(peer, self._serve_lease(peer, payload)), "ram.raft.lease")
        elif isinstance(payload, MemberReport):
            if self.on_report is not None and self.role is Role.LEADER:
                self.on_report(peer, payload.body)
        else:
            future = self._forwards.get(payload.request_id)
            asked = self._forward_targets.get(payload.request_id)
            if asked is None:  # the request timed out here already: a late answer, not a forgery
                log.debug("late answer dropped peer=%d request_id=%d", peer, payload.request_id)
                return
            if asked != peer:
                log.warning("dropping an answer from a node that was not asked peer=%d request_id=%d",
                            peer, payload.request_id)
                return
            if future is not None and not future.done():
                future.set_result(payload)

    async def _counted(self, peer: int, work: Awaitable[None]) -> None:
        """Run a peer's request, keeping its in-flight count right whatever happens."""
        try:
            await work
        finally:
            left = self._peer_requests.get(peer, 1) - 1
            if left > 0:
                self._peer_requests[peer] = left
            else:
                self._peer_requests.pop(peer, None)

    # ---------------------------------------------------------------------------- the loops

    async def _ticker(self) -> None:
        interval = self.config.raft.tick_ms / 1000
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick += interval
            if loop.time() > next_tick + 10 * interval:  # we were starved; do not burst ticks
                next_tick = loop.time() + interval
            assert self.core is not None
            self.core.tick()
            self._wake.set()

    async def _ready_loop(self) -> None:
        core = self.core
        assert core is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while core.has_ready():
                rd = core.ready()
                # Which messages may leave before the write (a leader's appends) is decided by
                # split_sends, shared with the simulator so that it checks this very order.
                early, late = split_sends(rd)
                self._send(early)
                if rd.snapshot is not None:
                    await self._install_snapshot(rd)
                applying = self._prepare_apply(rd.committed_entries)
                await self._persist(rd, applying)
                self._send(late)
                self._finish_apply(applying)
                core.advance(rd)
                self._after_ready(rd)

    def _send(self, messages: Sequence[Message]) -> None:
        for message in messages:
            self.transport.send(message.to, encode_payload(RaftPayload(message)))

    async def _retry_store(self, what: str, operation: Callable[[], Awaitable[None]]) -> None:
        """Retry a store write until it succeeds. While it fails nothing that depends on it leaves
        the node: no vote, no acknowledgement, no applied result — and the node does not crash."""
        attempt = 0
        while True:
            try:
                await operation()
                return
            except StoreUnavailable as exc:
                self.stats.store_failures += 1
                log.warning("store write failed; not voting or acknowledging until it is back what=%s error=%s",
                            what, exc)
                await asyncio.sleep(_STORE_RETRY.delay(attempt))
                attempt += 1

    async def _persist(self, rd: Ready, applying: _Applying) -> None:
        """One transaction, one round trip: the Ready's entries and hard state AND the events,
        projections and applied index of its committed entries. The log and what was applied from it
        can never disagree, whatever crashes when."""

        async def save() -> None:
            await self._storage.save(
                hard_state=rd.hard_state, entries=rd.entries, snapshot=None, applied=applying.batch
            )

        await self._retry_store("ready", save)
        self.stats.persisted_batches += 1
        self.stats.persisted_entries += len(rd.entries)

    async def _install_snapshot(self, rd: Ready) -> None:
        """A leader's snapshot replaces our log; the events up to it come from the snapshot data."""
        snapshot = rd.snapshot
        assert snapshot is not None

        async def save() -> None:
            await self._storage.save(hard_state=None, entries=(), snapshot=snapshot)
            try:
                async with store_connection(self._pool) as conn:
                    await self._restore_snapshot_events(conn, snapshot)
                    applied = int(await conn.fetchval("SELECT applied_index FROM pgraft.applied"))
                    state = await load_state(conn)
            except STORE_ERRORS as exc:
                raise StoreUnavailable(f"store unavailable: {exc}") from exc
            # All at once, with no await in between: nobody sees the new index with the old state.
            self.applied_index, self.state = applied, state
            self._snapshot_index = snapshot.index
            self.stats.snapshots_installed += 1

        await self._retry_store("snapshot", save)
        self._wake_applied()

    def _after_ready(self, rd: Ready) -> None:
        core = self.core
        assert core is not None
        for read in rd.read_states:
            future = self._reads.get(read.context)
            if future is not None and not future.done():
                future.set_result(read.index)
        if rd.leader_id != self._last_leader or rd.term != self._last_term:
            became_leader = rd.role is Role.LEADER and (self._last_leader != core.id or rd.term != self._last_term)
            self._last_leader, self._last_term = rd.leader_id, rd.term
            self.stats.elections_seen += 1
            self._leader_changed.set()
            log.info("raft leader changed term=%d leader=%d role=%s", rd.term, rd.leader_id, rd.role.value)
            if became_leader:
                self.leader_since = time.monotonic()
                self._spawn(self._announce_leadership(rd.term), "ram.raft.announce")
            elif rd.role is not Role.LEADER:
                self.leader_since = 0.0
        if core.role is Role.LEADER:
            self._maybe_promote_learners()
        if self.applied_index - self._snapshot_index >= self.config.raft.snapshot_entries:
            self._snapshot_index = self.applied_index  # one snapshot at a time
            self._spawn(self._take_snapshot(self.applied_index), "ram.raft.snapshot")

    async def _announce_leadership(self, term: int) -> None:
        """The new leader records itself (and, on a brand-new cluster, the bootstrap) as events."""
        try:
            if self.state.cluster_id is None and self.config.bootstrap:
                members = tuple(self._initial_members())
                await self.propose(
                    BootstrapCluster(
                        cluster_id=self.config.cluster_id, cluster_name=self.config.cluster_name, members=members
                    )
                )
            if self.term == term and self.role is Role.LEADER:
                await self.propose(RecordLeader(node_id=self.config.node_id))
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

    def _maybe_promote_learners(self) -> None:
        core = self.core
        assert core is not None
        for pid, info in core.progress.items():
            if info.is_learner and info.match >= core.commit_index and pid not in self._promoting:
                self._promoting.add(pid)
                self._spawn(self._promote(pid), "ram.raft.promote")

    async def _promote(self, node_id: int) -> None:
        try:
            await self.propose(PromoteLearner(node_id=node_id))
            log.info("learner promoted to voter node_id=%d", node_id)
        except ProposalError as exc:
            log.info("learner promotion deferred node_id=%d reason=%s", node_id, exc)
        finally:
            self._promoting.discard(node_id)

    async def _join(self) -> None:
        """Ask the cluster (through any listed member) to add this node as a learner."""
        # Joining needs a leader to accept the request; the request is carried by the API layer
        # once it exists. Until then an operator adds the node with an AddMember proposal.
        log.info("waiting to be added to the cluster join=%s", ",".join(self.config.join))

    # ----------------------------------------------------------------------------- applying

    def _prepare_apply(self, entries: Sequence[Entry]) -> _Applying:
        """Decide what committed entries yield (pure, in memory); nothing is visible until stored."""
        state = self.state
        applying = _Applying(state=state)
        for entry in entries:
            if entry.index <= self.applied_index:
                continue
            proposer, ts, events = self._decide_entry(state, entry)
            if events:
                # Built from values we just validated: model_construct skips re-validating them.
                stored = [
                    StoredEvent.model_construct(
                        position=entry.index, sub=i, term=entry.term, proposer=proposer, ts=ts, event=ev
                    )
                    for i, ev in enumerate(events)
                ]
                state = fold(state, stored)
            applying.batch.append(EntryEvents(entry.index, entry.term, proposer, ts, events))
            applying.results[entry.index] = (entry.term, tuple(events))
            applying.conf_entries.extend([entry] if entry.type is EntryType.CONF_CHANGE else [])
        applying.state = state
        return applying

    def _finish_apply(self, applying: _Applying) -> None:
        """The batch is durable: make it visible and answer the proposers."""
        if not applying.batch:
            return
        self.state = applying.state
        self.applied_index = applying.batch[-1].position
        self.stats.applied_entries += len(applying.batch)
        for entry in applying.conf_entries:
            self._note_conf_change(entry)
        for index, (term, events) in applying.results.items():
            pending = self._pending.pop(index, None)
            if pending is None or pending.future.done():
                continue
            if pending.term == term:
                pending.future.set_result(ApplyResult(index, term, events))
            else:
                pending.future.set_exception(
                    NoLeaderError(f"leadership changed; entry {index} was replaced by term {term}", self.leader_id)
                )
        self._wake_applied()

    def _decide_entry(self, state: ClusterState, entry: Entry) -> tuple[int, datetime, list[Event]]:
        epoch = datetime.fromtimestamp(0, UTC)
        data = entry.data
        if entry.type is EntryType.CONF_CHANGE:
            try:
                data = ConfChange.decode(entry.data).context
            except ValueError as exc:
                return 0, epoch, [CommandRejected(command="conf_change", reason=str(exc))]
        if not data:
            return 0, epoch, []
        try:
            envelope = decode_envelope(data)
        except CommandDecodeError as exc:
            return 0, epoch, [CommandRejected(command="unknown", reason=str(exc))]
        return envelope.proposer, envelope.ts, decide(state, envelope.command, envelope.ts, entry.term)

    def _note_conf_change(self, entry: Entry) -> None:
        if entry.type is not EntryType.CONF_CHANGE:
            return
        try:
            change = ConfChange.decode(entry.data)
            envelope = decode_envelope(change.context)
        except (ValueError, CommandDecodeError):
            return
        command = envelope.command
        if isinstance(command, AddMember):
            self._addresses[command.member.node_id] = command.member.raft_address
            self._names[command.member.node_id] = command.member.name
        elif isinstance(command, RemoveMember):
            self._addresses.pop(command.node_id, None)
            self._names.pop(command.node_id, None)
        self.transport.set_peers(self._peer_map())

    def _wake_applied(self) -> None:
        """The applied state moved on (a batch or a snapshot): release waiters, tell ``on_applied``."""
        still = []
        for index, future in self._applied_waiters:
            if future.done():
                continue
            if self.applied_index >= index:
                future.set_result(None)
            else:
                still.append((index, future))
        self._applied_waiters = still
        if self.on_applied is not None:
            self.on_applied(self.state)

    def _fail_all(self, error: Exception) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self._pending.clear()
        waiting: list[asyncio.Future[Any]] = [*self._forwards.values(), *self._reads.values()]
        for fut in waiting:
            if not fut.done():
                fut.set_exception(error)

    # ---------------------------------------------------------------------------- snapshots

    async def _take_snapshot(self, index: int) -> None:
        """Compact the log: the snapshot's state is every event up to ``index`` (events are the state)."""
        core = self.core
        assert core is not None
        try:
            async with store_connection(self._pool) as conn:
                rows = await conn.fetch(
                    "SELECT position, sub, type, schema_version, payload::text, term, proposer, "
                    "(extract(epoch FROM ts) * 1000000)::bigint "
                    "FROM pgraft.events WHERE position <= $1 ORDER BY position, sub",
                    index,
                )
            data = _SNAPSHOT_ENCODER.encode([tuple(r) for r in rows])
            core.compact(index, data)
            snapshot = core.snapshot
            if snapshot is not None:
                await self._storage.compact(snapshot)
            self.stats.snapshots_taken += 1
            log.info("snapshot taken index=%d events=%d bytes=%d", index, len(rows), len(data))
        except (StoreUnavailable, OSError, asyncpg.PostgresError, ValueError) as exc:
            log.warning("snapshot failed index=%d error=%s", index, exc)
            self._snapshot_index = 0

    async def _restore_snapshot_events(self, conn: asyncpg.Connection, snapshot: Snapshot) -> None:
        """Bring the events (and projections) up to an installed snapshot, exactly once."""
        applied = int(await conn.fetchval("SELECT applied_index FROM pgraft.applied"))
        if applied >= snapshot.index or not snapshot.data:
            return
        rows = _SNAPSHOT_DECODER.decode(snapshot.data)
        missing = [r for r in rows if r[0] > applied]
        batch: dict[int, list[tuple[int, int, str, int, str, int, int, int]]] = {}
        for row in missing:
            batch.setdefault(row[0], []).append(row)
        async with conn.transaction():
            entries = []
            for position in range(applied + 1, snapshot.index + 1):
                group = batch.get(position, [])
                events = [decode_event(r[2], r[3], json.loads(r[4])) for r in group]
                term = group[0][5] if group else snapshot.term
                proposer = group[0][6] if group else 0
                ts = datetime.fromtimestamp(group[0][7] / 1e6, UTC) if group else datetime.fromtimestamp(0, UTC)
                entries.append(EntryEvents(position, term, proposer, ts, events))
            await append_entries(conn, entries)
        log.info("snapshot installed index=%d events_restored=%d", snapshot.index, len(missing))


def _encode_result(events: Sequence[Event]) -> bytes:
    return json.dumps([list(encode_event(ev)) for ev in events]).encode()


def _decode_result(data: bytes) -> list[Event]:
    if not data:
        return []
    return [decode_event(t, v, p) for t, v, p in json.loads(data)]
