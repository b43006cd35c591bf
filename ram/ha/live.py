"""What this node knows right now about the members' PostgreSQL, beyond what is committed.

Committed state changes only when something worth recording happens (health, role, timeline); lag,
positions and pending restarts move all the time and are not Raft entries. The Raft leader hears
every member's report (every ``report_interval_s``) and the primary's view of its standbys; any node
knows its own instance. The API serves these figures as they are measured (never a placeholder),
with their age, and says when it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["HAView", "LocalLive", "MemberLive"]


@dataclass(frozen=True, slots=True)
class MemberLive:
    """A member as the arbiter last heard of it (only the Raft leader has this for every member)."""

    name: str
    #: Seconds since its node's last report (None: never reported to this arbiter).
    report_age_s: float | None
    #: Its node (``ram``) reports within ``report_timeout_s``.
    reporting: bool
    pg_running: bool | None
    role: str
    timeline: int | None
    wal_position: int | None
    #: Bytes behind the primary's latest reported WAL position (replicas): received and replayed.
    receive_lag_bytes: int | None
    replay_lag_bytes: int | None
    #: The primary's side shows it streaming and keeping up (None: no evidence / not a replica).
    streaming: bool | None
    streaming_reason: str
    #: What the primary's pg_stat_replication says of it (None: not connected), even when its own
    #: ``ram`` is down: a replica whose manager died may well still stream.
    seen_by_primary: str | None
    pending_restart: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LocalLive:
    """This node's own instance, for its health endpoints."""

    pg_running: bool
    in_recovery: bool | None
    streaming: bool
    reason: str
    receive_lag_bytes: int | None
    replay_lag_bytes: int | None
    pending_restart: tuple[str, ...]


class HAView(Protocol):
    """What the HA controller offers the API (a read-only view; the API never drives HA directly)."""

    def local(self) -> LocalLive | None: ...

    def members_live(self) -> dict[str, MemberLive]: ...

    def pending_restart(self) -> dict[str, tuple[str, ...]]: ...

    def lease_seconds_left(self) -> float | None: ...
