"""Hypothesis strategies: valid events and valid stored-event sequences.

Names and node ids come from small pools so that events often refer to existing members (and
sometimes to unknown ones, or clash), which is where fold rules matter.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import strategies as st

from ram.eventstore import events as e

NAMES = ("n1", "n2", "n3", "db-4")
NODE_IDS = (1, 2, 3, 4, 5)

names = st.sampled_from(NAMES)
opt_names = st.none() | names
node_ids = st.sampled_from(NODE_IDS)
# Quotes, backslashes and non-ASCII exercise the JSON/SQL escaping; NUL is not valid text.
texts = st.text(alphabet="ab \"'\\é日-", max_size=8)
addresses = st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(["10.0.0.1", "host-a", "[::1]"]), st.integers(1, 65535))
hosts = st.sampled_from(["10.0.0.1", "host-a", "/var/run/postgresql"])
ports = st.integers(1, 65535)
lsns = st.integers(0, 2**64 - 1)
timelines = st.integers(1, 4)
timestamps = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
config_keys = st.sampled_from(["max_connections", "work_mem", "ttl", "loop_wait", "synchronous_mode", "naïve"])
json_leaves = (
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.integers(-1000, 1000).map(lambda x: x / 4) | texts
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=6,
)
non_null_json = st.recursive(
    json_leaves.filter(lambda v: v is not None),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=6,
)

tags = st.builds(
    e.MemberTags,
    nofailover=st.booleans(),
    noloadbalance=st.booleans(),
    nosync=st.booleans(),
    failover_priority=st.integers(0, 10),
)
member_specs = st.builds(
    e.MemberSpec,
    name=names,
    node_id=node_ids,
    raft_address=addresses,
    api_address=addresses,
    pg_host=hosts,
    pg_port=ports,
    tags=tags,
)


@st.composite
def bootstraps(draw: st.DrawFn) -> e.ClusterBootstrapped:
    specs = draw(st.lists(member_specs, min_size=1, max_size=4, unique_by=(lambda m: m.name, lambda m: m.node_id)))
    return e.ClusterBootstrapped(
        cluster_id=draw(st.sampled_from(["c-1", "c-2"])),
        cluster_name=draw(st.sampled_from(["main", "prod"])),
        members=tuple(specs),
        dynamic_config=draw(st.dictionaries(config_keys, json_values, max_size=3)),
    )


@st.composite
def sync_changes(draw: st.DrawFn) -> e.SynchronousStandbysChanged:
    mode = draw(st.sampled_from(["off", "on", "quorum"]))
    if mode == "off":
        return e.SynchronousStandbysChanged(mode="off", num_sync=0, standbys=(), reason=draw(texts))
    standbys = draw(st.lists(names, unique=True, max_size=4))
    return e.SynchronousStandbysChanged(
        mode=mode, num_sync=draw(st.integers(0, len(standbys))), standbys=tuple(standbys), reason=draw(texts)
    )


actions = st.sampled_from(["restart", "reinit"])
candidates = st.builds(e.CandidateInfo, name=names, lsn=st.none() | lsns, eligible=st.booleans(), note=texts)

config_changes = st.builds(e.ConfigChange, old=json_values, new=st.none() | non_null_json)

events: st.SearchStrategy[e.Event] = st.one_of(
    bootstraps(),
    st.builds(
        e.MemberAdded,
        name=names,
        node_id=node_ids,
        raft_address=addresses,
        api_address=addresses,
        pg_host=hosts,
        pg_port=ports,
        tags=tags,
        as_learner=st.booleans(),
    ),
    st.builds(e.LearnerPromoted, name=names, node_id=node_ids),
    st.builds(e.MemberRemoved, name=names, node_id=node_ids, reason=texts),
    st.builds(e.MemberTagsChanged, name=names, tags=tags),
    st.builds(e.RaftLeaderElected, term=st.integers(1, 4), leader_name=names, leader_node_id=node_ids),
    st.builds(
        e.MemberHealthChanged,
        name=names,
        healthy=st.booleans(),
        pg_running=st.booleans(),
        role=st.sampled_from(["primary", "replica", "unknown"]),
        timeline=st.none() | timelines,
        lsn=st.none() | lsns,
        lag_bytes=st.none() | st.integers(0, 2**40),
        reason=texts,
    ),
    st.builds(
        e.FailoverStarted,
        old_primary=opt_names,
        reason=texts,
        candidates=st.lists(candidates, max_size=3).map(tuple),
        chosen=opt_names,
    ),
    st.builds(
        e.FailoverCompleted,
        old_primary=opt_names,
        new_primary=names,
        timeline=timelines,
        lsn=lsns,
        duration_ms=st.integers(0, 10**6),
    ),
    st.builds(e.FailoverFailed, old_primary=opt_names, reason=texts),
    st.builds(
        e.SwitchoverRequested,
        primary=names,
        candidate=opt_names,
        scheduled_at=st.none() | timestamps,
        requested_by=texts,
        reason=texts | texts.map(lambda t: ("accepted by the arbiter: " + t)[:1000]),  # no longer special
    ),
    st.builds(e.SwitchoverAccepted, primary=names, candidate=names, reason=texts),
    st.builds(
        e.SwitchoverCompleted,
        old_primary=names,
        new_primary=names,
        timeline=timelines,
        lsn=lsns,
        duration_ms=st.integers(0, 10**6),
    ),
    st.builds(e.SwitchoverFailed, primary=names, candidate=opt_names, reason=texts),
    st.builds(e.PrimaryPromoted, name=names, timeline=timelines, lsn=lsns),
    st.builds(e.ReplicaFollowing, name=names, primary=names),
    st.builds(e.ReplicaRejoined, name=names, primary=names, method=st.sampled_from(["rewind", "clone"])),
    sync_changes(),
    st.builds(e.MaintenanceModeChanged, enabled=st.booleans(), reason=texts, by=texts),
    st.builds(
        e.DynamicConfigChanged,
        changes=st.dictionaries(config_keys, config_changes, min_size=1, max_size=3),
        pending_restart=st.lists(config_keys, max_size=3).map(tuple),
        by=texts,
    ),
    st.builds(e.NodeFenced, name=names, reason=texts, lease_expired_at_ms=st.none() | st.integers(0, 2**45)),
    st.builds(e.CommandRejected, command=st.sampled_from(["add_member", "set_tags"]), reason=texts),
    st.builds(e.MemberActionRequested, name=names, action=actions, requested_by=texts),
    st.builds(e.MemberActionCompleted, name=names, action=actions, ok=st.booleans(), message=texts),
    st.builds(e.CallbackRan, name=names, hook=st.sampled_from(["on_start", "on_stop", "on_role_change"]),
              role=st.sampled_from(["primary", "replica", "unknown"]),
              outcome=st.sampled_from(["ok", "failed", "timeout", "error"]),
              exit_code=st.none() | st.integers(0, 255), duration_ms=st.integers(0, 10**6), output=texts),
    st.builds(e.MemberLeaseAnnounced, name=names,
              lease_s=st.sampled_from([0.5, 1.0, 2.5, 30.0]) | st.floats(0.001, 3600, allow_nan=False)),
)


@st.composite
def stored_sequences(draw: st.DrawFn, max_size: int = 30) -> list[e.StoredEvent]:
    """A valid log: positions increase (with gaps), several events may share a position."""
    evs: list[e.Event] = draw(st.lists(events, max_size=max_size))
    if draw(st.integers(0, 4)) > 0:  # mostly a bootstrapped cluster, sometimes events before/without one
        evs.insert(0, draw(bootstraps()))
    out: list[e.StoredEvent] = []
    position = draw(st.integers(1, 3))
    sub = 0
    term = 1
    for i, ev in enumerate(evs):
        if i > 0:
            if draw(st.integers(0, 3)) == 0:
                sub += 1
            else:
                position += draw(st.integers(1, 3))
                sub = 0
                term += draw(st.integers(0, 1))
        out.append(
            e.StoredEvent(
                position=position,
                sub=sub,
                term=term,
                proposer=draw(st.integers(0, 6)),
                ts=draw(timestamps),
                event=ev,
            )
        )
    return out
