"""``ramctrl status`` and ``ramctrl health``: what the cluster looks like and whether its nodes are well."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import click

from ram.cli.ctl_context import Settings, client, json_option, print_json
from ram.cli.ctl_http import ApiClient, CtlError, normalize_url
from ram.cli.ctl_http import leader_api as leader_url
from ram.cli.ctl_table import render_table, stale_note


def _role(member: Mapping[str, Any]) -> str:
    role = str(member.get("role", "unknown"))
    if role == "replica" and member.get("sync_standby"):
        return "sync standby"
    return role


def _raft(member: Mapping[str, Any]) -> str:
    if member.get("is_raft_leader"):
        return "leader"
    return "learner" if member.get("is_learner") else "voter"


def _state(member: Mapping[str, Any]) -> str:
    """``streaming`` only for a replica the primary sees streaming (what patronictl users expect to
    see); a replica that runs without streaming says so; a member whose RAM is down while its
    PostgreSQL still streams is shown as exactly that, not as stopped."""
    state = str(member.get("state", "unknown"))
    if member.get("role") != "replica" or state != "running":
        return state
    ram_down = " (RAM down)" if member.get("ram_reachable") is False else ""
    streaming = member.get("streaming")
    if streaming is None and member.get("live"):
        streaming = member.get("seen_by_primary") == "streaming"
    if streaming is True or (streaming is None and member.get("following")):
        return "streaming" + ram_down
    if streaming is False:
        return "running, not streaming" + ram_down
    return state + ram_down


def _lag(member: Mapping[str, Any]) -> str:
    """Replay lag in MB (patronictl's unit), measured by the Raft leader."""
    if member.get("role") == "primary":
        return ""
    lag = member.get("lag_bytes")
    if not isinstance(lag, int):
        return "?" if member.get("live") is False else ""
    return f"{lag / 2**20:.1f}" if lag < 10 * 2**20 else str(round(lag / 2**20))


def _tags(member: Mapping[str, Any]) -> str:
    tags = member.get("tags") or {}
    out = [name for name in ("nofailover", "noloadbalance", "nosync") if tags.get(name)]
    priority = tags.get("failover_priority", 1)
    if priority != 1:
        out.append(f"priority={priority}")
    return ",".join(out)


def render_status(cluster: Mapping[str, Any]) -> str:
    """The cluster as a patronictl-like listing: a header line, the member table, banners."""
    name = cluster.get("cluster_name") or "?"
    cluster_id = cluster.get("cluster_id")
    head = [f"Cluster: {name}" + (f" ({cluster_id})" if cluster_id else "")]
    head.append(f"primary: {cluster.get('primary') or 'none'}")
    if cluster.get("timeline") is not None:
        head.append(f"timeline: {cluster['timeline']}")
    head.append(f"Raft leader: {cluster.get('raft_leader') or 'none'}, term {cluster.get('raft_term', '?')}")
    head.append(f"answered by {cluster.get('node', '?')}")
    members: Sequence[Mapping[str, Any]] = cluster.get("members") or []
    with_tags = any(_tags(m) for m in members)
    with_pending = any(m.get("pending_restart") for m in members)
    headers = (
        ["Member", "Host", "Role", "State", "TL", "Lag in MB", "Raft"]
        + (["Pending restart"] if with_pending else [])
        + (["Tags"] if with_tags else [])
    )
    rows = []
    for m in members:
        timeline = m.get("timeline")
        row = [
            str(m.get("name", "")), str(m.get("pg_address", "")), _role(m), _state(m),
            "" if timeline is None else str(timeline), _lag(m), _raft(m),
        ]
        pending = ", ".join(m.get("pending_restart") or [])
        rows.append(row + ([pending] if with_pending else []) + ([_tags(m)] if with_tags else []))
    lines = [" | ".join(head), render_table(headers, rows)]
    if cluster.get("maintenance"):
        reason = cluster.get("maintenance_reason")
        lines.append("Maintenance mode: on" + (f" ({reason})" if reason else ""))
    sync = cluster.get("synchronous") or {}
    if sync.get("mode", "off") != "off":
        standbys = ", ".join(sync.get("standbys") or []) or "none"
        lines.append(f"Synchronous mode: {sync['mode']}, num_sync {sync.get('num_sync')}, standbys: {standbys}")
    if cluster.get("pending_restart"):
        lines.append("Pending restart: " + ", ".join(cluster["pending_restart"]))
    note = stale_note(cluster)
    if note:
        lines.append(note)
    return "\n".join(lines)


@click.command()
@json_option
@click.option("--watch", "-w", type=click.FloatRange(min=0.5), metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C.")
def status(as_json: bool, watch: float | None) -> None:
    """Show the members, their roles, state, timeline and lag.

    The Raft column says which member leads Raft (it arbitrates failover); the Role column says
    which member is the PostgreSQL primary. Lag is in bytes of WAL behind the primary.

    \b
    Example:
      ramctrl --api node1:8008,node2:8008 status
      ramctrl status --watch 2
      ramctrl status --json | jq .primary
    """
    api = client()
    while True:
        cluster = _from_leader(api, api.request("GET", "/cluster"))
        if as_json:
            print_json(cluster)
        else:
            if watch:
                click.clear()
                click.echo(datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"))
            click.echo(render_status(cluster))
        if not watch:
            return
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return


def _from_leader(api: ApiClient, cluster: Any) -> Any:
    """The Raft leader's answer when another node answered: only the leader measures every member's
    lag and streaming (it hears all reports). Falls back to the first answer if it is unreachable."""
    if not isinstance(cluster, dict) or cluster.get("raft_leader") in (None, cluster.get("node")):
        return cluster
    leader_api = cluster.get("raft_leader_api")
    settings = click.get_current_context().find_object(Settings)
    if not leader_api or settings is None:
        return cluster
    # Over HTTPS, ask the leader over HTTPS too (a node advertises its API as host:port or http://).
    url = leader_url({"leader_api": leader_api}, api.urls[0] if api.urls else "")
    if url is None:
        return cluster
    try:
        with settings.client([url], read_timeout=5.0) as leader:
            answer = leader.request("GET", "/cluster")
    except CtlError:
        return cluster
    return answer if isinstance(answer, dict) else cluster


def _check(api: ApiClient, path: str) -> Mapping[str, Any]:
    body = api.request("GET", path, ok=(503,))
    if not isinstance(body, dict):
        raise CtlError(f"GET {path}: unexpected answer")
    return body


def _probe(url: str, settings: Settings) -> dict[str, Any]:
    """One node's /health and /readiness; an unreachable node is a result, not a failure of the command."""
    result: dict[str, Any] = {"api": url}
    try:
        with settings.client([url], read_timeout=10.0) as api:
            health = _check(api, "/health")
            ready = _check(api, "/readiness")
    except CtlError as exc:  # unreachable, or an error answer
        result.update(ok=False, reachable=False, reason=exc.message)
        return result
    reasons = [r for r in (health.get("reason"), ready.get("reason")) if r]
    result.update(
        ok=bool(health.get("ok")) and bool(ready.get("ok")),
        reachable=True,
        name=health.get("name"),
        healthy=bool(health.get("ok")),
        ready=bool(ready.get("ok")),
        raft_role=health.get("raft_role"),
        raft_leader=health.get("raft_leader"),
        role=health.get("role"),
        state=health.get("state"),
        reason="; ".join(dict.fromkeys(reasons)),
    )
    return result


@click.command()
@json_option
@click.option("--members", "use_members", is_flag=True,
              help="Check every member's own API (addresses from the cluster) instead of the --api URLs.")
def health(as_json: bool, use_members: bool) -> None:
    """Check each node: Raft and its store work (/health) and it has caught up (/readiness).

    Exits 1 when any checked node is unhealthy or unreachable, so it fits in scripts.

    \b
    Example:
      ramctrl --api node1:8008 --api node2:8008 --api node3:8008 health
      ramctrl --api node1:8008 health --members
    """
    settings = click.get_current_context().find_object(Settings)
    assert settings is not None
    if use_members:
        cluster = client().request("GET", "/cluster")
        # Members advertise host:port; reached over HTTPS, they are asked over HTTPS too.
        scheme = "https" if settings.urls[0].startswith("https://") else "http"
        urls = [normalize_url(m["api_address"], scheme) for m in cluster.get("members", [])]
    else:
        urls = settings.urls
    results = [_probe(url, settings) for url in urls]
    if as_json:
        print_json(results)
    else:
        rows = [
            [
                r["api"], str(r.get("name") or ""), str(r.get("raft_role") or ""), str(r.get("role") or ""),
                str(r.get("state") or ""),
                "unreachable" if not r["reachable"] else ("ok" if r["healthy"] else "FAIL"),
                "" if not r["reachable"] else ("yes" if r["ready"] else "no"),
                str(r.get("reason") or ""),
            ]
            for r in results
        ]
        click.echo(render_table(["API", "Member", "Raft", "Role", "State", "Health", "Ready", "Reason"], rows))
    bad = [r["api"] for r in results if not r["ok"]]
    if bad:
        raise CtlError(f"{len(bad)} of {len(results)} nodes not healthy: {', '.join(bad)}")
