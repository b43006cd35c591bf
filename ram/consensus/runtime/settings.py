"""What the Raft runtime needs to know to run: its own small settings object.

The runtime does not read the node configuration (``ram.config``): the application that owns it
builds these from whatever configuration it has (RAM's node TOML, a test's literals), so that the
consensus package can be run, tested and understood on its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """Another member as this node first knows it: how to reach it and the name its certificate carries."""

    id: int
    name: str
    address: str  # host:port


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Identity, timing and log-compaction settings of one Raft node."""

    cluster_id: str
    node_id: int
    name: str
    listen: str  # host:port
    peers: tuple[PeerSpec, ...] = ()
    tick_ms: int = 50
    heartbeat_ticks: int = 2
    election_ticks: int = 12
    pre_vote: bool = True
    check_quorum: bool = True
    #: How long a proposal (or a forwarded one, or a read barrier) waits before failing.
    proposal_timeout_s: float = 10.0
    #: Take a snapshot and compact the log every this many applied entries.
    snapshot_entries: int = 10_000
    #: Start a brand-new cluster whose voters are this node and ``peers``.
    bootstrap: bool = False
    #: Applied entries are written with ``synchronous_commit = off`` (their log is durable already);
    #: at most this long after the last one, a small synchronous write seals them (and finds out
    #: whether a store crash lost some of them, so that they are applied again).
    seal_interval_s: float = 0.5
    #: Decided entries are written to the store (one statement for all of them) at most this long
    #: after the first of them was decided; at once when somebody waits to see one there. Their
    #: proposers are answered when decided, before this write. Each write statement has a fixed
    #: cost in the store and a round trip: gathering 50 ms of entries (as etcd's backend gathers
    #: 100 ms) took ~10 % off the whole machine's CPU per entry under load in bench/raft_bench.py.
    write_delay_s: float = 0.05
    #: Which release of the replicated application this node runs, announced to every peer when
    #: they connect (``RaftNode.peer_app_level``): the application proposes an entry that only a
    #: newer release can apply only when no member is known to run an older one.
    app_level: int = 0

    @property
    def election_s(self) -> float:
        return self.election_ticks * self.tick_ms / 1000
