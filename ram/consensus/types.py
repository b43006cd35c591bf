"""Plain data types of the Raft core: entries, messages, hard state, snapshots, the Ready batch.

Everything here is an immutable value built only from ints, bytes, enums and tuples so that the
runtime can serialize it (msgspec) without custom hooks, and so that the core can share objects
between its log, its messages and a Ready batch without defensive copies.

The Ready contract (what the runtime must do with a batch from ``RaftCore.ready()``):

1. Make ``snapshot`` durable first, if present. Installing a snapshot REPLACES the whole persisted
   log: every persisted entry is deleted (the log restarts right after ``snapshot.index``) and the
   application state is replaced by ``snapshot.data``.
2. Make ``entries`` durable. They may overwrite a conflicting suffix: every persisted entry with an
   index ``>= entries[0].index`` must be deleted/replaced.
3. Make ``hard_state`` durable, if present (term, vote, commit) - in the same transaction as 2 is fine.
4. Only THEN send ``messages`` (a vote reply or an append ack depends on 1-3 being durable). The one
   exception is decided by ``ram.consensus.readyplan.split_sends``: a leader's replication messages
   may leave before the write, unless the batch changes the term or the vote. Runtimes and the
   simulator both call it, so the order checked is the order shipped.
5. Apply ``committed_entries`` in order (may be in the same transaction as 2-3). They are never
   beyond the commit index that is durable or made durable by this same batch, and never beyond the
   entries made durable by this batch.
6. Call ``core.advance(ready)`` with exactly this batch.

Only one Ready is outstanding at a time: after ``ready()`` and until ``advance()``, ``has_ready()``
returns False and ``ready()`` raises. ``step()``, ``tick()`` and ``propose()`` may still be called
while a batch is outstanding; what they produce goes into the next batch. The leader counts its own
log as replicated only up to what ``advance`` reported durable.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

NONE: int = 0
"""No node / no vote. Node ids are positive ints."""


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. A new leader's empty entry of its term is NORMAL with ``data=b""``."""

    index: int
    term: int
    type: EntryType
    data: bytes


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message depending on it is sent."""

    term: int
    vote: int
    commit: int


EMPTY_HARD_STATE = HardState(0, NONE, 0)


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership: voters count for elections and commits, learners only receive the log."""

    voters: frozenset[int]
    learners: frozenset[int]


EMPTY_CONF = ConfState(frozenset(), frozenset())


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A compacted prefix of the log: everything up to ``index`` (whose term is ``term``).

    ``conf`` is the membership in effect at ``index``; ``data`` is opaque application state that
    the runtime produced (the core never looks inside).
    """

    index: int
    term: int
    conf: ConfState
    data: bytes


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0
    ADD_LEARNER = 1
    REMOVE_NODE = 2


_CC_HEADER = struct.Struct(">BQ")


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-server membership change, carried as the data of a CONF_CHANGE entry.

    ``context`` is for the runtime (e.g. the new node's address); the core ignores it.
    """

    type: ConfChangeType
    node_id: int
    context: bytes = b""

    def encode(self) -> bytes:
        return _CC_HEADER.pack(int(self.type), self.node_id) + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        """Decode; raises ValueError on malformed input (never trust bytes off the wire)."""
        if len(data) < _CC_HEADER.size:
            raise ValueError("conf change too short")
        t, node = _CC_HEADER.unpack_from(data)
        return cls(ConfChangeType(t), node, bytes(data[_CC_HEADER.size :]))


class MessageType(enum.IntEnum):
    PRE_VOTE = 0
    PRE_VOTE_RESP = 1
    VOTE = 2
    VOTE_RESP = 3
    APPEND = 4
    APPEND_RESP = 5
    HEARTBEAT = 6
    HEARTBEAT_RESP = 7
    SNAPSHOT = 8
    TIMEOUT_NOW = 9


TRANSFER_CONTEXT = b"transfer"
"""Context of (pre)vote requests of a campaign started by TIMEOUT_NOW: bypasses the leader lease."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message between two nodes.

    Field use per type (unused fields stay at their defaults):

    - PRE_VOTE / VOTE: ``term`` (proposed term), ``index``/``log_term`` = candidate's last entry,
      ``context`` = TRANSFER_CONTEXT for a transfer campaign.
    - PRE_VOTE_RESP / VOTE_RESP: ``reject``; ``term`` is the voter's term (or the proposed term for
      a granted pre-vote).
    - APPEND: ``index``/``log_term`` = the entry preceding ``entries``; ``commit`` = leader commit.
    - APPEND_RESP: success: ``index`` = last index known to match. Rejection: ``reject=True``,
      ``index`` = the rejected APPEND's ``index``, ``reject_hint``/``log_term`` = the follower's
      guess where the logs may match (fast backtracking).
    - HEARTBEAT: ``commit`` (never beyond the follower's match), ``context`` = ReadIndex context.
    - HEARTBEAT_RESP: ``context`` echoed.
    - SNAPSHOT: ``snapshot``; answered with an APPEND_RESP.
    - TIMEOUT_NOW: no payload; the receiver campaigns at once.
    """

    type: MessageType
    frm: int
    to: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the local applied index reaches ``index``."""

    index: int
    context: bytes


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(slots=True)
class Ready:
    """One batch of work for the runtime; see the module docstring for the contract."""

    hard_state: HardState | None
    entries: list[Entry]
    snapshot: Snapshot | None
    messages: list[Message]
    committed_entries: list[Entry]
    read_states: list[ReadState]
    leader_id: int
    role: Role
    term: int
    new_term_or_vote: bool = False
    """``hard_state`` changes the term or the vote: no message of this batch may leave before it
    is durable (see ``ram.consensus.readyplan``)."""


@dataclass(frozen=True, slots=True)
class PersistedState:
    """What the runtime loads from disk on restart.

    ``entries`` are the persisted entries after the snapshot (older ones are ignored). ``applied``
    is the application's durable applied index (0 = unknown: the snapshot index is used), so that
    committed entries already applied are not handed out again.
    """

    hard_state: HardState = EMPTY_HARD_STATE
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    applied: int = 0


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Static configuration of one node."""

    id: int
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_inflight: int = 256
    max_entries_per_msg: int = 512
    pre_vote: bool = True
    check_quorum: bool = True

    def validate(self) -> None:
        if self.id <= 0:
            raise ValueError("node id must be a positive int")
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.max_inflight < 1 or self.max_entries_per_msg < 1:
            raise ValueError("max_inflight and max_entries_per_msg must be >= 1")


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(frozen=True, slots=True)
class ProgressInfo:
    """Read-only view of the leader's knowledge of one member (for metrics and learner promotion)."""

    match: int
    next: int
    state: ProgressState
    is_learner: bool
    recent_active: bool
