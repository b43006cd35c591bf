"""A Raft node: the pure core wrapped with the store, the TCP transport, timers and the write task.

One asyncio task drives the core through its Ready contract (see :mod:`ram.consensus.types`):
persist the log (one synchronous statement) → send → decide the committed entries in memory and
answer their proposers → advance. Everything that arrives while a batch is being persisted lands in
the next batch, which is the group commit: under load one fsync carries many entries, with no
per-entry round trip anywhere. A second task writes what was decided to the store, several batches
in one asynchronous statement.

What is replicated is the application's business: a :class:`~ram.consensus.runtime.statemachine.StateMachine`
decides committed entries and stores what they yield. Applying is exactly-once across crashes (see
that module): the log is durable before anything is applied from it; an apply commits without its
own fsync, and a store crash that loses some applies is found (the store's applied index is lower
than what was written) and repaired by writing those batches again. A proposer is answered once its
entry is committed and decided (its outcome is then final), before the write that makes it visible
in the store; a caller that reads the store next asks to wait for that too (``visible=True``).

When the store is down or slow, persisting fails; the node then sends nothing that would promise
durability (no vote, no append acknowledgement), retries with backoff and resumes once the store is
back. It never crashes for it.

The runtime knows nothing of the application beyond the state machine: proposals are bytes, results
are what the machine returns, and the application's own requests to the leader (the HA layer's lease
renewals and member reports) travel over one generic channel (:meth:`RaftNode.serve`,
:meth:`RaftNode.ask_leader`, :meth:`RaftNode.tell_leader`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from ram.addresses import parse_address
from ram.backoff import Backoff
from ram.consensus.core import ConfChangeInProgress, NotLeader, ProposalDropped, RaftCore
from ram.consensus.readyplan import HeldAnnouncements, split_sends
from ram.consensus.runtime.codec import (
    ForwardedProposal,
    PayloadDecoder,
    PayloadError,
    ProposalOutcome,
    RaftPayload,
    encode_payload,
)
from ram.consensus.runtime.errors import (
    CommandRefused,
    NoLeaderError,
    ProposalError,
    ProposalRefused,
    ProposalTimeout,
)
from ram.consensus.runtime.settings import RuntimeSettings
from ram.consensus.runtime.statemachine import DecidedBatch, StateMachine
from ram.consensus.runtime.storage import (
    STORE_ERRORS,
    RaftStorage,
    StoreSession,
    StoreUnavailable,
    store_connection,
)
from ram.consensus.runtime.transport import PeerAddress, PeerAuth, Transport
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
)

__all__ = [
    "ApplyResult",
    "CommandRefused",
    "LeaderAnswer",
    "NoLeaderError",
    "ProposalError",
    "ProposalRefused",
    "ProposalTimeout",
    "RaftNode",
    "RuntimeStats",
    "StoreInconsistent",
]

log = logging.getLogger("ram.node")

#: Store writes are retried after 0.05 s, doubling up to 1 s (the store is local: it is back soon or
#: the operator is at work).
_STORE_RETRY = Backoff(0.05, 1.0)

#: Forwarded proposals and leader-channel requests one peer may have in flight at this node; more
#: are answered "busy" at once instead of spawning a task each (a peer must not make us spawn
#: without bound).
MAX_REQUESTS_PER_PEER = 64

#: Entries decided and not written to the store yet, at most: more, and the Ready loop waits for the
#: write task (a slow store must not make them grow without bound).
MAX_UNWRITTEN_ENTRIES = 20_000

#: Entries decided together, and written together, at most (one statement each).
MAX_APPLY_BATCH = 2_000

#: Seconds a leader holds a commit announcement (an empty append) for the next entries' appends to
#: carry instead (the proposers answered just now propose again, usually well within it): half the
#: frames, wake-ups and acknowledgements per commit, for followers that learn an idle commit this
#: much later. See ``readyplan.HeldAnnouncements``.
_COMMIT_HOLD_S = 0.002

#: Batches written without their own fsync since the last seal, at most: more, and the next one is
#: sealed first (bounds what a store crash can make us write again, and the memory it takes).
MAX_UNSEALED_BATCHES = 512


class StoreInconsistent(RuntimeError):
    """The store contradicts itself (its applied state is behind its own snapshot); the node can
    not start on it."""


@dataclass(frozen=True)
class ApplyResult:
    """Where a committed proposal landed and what the state machine made of it."""

    index: int
    term: int
    result: object


@dataclass(frozen=True)
class LeaderAnswer:
    """The leader's answer to an application request on the leader channel."""

    ok: bool
    error: str = ""
    body: bytes = b""


#: Serves one kind of application request on the leader: (sender node id, request) -> answer.
RequestHandler = Callable[[int, Any], Awaitable[LeaderAnswer]]
#: Takes one kind of one-way application notice on the leader: (sender node id, notice).
NoticeHandler = Callable[[int, Any], None]


@dataclass
class _Pending:
    term: int
    future: asyncio.Future[ApplyResult]


