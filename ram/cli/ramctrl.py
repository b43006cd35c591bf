"""``ramctrl``: the operator's command line (talks to the nodes' HTTP API).

This module only wires the commands together; each concern lives in a ``ctl_*`` module: HTTP
with failover across APIs (ctl_http), rendering (ctl_table), and the commands themselves.
"""

from __future__ import annotations

import logging

import click

from ram import __version__
from ram.cli.ctl_actions import failover, pause, reinit, restart, resume, switchover
from ram.cli.ctl_config import config
from ram.cli.ctl_context import Settings
from ram.cli.ctl_dsn import dsn
from ram.cli.ctl_events import events, history
from ram.cli.ctl_http import CONNECT_TIMEOUT_S, ENV_API, resolve_urls
from ram.cli.ctl_members import add_node, remove_node
from ram.cli.ctl_status import health, status


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="ramctrl")
@click.option("--api", "apis", multiple=True, metavar="URL",
              help=f"A node's API (http://host:8008 or host:8008); repeat or comma-separate to name several, "
                   f"tried in turn. Default: ${ENV_API} (comma-separated), else http://127.0.0.1:8008.")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=CONNECT_TIMEOUT_S, show_default=True,
              metavar="SECONDS", help="Give up on an API that does not accept the connection within this time.")
@click.pass_context
def cli(ctx: click.Context, apis: tuple[str, ...], connect_timeout: float) -> None:
    """Operate a RAM cluster through its HTTP API.

    Any node's API will do: reads come from its copy of the committed state, writes are
    forwarded to the Raft leader. Exit status: 0 success, 1 refused or failed, 2 no API reachable.

    \b
    Example:
      export RAM_API=node1:8008,node2:8008,node3:8008
      ramctrl status
      ramctrl switchover --to node2
    """
    ctx.obj = Settings(urls=resolve_urls(apis), connect_timeout=connect_timeout)


for command in (
    status, health, events, history, switchover, failover, pause, resume, config,
    add_node, remove_node, restart, reinit, dsn,
):
    cli.add_command(command)


def main() -> None:
    # httpx logs every request at INFO; an operator's terminal gets only our own output.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cli(prog_name="ramctrl")


if __name__ == "__main__":
    main()
