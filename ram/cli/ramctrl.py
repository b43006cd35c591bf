"""``ramctrl``: the operator's command line (talks to the nodes' HTTP API)."""

from __future__ import annotations

import click

from ram import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ramctrl")
def cli() -> None:
    """Operate a RAM cluster through its HTTP API.

    \b
    Example:
      ramctrl --help
    """


def main() -> None:
    cli()
