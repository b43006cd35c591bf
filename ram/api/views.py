"""Pure functions from the node's projection to what the API shows (shared by routes and metrics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ram.api.schemas import MemberOut, MemberStateName, MemberTagsOut, PgRole
from ram.cluster.node import ClusterNode
from ram.config import api_address
from ram.ha.live import LocalLive, MemberLive
from ram.projections.state import ClusterState, Member


def member_role(state: ClusterState, member: Member) -> PgRole:
    """primary: the committed primary; replica: reported or following; unknown otherwise."""
    if state.primary == member.name:
        return "primary"
    if member.reported_role == "replica" or member.following is not None:
        return "replica"
    return "unknown"


def member_state(member: Member, live: MemberLive | None = None) -> MemberStateName:
    """From committed health, corrected by live facts: a member whose RAM stopped reporting while
    the primary still sees its PostgreSQL stream is running, not stopped."""
    if member.fenced:
        return "fenced"
    if live is not None and not live.reporting and live.seen_by_primary == "streaming":
        return "running"
    if member.healthy is None and member.pg_running is None:
        return "unknown"
    if member.pg_running is False:
        return "stopped"
    if member.healthy is False:
        return "unhealthy"
    return "running"


def raft_leader_name(node: ClusterNode) -> str | None:
    """Name of the Raft leader this node knows right now (live, not only the recorded one)."""
    leader = node.leader_id
    if not leader:
        return None
    for member in node.state.members.values():
        if member.node_id == leader:
            return member.name
    if leader == node.config.node_id:
        return node.config.name
    return f"node{leader}"


def api_url(address: str, scheme: str = "http") -> str:
    """``host:port`` (IPv6 as ``[::1]:port``) -> ``http://host:port``: what a client can use directly."""
    host, _, port = address.rpartition(":")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def api_scheme(node: ClusterNode) -> str:
    """The members' API scheme: a cluster's APIs speak HTTPS when this node's does (members are
    configured alike; a member's address alone does not say)."""
    return "https" if node.config.api.tls_cert is not None else "http"


def leader_api_url(node: ClusterNode, leader_id: int | None = None) -> str | None:
    """The HTTP API of the Raft leader (``leader_id``, default: the one this node knows), or None.

    Writes and read barriers go to the leader; an operator or client pointed at a node that can not
    serve them needs the leader's *API*, not its Raft address, to retry there. The address is the one
    the cluster state records for that member (this node's own config for itself).
    """
    leader = node.leader_id if leader_id is None else leader_id
    if not leader:
        return None
    for member in node.state.members.values():
        if member.node_id == leader:
            return api_url(member.api_address, api_scheme(node))
    if leader == node.config.node_id:
        return api_url(api_address(node.config), api_scheme(node))
    return None


def member_out(
    node: ClusterNode, state: ClusterState, member: Member, live: Mapping[str, MemberLive] | None = None,
    local: LocalLive | None = None,
) -> MemberOut:
    """A member as the API shows it: committed facts, plus what this node measures live (every member
    on the Raft leader, only itself elsewhere)."""
    tags = member.tags
    m_live = (live or {}).get(member.name)
    measured: dict[str, Any] = {}
    if m_live is not None:
        measured = {
            "lsn": m_live.wal_position if m_live.wal_position is not None else member.lsn,
            "lag_bytes": m_live.replay_lag_bytes,
            "receive_lag_bytes": m_live.receive_lag_bytes,
            "streaming": m_live.streaming,
            "streaming_reason": m_live.streaming_reason,
            "ram_reachable": m_live.reporting,
            "seen_by_primary": m_live.seen_by_primary,
            "pending_restart": list(m_live.pending_restart),
            "live": True,
        }
    elif local is not None and member.name == node.config.name:
        measured = {
            "lag_bytes": local.replay_lag_bytes,
            "receive_lag_bytes": local.receive_lag_bytes,
            "streaming": local.streaming if local.in_recovery else None,
            "streaming_reason": local.reason,
            "ram_reachable": True,
            "pending_restart": list(local.pending_restart),
            "live": True,
        }
    else:
        measured = {"lag_bytes": None}
    return MemberOut(
        **measured,
        name=member.name,
        node_id=member.node_id,
        api_address=member.api_address,
        raft_address=member.raft_address,
        pg_address=f"{member.pg_host}:{member.pg_port}",
        role=member_role(state, member),
        state=member_state(member, m_live),
        healthy=member.healthy,
        health_reason=member.health_reason,
        timeline=member.timeline,
        **({} if "lsn" in measured else {"lsn": member.lsn}),
        following=member.following,
        fenced=member.fenced,
        lease_s=member.lease_s,
        tags=MemberTagsOut(
            nofailover=tags.nofailover,
            noloadbalance=tags.noloadbalance,
            nosync=tags.nosync,
            failover_priority=tags.failover_priority,
        ),
        is_learner=member.is_learner,
        is_raft_leader=node.leader_id != 0 and member.node_id == node.leader_id,
        sync_standby=member.name in state.sync_standbys,
    )
