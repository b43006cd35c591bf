"""What the managed instance is doing right now, as the HA layer needs it for its reports.

LSNs are ints (bytes since the start of WAL) so that lag is a subtraction and comparisons are
plain; :mod:`ram.lsn` converts to and from PostgreSQL's ``X/Y`` text (re-exported here).

Timeline: on a primary it is the timeline WAL is being written on, from the name of the current
WAL file (``pg_control_checkpoint()`` lags until the first checkpoint after a promotion). On a
standby it is the walreceiver's received timeline when one is streaming, else the timeline of the
last restartpoint in pg_control.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ram.lsn import format_lsn as format_lsn  # re-exported: callers keep importing it from here
from ram.lsn import parse_lsn as parse_lsn
from ram.postgres import proctree
from ram.postgres.errors import SqlError
from ram.postgres.spec import ManagedInstanceSpec
from ram.postgres.sql import local_connection


def _lsn(value: Any) -> int | None:
    return None if value is None else parse_lsn(str(value))


@dataclass(frozen=True)
class ReplicationConnection:
    """One walsender on this node (a row of pg_stat_replication)."""

    pid: int
    application_name: str
    client_addr: str | None
    state: str
    sent_lsn: int | None
    write_lsn: int | None
    flush_lsn: int | None
    replay_lsn: int | None
    sync_state: str
    #: Bytes between this node's WAL position and what the replica has replayed (None if unknown).
    lag_bytes: int | None
    #: Same, for what the replica has flushed to disk: the figure that matters for durability.
    flush_lag_bytes: int | None
    replay_lag_seconds: float | None


@dataclass(frozen=True)
class WalReceiverStatus:
    """The walreceiver of a standby (pg_stat_wal_receiver)."""

    pid: int
    status: str
    received_tli: int | None
    written_lsn: int | None
    flushed_lsn: int | None
    sender_host: str | None
    sender_port: int | None
    slot_name: str | None
    last_msg_receipt_time: dt.datetime | None
    #: The upstream's WAL end as of its last message (keepalive or data): what lag is measured against.
    latest_end_lsn: int | None = None
    #: The timeline the receiver was started on (``received_tli`` moves on as it follows switches).
    receive_start_tli: int | None = None


@dataclass(frozen=True)
class SlotStatus:
    name: str
    slot_type: str
    active: bool
    active_pid: int | None
    restart_lsn: int | None


@dataclass(frozen=True)
class InstanceStatus:
    """A snapshot of the instance; ``running`` without ``accepting`` means it is starting or stuck."""

    running: bool
    pid: int | None = None
    accepting: bool = False
    #: Why we could not query it, in PostgreSQL's words (when running but not accepting).
    error: str | None = None
    in_recovery: bool | None = None
    timeline: int | None = None
    checkpoint_timeline: int | None = None
    #: Primary: pg_current_wal_lsn(). Standby: None.
    current_lsn: int | None = None
    #: Primary: pg_current_wal_flush_lsn(). Standby: flushed by the walreceiver.
    flushed_lsn: int | None = None
    received_lsn: int | None = None
    replayed_lsn: int | None = None
    last_replay_time: dt.datetime | None = None
    postmaster_start_time: dt.datetime | None = None
    replication: list[ReplicationConnection] = field(default_factory=list)
    wal_receiver: WalReceiverStatus | None = None
    slots: list[SlotStatus] = field(default_factory=list)
    #: Running but not accepting: the startup process's title (``startup recovering 0000...``), whose
    #: WAL file name moves on while recovery makes progress and stands still while it is stuck.
    startup_activity: str | None = None

    @property
    def wal_position(self) -> int | None:
        """The furthest WAL this node holds: what failover candidates are compared by."""
        if self.in_recovery is False:
            return self.current_lsn
        candidates = [x for x in (self.received_lsn, self.replayed_lsn, self.flushed_lsn) if x is not None]
        return max(candidates) if candidates else None


_MAIN = """
SELECT pg_is_in_recovery() AS in_recovery,
       pg_postmaster_start_time() AS started,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END AS current_lsn,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END AS flush_lsn,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END AS wal_tli,
       pg_last_wal_receive_lsn()::text AS received_lsn,
       pg_last_wal_replay_lsn()::text AS replayed_lsn,
       pg_last_xact_replay_timestamp() AS replay_time,
       (SELECT timeline_id FROM pg_control_checkpoint()) AS checkpoint_tli
"""

_RECEIVER = """
SELECT pid, status, received_tli, written_lsn::text AS written_lsn, flushed_lsn::text AS flushed_lsn,
       sender_host, sender_port, slot_name, last_msg_receipt_time, latest_end_lsn::text AS latest_end_lsn,
       receive_start_tli
