"""Replication facts: the replayed timeline, the local sample and the primary-side tracker."""

from __future__ import annotations

import pytest

from ram.ha.streaming import StandbyRow, StreamingTracker, local_replication, replay_timeline, segment_file_name

SEG = 16 * 1024 * 1024


def test_segment_file_name_matches_postgresql() -> None:
    # pg_walfile_name('0/6C26140') on timeline 12 with 16 MB segments
    assert segment_file_name(12, 0x6C26140, SEG) == "0000000C0000000000000006"
    assert segment_file_name(1, (0x16 << 32) | 0xB374D848, SEG) == "0000000100000016000000B3"
    with pytest.raises(ValueError):
        segment_file_name(1, 0, 0)


def test_replay_timeline_never_runs_ahead() -> None:
    """The chaos case: a standby that replayed past timeline 13's fork on 12 holds 13's history file
    but only timeline-12 segments: it is on 12 (the history file is not consulted at all)."""
    assert replay_timeline(receiver_tli=None, segment_timelines=[12], checkpoint_tli=12) == 12
    assert replay_timeline(receiver_tli=12, segment_timelines=[12, 13], checkpoint_tli=11) == 12
    assert replay_timeline(receiver_tli=None, segment_timelines=[12, 13], checkpoint_tli=12) == 13
    assert replay_timeline(receiver_tli=None, segment_timelines=[], checkpoint_tli=11) == 11
    assert replay_timeline(receiver_tli=None, segment_timelines=[], checkpoint_tli=None) is None


def test_local_replication_sample() -> None:
    ok = local_replication(receiver_status="streaming", receiver_tli=3, connected_to_primary=True,
                           cluster_timeline=3, latest_end_lsn=1000, flushed_lsn=900, replayed_lsn=800)
    assert ok.streaming and (ok.receive_lag_bytes, ok.replay_lag_bytes) == (100, 200)
    stuck = local_replication(receiver_status="streaming", receiver_tli=2, connected_to_primary=True,
                              cluster_timeline=3, latest_end_lsn=1000, flushed_lsn=900, replayed_lsn=800)
    assert not stuck.streaming and "timeline 2" in stuck.reason
    none = local_replication(receiver_status=None, receiver_tli=None, connected_to_primary=False,
                             cluster_timeline=3, latest_end_lsn=None, flushed_lsn=None, replayed_lsn=800)
    assert not none.streaming and none.replay_lag_bytes is None
    idle = local_replication(receiver_status="streaming", receiver_tli=3, connected_to_primary=True,
                             cluster_timeline=3, latest_end_lsn=None, flushed_lsn=900, replayed_lsn=850)
    assert idle.streaming and (idle.receive_lag_bytes, idle.replay_lag_bytes) == (0, 50)
    other = local_replication(receiver_status="streaming", receiver_tli=3, connected_to_primary=False,
                              cluster_timeline=3, latest_end_lsn=None, flushed_lsn=None, replayed_lsn=None)
    assert not other.streaming and "another server" in other.reason


def test_tracker_needs_the_primary_to_see_it_keep_up() -> None:
    t = StreamingTracker()
    assert t.verdict("pg2", 0.0, 1.5)[0] is None
    t.observe_primary("pg1", 1000, [StandbyRow("pg2", "streaming", 1000, 1000)], now=10.0)
    assert t.verdict("pg2", 10.1, 1.5) == (True, "streaming from pg1")
    # pg3 never appears: no verdict while the tracker is young, then "not streaming"
    assert t.verdict("pg3", 10.5, 1.5)[0] is None
    # writes go on; pg2 stops confirming (stuck at 1000), the primary moves on
    for i in range(1, 10):
        t.observe_primary("pg1", 1000 + 100 * i, [StandbyRow("pg2", "streaming", 1000, 1000)], now=10.0 + 0.25 * i)
    ok, why = t.verdict("pg2", 12.3, 1.5)
    assert ok is False and "not keeping up" in why, why
    assert t.verdict("pg3", 12.3, 1.5)[0] is False
    # a retrying receiver that shows up for a moment as 'catchup' proves nothing
    t.observe_primary("pg1", 2000, [StandbyRow("pg2", "catchup", 1950, 1900)], now=12.5)
    assert t.verdict("pg2", 12.5, 1.5)[0] is False
    # a new primary: evidence starts over
    t.observe_primary("pg2", 3000, [], now=20.0)
    assert t.verdict("pg3", 20.1, 1.5)[0] is None


def test_tracker_idle_primary_and_lagging_by_one_report() -> None:
    t = StreamingTracker()
    t.observe_primary("pg1", 500, [StandbyRow("pg2", "streaming", 500, 500)], now=1.0)
    t.observe_primary("pg1", 800, [StandbyRow("pg2", "streaming", 600, 600)], now=1.25)  # >= previous 500
    assert t.verdict("pg2", 1.3, 1.5)[0] is True


def test_recovery_position_ignores_verb_and_timeline() -> None:
    """A standby retrying one segment alternates 'recovering' / 'waiting for' and timelines: no progress."""
    from ram.ha.observer import recovery_position

    a = recovery_position("startup recovering 000000060000000000000006")
    b = recovery_position("startup waiting for 000000050000000000000006")
    c = recovery_position("startup recovering 000000060000000000000007")
    assert a == b != c
    assert recovery_position(None) is None
    assert recovery_position("startup") == "startup"
