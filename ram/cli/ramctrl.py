"""``ramctrl``: the operator's command line (talks to the nodes' HTTP API).

This module only wires the commands together; each concern lives in a ``ctl_*`` module: HTTP
with failover across APIs (ctl_http), rendering (ctl_table), and the commands themselves.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from ram import __version__
from ram.cli.ctl_actions import failover, pause, reinit, restart, resume, switchover
from ram.cli.ctl_config import config
from ram.cli.ctl_context import Settings
from ram.cli.ctl_dsn import dsn
from ram.cli.ctl_events import events, history
from ram.cli.ctl_http import (
    CONNECT_TIMEOUT_S,
    ENV_API,
    ENV_CACERT,
    ENV_CLIENT_CERT,
    ENV_CLIENT_KEY,
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    resolve_urls,
)
from ram.cli.ctl_members import add_node, remove_node
from ram.cli.ctl_status import health, status


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="ramctrl")
@click.option("--api", "apis", multiple=True, metavar="URL",
              help=f"A node's API (http://host:8008 or host:8008); repeat or comma-separate to name several, "
                   f"tried in turn. Default: ${ENV_API} (comma-separated), else http://127.0.0.1:8008.")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=CONNECT_TIMEOUT_S, show_default=True,
              metavar="SECONDS", help="Give up on an API that does not accept the connection within this time.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), metavar="PATH",
              help=f"File holding the API token (mode 0600). Default: ${ENV_TOKEN} (the token itself), else "
                   f"${ENV_TOKEN_FILE}. A token is never taken as an option value: other users see those in ps.")
@click.option("--cacert", type=click.Path(path_type=Path, dir_okay=False), metavar="PATH",
              help=f"CA certificate (PEM) that signed the nodes' HTTPS certificates. Default: ${ENV_CACERT}, "
                   "else the system's CAs. With it, addresses without a scheme use https.")
@click.option("--client-cert", type=click.Path(path_type=Path, dir_okay=False), metavar="PATH",
              help=f"Client certificate (PEM) for APIs that require one (api.tls_client_ca). Default: "
                   f"${ENV_CLIENT_CERT}.")
@click.option("--client-key", type=click.Path(path_type=Path, dir_okay=False), metavar="PATH",
              help=f"Private key of --client-cert, if not in the same file. Default: ${ENV_CLIENT_KEY}.")
@click.pass_context
def cli(ctx: click.Context, apis: tuple[str, ...], connect_timeout: float, token_file: Path | None,
        cacert: Path | None, client_cert: Path | None, client_key: Path | None) -> None:
    """Operate a RAM cluster through its HTTP API.

    Any node's API will do: reads come from its copy of the committed state, writes are
    forwarded to the Raft leader. Exit status: 0 success, 1 refused or failed, 2 no API reachable.

    The API token comes from $RAM_TOKEN, or a file: --token-file or $RAM_TOKEN_FILE (ram cluster up
    prints the export line). Writes need a token with the admin role.

    \b
    Example:
      export RAM_API=node1:8008,node2:8008,node3:8008 RAM_TOKEN_FILE=~/.ram/admin.token
      ramctrl status
      ramctrl switchover --to node2
    """
    https = cacert is not None or bool(os.environ.get(ENV_CACERT, "").strip())
    ctx.obj = Settings(urls=resolve_urls(apis, "https" if https else "http"), connect_timeout=connect_timeout,
                       token_file=token_file, cacert=cacert, client_cert=client_cert, client_key=client_key)


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
