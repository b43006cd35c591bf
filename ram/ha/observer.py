"""The observer: reads this node's PostgreSQL, keeps :class:`~ram.ha.local.LocalFacts` current and
reports to the arbiter. It decides nothing: what it reads becomes the keeper's input
(:meth:`Observer.keeper_input`) and the member report (:func:`ram.ha.reports.build_report`).

Besides the status it keeps the primary's upkeep (replication slots, the superuser password) and
the dynamic PostgreSQL parameters, outside the observation lock, so a statement that waits on the
server never holds up reporting, fencing or the keeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Callable

from ram.cluster.node import ClusterNode
from ram.config import NodeConfig, replication_password, superuser_password
from ram.eventstore.events import ReplicaFollowing
from ram.ha import keeper as k
from ram.ha.callbacks import CallbackRunner, Role, Seen
from ram.ha.dynconfig import pg_parameters
from ram.ha.facts import FactReporter
from ram.ha.local import LocalFacts, StoppedHistory
from ram.ha.pgspec import endpoint_of
from ram.ha.reports import build_report
from ram.ha.settings import HASettings
from ram.ha.streaming import LocalReplication, local_replication, replay_timeline, segment_file_name
from ram.ha.timers import since
from ram.ha.wire import MemberReport
from ram.lsn import parse_lsn
from ram.postgres import dynamic_conf, sql
from ram.postgres.instance import ManagedInstance
from ram.postgres.replication import streams_from
from ram.postgres.status import InstanceStatus

__all__ = ["Observer"]

log = logging.getLogger("ram.ha")

#: A replica that streams from the committed primary while the state says otherwise re-reports it
#: at most this often (a lost ``replica_following`` must not stay lost).
_FOLLOWING_REPORT_EVERY_S = 2.0
#: How often a node checks whether its configured passwords changed (password rotation).
_PASSWORD_CHECK_EVERY_S = 5.0


_WAL_FILE = re.compile(r"[0-9A-F]{24}")


def recovery_position(activity: str | None) -> str | None:
    """The WAL segment a startup process works on, from its title, without the timeline (which
    changes while a standby tries its timelines' files for the same segment) and without its verb
    ("recovering" / "waiting for"): what must change for recovery to count as moving on."""
    if activity is None:
        return None
    found = _WAL_FILE.findall(activity)
    return found[-1][8:] if found else activity


class Observer:
    def __init__(
        self,
        node: ClusterNode,
        config: NodeConfig,
        instance: ManagedInstance,
        local: LocalFacts,
        facts: FactReporter,
        settings: Callable[[], HASettings],
        lease_valid: Callable[[float], bool],
        wake_keeper: Callable[[], None],
        callbacks: CallbackRunner | None = None,
    ) -> None:
        self.node = node
        self.config = config
        self.me = config.name
        self.instance = instance
        self.local = local
        self.facts = facts
        self._settings = settings
        self._lease_valid = lease_valid
        self._wake_keeper = wake_keeper
        self.callbacks = callbacks
        #: Serialises observations: the observe loop and the keeper both observe, and two
        #: interleaved observations could report an older one last.
        self.lock = asyncio.Lock()
        self._upkeep = asyncio.Lock()
        self._dynamic_written: dict[str, str] | None = None
        self._dynamic_reload = False
        self._slots_for: tuple[list[str], tuple[int | None, int | None]] | None = None
        self._passwords_checked_at = -_PASSWORD_CHECK_EVERY_S
        self._passwords_primary: bool | None = None
        self._wal_segment_size: int | None = None
        self._startup_activity: str | None = None
        self._startup_activity_since: float | None = None

    async def observe(self) -> None:
        """Read the local PostgreSQL's status and report it, then the upkeep that follows from it."""
        async with self.lock:
            await self._observe_unlocked()
        await self._primary_upkeep()
        await self._dynamic_upkeep()
        await self._password_upkeep()

    async def _observe_unlocked(self) -> None:
        local = self.local
        if local.initializing:
            return  # initdb's private server is not the instance: neither report nor touch it
        now = time.monotonic()
        try:
            status = await asyncio.wait_for(self.instance.status(), self._settings().report_timeout_s)
        except Exception as exc:  # a hung or broken instance is reported as down, never crashes us
            log.warning("postgres status failed error=%s", exc)
            status = InstanceStatus(running=False, error=str(exc))
        running = status.running and status.accepting
        if running and status.in_recovery:
            status = dataclasses.replace(status, timeline=await self._standby_timeline(status))
            local.replication = self._local_replication(status)
        else:
            local.replication = None
        self._track_streaming(status, now)
        local.status = status
        if self.callbacks is not None:
            role: Role = "unknown" if status.in_recovery is None else "replica" if status.in_recovery else "primary"
            self.callbacks.observed(Seen(running=running, role=role if running else "unknown"))
        if not running and self.instance.initialized:
            await self.read_stopped_history()
        else:
            local.stopped_history = None
        local.pg_down_since = since(local.pg_down_since, not running, now)
        sync_names = None
        if running and status.in_recovery is False:
            sync_names = await self._sync_standby_names()
            # Before the report: the arbiter records a promotion with this fork point, and a fork
            # point from the previous timeline (or none) misjudges every replica's divergence.
            await self._read_timeline_start(status.timeline)
        # Assigned in one step, and only then is the keeper woken: a keeper that ran while the
        # setting was being read saw "unknown" as "empty" and re-configured (and reloaded) the primary
        # on every observation - a SIGHUP storm found by the chaos run.
        local.sync_names = sync_names
        self._wake_keeper()
        self.send_report(status)
        if running and status.in_recovery:
            self._reconcile_following(status, now)

    async def report_stopped(self) -> None:
        """Switchover: PostgreSQL stopped cleanly. Report the final WAL position now (the shutdown
        checkpoint), so the candidate can promote while this node restarts as a standby."""
        local = self.local
        local.stopped_history = None
        async with self.lock:
            local.status = InstanceStatus(running=False)
            local.sync_names = None
            await self.read_stopped_history()
            self.send_report(local.status)

    # ------------------------------------------------------------------------ upkeep

    async def _dynamic_upkeep(self) -> None:
        """Render the committed ``postgresql.parameters.*`` into ram.dynamic.conf (also while
        stopped, so the next start has them), reload a running server after a change, and read back
        what PostgreSQL says still waits for a restart."""
        if self.local.initializing or not self.instance.initialized:
            return
        wanted = pg_parameters(self.node.state.dynamic_config)
        if wanted != self._dynamic_written:
            if await dynamic_conf.write(self.instance.spec, wanted):
                self._dynamic_reload = True
                log.info("dynamic PostgreSQL parameters written parameters=%s", ",".join(sorted(wanted)) or "none")
            self._dynamic_written = wanted
        status = self.local.status
        if status is None or not (status.running and status.accepting):
            return
        try:
            if self._dynamic_reload:
                await dynamic_conf.reload(self.instance.spec)
                self._dynamic_reload = False
                if self.callbacks is not None:
                    self.callbacks.fire("on_reload", self.callbacks.role)
            self.local.pending_restart_names = await dynamic_conf.pending_restart(self.instance.spec)
        except Exception as exc:
            log.debug("dynamic parameters: reload or pending-restart read failed error=%s", exc)

    async def _password_upkeep(self) -> None:
        """Passwords configured now (password files re-read) reach PostgreSQL and the passfile
        without a restart: every node rewrites its passfile when it changed; the running primary
        alters the replication and superuser roles when they differ (a SCRAM verifier, under
        synchronous_commit = local; replicas get it through WAL). At most every few seconds: the
        check costs one PBKDF2 per role."""
        now = time.monotonic()
        if self.local.initializing or not self.instance.initialized:
            return
        status = self.local.status
        primary = bool(
            status is not None and status.running and status.accepting and status.in_recovery is False
            and self.node.state.primary == self.me
        )
        # A node that just became the running primary sets the passwords at once (clients log in
        # with them right after a bootstrap or a failover); otherwise every few seconds.
        if primary == self._passwords_primary and now - self._passwords_checked_at < _PASSWORD_CHECK_EVERY_S:
            return
        self._passwords_checked_at = now
        self._passwords_primary = primary
        try:
            replication = replication_password(self.config)
            if replication is None:
                return
            await self.instance.sync_passwords(
                replication, superuser_password=superuser_password(self.config), primary=primary
            )
        except Exception as exc:  # a broken password file: logged, the current passwords stay
            log.warning("password rotation check failed error=%s", exc)
            self._passwords_primary = None  # try again on the next pass

    async def _primary_upkeep(self) -> None:
        """Slots on the primary (passwords: :meth:`_password_upkeep`)."""
        status = self.local.status
        if self._upkeep.locked() or status is None or not (status.running and status.accepting):
            return
        if status.in_recovery is not False or self.node.state.primary != self.me:
            return
        async with self._upkeep:
            await self._ensure_slots((status.timeline, status.pid))

    async def _ensure_slots(self, instance_key: tuple[int | None, int | None]) -> None:
        """The primary keeps a physical slot for every other member, so WAL a replica still needs is
        never recycled (a removed member's slot is dropped). Checked again whenever the instance
        changed (restart, promotion, re-clone: a cloned data directory has no slots)."""
        wanted = sorted(name for name in self.node.state.members if name != self.me)
        if (wanted, instance_key) == self._slots_for:
            return
        created = await self.instance.ensure_slots(wanted, drop_others=True)
        self._slots_for = (wanted, instance_key)
        if created:
            log.info("replication slots created slots=%s", ",".join(created))

    # ------------------------------------------------------------------------ reading PostgreSQL

    async def _standby_timeline(self, status: InstanceStatus) -> int | None:
        """The timeline a standby's replayed WAL is on, from facts that never run ahead of it
        (:func:`ram.ha.streaming.replay_timeline`): the live walreceiver's timeline, else the
        timelines of the WAL segment files holding the replay position, else the last checkpoint's.
        Never the newest timeline history file: a standby fetches that even when it can not follow
        the new timeline because it replayed past its fork point (a diverged standby looked healthy)."""
        receiver = status.wal_receiver
        receiver_tli = receiver.received_tli if receiver is not None else None
        segment_tlis: list[int] = []
        if not receiver_tli and status.replayed_lsn:
            try:
                if self._wal_segment_size is None:
                    rows = await sql.fetch(
                        self.instance.spec, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'"
                    )
                    self._wal_segment_size = int(rows[0][0])
                suffix = segment_file_name(0, max(0, status.replayed_lsn - 1), self._wal_segment_size)[8:]
                rows = await sql.fetch(
                    self.instance.spec,
                    "SELECT ('x' || substr(name, 1, 8))::bit(32)::int FROM pg_ls_waldir() "
                    "WHERE length(name) = 24 AND substr(name, 9) = $1",
                    suffix,
                )
                segment_tlis = [int(r[0]) for r in rows]
            except Exception as exc:
                log.debug("could not list WAL segment files error=%s", exc)
        return replay_timeline(
            receiver_tli=receiver_tli, segment_timelines=segment_tlis, checkpoint_tli=status.checkpoint_timeline
        )

    async def _sync_standby_names(self) -> str | None:
        """What the primary enforces right now (the arbiter commits a sync set only once it is)."""
        try:
            rows = await sql.fetch(self.instance.spec, "SELECT current_setting('synchronous_standby_names')")
        except Exception as exc:
            log.warning("could not read synchronous_standby_names error=%s", exc)
            return None
        return str(rows[0][0])

    async def _read_timeline_start(self, timeline: int | None) -> None:
        """Where this primary's timeline forked from its parent (the switch point in the timeline
        history file): what replicas' divergence is judged against."""
        local = self.local
        if timeline is None or timeline <= 1 or local.timeline_start_for == timeline:
            return
        try:
            text = await sql.fetch(
                self.instance.spec,
                "SELECT pg_read_file('pg_wal/' || lpad(upper(to_hex($1::int)), 8, '0') || '.history')",
                timeline,
            )
            last = [ln for ln in str(text[0][0]).splitlines() if ln.strip() and not ln.startswith("#")][-1]
            local.timeline_start = parse_lsn(last.split()[1])
            local.timeline_start_for = timeline
        except Exception as exc:
            log.warning("could not read the timeline history timeline=%s error=%s", timeline, exc)

    async def read_stopped_history(self) -> None:
        """For a stopped data directory: its checkpoint timeline and whether it was a standby, so the
        keeper can tell if it may simply start streaming or must be rewound first."""
        if self.local.stopped_history is not None:
            return
        try:
            fields = await self.instance.controldata()
            timeline = int(fields.get("Latest checkpoint's TimeLineID", "0"))
        except Exception as exc:
            log.warning("pg_controldata failed error=%s", exc)
            return
        cluster_state = fields.get("Database cluster state", "")
        if cluster_state in ("in crash recovery", "starting up", "shutting down"):
            return  # a single-user recovery or a start/stop is under way: ask again next time
        was_standby = cluster_state in ("shut down in recovery", "in archive recovery")
        stopped_lsn = None
        if cluster_state == "shut down":  # a clean stop: the shutdown checkpoint is its last WAL record
            with contextlib.suppress(ValueError):
                stopped_lsn = parse_lsn(fields.get("Latest checkpoint location", ""))
        self.local.stopped_history = StoppedHistory(timeline, was_standby, stopped_lsn)

    def _local_replication(self, status: InstanceStatus) -> LocalReplication:
        state = self.node.state
        receiver = status.wal_receiver
        endpoint = endpoint_of(state, state.primary) if state.primary and state.primary != self.me else None
        return local_replication(
            receiver_status=receiver.status if receiver is not None else None,
            receiver_tli=receiver.received_tli if receiver is not None else None,
            connected_to_primary=endpoint is not None
            and receiver is not None
            and (receiver.sender_host, receiver.sender_port) == (endpoint.host, endpoint.port),
            cluster_timeline=state.timeline,
            latest_end_lsn=receiver.latest_end_lsn if receiver is not None else None,
            flushed_lsn=receiver.flushed_lsn if receiver is not None else None,
            replayed_lsn=status.replayed_lsn,
        )

    def _track_streaming(self, status: InstanceStatus, now: float) -> None:
        """How long this standby has made no progress towards streaming while the committed primary
        is healthy and nothing moves it (the keeper's fallback for a standby stuck on a fork):

        * accepting connections: the time since it last streamed from the primary;
        * running but not accepting (recovery not consistent yet): the time since its startup
          process last moved on to another WAL segment - a standby whose recovery reads a fork of the
          primary's history retries the same segment for good (its title alternating between
          "recovering" and "waiting for" it, on one timeline or another), crash recovery moves on."""
        state = self.node.state
        primary = state.members.get(state.primary or "")
        primary_ok = (
            primary is not None
            and primary.name != self.me
            and primary.healthy is True
            and state.current_operation is None
        )
        if status.running and not status.accepting:
            position = recovery_position(status.startup_activity)
            if position != self._startup_activity or self._startup_activity_since is None:
                self._startup_activity, self._startup_activity_since = position, now
            self.local.not_streaming_since = self._startup_activity_since if primary_ok else None
            return
        self._startup_activity = self._startup_activity_since = None
        expected = primary_ok and status.running and status.accepting and status.in_recovery is True
        streaming = self.local.replication is not None and self.local.replication.streaming
        if streaming:
            self.local.stuck_rewound = False
        self.local.not_streaming_since = since(self.local.not_streaming_since, expected and not streaming, now)

    # ------------------------------------------------------------------------ judging for the keeper

    def _diverged(self, status: InstanceStatus) -> bool | None:
        """Is the running instance's WAL off the committed primary's history?

        A standby that streams from the committed primary is not: PostgreSQL refuses to stream a
        timeline that is not a child of the standby's own. Otherwise judge by the REPLAYED position
        (what the received position says about the timeline lags behind while a walreceiver
        switches upstreams, and mistaking that for divergence would rewind a healthy replica)."""
        state = self.node.state
        if status.in_recovery:
            endpoint = endpoint_of(state, state.primary) if state.primary else None
            receiver = status.wal_receiver
            if (
                endpoint is not None
                and streams_from(receiver, endpoint)
                and receiver is not None
                and receiver.received_tli == state.timeline
            ):
                return False
            return k.is_diverged(state, status.timeline, status.replayed_lsn)
        return k.is_diverged(state, status.timeline, status.wal_position)

    def _stopped_diverged(self) -> bool | None:
        """A stopped copy is safe to start as a standby only if it was a standby on the cluster's
        current timeline; anything else (a former primary, an older timeline) is rewound first —
        pg_rewind itself finds out when nothing needs rewinding."""
        history = self.local.stopped_history
        if history is None or self.node.state.timeline is None:
            return None
        return not (history.was_standby and history.timeline == self.node.state.timeline)

    def keeper_input(self, now: float) -> k.KeeperInput:
        local = self.local
        status = local.status or InstanceStatus(running=False)
        running = status.running and status.accepting
        upstream = None
        receiver = status.wal_receiver
        if receiver is not None:
            for member in self.node.state.members.values():
                if (member.pg_host, member.pg_port) == (receiver.sender_host, receiver.sender_port):
                    upstream = member.name
        pg = k.LocalPostgres(
            has_data=self.instance.initialized,
            running=running,
            starting=status.running and not status.accepting,
            in_recovery=status.in_recovery if running else None,
            timeline=status.timeline,
            wal_position=status.wal_position,
            upstream=upstream,
            sync_standby_names=local.sync_names,
        )
        diverged = self._diverged(status) if running else self._stopped_diverged()
        return k.KeeperInput(
            me=self.me,
            now=now,
            state=self.node.state,
            pg=pg,
            lease_valid=self._lease_valid(now),
            settings=self._settings(),
            diverged=diverged,
            pg_down_since=local.pg_down_since,
            rewind_failed=local.rewind_failed,
            completed_action_position=local.action_done_position,
            not_streaming_for=None if local.not_streaming_since is None else now - local.not_streaming_since,
            stuck_rewound=local.stuck_rewound,
        )

    # ------------------------------------------------------------------------ reporting

    def send_report(self, status: InstanceStatus) -> None:
        local = self.local
        report = build_report(
            self.me,
            status,
            state_position=self.node.state.last_position,
            lease_released=local.lease_released,
            timeline_start_lsn=local.timeline_start
            if status.timeline is not None and local.timeline_start_for == status.timeline
            else None,
            stopped_lsn=local.stopped_history.stopped_lsn if local.stopped_history else None,
            sync_standby_names=local.sync_names,
            replication=local.replication,
            pending_restart=local.pending_restart_names,
        )
        self.node.raft.tell_leader(MemberReport(report))

    def _reconcile_following(self, status: InstanceStatus, now: float) -> None:
        """The committed ``following`` of this replica catches up with what it streams from."""
        state = self.node.state
        primary = state.primary
        member = state.members.get(self.me)
        if primary is None or primary == self.me or member is None or member.following == primary:
            return
        endpoint = endpoint_of(state, primary)
        if endpoint is None or not streams_from(status.wal_receiver, endpoint):
            return
        if now - self.local.following_reported_at < _FOLLOWING_REPORT_EVERY_S:
            return
        self.local.following_reported_at = now
        self.local.following = primary
        self.facts.report(ReplicaFollowing(name=self.me, primary=primary))

    def report_following(self, primary: str) -> None:
        """Record whom we follow, once per change (not on every re-point)."""
        member = self.node.state.members.get(self.me)
        if member is not None and member.following == primary and self.local.following == primary:
            return
        self.local.following = primary
        self.facts.report(ReplicaFollowing(name=self.me, primary=primary))
