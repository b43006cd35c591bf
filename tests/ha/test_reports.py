"""The member report on the wire: what a node sends is what the arbiter sees."""

from __future__ import annotations

import json

import pytest

from ram.ha.reports import build_report, parse_report
from ram.postgres.status import InstanceStatus

PRIMARY = InstanceStatus(running=True, accepting=True, in_recovery=False, timeline=3, current_lsn=5000)
REPLICA = InstanceStatus(
    running=True, accepting=True, in_recovery=True, timeline=3, received_lsn=4900, replayed_lsn=4800
)
STOPPED = InstanceStatus(running=False)


def test_primary_round_trip() -> None:
    body = build_report("pg1", PRIMARY, state_position=42, lease_released=False, timeline_start_lsn=100,
                        stopped_lsn=7, sync_standby_names='FIRST 1 ("pg2")')
    obs = parse_report(body, observed_at=9.5)
    assert (obs.name, obs.role, obs.pg_running, obs.timeline) == ("pg1", "primary", True, 3)
    assert obs.wal_position == 5000 and obs.received_lsn == obs.replayed_lsn == 5000
    assert obs.timeline_start_lsn == 100 and obs.stopped_lsn is None  # a running server has no stop point
    assert obs.sync_standby_names == 'FIRST 1 ("pg2")' and obs.state_position == 42 and obs.observed_at == 9.5


def test_replica_and_stopped() -> None:
    obs = parse_report(build_report("pg2", REPLICA, state_position=1, lease_released=False, timeline_start_lsn=100),
                       observed_at=0.0)
    assert obs.role == "replica" and (obs.received_lsn, obs.replayed_lsn) == (4900, 4800)
    assert obs.timeline_start_lsn is None  # only a primary's fork point matters
    obs = parse_report(build_report("pg1", STOPPED, state_position=1, lease_released=True, stopped_lsn=777),
                       observed_at=0.0)
    assert (obs.role, obs.pg_running, obs.lease_released, obs.stopped_lsn) == ("unknown", False, True, 777)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{}", json.dumps({"name": "x", "role": "boss"}).encode(), b"[1, 2]"],
)
def test_malformed_reports_raise(body: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        parse_report(body, observed_at=0.0)


@pytest.mark.parametrize(
    "patch",
    [{"lease_released": "no"}, {"state_position": -1}, {"received_lsn": "0/1"}, {"pg_running": 1},
     {"standbys": [{"name": "pg2"}]}, {"extra": True}, {"name": "x" * 500}],
)
def test_reports_are_schema_checked(patch: dict[str, object]) -> None:
    """Types are not coerced: ``"no"`` is not a boolean (it once became True)."""
    doc = json.loads(build_report("pg1", PRIMARY, state_position=1, lease_released=False))
    doc.update(patch)
    with pytest.raises(ValueError):
        parse_report(json.dumps(doc).encode(), observed_at=0.0)


def test_standbys_and_replication_round_trip() -> None:
    from ram.ha.streaming import LocalReplication
    from ram.postgres.status import ReplicationConnection

    conn = ReplicationConnection(pid=1, application_name="pg2", client_addr=None, state="streaming", sent_lsn=5000,
                                 write_lsn=5000, flush_lsn=4990, replay_lsn=4980, sync_state="sync", lag_bytes=20,
                                 flush_lag_bytes=10, replay_lag_seconds=None)
    primary = InstanceStatus(running=True, accepting=True, in_recovery=False, timeline=3, current_lsn=5000,
                             replication=[conn])
    obs = parse_report(build_report("pg1", primary, state_position=1, lease_released=False), observed_at=0.0)
    (row,) = obs.standbys
    assert (row.name, row.state, row.flush_lsn, row.replay_lsn) == ("pg2", "streaming", 4990, 4980)
    rep = LocalReplication(True, 100, 200, "streaming from the primary")
    obs = parse_report(build_report("pg2", REPLICA, state_position=1, lease_released=False, replication=rep), 0.0)
    assert obs.streaming is True and (obs.receive_lag_bytes, obs.lag_bytes) == (100, 200) and not obs.standbys
