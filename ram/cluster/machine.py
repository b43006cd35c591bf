"""The cluster's state machine: commands in, events out, the cluster state folded from them.

This is what the Raft runtime replicates (:class:`ram.consensus.runtime.statemachine.StateMachine`).
A committed entry carries a command envelope; deciding it against the state gives events (or a
``command_rejected``), folding the events gives the next state. Everything is decided per batch, in
memory, before anything is written; the write is one statement for the whole batch (events, the
projection rows the fold changed and the applied index, ``pgraft.apply_committed``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import msgspec

from ram.cluster.forwarding import forwarded_refusal
from ram.consensus.runtime.errors import ProposalRefused
from ram.consensus.runtime.settings import PeerSpec
from ram.consensus.runtime.statemachine import DecidedBatch
from ram.consensus.types import ConfChange, ConfChangeType, ConfState, Entry, EntryType, Snapshot
from ram.eventstore.commands import (
    MEMBERSHIP_COMMANDS,
    AddMember,
    CommandDecodeError,
    CommandEnvelope,
    PromoteLearner,
    RemoveMember,
    decide,
    decode_envelope,
)
from ram.eventstore.events import CommandRejected, Event, decode_event, encode_event
from ram.eventstore.store import EntryEvents, append_entries, batch_columns
from ram.projections.rows import projection_changes
from ram.projections.sql import load_state
from ram.projections.state import ClusterState, fold

_EPOCH = datetime.fromtimestamp(0, UTC)

#: Admitted proposals whose decoding is kept for their decision, at most.
_MAX_ADMITTED = 4096

_APPLY = (
    "SELECT pgraft.apply_committed($1, $2, $3::bigint[], $4::integer[], $5::text[], $6::integer[], "
    "$7::jsonb[], $8::bigint[], $9::integer[], $10::timestamptz[], $11::jsonb)"
)

_SNAPSHOT_ROW = tuple[int, int, str, int, str, int, int, int]
_SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()
_SNAPSHOT_DECODER = msgspec.msgpack.Decoder(list[_SNAPSHOT_ROW])


@dataclass(frozen=True, slots=True)
class _Placed:
    """An event decided from a committed entry, as the fold reads it (:class:`PlacedEvent`)."""

    position: int
    ts: datetime
    event: Event


@dataclass
class _Decided:
    """What a decided batch installs (``state``) and stores (``entries``, and the projection rows
    that differ between ``before`` and ``state``: worked out when the batch is written, so once for
    batches written together and never on the way to the proposer's answer)."""

    before: ClusterState
    state: ClusterState
    entries: list[EntryEvents]
    rows: str | None = None  # JSON, ram.projections.rows

    def projection_rows(self) -> str:
        if self.rows is None:
            self.rows = json.dumps(projection_changes(self.before, self.state))
            self.before = self.state  # a batch kept until the next seal holds no older state
        return self.rows


class ClusterMachine:
    """The cluster state in memory and its events in the store."""

    def __init__(self) -> None:
        self.state = ClusterState.empty()
        #: Envelopes this node decoded when it admitted a proposal, by their bytes: deciding the
        #: committed entry reuses the decoding (the same bytes decode to the same envelope) instead
        #: of validating the command a second time on the leader.
        self._admitted: dict[bytes, CommandEnvelope] = {}

    # ------------------------------------------------------------------------------- applying

    async def load(self, conn: asyncpg.Connection) -> int:
        applied = int(await conn.fetchval("SELECT applied_index FROM pgraft.applied"))
        self.state = await load_state(conn)
        return applied

    def decide(self, entries: Sequence[Entry]) -> DecidedBatch:
        state = self.state
        stored_entries: list[EntryEvents] = []
        results: dict[int, tuple[Event, ...]] = {}
        admitted = self._admitted
        for entry in entries:
            proposer, ts, events = _decide_entry(state, entry, admitted.pop(entry.data, None) if admitted else None)
            if events:
                state = fold(state, [_Placed(entry.index, ts, ev) for ev in events])
            stored_entries.append(EntryEvents(entry.index, entry.term, proposer, ts, events))
            results[entry.index] = tuple(events)
        return DecidedBatch(entries[0].index, entries[-1].index, results, _Decided(self.state, state, stored_entries))

    def merge(self, batches: Sequence[DecidedBatch]) -> DecidedBatch:
        decided = [_decided(b) for b in batches]
        first, last = decided[0], decided[-1]
        entries = [e for d in decided for e in d.entries]
        # No results: their proposers were answered when the batches were decided.
        return DecidedBatch(batches[0].first, batches[-1].last, {}, _Decided(first.before, last.state, entries))

    async def write(self, conn: asyncpg.Connection, batch: DecidedBatch) -> int:
        decided = batch.payload
        assert isinstance(decided, _Decided)
        return int(
            await conn.fetchval(
                _APPLY, batch.first, batch.last, *batch_columns(decided.entries), decided.projection_rows()
            )
        )

    def commit(self, batch: DecidedBatch) -> None:
        decided = batch.payload
        assert isinstance(decided, _Decided)
        self.state = decided.state

    async def seal(self, conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval("SELECT pgraft.seal_applied()"))

    # ------------------------------------------------------------------------------ snapshots

    async def snapshot(self, conn: asyncpg.Connection, index: int) -> bytes:
        """The state up to ``index`` is every event up to it (events are the state)."""
        rows = await conn.fetch(
            "SELECT position, sub, type, schema_version, payload::text, term, proposer, "
            "(extract(epoch FROM ts) * 1000000)::bigint "
            "FROM pgraft.events WHERE position <= $1 ORDER BY position, sub",
            index,
        )
        return _SNAPSHOT_ENCODER.encode([tuple(r) for r in rows])

    async def restore(self, conn: asyncpg.Connection, snapshot: Snapshot) -> None:
        """Bring the events (and projections) up to an installed snapshot, exactly once."""
        applied = int(await conn.fetchval("SELECT applied_index FROM pgraft.applied"))
        if applied >= snapshot.index or not snapshot.data:
            return
        rows = _SNAPSHOT_DECODER.decode(snapshot.data)
        by_position: dict[int, list[_SNAPSHOT_ROW]] = {}
        for row in rows:
            if row[0] > applied:
                by_position.setdefault(row[0], []).append(row)
        entries = []
        for position in range(applied + 1, snapshot.index + 1):
            group = by_position.get(position, [])
            events = [decode_event(r[2], r[3], json.loads(r[4])) for r in group]
            term = group[0][5] if group else snapshot.term
            proposer = group[0][6] if group else 0
            ts = datetime.fromtimestamp(group[0][7] / 1e6, UTC) if group else _EPOCH
            entries.append(EntryEvents(position, term, proposer, ts, events))
        async with conn.transaction():
            await append_entries(conn, entries)

    # ------------------------------------------------------------------------------ proposals

    def admit(self, data: bytes, *, peer: int | None, conf: ConfState) -> ConfChange | None:
        """Membership commands that fit the configuration become Raft membership changes; a peer's
        forward passes only what a peer may propose (:mod:`ram.cluster.forwarding`)."""
        try:
            envelope = decode_envelope(data)
        except CommandDecodeError as exc:
            raise ProposalRefused(str(exc)) from None
        if peer is not None and (refusal := forwarded_refusal(self.state, peer, envelope)) is not None:
            raise ProposalRefused(f"refused: {refusal}")
        command = envelope.command
        if isinstance(command, MEMBERSHIP_COMMANDS) and _fits_membership(command, conf):
            return _conf_change_for(command, data)
        # Also membership commands that do not fit: committed as a plain entry, so that every node
        # records the same rejection when it applies it.
        if len(self._admitted) >= _MAX_ADMITTED:
            self._admitted.clear()  # proposals that never committed (a lost leadership)
        self._admitted[data] = envelope
        return None

    def member_address(self, node_id: int) -> PeerSpec | None:
        for member in self.state.members.values():
            if member.node_id == node_id:
                return PeerSpec(member.node_id, member.name, member.raft_address)
        return None

    def encode_result(self, result: object) -> bytes:
        assert isinstance(result, tuple)
        return json.dumps([list(encode_event(ev)) for ev in result]).encode()

    def decode_result(self, data: bytes) -> tuple[Event, ...]:
        if not data:
            return ()
        return tuple(decode_event(t, v, p) for t, v, p in json.loads(data))


def _decided(batch: DecidedBatch) -> _Decided:
    payload = batch.payload
    assert isinstance(payload, _Decided)
    return payload


def _decide_entry(
    state: ClusterState, entry: Entry, envelope: CommandEnvelope | None
) -> tuple[int, datetime, list[Event]]:
    """The events of one committed entry; ``envelope``: its data decoded already (when admitted here)."""
    if envelope is None or entry.type is not EntryType.NORMAL:
        data = entry.data
        if entry.type is EntryType.CONF_CHANGE:
            try:
                data = ConfChange.decode(entry.data).context
            except ValueError as exc:
                return 0, _EPOCH, [CommandRejected(command="conf_change", reason=str(exc))]
        if not data:
            return 0, _EPOCH, []
        try:
            envelope = decode_envelope(data)
        except CommandDecodeError as exc:
            return 0, _EPOCH, [CommandRejected(command="unknown", reason=str(exc))]
    return envelope.proposer, envelope.ts, decide(state, envelope.command, envelope.ts, entry.term)


def _fits_membership(command: AddMember | PromoteLearner | RemoveMember, conf: ConfState) -> bool:
    """Whether a membership command makes sense for the current configuration."""
    if isinstance(command, AddMember):
        node_id = command.member.node_id
        return (node_id not in conf.voters and (command.as_learner or node_id not in conf.learners)) or (
            not command.as_learner and node_id in conf.learners
        )
    if isinstance(command, PromoteLearner):
        return command.node_id in conf.learners
    return command.node_id in conf.voters or command.node_id in conf.learners


def _conf_change_for(command: AddMember | PromoteLearner | RemoveMember, data: bytes) -> ConfChange:
    if isinstance(command, AddMember):
        kind = ConfChangeType.ADD_LEARNER if command.as_learner else ConfChangeType.ADD_VOTER
        return ConfChange(kind, command.member.node_id, data)
    if isinstance(command, PromoteLearner):
        return ConfChange(ConfChangeType.ADD_VOTER, command.node_id, data)
    return ConfChange(ConfChangeType.REMOVE_NODE, command.node_id, data)