class _Deadlines:
    """Futures that fail when their time is up, checked on every tick of the node's ticker.

    One heap push per waiter instead of a timer each: ``asyncio.timeout`` and ``wait_for`` schedule
    a callback, cancel it and reschedule per proposal, which cost ~8 % of a busy leader's CPU
    (SIGPROF profile at 64 proposers). A deadline fires up to one tick (``tick_ms``) late, which
    proposal and wait timeouts of seconds do not notice."""

    #: Answered futures stay in the heap until their deadline; it is swept of them when it has
    #: grown past this (and past twice its size after the last sweep), so memory stays bounded.
    SWEEP_AT = 4096

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, asyncio.Future[Any], Callable[[], Exception]]] = []
        self._seq = itertools.count()
        self._sweep_at = self.SWEEP_AT
        #: Set by :meth:`close`: no ticker expires deadlines any more, so waits fail at once.
        self._closed: Callable[[], Exception] | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, when: float, future: asyncio.Future[Any], error: Callable[[], Exception]) -> None:
        """Fail ``future`` with ``error()`` at loop time ``when`` unless it is done by then."""
        if self._closed is not None:
            if not future.done():
                future.set_exception(self._closed())
            return
        heap = self._heap
        heapq.heappush(heap, (when, next(self._seq), future, error))
        if len(heap) >= self._sweep_at:
            heap[:] = [item for item in heap if not item[2].done()]
            heapq.heapify(heap)
            self._sweep_at = max(self.SWEEP_AT, 2 * len(heap))

    def expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, future, error = heapq.heappop(heap)
            if not future.done():
                future.set_exception(error())

    def close(self, error: Callable[[], Exception]) -> None:
        """The ticker is gone (the node stopped): fail every wait now, and every later one at once,
        with ``error()`` - a wait nobody expires would hang for ever."""
        self._closed = error
        heap, self._heap = self._heap, []
        for _, _, future, _ in heap:
            if not future.done():
                future.set_exception(error())


class _IndexWaiters:
    """Coroutines waiting for an index (decided, applied) to reach a given value."""

    def __init__(self, deadlines: _Deadlines) -> None:
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._deadlines = deadlines

    async def wait(self, current: int, index: int, timeout: float, what: str) -> None:
        if current >= index:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((index, future))
        self._deadlines.add(
            loop.time() + timeout, future, lambda: ProposalTimeout(f"index {index} not {what} within {timeout:g} s")
        )
        await future

    def __bool__(self) -> bool:
        """Somebody waits."""
        return bool(self._waiting)

    def release(self, current: int) -> None:
        if not self._waiting:
            return
        still = []
        for index, future in self._waiting:
            if future.done():
                continue
            if current >= index:
                future.set_result(None)
            else:
                still.append((index, future))
        self._waiting = still


@dataclass
class RuntimeStats:
    persisted_batches: int = 0
    persisted_entries: int = 0
    applied_entries: int = 0
    store_failures: int = 0
    elections_seen: int = 0
    snapshots_installed: int = 0
    snapshots_taken: int = 0
    seals: int = 0
    reapplied_batches: int = 0
    started_at: float = field(default_factory=time.monotonic)


