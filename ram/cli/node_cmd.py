"""``ram node …``: run a node from its configuration file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ram.cli.errors import UserError
from ram.config import ConfigError, load_config
from ram.consensus.runtime.storage import StoreIdentityMismatch, StoreUnavailable
from ram.logs import configure
from ram.postgres.commands import PostgresCommandError


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
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    configure(config.log_format, config.log_level)
    try:
        asyncio.run(run_node(config))
    except (StoreUnavailable, StoreIdentityMismatch, PostgresCommandError, OSError, NodeFailed) as exc:
        raise UserError(" ".join(str(exc).split())) from None
    except KeyboardInterrupt:
        pass
