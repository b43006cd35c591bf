"""``ram``: run a node, manage its store, and (later) local clusters."""

from __future__ import annotations

import click

from ram import __version__
from ram.cli.cluster_cmd import cluster_group
from ram.cli.node_cmd import node_group
from ram.cli.store_cmd import store_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ram")
def cli() -> None:
    """RAM: PostgreSQL high availability over Raft.

    \b
    Example:
      ram store upgrade --dsn postgresql://postgres@127.0.0.1:5432/ram_store
    """


cli.add_command(cluster_group)
cli.add_command(node_group)
cli.add_command(store_group)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
