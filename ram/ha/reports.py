"""The member report: what each node tells the arbiter about its PostgreSQL, on the wire and back.

Kept apart from the controller so both directions are one pure function each (and testable): the
sending node builds the document from its observation, the Raft leader parses it into a
:class:`~ram.ha.candidates.MemberObservation` stamped with its own clock.
"""

from __future__ import annotations

import json
from typing import Any

from ram.ha.candidates import MemberObservation
from ram.postgres.status import InstanceStatus

__all__ = ["build_report", "parse_report"]


def build_report(
    name: str,
    status: InstanceStatus,
    *,
    state_position: int,
    lease_released: bool,
    timeline_start_lsn: int | None = None,
    stopped_lsn: int | None = None,
    sync_standby_names: str | None = None,
) -> bytes:
    """``timeline_start_lsn`` is sent only by a running primary, ``stopped_lsn`` only for a stopped
    server; for a primary, both WAL positions are its current one."""
    running = status.running and status.accepting
    role = "unknown"
    if running:
        role = "replica" if status.in_recovery else "primary"
    primary = running and status.in_recovery is False
    doc: dict[str, Any] = {
        "name": name,
        "pg_running": running,
        "role": role,
        "timeline": status.timeline,
        "received_lsn": status.current_lsn if primary else status.received_lsn,
        "replayed_lsn": status.current_lsn if primary else status.replayed_lsn,
        "state_position": state_position,
        "lease_released": lease_released,
        "timeline_start_lsn": timeline_start_lsn if primary else None,
        "stopped_lsn": stopped_lsn if not running else None,
    }
    if sync_standby_names is not None:
        doc["sync_standby_names"] = sync_standby_names
    return json.dumps(doc).encode()


def parse_report(body: bytes, observed_at: float) -> MemberObservation:
    """The arbiter's view of one report; raises ValueError, KeyError or TypeError when malformed."""
    doc = json.loads(body)
    role = doc["role"]
    if role not in ("primary", "replica", "unknown"):
        raise ValueError(f"unknown role {role!r}")
    return MemberObservation(
        name=str(doc["name"]),
        reachable=True,
        pg_running=bool(doc["pg_running"]),
        role=role,
        timeline=doc["timeline"],
        received_lsn=doc["received_lsn"],
        replayed_lsn=doc["replayed_lsn"],
        lag_bytes=None,
        observed_at=observed_at,
        state_position=int(doc["state_position"]),
        lease_released=bool(doc["lease_released"]),
        timeline_start_lsn=doc.get("timeline_start_lsn"),
        sync_standby_names=doc.get("sync_standby_names"),
        stopped_lsn=doc.get("stopped_lsn"),
    )
