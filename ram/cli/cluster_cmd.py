"""``ram cluster up|down``: a local cluster on this machine, for trying RAM and for tests."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

from ram.cli.errors import UserError, friendly_errors
from ram.localcluster import ClusterInfo, pid_alive, plan, prepare, start_node, stop_nodes, store_server
from ram.postgres.commands import PostgresCommandError

DEFAULT_DIR = Path("ram-cluster")


@click.group("cluster")
def cluster_group() -> None:
    """Run a local cluster on this machine."""


def _cluster_state(info: ClusterInfo) -> dict[str, Any] | None:
    import httpx  # here, not at the top: every `ram node run` imports this module and never needs it

    for member in info.members:
        try:
            reply = httpx.get(f"{member.api_url}/cluster?stale=ok", timeout=2.0)
        except httpx.HTTPError:
            continue
        if reply.status_code == 200:
            doc: dict[str, Any] = reply.json()
            return doc
    return None


def _ready(doc: dict[str, Any] | None, expected: int) -> tuple[bool, str]:
    if doc is None:
        return False, "waiting for the nodes' APIs"
    members = doc.get("members", [])
    if not doc.get("raft_leader"):
        return False, "electing a Raft leader"
    if not doc.get("primary"):
        return False, "initialising the primary"
    healthy = [m for m in members if m.get("healthy")]
    if len(healthy) < expected:
        return False, f"{len(healthy)}/{expected} members healthy (replicas cloning and streaming)"
    return True, "all members healthy"


def _wait_healthy(info: ClusterInfo, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    started = time.monotonic()
    doc: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        for member in info.members:
            if not pid_alive(member.pid):
                raise UserError(f"node {member.name} exited; see {member.log_file}")
        doc = _cluster_state(info)
        ok, what = _ready(doc, len(info.members))
        if what != last:
            click.echo(f"  [{time.monotonic() - started:5.1f}s] {what}")
            last = what
        if ok and doc is not None:
            return doc
        time.sleep(0.25)
    raise UserError(f"cluster not healthy after {timeout:g} s ({last}); see the logs in {info.dir}/node*/ram.log")


def _print_summary(info: ClusterInfo, doc: dict[str, Any]) -> None:
    click.echo("")
    header = f"{'Member':<8} {'Host':<22} {'Role':<8} {'Raft':<8} {'TL':>3}  {'Lag':>10}"
    click.echo(header)
    click.echo("-" * len(header))
    for m in doc.get("members", []):
        addr = m.get("pg_address") or "-"
        raft = "leader" if m.get("is_raft_leader") else ("learner" if m.get("is_learner") else "voter")
        lag = m.get("lag_bytes")
        click.echo(
            f"{m['name']:<8} {addr:<22} {m.get('role') or '-':<8} {raft:<8} {m.get('timeline') or '-':>3}  "
            f"{'-' if lag is None else lag:>10}"
        )
    apis = ",".join(m.api_url for m in info.members)
    click.echo("")
    click.echo(f"writers: {info.writer_dsn()}")
    click.echo(f"readers: {info.reader_dsn()}")
    click.echo(f"(the postgres password is in {info.pgpass_file}; export PGPASSFILE={info.pgpass_file})")
    click.echo("")
    click.echo("Next:")
    click.echo(f"  export RAM_API={apis} PGPASSFILE={info.pgpass_file}")
    click.echo("  ramctrl status                      # members, roles, lag, Raft leader")
    click.echo("  ramctrl events --follow             # live cluster events (in a second terminal)")
    click.echo(f"  psql '{info.writer_dsn()}' -c 'SELECT 1'")
    click.echo("  kill -9 the primary's ram node and postmaster, then watch the failover")
    click.echo("  ramctrl switchover --to pg2")
    click.echo(f"  ram cluster down --dir {info.dir} [--purge]")


@cluster_group.command("up")
@click.option("--nodes", default=3, show_default=True, help="Number of nodes (1-9).")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=DEFAULT_DIR, show_default=True,
              help="Where the cluster lives (data, configs, logs, cluster.json).")
@click.option("--base-port", default=15432, show_default=True,
              help="PostgreSQL of node i listens on base+i-1; APIs on base+100.., Raft on base+200..")
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait until every member is healthy.")
@friendly_errors(PostgresCommandError, ValueError)
def cluster_up(nodes: int, directory: Path, base_port: int, timeout: float) -> None:
    """Build and start a local cluster (or restart an existing one in DIR).

    \b
    Example:
      ram cluster up --nodes 3 --dir ./ram-cluster
    """
    existing = (directory / "cluster.json").exists()
    if existing:
        info = ClusterInfo.load(directory)
        click.echo(f"restarting the cluster in {info.dir}")
        asyncio.run(store_server(info).start())
    else:
        info = plan(directory, nodes, base_port)
        click.echo(f"creating a {nodes}-node cluster in {info.dir}")
        asyncio.run(prepare(info))
    for member in info.members:
        if not pid_alive(member.pid):
            start_node(info, member)
    click.echo("waiting for the cluster to become healthy:")
    doc = _wait_healthy(info, timeout)
    _print_summary(info, doc)


@cluster_group.command("down")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=DEFAULT_DIR, show_default=True,
              help="The cluster's directory.")
@click.option("--purge", is_flag=True, help="Also delete the cluster's data (asks unless --force).")
@click.option("--force", is_flag=True, help="Do not ask before purging.")
@friendly_errors(PostgresCommandError, ValueError)
def cluster_down(directory: Path, purge: bool, force: bool) -> None:
    """Stop a local cluster; the data stays unless --purge.

    \b
    Example:
      ram cluster down --dir ./ram-cluster --purge --force
    """
    info = ClusterInfo.load(directory)
    for member in stop_nodes(info.members):
        click.echo(f"stopped {member.name} (pid {member.pid})")
    for member in info.members:
        member.pid = None
    info.save()
    asyncio.run(store_server(info).stop())
    if purge:
        if not force and sys.stdin.isatty():
            click.confirm(f"Delete {info.dir} and all its data?", abort=True)
        shutil.rmtree(info.dir)
        click.echo(f"removed {info.dir}")