class RaftNode:
    """One member of the Raft cluster: keeps its log in its store and applies into a state machine."""

    def __init__(
        self,
        settings: RuntimeSettings,
        pool: asyncpg.Pool,
        machine: StateMachine,
        *,
        auth: PeerAuth,
        rng: random.Random | None = None,
        on_applied: Callable[[], None] | None = None,
        on_leader: Callable[[int], None] | None = None,
        after_ready: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.machine = machine
        self._pool = pool
        self._rng = rng or random.Random()
        self._storage = RaftStorage(pool)
        #: The write task's own connection (applies, seals).
        self._applier = StoreSession(pool, 5.0)
        #: Called after every applied batch or installed snapshot (the application wakes on it).
        self._on_applied = on_applied
        #: Called with the term when this node becomes leader.
        self._on_leader = on_leader
        #: Called after every Ready is handled (the application's leader chores).
        self._after_ready = after_ready
        host, port = parse_address(settings.listen)
        self._addresses: dict[int, str] = {p.id: p.address for p in settings.peers}
        self._addresses[settings.node_id] = settings.listen
        #: Member names by node id: what a peer's TLS certificate must name.
        self._names: dict[int, str] = {p.id: p.name for p in settings.peers}
        self._names[settings.node_id] = settings.name
        self.transport = Transport(
            cluster_id=settings.cluster_id,
            node_id=settings.node_id,
            listen=PeerAddress(host, port, settings.name),
            peers=self._peer_map(),
            on_frame=self._on_frame,
            rng=random.Random(self._rng.random()),  # own stream: transport jitter must not shift Raft's draws
            auth=auth,
            app_level=settings.app_level,
        )
        self._decoder = PayloadDecoder()
        self._request_handlers: dict[type[msgspec.Struct], RequestHandler | None] = {}
        self._notice_handlers: dict[type[msgspec.Struct], NoticeHandler | None] = {}
        #: In-flight forwarded proposals / leader-channel requests per peer (bounded by MAX_REQUESTS_PER_PEER).
        self._peer_requests: dict[int, int] = {}
        #: request id -> the peer asked: an answer counts only from that peer.
        self._forward_targets: dict[int, int] = {}
        self.core: RaftCore | None = None
        #: The highest index decided and installed in the in-memory state machine (its proposer may
        #: have the answer already).
        self.decided_index = 0
        #: The highest index also written to the store (visible to SQL there; at most ``decided_index``).
        self.applied_index = 0
        self.stats = RuntimeStats()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[int, _Pending] = {}
        self._forwards: dict[int, asyncio.Future[ProposalOutcome]] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        #: Proposal and index-wait timeouts, expired by the ticker.
        self._deadlines = _Deadlines()
        self._decided_waiters = _IndexWaiters(self._deadlines)
        self._applied_waiters = _IndexWaiters(self._deadlines)
        self._request_ids = itertools.count(1)
        self._last_leader = 0
        self._last_term = 0
        self._stopping = False
        self._snapshot_index = 0
        #: Batches written with an asynchronous commit since the last seal (written again if the
        #: store turns out to have lost them), and when the first of them was written.
        self._unsealed: list[DecidedBatch] = []
        self._unsealed_since = 0.0
        #: Batches decided and installed in memory but not written yet (the write task takes them
        #: all at once), how many entries they hold, and when the first of them was decided.
        self._unwritten: list[DecidedBatch] = []
        self._unwritten_entries = 0
        self._unwritten_since = 0.0
        #: Somebody waits to see an entry in the store: write what is decided now.
        self._write_now = False
        self._write_wake = asyncio.Event()
        self._write_progress = asyncio.Event()
        #: Held by the write task while it writes or seals (a snapshot install waits for it).
        self._write_lock = asyncio.Lock()
        #: Applied index at the last seal: everything up to it is durable in the store.
        self.sealed_index = 0
        #: A store error happened: before the next apply, seal and check what the store still has.
        self._suspect = False
        self._seal_due = False
        self._background: set[asyncio.Task[Any]] = set()
        self._leader_changed = asyncio.Event()
        #: Set when a core loop died unexpectedly; the process must exit (fail-stop, never limp on).
        self.failed = asyncio.Event()
        #: Monotonic time this node last became leader (0 when it is not the leader).
        self.leader_since = 0.0

    # ----------------------------------------------------------------------------------- life

    def spawn(self, coro: Any, name: str) -> None:
        """Run a fire-and-forget task that is kept referenced and cancelled on stop."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        """Load durable state, start the transport, timers and the Ready loop."""
        settings = self.settings
        await self._storage.check_identity(settings.cluster_id, settings.node_id, settings.name)
        persisted = await self._storage.load()
        # What the store shows may include applies that a previous run committed without an fsync
        # (and that a store crash now would still lose). Seal them before counting them as sealed:
        # otherwise such a crash reads as "the store lost applies below the last seal", which the
        # node can only fail-stop on (found by CI: a node restarted just before its store crashed).
        try:
            async with self._store() as conn:
                await self.machine.seal(conn)
        except (StoreUnavailable, asyncpg.PostgresError) as exc:
            # A store that takes no write (read-only, full) must not keep the node from starting:
            # the write task seals before its first write instead.
            log.warning("could not seal the store at start; sealing before the first write error=%s", exc)
            self._suspect = True
        async with self._store() as conn:
            if persisted.snapshot is not None:
                await self.machine.restore(conn, persisted.snapshot)
            self.decided_index = await self.machine.load(conn)
        if persisted.snapshot is not None and self.decided_index < persisted.snapshot.index:
            raise StoreInconsistent(
                f"the store's applied index {self.decided_index} is behind its own snapshot at "
                f"{persisted.snapshot.index} (was the store restored from an older backup?)"
            )
        self.sealed_index = self.applied_index = self.decided_index
        self._snapshot_index = persisted.snapshot.index if persisted.snapshot else 0
        hard_state = persisted.hard_state
        if hard_state.commit < self.decided_index:
            # The commit index is written with the log, lazily; what was applied was committed.
            hard_state = type(hard_state)(hard_state.term, hard_state.vote, self.decided_index)
        persisted = PersistedState(
            hard_state=hard_state,
            snapshot=persisted.snapshot,
            entries=persisted.entries,
            applied=self.decided_index,
        )
        conf: ConfState | None = None
        fresh = persisted.hard_state.term == 0 and persisted.snapshot is None and not persisted.entries
        if fresh and settings.bootstrap:
            conf = ConfState(voters=frozenset(self._addresses), learners=frozenset())
        raft_config = RaftConfig(
            id=settings.node_id,
            election_ticks=settings.election_ticks,
            heartbeat_ticks=settings.heartbeat_ticks,
            pre_vote=settings.pre_vote,
            check_quorum=settings.check_quorum,
        )
        self.core = RaftCore(raft_config, self._rng, persisted, conf=conf)
        await self.transport.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._ticker(), name="ram.raft.ticker"),
            loop.create_task(self._ready_loop(), name="ram.raft.ready"),
            loop.create_task(self._write_loop(), name="ram.raft.write"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._on_task_done)
        log.info(
            "node started node_id=%d name=%s term=%d applied=%d log_entries=%d bootstrap=%s",
            settings.node_id, settings.name, persisted.hard_state.term, self.decided_index,
            len(persisted.entries), bool(conf),
        )

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
        if self._unwritten and not self.failed.is_set():
            # What is decided is in the durable log and would be applied again at the next start;
            # writing it now makes that start quicker and the store current for whoever reads it.
            with contextlib.suppress(ProposalError):
                await self.wait_applied(self.decided_index, 2.0)
        self._stopping = True
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._deadlines.close(lambda: ProposalError("node is shutting down"))
        await self.transport.stop()
        await self._applier.close()
        await self._storage.close()
        self._fail_all(ProposalError("node is shutting down"))
        log.info("node stopped node_id=%d", self.settings.node_id)

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
        deadline = time.monotonic() + self.settings.election_s * 2
        while core.role is Role.LEADER and (left := deadline - time.monotonic()) > 0:
            self._leader_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_changed.wait(), left)

    # ------------------------------------------------------------------------------ accessors

    @property
    def node_id(self) -> int:
        return self.settings.node_id

    def peer_app_level(self, peer_id: int) -> int | None:
        """The application level ``peer_id`` announced when it last connected (0: a release that
        announces none); None: it has not connected since this node started."""
        return self.transport.peer_app_levels.get(peer_id)

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

    def is_member(self) -> bool:
        assert self.core is not None
        conf = self.core.conf
        return self.settings.node_id in conf.voters or self.settings.node_id in conf.learners

    def learners_caught_up(self) -> list[int]:
        """As leader: learners whose log has everything committed (ready to become voters)."""
        core = self.core
        if core is None or core.role is not Role.LEADER:
            return []
        return [pid for pid, info in core.progress.items() if info.is_learner and info.match >= core.commit_index]

    @contextlib.asynccontextmanager
    async def _store(self, session: StoreSession | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A store connection (the session's, else one from the pool) on which any failure to reach
        the store is :class:`StoreUnavailable`."""
        try:
            # The error must reach the connection's owner as it is: a broken connection is terminated
            # there instead of going back to the pool (whose reset would fail again, outside this try).
            if session is not None:
                async with session.use() as conn:
                    yield conn
            else:
                async with store_connection(self._pool, 5.0) as conn:
                    yield conn
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc

    # ------------------------------------------------------------------------------- proposals

    def _peer_map(self) -> dict[int, PeerAddress]:
        return {
            pid: PeerAddress(*parse_address(a), self._names.get(pid, ""))
            for pid, a in self._addresses.items()
            if pid != self.settings.node_id
        }

    async def propose(
        self, data: bytes, *, timeout: float | None = None, visible: bool = True, ride_out_elections: bool = False
    ) -> ApplyResult:
        """Commit ``data`` and wait until it is applied here; returns what the state machine made of it.

        ``visible`` (the default): until this node's store has it too (``applied_index``), for a
        caller that reads the store next. Without it, until it is decided and installed in the
        in-memory state (``decided_index``): the outcome is final then (it is a function of the
        committed log), and the store write follows within ``write_delay_s``.

        On a follower the proposal is forwarded to the leader. Raises :class:`NoLeaderError` at once
        when no leader is known, :class:`ProposalTimeout` when it does not commit in time and
        :class:`ProposalRefused` when the state machine would not take it.

        ``ride_out_elections``: when the proposal certainly did not go in because leadership is
        changing (``NoLeaderError.retry_safe``), wait for the next leader - within the timeout, and
        for at most :meth:`_leader_wait_s` - and propose again, instead of failing. For a client's
        command (the API's writes); not for a leader's own decisions, which belong to its term.
        """
        timeout = timeout or self.settings.proposal_timeout_s
        deadline = time.monotonic() + timeout
        left = timeout  # the whole timeout for the first attempt (its errors name it), the rest after
        while True:
            asked, term = self._current_leader(), self.term
            try:
                if self.role is Role.LEADER:
                    result = await self._propose_local(data, left, peer=None)
                else:
                    result = await self._forward(data, left, read_only=False)
                break
            except NoLeaderError as exc:
                if not (ride_out_elections and exc.retry_safe) or not await self._next_leader(asked, term, deadline):
                    raise
                log.info("proposal retried with the next leader leader=%d after=%s", self._current_leader(), exc)
                left = max(0.001, deadline - time.monotonic())
        if visible:
            await self.wait_applied(result.index, max(0.001, deadline - time.monotonic()))
        return result

    async def _propose_local(self, data: bytes, timeout: float, *, peer: int | None) -> ApplyResult:
        core = self.core
        assert core is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                change = self.machine.admit(data, peer=peer, conf=core.conf)
                if change is not None:
                    index, term = core.propose_conf_change(change)
                else:
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
                await asyncio.sleep(self.settings.tick_ms / 1000)
            except ValueError as exc:
                raise CommandRefused(str(exc)) from None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ApplyResult] = loop.create_future()
        self._pending[index] = _Pending(term, future)
        self._deadlines.add(
            loop.time() + timeout,
            future,
            lambda: ProposalTimeout(
                f"not committed within {timeout:g} s (entry {index} of term {term}); is a quorum reachable?"
            ),
        )
        self._wake.set()
        try:
            # A timeout fails the future (the ticker's _Deadlines), which _apply then skips.
            return await future
        finally:
            pending = self._pending.get(index)
            if pending is not None and pending.future is future:
                del self._pending[index]

    def _leader_wait_s(self) -> float:
        """How long a proposal waits for a new leader: two election timeouts cover the election
        that follows a leader's loss and a pre-vote round, not a quorum lost for good."""
        return 2 * self.settings.election_s

    def _current_leader(self) -> int:
        return self.settings.node_id if self.role is Role.LEADER else self.leader_id

    async def _next_leader(self, asked: int, term: int, deadline: float) -> bool:
        """Wait until a leader is known other than ``asked`` (the one that refused in ``term``; 0:
        none was known) or elected after it (True), or give up (False)."""
        until = min(deadline, time.monotonic() + self._leader_wait_s())
        while True:
            leader = self._current_leader()
            if leader and (leader != asked or self.term > term):
                return time.monotonic() < deadline
            left = until - time.monotonic()
            if left <= 0:
                return False
            self._leader_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_changed.wait(), min(left, self.settings.tick_ms / 1000 * 5))

    def _no_leader(self, leader_id: int) -> NoLeaderError:
        if leader_id:
            address = self.address_of(leader_id)
            return NoLeaderError(f"not the leader; the leader is node {leader_id} at {address}", leader_id, address)
        return NoLeaderError("no leader is known right now (election in progress or no quorum); retry shortly")

    async def _ask(self, leader: int, payload: msgspec.Struct, request_id: int, timeout: float) -> ProposalOutcome:
        """Send a request to ``leader`` and wait for its :class:`ProposalOutcome`."""
        future: asyncio.Future[ProposalOutcome] = asyncio.get_running_loop().create_future()
        self._forwards[request_id] = future
        self._forward_targets[request_id] = leader
        try:
            if not self.transport.send(leader, encode_payload(payload)):
                raise NoLeaderError(f"cannot reach the leader (node {leader}): send queue full", leader)
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise ProposalTimeout(f"leader (node {leader}) did not answer within {timeout:g} s") from None
        finally:
            self._forwards.pop(request_id, None)
            self._forward_targets.pop(request_id, None)

    async def _forward(self, data: bytes, timeout: float, *, read_only: bool) -> ApplyResult:
        leader = self.leader_id
        if not leader or leader == self.settings.node_id:
            raise self._no_leader(0)
        request_id = next(self._request_ids)
        outcome = await self._ask(leader, ForwardedProposal(request_id, data, read_only), request_id, timeout)
        if not outcome.ok:
            if outcome.retry_safe:
                hint = outcome.leader_id if outcome.leader_id != leader else 0
                raise NoLeaderError(outcome.error, hint, self.address_of(hint) if hint else None)
            if outcome.leader_id and outcome.leader_id != leader:
                raise NoLeaderError(
                    outcome.error, outcome.leader_id, self.address_of(outcome.leader_id), retry_safe=False
                )
            raise ProposalError(outcome.error)
        await self.wait_decided(outcome.index, timeout)
        if read_only:
            return ApplyResult(outcome.index, outcome.term, None)
        return ApplyResult(outcome.index, outcome.term, self.machine.decode_result(outcome.result))

    async def _serve_forward(self, peer: int, request: ForwardedProposal) -> None:
        timeout = self.settings.proposal_timeout_s
        try:
            if request.read_only:
                index = await self._read_index_local(timeout)
                outcome = ProposalOutcome(request.request_id, True, index=index)
            elif self.role is not Role.LEADER:
                outcome = ProposalOutcome(
                    request.request_id, False, error="not the leader", leader_id=self.leader_id, retry_safe=True
                )
            else:
                result = await self._propose_local(request.data, timeout, peer=peer)
                outcome = ProposalOutcome(
                    request.request_id, True, result.index, result.term, self.machine.encode_result(result.result)
                )
        except ProposalRefused as exc:
            log.warning("forwarded proposal refused peer=%d reason=%s", peer, exc)
            outcome = ProposalOutcome(request.request_id, False, error=str(exc))
        except NoLeaderError as exc:
            outcome = ProposalOutcome(
                request.request_id, False, error=str(exc), leader_id=exc.leader_id, retry_safe=exc.retry_safe
            )
        except ProposalError as exc:
            outcome = ProposalOutcome(request.request_id, False, error=str(exc), leader_id=self.leader_id)
        self.transport.send(peer, encode_payload(outcome))

    # --------------------------------------------------------------------------- leader channel

    def serve(self, kind: type[msgspec.Struct], handler: RequestHandler | None) -> None:
        """On the leader, answer requests of ``kind`` (a tagged struct with a ``request_id`` field)
        with ``handler``; None: refuse them ("not served here") from now on."""
        self._decoder.register(kind)
        self._request_handlers[kind] = handler

    def listen(self, kind: type[msgspec.Struct], handler: NoticeHandler | None) -> None:
        """On the leader, hand one-way notices of ``kind`` (a tagged struct) to ``handler``; None:
        drop them from now on."""
        self._decoder.register(kind)
        self._notice_handlers[kind] = handler

    async def ask_leader(self, request: msgspec.Struct, *, timeout: float) -> LeaderAnswer:
        """Send ``request`` to the current leader (served locally when we lead) and wait for its
        answer; never raises for a missing or silent leader (the answer says why)."""
        if self.role is Role.LEADER:
            return await self._serve_request(self.settings.node_id, request)
        leader = self.leader_id
        if not leader:
            return LeaderAnswer(False, "no leader known")
        request_id = next(self._request_ids)
        try:
            outcome = await self._ask(leader, msgspec.structs.replace(request, request_id=request_id),
                                      request_id, timeout)
        except ProposalError as exc:
            return LeaderAnswer(False, str(exc))
        return LeaderAnswer(outcome.ok, outcome.error, outcome.result)

    def tell_leader(self, notice: msgspec.Struct) -> bool:
        """Hand a one-way notice to the current leader (directly when we lead). False: no leader known."""
        leader = self.leader_id
        if not leader:
            return False
        if leader == self.settings.node_id:
            handler = self._notice_handlers.get(type(notice))
            if handler is not None:
                handler(self.settings.node_id, notice)
            return True
        return self.transport.send(leader, encode_payload(notice))

    async def _serve_request(self, peer: int, request: Any) -> LeaderAnswer:
        handler = self._request_handlers.get(type(request))
        if handler is None:
            return LeaderAnswer(False, f"{type(request).__name__} is not served by this node")
        return await handler(peer, request)

    async def _answer_request(self, peer: int, request: Any) -> None:
        answer = await self._serve_request(peer, request)
        self.transport.send(
            peer, encode_payload(ProposalOutcome(request.request_id, answer.ok, result=answer.body, error=answer.error))
        )

    # -------------------------------------------------------------------------------- reads

    async def read_barrier(self, *, timeout: float | None = None) -> int:
        """Linearizable read point (ReadIndex): returns once this node has applied everything
        committed before the call; reads of the state machine (and of its store) after it are up
        to date."""
        timeout = timeout or self.settings.proposal_timeout_s
        if self.role is Role.LEADER:
            index = await self._read_index_local(timeout)
        else:
            index = (await self._forward(b"", timeout, read_only=True)).index
        await self.wait_applied(index, timeout)  # the store too: readers may read it with SQL
        return index

    async def _read_index_local(self, timeout: float) -> int:
        core = self.core
        assert core is not None
        context = next(self._request_ids).to_bytes(8, "big") + self.settings.node_id.to_bytes(4, "big")
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

    async def wait_decided(self, index: int, timeout: float) -> None:
        """Until the in-memory state has everything up to ``index``."""
        await self._decided_waiters.wait(self.decided_index, index, timeout, "decided")

    async def wait_applied(self, index: int, timeout: float) -> None:
        """Until the store has everything up to ``index`` (visible to SQL readers of the store); the
        write task writes what is decided at once instead of gathering more."""
        if self.applied_index < index:
            self._write_now = True
            self._write_wake.set()
        await self._applied_waiters.wait(self.applied_index, index, timeout, "written to the store")

    # ------------------------------------------------------------------------------- inbound

    def _on_frame(self, peer: int, body: bytes) -> None:
        """A frame from ``peer`` — the node id the transport authenticated for the connection, so every
        check below is against who the sender proved to be, never what the frame says."""
        try:
            payload = self._decoder.decode(body)
        except PayloadError as exc:
            log.warning("dropping invalid payload peer=%d size=%d error=%s", peer, len(body), exc)
            return
        if isinstance(payload, RaftPayload):
            message = payload.message
            if message.frm != peer or message.to != self.settings.node_id:
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
        elif isinstance(payload, ProposalOutcome):
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
        elif isinstance(payload, ForwardedProposal) or type(payload) in self._request_handlers:
            request: Any = payload
            busy = self._peer_requests.get(peer, 0)
            if busy >= MAX_REQUESTS_PER_PEER:
                log.warning("peer request refused: %d in flight already peer=%d", busy, peer)
                self.transport.send(
                    peer, encode_payload(ProposalOutcome(request.request_id, False, error="busy: too many requests"))
                )
                return
            self._peer_requests[peer] = busy + 1
            if isinstance(payload, ForwardedProposal):
                self.spawn(self._counted(peer, self._serve_forward(peer, payload)), "ram.raft.forward")
            else:
                self.spawn(self._counted(peer, self._answer_request(peer, payload)), "ram.raft.request")
        else:
            handler = self._notice_handlers.get(type(payload))  # type: ignore[arg-type]
            if handler is not None and self.role is Role.LEADER:
                handler(peer, payload)

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
        interval = self.settings.tick_ms / 1000
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick += interval
            if loop.time() > next_tick + 10 * interval:  # we were starved; do not burst ticks
                next_tick = loop.time() + interval
            assert self.core is not None
            self.core.tick()
            self._deadlines.expire(loop.time())
            if self._unsealed and loop.time() - self._unsealed_since >= self.settings.seal_interval_s:
                self._seal_due = True
                self._write_wake.set()
            self._wake.set()

    async def _ready_loop(self) -> None:
        core = self.core
        assert core is not None
        loop = asyncio.get_running_loop()
        held = HeldAnnouncements()
        while True:
            if held:
                left = held.until - loop.time()
                if left > 0 and not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await self._wake.wait()
                if not self._wake.is_set() or loop.time() >= held.until:
                    self._send(held.release())
                    continue
            else:
                await self._wake.wait()
            self._wake.clear()
            while core.has_ready():
                rd = core.ready()
                # Which messages may leave before the write (a leader's appends) is decided by
                # split_sends, shared with the simulator so that it checks this very order.
                early, late = split_sends(rd)
                if rd.role is Role.LEADER and rd.committed_entries and not rd.entries and not late:
                    # The leader only learned a commit: its announcements wait for the next appends
                    # (which carry the commit index) or for _COMMIT_HOLD_S, whichever comes first.
                    early = held.hold(early, until=loop.time() + _COMMIT_HOLD_S)
                else:
                    held.supersede(early)
                # An idle connection takes them at once: the appends are on the wire before our own
                # log write starts (the followers' writes, not ours, are what the commit waits for).
                self._send(early)
                if rd.snapshot is not None:
                    await self._install_snapshot(rd)
                await self._persist(rd)
                self._send(late)
                committed = [e for e in rd.committed_entries if e.index > self.decided_index]
                if committed:
                    await self._apply_committed(committed)
                core.advance(rd)
                self._after(rd)
                if held and loop.time() >= held.until:
                    self._send(held.release())

    async def _apply_committed(self, entries: list[Entry]) -> None:
        """Decide and install committed entries (persisted here already) and answer their proposers,
        right in the Ready loop: deciding is in memory, and the store write is the write task's."""
        for start in range(0, len(entries), MAX_APPLY_BATCH):
            self._apply(entries[start : start + MAX_APPLY_BATCH])
        while self._unwritten_entries >= MAX_UNWRITTEN_ENTRIES:
            # The store is slow or down: deciding further would only pile up memory.
            self._write_progress.clear()
            await self._write_progress.wait()

    async def _write_loop(self) -> None:
        """Write decided batches to the store, together: at most ``write_delay_s`` after the first
        of them was decided, at once when somebody waits to see one or MAX_APPLY_BATCH entries are
        waiting. Seal when it is due or after a store error."""
        loop = asyncio.get_running_loop()
        while True:
            if self._unwritten and not self._write_now and self._unwritten_entries < MAX_APPLY_BATCH:
                left = self._unwritten_since + self.settings.write_delay_s - loop.time()
                if left > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await self._write_wake.wait()
                    self._write_wake.clear()
                    continue
            elif not self._unwritten and not self._seal_due and not self._suspect:
                await self._write_wake.wait()
                self._write_wake.clear()
                continue
            async with self._write_lock:
                if self._seal_due or self._suspect:
                    await self._seal()
                if self._unwritten:
                    await self._write_unwritten()

    def _wake_writer(self) -> None:
        """New decided batches: the write task starts its clock, or writes at once when due."""
        if self._applied_waiters:
            self._write_now = True
        if self._write_now or self._unwritten_entries >= MAX_APPLY_BATCH or len(self._unwritten) == 1:
            self._write_wake.set()

    def _send(self, messages: Sequence[Message]) -> None:
        for message in messages:
            if message.type is MessageType.SNAPSHOT and message.snapshot is not None and not message.snapshot.data:
                self.spawn(self._send_snapshot(message), "ram.raft.snapshot-send")
                continue
            self.transport.send(message.to, encode_payload(RaftPayload(message)))

    async def _send_snapshot(self, message: Message) -> None:
        """A follower needs our snapshot: its data comes from the state machine now (a snapshot we
        took keeps no data in memory). A failure is a lost message: the core sends it again."""
        snapshot = message.snapshot
        assert snapshot is not None
        try:
            async with self._store() as conn:
                data = await self.machine.snapshot(conn, snapshot.index)
        except (StoreUnavailable, asyncpg.PostgresError) as exc:
            log.warning("snapshot not sent to=%d index=%d error=%s", message.to, snapshot.index, exc)
            return
        full = dataclasses.replace(message, snapshot=dataclasses.replace(snapshot, data=data))
        self.transport.send(message.to, encode_payload(RaftPayload(full)))
        log.info("snapshot sent to=%d index=%d bytes=%d", message.to, snapshot.index, len(data))

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
                self._suspect = True
                self._write_wake.set()
                log.warning("store write failed; not voting or acknowledging until it is back what=%s error=%s",
                            what, exc)
                await asyncio.sleep(_STORE_RETRY.delay(attempt))
                attempt += 1

    async def _persist(self, rd: Ready) -> None:
        """The Ready's entries and hard state, synchronously, in one statement. A hard state that only
        moves the commit index rides along with the next write instead (the commit index is learned
        again from the leader, and what was applied counts as committed on restart)."""
        if not rd.entries and not rd.new_term_or_vote:
            return

        async def save() -> None:
            await self._storage.save(hard_state=rd.hard_state, entries=rd.entries, snapshot=None)

        await self._retry_store("log", save)
        self.stats.persisted_batches += 1
        self.stats.persisted_entries += len(rd.entries)

    # ----------------------------------------------------------------------------- applying

    def _apply(self, entries: Sequence[Entry]) -> None:
        """Decide committed entries, install them and answer their proposers; the write task stores
        them next.

        A committed entry's outcome is a pure function of the log, so the proposer learns it as soon
        as it is decided: the write only makes it visible in SQL, and a write the store loses is
        written again (seal) or, after a restart, applied again from the durable log."""
        batch = self.machine.decide(entries)
        self.machine.commit(batch)
        self.decided_index = batch.last
        self.stats.applied_entries += batch.last - batch.first + 1
        if not self._unwritten:
            self._unwritten_since = asyncio.get_running_loop().time()
        self._unwritten.append(batch)
        self._unwritten_entries += batch.last - batch.first + 1
        self._wake_writer()
        for entry in entries:
            if entry.type is EntryType.CONF_CHANGE:
                self._note_conf_change(entry)
        for entry in entries:
            index, term = entry.index, entry.term
            pending = self._pending.pop(index, None)
            if pending is None or pending.future.done():
                continue
            if pending.term == term:
                # Every committed proposal is answered, with what the machine said of it (or None).
                pending.future.set_result(ApplyResult(index, term, batch.results.get(index)))
            else:
                pending.future.set_exception(
                    NoLeaderError(f"leadership changed; entry {index} was replaced by term {term}", self.leader_id)
                )
        self._wake_decided()

    async def _write_unwritten(self) -> None:
        """Write every decided batch not written yet, as one (asynchronous commit)."""
        batches, self._unwritten = self._unwritten, []
        self._unwritten_entries = 0
        self._write_now = False
        batch = batches[0] if len(batches) == 1 else self.machine.merge(batches)

        async def write() -> None:
            if self._suspect or len(self._unsealed) >= MAX_UNSEALED_BATCHES:
                await self._seal_once()
            async with self._store(self._applier) as conn:
                stored = await self.machine.write(conn, batch)
            if stored < batch.last:
                self._suspect = True
                raise StoreUnavailable(
                    f"the store's applied index is {stored}, below {batch.first - 1} (store crash?); applying again"
                )

        await self._retry_store("apply", write)
        if not self._unsealed:
            self._unsealed_since = asyncio.get_running_loop().time()
        self._unsealed.append(batch)
        self.applied_index = batch.last
        self._write_progress.set()
        self._applied_waiters.release(self.applied_index)

    async def _seal(self) -> None:
        await self._retry_store("seal", self._seal_once)

    async def _seal_once(self) -> None:
        """Make every apply so far durable, and write again what a store crash lost of them."""
        self._seal_due = False
        async with self._store(self._applier) as conn:
            durable = await self.machine.seal(conn)
            if durable < self.applied_index:
                lost = [b for b in self._unsealed if b.last > durable]
                if not lost or lost[0].first > durable + 1:
                    # Only applies after the last seal can be lost; anything else is not a crash we
                    # can repair here. Fail-stop: a restart applies again from the durable log.
                    self.failed.set()
                    raise StoreUnavailable(
                        f"the store's applied index {durable} is below the last seal {self.sealed_index}"
                    )
                log.warning("the store lost applied entries (crash?) durable=%d applied=%d batches=%d; "
                            "writing them again", durable, self.applied_index, len(lost))
                for batch in lost:
                    stored = await self.machine.write(conn, batch)
                    if stored < batch.last:
                        raise StoreUnavailable(f"the store's applied index stays at {stored}")
                    self.stats.reapplied_batches += 1
                await self.machine.seal(conn)
        self._unsealed.clear()
        self.sealed_index = self.applied_index
        self._suspect = False
        self.stats.seals += 1

    async def _install_snapshot(self, rd: Ready) -> None:
        """A leader's snapshot replaces our log; the state machine catches up from its data."""
        snapshot = rd.snapshot
        assert snapshot is not None

        async def save() -> None:
            await self._storage.save(hard_state=None, entries=(), snapshot=snapshot)
            async with self._store() as conn:
                await self.machine.restore(conn, snapshot)
                applied = await self.machine.load(conn)
            self.decided_index = self.applied_index = self.sealed_index = applied
            self._unsealed.clear()
            self._snapshot_index = snapshot.index
            self.stats.snapshots_installed += 1

        async with self._write_lock:  # the write task is between batches
            # What was decided and not written yet is older than the snapshot, which brings the
            # store up to it (from whatever the store has).
            self._unwritten.clear()
            self._unwritten_entries = 0
            self._write_progress.set()
            await self._retry_store("snapshot", save)
        self._wake_decided()
        self._applied_waiters.release(self.applied_index)

    def _after(self, rd: Ready) -> None:
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
                if self._on_leader is not None:
                    self._on_leader(rd.term)
            elif rd.role is not Role.LEADER:
                self.leader_since = 0.0
        if self._after_ready is not None:
            self._after_ready()
        if self.sealed_index - self._snapshot_index >= self.settings.snapshot_entries:
            self._snapshot_index = self.sealed_index  # one snapshot at a time
            self.spawn(self._take_snapshot(self.sealed_index), "ram.raft.snapshot")

    def _note_conf_change(self, entry: Entry) -> None:
        """A committed membership change: reach the new member (the machine knows its address) or
        stop reaching the removed one."""
        try:
            change = ConfChange.decode(entry.data)
        except ValueError:
            return
        if change.type is ConfChangeType.REMOVE_NODE:
            self._addresses.pop(change.node_id, None)
            self._names.pop(change.node_id, None)
        else:
            spec = self.machine.member_address(change.node_id)
            if spec is None:
                return
            self._addresses[change.node_id] = spec.address
            self._names[change.node_id] = spec.name
        self.transport.set_peers(self._peer_map())

    def _wake_decided(self) -> None:
        """The in-memory state moved on (a batch or a snapshot): release waiters, tell ``on_applied``."""
        self._decided_waiters.release(self.decided_index)
        if self._on_applied is not None:
            self._on_applied()

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
        """Compact the log up to ``index`` (sealed: what was applied up to it is durable in the store).

        The snapshot records only where it is: the state machine's store holds the state, and its
        data is produced when a follower needs it (:meth:`_send_snapshot`), so memory and the cost
        of a compaction do not grow with the history."""
        core = self.core
        assert core is not None
        try:
            snapshot = core.compact(index, b"")
            await self._storage.compact(snapshot)
            self.stats.snapshots_taken += 1
            log.info("snapshot taken index=%d", index)
        except (StoreUnavailable, OSError, asyncpg.PostgresError, ValueError) as exc:
            log.warning("snapshot failed index=%d error=%s", index, exc)
            self._snapshot_index = 0

