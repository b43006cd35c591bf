"""``ram cluster up|down|kill``: a local cluster on this machine, for trying RAM and for tests."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

from ram.cli.errors import UserError, friendly_errors
from ram.localcluster import (
    ClusterInfo,
    kill_member,
    pid_alive,
    plan,
    prepare,
    start_node,
    stop_left_postgres,
    stop_nodes,
    store_server,
    sync_settings,
    upgrade_api_security,
)
from ram.postgres.commands import PostgresCommandError

DEFAULT_DIR = Path("ram-cluster")


@click.group("cluster")
def cluster_group() -> None:
    """Run a local cluster on this machine."""


def _cluster_state(info: ClusterInfo) -> dict[str, Any] | None:
    import httpx  # here, not at the top: every `ram node run` imports this module and never needs it

    headers, verify = info.api_headers(), info.api_verify()
    for member in info.members:
        try:
            reply = httpx.get(f"{member.api_url}/cluster?stale=ok", timeout=2.0, headers=headers, verify=verify)
        except httpx.HTTPError:
            continue
        if reply.status_code == 200:
            doc: dict[str, Any] = reply.json()
            return doc
        if reply.status_code in (401, 403):
            raise UserError(f"{member.api_url} refused the cluster's admin token from {info.admin_token_file} "
                            f"(HTTP {reply.status_code}); see {member.log_file}")
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
    click.echo(f"API tokens (mode 0600): admin {info.admin_token_file}, read-only {info.read_token_file}")
    if info.ca_file is not None:
        click.echo(f"API over HTTPS; the cluster's CA certificate: {info.ca_file}")
    click.echo("")
    primary = str(doc.get("primary") or info.members[0].name)
    other = next((m.name for m in info.members if m.name != primary), primary)
    where = shlex.quote(info.dir)
    click.echo("Next:")
    # The commands live next to the interpreter running us (the venv's bin): on PATH, the first
    # `ramctrl status` works in any shell, also one where the venv was never activated.
    click.echo(f"  export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH")
    # The token's file, never the token: a command line (and a terminal's scrollback) is no place for it.
    exports = f"RAM_API={apis} RAM_TOKEN_FILE={shlex.quote(str(info.admin_token_file))}"
    if info.ca_file is not None:
        exports += f" RAM_CACERT={shlex.quote(str(info.ca_file))}"
    click.echo(f"  export {exports} PGPASSFILE={shlex.quote(str(info.pgpass_file))}")
    click.echo("  ramctrl status                      # members, roles, lag, Raft leader")
    click.echo("  ramctrl events --follow             # live cluster events (in a second terminal)")
    click.echo(f"  psql '{info.writer_dsn()}' -c 'SELECT 1'")
    click.echo(f"  ram cluster kill {primary} --dir {where}   # kill -9 the primary's ram and postmaster")
    click.echo("  ramctrl status                      # a replica took over within ~3 s")
    click.echo(f"  ram cluster up --dir {where}       # restarts {primary}: it rejoins as a replica")
    click.echo(f"  ramctrl switchover --to {other}")
    click.echo(f"  ram cluster down --dir {where} [--purge]")


@cluster_group.command("up")
@click.option("--nodes", default=3, show_default=True, help="Number of nodes (1-9).")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=DEFAULT_DIR, show_default=True,
              help="Where the cluster lives (data, configs, logs, cluster.json).")
@click.option("--base-port", default=15432, show_default=True,
              help="PostgreSQL of node i listens on base+i-1; APIs on base+100.., Raft on base+200..")
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait until every member is healthy.")
@click.option("--sync", "sync_mode", type=click.Choice(["off", "on", "quorum"]), default="off", show_default=True,
              help="Synchronous replication of a new cluster: off (asynchronous); on: every commit waits for "
                   "the first N standbys (FIRST N); quorum: for any N of them (ANY N).")
@click.option("--strict", is_flag=True,
              help="With --sync on|quorum: never fall back to asynchronous replication (writes wait while no "
                   "synchronous standby is healthy).")
@click.option("--sync-count", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="With --sync on|quorum: how many standbys must confirm each commit (at most nodes-1).")
@click.option("--tls", is_flag=True,
              help="The nodes' APIs speak HTTPS, with certificates from a CA made for this cluster (DIR/tls/).")
@click.pass_context
@friendly_errors(PostgresCommandError, ValueError)
def cluster_up(ctx: click.Context, nodes: int, directory: Path, base_port: int, timeout: float, sync_mode: str,
               strict: bool, sync_count: int, tls: bool) -> None:
    """Build and start a local cluster (or restart an existing one in DIR).

    --sync, --strict, --sync-count and --tls go into every node's configuration when the cluster
    is created; an existing cluster keeps what it was created with.

    The APIs require tokens: an admin and a read-only token are created in DIR (admin.token,
    read.token, mode 0600) and the "Next:" lines export RAM_TOKEN_FILE for ramctrl.

    \b
    Example:
      ram cluster up --nodes 3 --dir ./ram-cluster
      ram cluster up --dir /var/tmp/ram-sync --base-port 16432 --sync on
      ram cluster up --dir /var/tmp/ram-q --base-port 17432 --sync quorum --strict
      ram cluster up --dir /var/tmp/ram-tls --base-port 18432 --tls
    """
    existing = (directory / "cluster.json").exists()
    given = [f"--{name.replace('_', '-')}" for name in ("sync_mode", "strict", "sync_count", "tls")
             if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
    given = ["--sync" if g == "--sync-mode" else g for g in given]
    if existing:
        if given:
            raise UserError(
                f"{directory} already holds a cluster; {', '.join(given)} only apply when creating one "
                f"(remove it first: ram cluster down --dir {shlex.quote(str(directory))} --purge --force)"
            )
        info = ClusterInfo.load(directory)
        click.echo(f"restarting the cluster in {info.dir}")
        if upgrade_api_security(info):
            click.echo(f"  its APIs now require tokens: created {info.admin_token_file} and {info.read_token_file}")
        asyncio.run(store_server(info).start())
    else:
        ha = sync_settings(sync_mode, strict=strict, count=sync_count, nodes=nodes)
        info = plan(directory, nodes, base_port, tls=tls)
        mode = "" if sync_mode == "off" else f", synchronous mode {sync_mode}" + (" (strict)" if strict else "")
        click.echo(f"creating a {nodes}-node cluster in {info.dir}{mode}")
        asyncio.run(prepare(info, ha))
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
@click.option("--force", is_flag=True, help="Do not ask before purging (needed when stdin is not a terminal).")
@friendly_errors(PostgresCommandError, ValueError)
def cluster_down(directory: Path, purge: bool, force: bool) -> None:
    """Stop a local cluster; the data stays unless --purge.

    --purge deletes the cluster's directory after a confirmation; without a terminal to ask on,
    it refuses (and changes nothing) unless --force.

    \b
    Example:
      ram cluster down --dir ./ram-cluster
      ram cluster down --dir ./ram-cluster --purge --force
    """
    info = ClusterInfo.load(directory)
    if purge and not force:
        # Asked before anything is stopped: "no" (or no terminal to answer on) leaves all as it was.
        if not sys.stdin.isatty():
            raise UserError(f"--purge would delete {info.dir} and all its data; stdin is not a terminal to "
                            "confirm on: pass --force to purge without asking")
        if not click.confirm(f"Stop the cluster and delete {info.dir} with all its data?", default=False):
            raise UserError("not confirmed; nothing was stopped or deleted")
    for member in stop_nodes(info.members):
        click.echo(f"stopped {member.name} (pid {member.pid})")
    for member, pid in stop_left_postgres(info.members):
        click.echo(f"stopped {member.name}'s PostgreSQL (pid {pid}), which its node left running")
    for member in info.members:
        member.pid = None
    info.save()
    asyncio.run(store_server(info).stop())
    if purge:
        shutil.rmtree(info.dir)
        click.echo(f"removed {info.dir}")


@cluster_group.command("kill")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=DEFAULT_DIR, show_default=True,
              help="The cluster's directory.")
@click.option("--postgres-only", is_flag=True, help="Kill only the member's postmaster (ram restarts it in place).")
@click.option("--ram-only", is_flag=True,
              help="Kill only the member's ram process (its fence guard then stops a primary's PostgreSQL).")
@friendly_errors(ValueError)
def cluster_kill(name: str, directory: Path, postgres_only: bool, ram_only: bool) -> None:
    """Crash a member on purpose: kill -9 its ram process and its PostgreSQL postmaster.

    For trying failover: the pids come from DIR/cluster.json and the member's postmaster.pid, so
    no digging is needed. `ram cluster up` starts the member again; it rejoins as a replica.

    \b
    Example:
      ram cluster kill pg1 --dir ./ram-cluster
      ram cluster kill pg2 --postgres-only
    """
    if postgres_only and ram_only:
        raise click.UsageError("--postgres-only and --ram-only exclude each other; give one (or neither for both)")
    info = ClusterInfo.load(directory)
    member = next((m for m in info.members if m.name == name), None)
    if member is None:
        raise UserError(f"no member named {name!r} in {info.dir}; members: {', '.join(m.name for m in info.members)}")
    killed = kill_member(member, ram=not postgres_only, postgres=not ram_only)
    if not killed:
        what = "its postmaster" if postgres_only else "its ram process" if ram_only else "neither ram nor postgres"
        raise UserError(f"{name}: nothing to kill, {what} is not running")
    for what, pid in killed:
        click.echo(f"killed {name}'s {what} (pid {pid}) with SIGKILL")
