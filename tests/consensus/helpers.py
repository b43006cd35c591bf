"""A tiny synchronous network of RaftCores for scripted scenario tests.

Each node has fake durable storage and a runtime loop that follows the Ready contract (persist,
then send, then apply, then advance). Messages go into one FIFO queue; ``deliver()`` runs until
the network is quiet. Links can be cut and nodes crashed/restarted keeping only their storage.
``core=`` runs another core class (a deliberate bug from ``tests.consensus.bugs``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ram.consensus.core import RaftCore
from ram.consensus.types import (
    EMPTY_HARD_STATE,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    PersistedState,
    RaftConfig,
    ReadState,
    Role,
    Snapshot,
)


@dataclass
class Store:
    hs: HardState = EMPTY_HARD_STATE
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    applied: list[Entry] = field(default_factory=list)
    applied_index: int = 0

    def persisted(self) -> PersistedState:
        return PersistedState(self.hs, self.snapshot, list(self.entries), self.applied_index)


def conf_of(voters: Iterable[int], learners: Iterable[int] = ()) -> ConfState:
    return ConfState(frozenset(voters), frozenset(learners))


def base_snapshot(voters: Iterable[int], learners: Iterable[int] = ()) -> Snapshot:
    """An index-0 snapshot carrying only the membership: lets tests hand-craft logs from index 1."""
    return Snapshot(0, 0, conf_of(voters, learners), b"")


def entries_with_terms(terms: list[int], start: int = 1) -> list[Entry]:
    return [Entry(start + k, t, EntryType.NORMAL, f"e{start + k}t{t}".encode()) for k, t in enumerate(terms)]


class Net:
    def __init__(
        self,
        ids: Iterable[int],
        *,
        seed: int = 1,
        learners: Iterable[int] = (),
        logs: dict[int, list[int]] | None = None,
        terms: dict[int, int] | None = None,
        core: type[RaftCore] = RaftCore,
        **cfg: object,
    ) -> None:
        self.core_class = core
        self.ids = sorted(ids)
        self.learners = sorted(learners)
        self.cfg = cfg
        self.seed = seed
        self.stores: dict[int, Store] = {}
        self.cores: dict[int, RaftCore] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.sent: list[Message] = []
        self.read_states: dict[int, list[ReadState]] = {}
        self.drop: Callable[[Message], bool] | None = None
        self.mangle: Callable[[Message], Message] | None = None
        conf = conf_of(self.ids, self.learners)
        for nid in self.ids + self.learners:
            st = Store()
            if logs is not None:
                # Hand-crafted log: membership via an index-0 snapshot, entries with given terms.
                st.snapshot = base_snapshot(self.ids, self.learners)
                st.entries = entries_with_terms(logs.get(nid, []))
                t = (terms or {}).get(nid, max(logs.get(nid, [0]) or [0]))
                st.hs = HardState(t, 0, 0)
            self.stores[nid] = st
            self._start(nid, conf)

    def config(self, nid: int) -> RaftConfig:
        kw: dict[str, object] = {"election_ticks": 10, "heartbeat_ticks": 1}
        kw.update(self.cfg)
        return RaftConfig(id=nid, **kw)  # type: ignore[arg-type]

    def _start(self, nid: int, conf: ConfState | None) -> None:
        st = self.stores[nid]
        rng = random.Random(self.seed * 1000 + nid + 7 * len(st.applied))
        self.cores[nid] = self.core_class(self.config(nid), rng, st.persisted(), conf)
        self.process(nid)

    def add_node(self, nid: int) -> None:
        """A brand-new node with no configuration (it waits to be added)."""
        self.stores[nid] = Store()
        self._start(nid, None)

    # -- runtime --------------------------------------------------------------------------------

    def process(self, nid: int) -> None:
        core = self.cores.get(nid)
        if core is None:
            return
        st = self.stores[nid]
        while core.has_ready():
            rd = core.ready()
            if rd.snapshot is not None:
                st.snapshot = rd.snapshot
                st.entries = []
                st.applied_index = rd.snapshot.index
            if rd.entries:
                si = st.snapshot.index if st.snapshot else 0
                del st.entries[rd.entries[0].index - si - 1 :]
                st.entries.extend(rd.entries)
            if rd.hard_state is not None:
                st.hs = rd.hard_state
            for m in rd.messages:
                self.sent.append(m)
                self.queue.append(m)
            for e in rd.committed_entries:
                assert e.index == st.applied_index + 1, (nid, e.index, st.applied_index)
                st.applied.append(e)
                st.applied_index = e.index
            self.read_states.setdefault(nid, []).extend(rd.read_states)
            core.advance(rd)

    def deliver(self, max_msgs: int = 100_000) -> int:
        """Deliver queued messages (FIFO) until the network is quiet; returns how many were delivered."""
        n = 0
        for nid in list(self.cores):
            self.process(nid)
        while self.queue and n < max_msgs:
            m = self.queue.pop(0)
            if (m.frm, m.to) in self.cut or m.to not in self.cores:
                continue
            if self.drop is not None and self.drop(m):
                continue
            if self.mangle is not None:
                m = self.mangle(m)
            n += 1
            self.cores[m.to].step(m)
            self.process(m.to)
        return n

    def tick(self, nid: int, n: int = 1) -> None:
        for _ in range(n):
            core = self.cores.get(nid)
            if core is not None:
                core.tick()
                self.process(nid)

    def tick_all(self, n: int = 1, deliver: bool = True) -> None:
        for _ in range(n):
            for nid in list(self.cores):
                self.tick(nid)
            if deliver:
                self.deliver()

    def start_campaign(self, nid: int) -> None:
        """Tick ``nid`` alone until it starts an election (messages stay queued)."""
        core = self.cores[nid]
        for _ in range(4 * core._cfg.election_ticks):
            if core.role is not Role.FOLLOWER:
                break
            self.tick(nid)

    def campaign(self, nid: int) -> None:
        """Tick ``nid`` alone until it starts an election, then let the network settle."""
        self.start_campaign(nid)
        self.deliver()

    def elect(self, nid: int) -> None:
        self.campaign(nid)
        assert self.cores[nid].role is Role.LEADER, (nid, self.cores[nid].role)

    def propose(self, nid: int, data: bytes) -> tuple[int, int]:
        idx = self.cores[nid].propose(data)
        self.process(nid)
        return idx

    # -- faults ---------------------------------------------------------------------------------

    def isolate(self, nid: int) -> None:
        for o in self.stores:
            if o != nid:
                self.cut.add((nid, o))
                self.cut.add((o, nid))

    def partition(self, *groups: Iterable[int]) -> None:
        gs = [set(g) for g in groups]
        for a_group in gs:
            for b_group in gs:
                if a_group is not b_group:
                    for a in a_group:
                        for b in b_group:
                            self.cut.add((a, b))

    def heal(self) -> None:
        self.cut.clear()

    def crash(self, nid: int) -> None:
        self.cores.pop(nid, None)
        self.queue = [m for m in self.queue if m.to != nid and m.frm != nid]

    def restart(self, nid: int) -> None:
        self._start(nid, conf_of(self.ids, self.learners) if nid in self.ids + self.learners else None)

    # -- views ------------------------------------------------------------------------------------

    def role(self, nid: int) -> Role:
        return self.cores[nid].role

    def leaders(self) -> list[int]:
        return [nid for nid, c in self.cores.items() if c.role is Role.LEADER]

    def leader(self) -> int:
        ls = self.leaders()
        assert len(ls) == 1, ls
        return ls[0]

    def log_terms(self, nid: int) -> list[int]:
        c = self.cores[nid]
        return [c.log_term(i) or 0 for i in range(c.first_index, c.last_index + 1)]

    def applied_data(self, nid: int) -> list[bytes]:
        return [e.data for e in self.stores[nid].applied if e.data and e.type is EntryType.NORMAL]
