"""Is a replica really streaming? Facts about replication, judged without trusting appearances.

Two traps this module exists to avoid (both seen in a chaos run, where they hung every write):

* A standby's *newest timeline history file* says which timelines it has heard of, not which one it
  replays. A standby that replayed past the new timeline's fork point fetches the new history file
  and then refuses to switch ("new timeline N forked off current database system timeline N-1
  before current recovery point"); judged by that file it looked healthy and was made the
  synchronous standby. Here the replay timeline comes only from facts that can not run ahead of it:
  the walreceiver's ``received_tli``, the timelines of the WAL segment files that hold the replay
  position, and the last checkpoint's timeline (:func:`replay_timeline`).
* A walreceiver that can not stream retries every few seconds and shows ``streaming`` for a few
  milliseconds each time. One sample proves nothing. A replica counts as streaming only while the
  *primary's* ``pg_stat_replication`` shows it streaming and its flushed position keeps up with what
  the primary had written one report earlier (:class:`StreamingTracker`), and it stops counting
  once that has not been true for ``report_timeout_s``.

Everything here is pure: observations and clock readings in, verdicts out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "LocalReplication",
    "StandbyRow",
    "StreamingTracker",
    "local_replication",
    "replay_timeline",
    "segment_file_name",
]


def segment_file_name(timeline: int, lsn: int, segment_size: int) -> str:
    """PostgreSQL's WAL file name for the segment holding ``lsn`` on ``timeline``
    (``pg_walfile_name``, which refuses to run on a standby)."""
    if segment_size <= 0:
        raise ValueError(f"segment size must be positive, got {segment_size}")
    per_id = 0x1_0000_0000 // segment_size
    seg = lsn // segment_size
    return f"{timeline:08X}{seg // per_id:08X}{seg % per_id:08X}"


def replay_timeline(
    *,
    receiver_tli: int | None,
    segment_timelines: Iterable[int],
    checkpoint_tli: int | None,
) -> int | None:
    """The timeline a standby's replayed WAL is on, from facts that never run ahead of it.

    ``receiver_tli``: the running walreceiver's ``received_tli`` (the timeline of the WAL it last
    flushed). ``segment_timelines``: timelines of the WAL segment files present for the segment
    holding the replay position (a walreceiver writes a segment under the timeline it streams, so a
    file of timeline ``t`` for that segment exists only if WAL of ``t`` up to there was received).
    ``checkpoint_tli``: the last restartpoint's timeline (lags, never leads). A live receiver is the
    best witness; without one the newest of the others.
    """
    if receiver_tli:
        return receiver_tli
    known = [t for t in (*segment_timelines, checkpoint_tli or 0) if t]
    return max(known) if known else None


@dataclass(frozen=True, slots=True)
class StandbyRow:
    """One standby as the primary sees it (a row of ``pg_stat_replication``, by member name)."""

    name: str
    state: str
    flush_lsn: int | None
    replay_lsn: int | None


@dataclass(frozen=True, slots=True)
class LocalReplication:
    """This node's own view of its replication, for its report and its health endpoints.

    ``streaming``: the walreceiver streams from ``upstream`` on the cluster's timeline (one sample:
    the arbiter decides health from the primary's side, see :class:`StreamingTracker`). Lags are
    measured against the upstream's WAL end as of its last message (``latest_end_lsn``): None when
    no walreceiver runs, since nothing then says where the primary is.
    """

    streaming: bool
    receive_lag_bytes: int | None
    replay_lag_bytes: int | None
    reason: str


def local_replication(
    *,
    receiver_status: str | None,
    receiver_tli: int | None,
    connected_to_primary: bool,
    cluster_timeline: int | None,
    latest_end_lsn: int | None,
    flushed_lsn: int | None,
    replayed_lsn: int | None,
) -> LocalReplication:
    if receiver_status is None:
        return LocalReplication(False, None, None, "no WAL receiver running (not connected to a primary)")
    receive_lag = replay_lag = None
    end = latest_end_lsn
    if end is None and receiver_status == "streaming":
        # No message from the upstream since the receiver connected: a walsender sends whatever WAL
        # it has at once, so it had nothing beyond what we flushed (keepalives come only every
        # wal_sender_timeout / 2 on an idle primary).
        end = flushed_lsn
    if end is not None:
        if flushed_lsn is not None:
            receive_lag = max(0, end - flushed_lsn)
        if replayed_lsn is not None:
            replay_lag = max(0, end - replayed_lsn)
    if receiver_status != "streaming":
        return LocalReplication(False, receive_lag, replay_lag, f"WAL receiver is {receiver_status}")
    if not connected_to_primary:
        return LocalReplication(False, receive_lag, replay_lag, "WAL receiver streams from another server")
    if cluster_timeline is not None and receiver_tli is not None and receiver_tli != cluster_timeline:
        return LocalReplication(
            False,
            receive_lag,
            replay_lag,
            f"WAL receiver is on timeline {receiver_tli}, the cluster on {cluster_timeline}",
        )
    return LocalReplication(True, receive_lag, replay_lag, "streaming from the primary")


@dataclass
class StreamingTracker:
    """The arbiter's evidence of which replicas stream from the current primary and keep up.

    Fed with every report of the primary (:meth:`observe_primary`). A standby *keeps up* in a report
    when the primary shows it ``streaming`` and it has flushed at least what the primary had written
    at its previous report (or everything, on an idle primary). :meth:`verdict` says streaming while
    the last such report is at most ``window_s`` old, not streaming once it is older AND the tracker
    has watched this primary for ``window_s``, and None (no evidence either way: keep what is
    committed) before that — a new arbiter, or a new primary, judges only what it has seen.
    """

    primary: str | None = None
    watching_since: float | None = None
    previous_position: int | None = None
    last_report_at: float | None = None
    keeping_up_at: dict[str, float] = field(default_factory=dict)
    rows: dict[str, StandbyRow] = field(default_factory=dict)

    def reset(self) -> None:
        self.primary = self.watching_since = self.previous_position = self.last_report_at = None
        self.keeping_up_at.clear()
        self.rows.clear()

    def observe_primary(self, name: str, position: int | None, standbys: Iterable[StandbyRow], now: float) -> None:
        if name != self.primary:
            self.reset()
            self.primary, self.watching_since = name, now
        reference = self.previous_position if self.previous_position is not None else position
        self.rows = {row.name: row for row in standbys}
        for row in self.rows.values():
            if row.state != "streaming" or row.flush_lsn is None:
                continue
            if reference is None or row.flush_lsn >= reference or (position is not None and row.flush_lsn >= position):
                self.keeping_up_at[row.name] = now
        self.previous_position = position
        self.last_report_at = now

    def verdict(self, name: str, now: float, window_s: float) -> tuple[bool | None, str]:
        """(streaming?, why) for member ``name`` on the current primary; None: not enough evidence."""
        if self.primary is None or self.watching_since is None:
            return None, "no report from the primary yet"
        seen = self.keeping_up_at.get(name)
        if seen is not None and now - seen <= window_s:
            return True, f"streaming from {self.primary}"
        if now - self.watching_since < window_s:
            return None, f"watching {self.primary} for less than {window_s} s"
        row = self.rows.get(name)
        if row is None:
            why = f"not connected to the primary {self.primary}"
        elif row.state != "streaming":
            why = f"connected to {self.primary} but {row.state}"
        else:
            why = f"streaming from {self.primary} but not keeping up (flushed {row.flush_lsn})"
        ago = "never" if seen is None else f"last kept up {now - seen:.1f} s ago"
        return False, f"not streaming: {why} ({ago})"

