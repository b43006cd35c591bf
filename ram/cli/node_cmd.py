"""``ram node …``: run a node from its configuration file."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import click

from ram.cli.errors import UserError
from ram.config import ConfigError, load_config
from ram.consensus.runtime.storage import StoreIdentityMismatch, StoreUnavailable
from ram.logs import configure
from ram.postgres.commands import PostgresCommandError
from ram.security import ApiSecurity, SecurityConfigError


@click.group("node")
def node_group() -> None:
    """Run a RAM node."""


@node_group.command("run")
@click.option(
    "--config", "config_path", required=True, type=click.Path(path_type=Path), help="Node config (.toml or .yaml)."
)
def node_run(config_path: Path) -> None:
    """Run a node: store, Raft consensus and (later) the PostgreSQL it manages.

    Stops cleanly on SIGTERM (a leader hands over leadership first).

    \b
    Example:
      ram node run --config /etc/ram/node1.toml
    """
    from ram.node_process import NodeFailed, run_node

    try:
        config = load_config(config_path)
        # The API's tokens and TLS files are checked now, before Raft or PostgreSQL start: a node that
        # would refuse every request (or serve a secret file others can read) must not start at all.
        ApiSecurity.from_settings(config.api)
    except (ConfigError, SecurityConfigError) as exc:
        raise UserError(str(exc)) from None
    configure(config.log_format, config.log_level)
    try:
        asyncio.run(run_node(config))
    except (StoreUnavailable, StoreIdentityMismatch, PostgresCommandError, OSError, NodeFailed,
            SecurityConfigError) as exc:
        raise UserError(" ".join(str(exc).split())) from None
    except KeyboardInterrupt:
        pass


def _peer(value: str) -> dict[str, object]:
    """``ID=NAME@HOST:PORT`` → a peer entry (a clear error for anything else)."""
    try:
        ident, rest = value.split("=", 1)
        name, address = rest.split("@", 1)
        return {"id": int(ident), "name": name, "address": address}
    except ValueError:
        raise click.BadParameter(f"expected ID=NAME@HOST:PORT, got {value!r}") from None


@node_group.command("init")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Config file to write.")
@click.option("--cluster-id", required=True, help="Cluster identity (the same on every member).")
@click.option("--node-id", type=int, required=True, help="This node's Raft id (unique, positive).")
@click.option("--name", required=True, help="This node's member name.")
@click.option("--listen", required=True, help="Raft listen address HOST:PORT.")
@click.option("--peer", "peers", multiple=True, help="Another member as ID=NAME@HOST:PORT (repeatable).")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True, help="Directory for this node's files.")
@click.option("--bootstrap", is_flag=True, help="This node starts a NEW cluster with the listed peers.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def node_init(
    output: Path, cluster_id: str, node_id: int, name: str, listen: str, peers: tuple[str, ...],
    data_dir: Path, bootstrap: bool, force: bool,
) -> None:
    """Write a commented node configuration (validated before it is written).

    \b
    Example:
      ram node init -o /etc/ram/pg1.toml --cluster-id prod --node-id 1 --name pg1 \\
        --listen 10.0.0.1:7400 --peer 2=pg2@10.0.0.2:7400 --peer 3=pg3@10.0.0.3:7400 \\
        --data-dir /var/lib/ram/pg1 --bootstrap
    """
    from ram.config import config_template, parse_config

    if output.exists() and not force:
        raise UserError(f"{output} exists; use --force to overwrite it")
    doc = {
        "cluster_id": cluster_id, "node_id": node_id, "name": name, "data_dir": str(data_dir.absolute()),
        "bootstrap": bootstrap, "raft": {"listen": listen, "peers": [_peer(p) for p in peers]},
    }
    try:
        parse_config(doc, "the new config")
        text = config_template(doc)
        parse_config(tomllib.loads(text), str(output))
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    click.echo(f"wrote {output}; edit it, then: ram node run --config {output}")
