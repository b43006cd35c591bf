"""The contract between the Raft runtime and the application whose commands it replicates.

The runtime drives Raft, keeps the log durable and hands committed entries to a
:class:`StateMachine` in batches (everything one Ready commits, in index order):

1. :meth:`StateMachine.decide` says, in memory and without side effects, what the entries yield
   (the outcome of an entry is a pure function of the entries before it, so any node deciding the
   same log gets the same outcomes, now or after a restart);
2. :meth:`StateMachine.commit` makes the batch the current in-memory state, and the proposers get
   their results: the outcome is final once decided, whatever happens to the store next;
3. :meth:`StateMachine.write` stores the batch in ONE statement that also moves the store's applied
   index. The runtime calls it only after the log holding these entries is durable, and the machine
   may commit it with ``synchronous_commit = off``: the store's WAL is one sequence, so a crash can
   only lose a suffix of such writes, never an earlier one, and never the log they came from.
   Batches decided close together are written together (:meth:`StateMachine.merge`); proposers
   that asked to see their entry in the store (``visible``) are answered after the write.

Exactly once, whatever crashes: ``write`` returns the store's applied index, and
:meth:`StateMachine.seal`, a synchronous write the runtime issues at most ``seal_interval_s`` after
an apply and after any store error, returns it too. When it is below what was written (the store
crashed and lost a suffix of asynchronous applies), the runtime writes the batches it kept since the
last seal again, in order (the in-memory state already has them). Log compaction only covers sealed
applies. After a restart :meth:`StateMachine.load` restores the durable state and the runtime
hands it the committed entries after the durable applied index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from ram.consensus.runtime.settings import PeerSpec
from ram.consensus.types import ConfChange, ConfState, Entry, Snapshot


@dataclass
class DecidedBatch:
    """Committed entries ``first..last`` decided in memory; nothing is visible until written and committed.

    ``results`` maps an entry index to what its proposer gets back (None when absent);
    ``payload`` is the machine's own (what :meth:`StateMachine.write` stores and
    :meth:`StateMachine.commit` installs).
    """

    first: int
    last: int
    results: Mapping[int, object] = field(default_factory=dict)
    payload: object = None


class StateMachine(Protocol):
    """An application replicated by :class:`ram.consensus.runtime.node.RaftNode`."""

    async def load(self, conn: asyncpg.Connection) -> int:
        """Restore the in-memory state from the store; return the store's applied index."""
        ...

    def decide(self, entries: Sequence[Entry]) -> DecidedBatch:
        """What consecutive committed ``entries`` yield, from the current in-memory state (pure)."""
        ...

    async def write(self, conn: asyncpg.Connection, batch: DecidedBatch) -> int:
        """Store ``batch`` in one statement (may be an asynchronous commit) and return the store's
        applied index afterwards: ``>= batch.last`` when stored, lower when the store lost earlier
        applies (then nothing was written). Entries at or below the applied index are skipped."""
        ...

    def merge(self, batches: Sequence[DecidedBatch]) -> DecidedBatch:
        """Consecutive decided (and committed) batches as one, for one write: what writing them
        one after the other would store (its ``results`` may be empty: they were handed out)."""
        ...

    def commit(self, batch: DecidedBatch) -> None:
        """Make ``batch`` the current in-memory state (its write follows; the batch's payload must
        not depend on the state it replaces)."""
        ...

    async def seal(self, conn: asyncpg.Connection) -> int:
        """A synchronous (durable) write that returns the store's applied index: everything applied
        before it is durable once it returns."""
        ...

    async def snapshot(self, conn: asyncpg.Connection, index: int) -> bytes:
        """The state up to applied ``index`` (durable), as bytes a :meth:`restore` accepts: what a
        follower that lags behind the compacted log receives (asked for when it is sent; a
        compaction itself keeps no data)."""
        ...

    async def restore(self, conn: asyncpg.Connection, snapshot: Snapshot) -> None:
        """Bring the store up to ``snapshot`` (from its data), exactly once; :meth:`load` follows."""
        ...

    def admit(self, data: bytes, *, peer: int | None, conf: ConfState) -> ConfChange | None:
        """Check a proposal before it enters the log: ``peer`` is the node that forwarded it (None:
        our own). Returns the membership change it is (None: a plain entry); raises
        :class:`ram.consensus.runtime.errors.ProposalRefused` to refuse it."""
        ...

    def member_address(self, node_id: int) -> PeerSpec | None:
        """Where a member added by a committed membership change listens (from the applied state)."""
        ...

    def encode_result(self, result: object) -> bytes:
        """A proposer's result, for a forwarded proposal's answer."""
        ...

    def decode_result(self, data: bytes) -> object:
        """The inverse of :meth:`encode_result` (on the node that forwarded the proposal)."""
        ...