FROM pg_stat_wal_receiver WHERE pid IS NOT NULL
"""

_REPLICATION = """
SELECT pid, application_name, client_addr::text AS client_addr, state, sent_lsn::text AS sent_lsn,
       write_lsn::text AS write_lsn, flush_lsn::text AS flush_lsn, replay_lsn::text AS replay_lsn,
       sync_state, extract(epoch FROM replay_lag)::float8 AS replay_lag
FROM pg_stat_replication ORDER BY application_name, pid
"""

_SLOTS = """
SELECT slot_name, slot_type, active, active_pid, restart_lsn::text AS restart_lsn
FROM pg_replication_slots ORDER BY slot_name
"""


def startup_activity(postmaster: int) -> str | None:
    """The title of the postmaster's startup process (``startup recovering 00000001000000000000000A``),
    from /proc; None when there is none (or no /proc). Recovery that progresses moves through WAL
    files, so the title changes; a standby whose recovery can not go on keeps one title for good."""
    for child in proctree.children(postmaster):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                title = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        _, _, rest = title.partition("startup")
        if title.startswith("postgres:") and rest:
            return "startup" + rest
    return None


async def read_status(spec: ManagedInstanceSpec, pid: int | None) -> InstanceStatus:
    """Query the instance whose postmaster is ``pid`` (None: not running, nothing to ask)."""
    if pid is None:
        return InstanceStatus(running=False)
    try:
        async with local_connection(spec) as conn:
            main = await conn.fetchrow(_MAIN)
            receiver = await conn.fetchrow(_RECEIVER)
            replication = await conn.fetch(_REPLICATION)
            slots = await conn.fetch(_SLOTS)
    except SqlError as exc:
        activity = await asyncio.to_thread(startup_activity, pid)
        return InstanceStatus(running=True, pid=pid, accepting=False, error=exc.message, startup_activity=activity)
    except asyncpg.PostgresError as exc:  # pragma: no cover - local_connection translates these
        return InstanceStatus(running=True, pid=pid, accepting=False, error=str(exc))
    assert main is not None
    in_recovery = bool(main["in_recovery"])
    wal_receiver = None
    if receiver is not None:
        wal_receiver = WalReceiverStatus(
            pid=receiver["pid"],
            status=receiver["status"],
            received_tli=receiver["received_tli"],
            written_lsn=_lsn(receiver["written_lsn"]),
            flushed_lsn=_lsn(receiver["flushed_lsn"]),
            sender_host=receiver["sender_host"],
            sender_port=receiver["sender_port"],
            slot_name=receiver["slot_name"],
            last_msg_receipt_time=receiver["last_msg_receipt_time"],
            latest_end_lsn=_lsn(receiver["latest_end_lsn"]),
            receive_start_tli=receiver["receive_start_tli"],
        )
    current = _lsn(main["current_lsn"])
    received = _lsn(main["received_lsn"])
    replayed = _lsn(main["replayed_lsn"])
    if in_recovery:
        timeline = (wal_receiver.received_tli if wal_receiver and wal_receiver.received_tli else None) or main[
            "checkpoint_tli"
        ]
        flushed = wal_receiver.flushed_lsn if wal_receiver and wal_receiver.flushed_lsn is not None else received
        base = max((x for x in (received, replayed) if x is not None), default=None)
    else:
        timeline = main["wal_tli"]
        flushed = _lsn(main["flush_lsn"])
        base = current
    connections = []
    for row in replication:
        replay_lsn, flush_lsn = _lsn(row["replay_lsn"]), _lsn(row["flush_lsn"])
        connections.append(
            ReplicationConnection(
                pid=row["pid"],
                application_name=row["application_name"],
                client_addr=row["client_addr"],
                state=row["state"],
                sent_lsn=_lsn(row["sent_lsn"]),
                write_lsn=_lsn(row["write_lsn"]),
                flush_lsn=flush_lsn,
                replay_lsn=replay_lsn,
                sync_state=row["sync_state"],
                lag_bytes=max(0, base - replay_lsn) if base is not None and replay_lsn is not None else None,
                flush_lag_bytes=max(0, base - flush_lsn) if base is not None and flush_lsn is not None else None,
                replay_lag_seconds=row["replay_lag"],
            )
        )
    return InstanceStatus(
        running=True,
        pid=pid,
        accepting=True,
        in_recovery=in_recovery,
        timeline=timeline,
        checkpoint_timeline=main["checkpoint_tli"],
        current_lsn=current,
        flushed_lsn=flushed,
        received_lsn=received,
        replayed_lsn=replayed,
        last_replay_time=main["replay_time"],
        postmaster_start_time=main["started"],
        replication=connections,
        wal_receiver=wal_receiver,
        slots=[
            SlotStatus(
                name=row["slot_name"],
                slot_type=row["slot_type"],
                active=bool(row["active"]),
                active_pid=row["active_pid"],
                restart_lsn=_lsn(row["restart_lsn"]),
            )
            for row in slots
        ],
    )
