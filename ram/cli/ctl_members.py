"""``ramctrl add-node`` / ``remove-node``: change who is in the cluster (a Raft membership change)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from ram.cli.ctl_context import client, confirm, force_option
from ram.cli.ctl_http import CtlError


def split_address(text: str, option: str) -> tuple[str, int]:
    """``host:port`` / ``[::1]:port`` -> (host, port), checked here so the error names the option."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CtlError(f"{option} {text!r}: expected HOST:PORT with a port from 1 to 65535")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise CtlError(f"{option} {text!r}: write an IPv6 address in brackets, e.g. [::1]:5432")
    return host, int(port)


@click.command("add-node")
@click.argument("name")
@click.option("--node-id", type=click.IntRange(1, 2**31 - 1), required=True, help="Its Raft node id (unique).")
@click.option("--raft", "raft", metavar="HOST:PORT", required=True, help="Its Raft peer address.")
@click.option("--api", "api_address", metavar="HOST:PORT", required=True, help="Its HTTP API address.")
@click.option("--pg", "pg", metavar="HOST:PORT", required=True, help="Its managed PostgreSQL.")
@click.option("--nofailover", is_flag=True, help="Never promote it.")
@click.option("--noloadbalance", is_flag=True, help="Keep it out of read load balancing (/replica fails).")
@click.option("--nosync", is_flag=True, help="Never make it a synchronous standby.")
@click.option("--failover-priority", type=click.IntRange(0, 2**31 - 1), default=1, show_default=True,
              help="Higher is preferred among equally up-to-date candidates; 0 never.")
def add_node(
    name: str, node_id: int, raft: str, api_address: str, pg: str,
    nofailover: bool, noloadbalance: bool, nosync: bool, failover_priority: int,
) -> None:
    """Add member NAME; it joins as a Raft learner and becomes a voter once caught up.

    Start 'ram node run' on the new host with the same NAME and node id afterwards.

    \b
    Example:
      ramctrl add-node node4 --node-id 4 --raft 10.0.0.4:7000 --api 10.0.0.4:8008 --pg 10.0.0.4:5432
      ramctrl add-node dr1 --node-id 9 --raft dr1:7000 --api dr1:8008 --pg dr1:5432 --nofailover
    """
    split_address(raft, "--raft")
    split_address(api_address, "--api")
    pg_host, pg_port = split_address(pg, "--pg")
    body: dict[str, Any] = {
        "name": name,
        "node_id": node_id,
        "raft_address": raft.strip(),
        "api_address": api_address.strip(),
        "pg_host": pg_host,
        "pg_port": pg_port,
        "tags": {
            "nofailover": nofailover,
            "noloadbalance": noloadbalance,
            "nosync": nosync,
            "failover_priority": failover_priority,
        },
    }
    answer = client().request("POST", "/members", json=body)
    index = (answer.get("write") or {}).get("index")
    click.echo(f"Member {name} (node id {node_id}) added as a learner, committed at index {index}.")


@click.command("remove-node")
@click.argument("name")
@click.option("--reason", default="", help="Why (recorded with the event).")
@force_option
def remove_node(name: str, reason: str, force: bool) -> None:
    """Remove member NAME from the cluster (it must not be the primary).

    \b
    Example:
      ramctrl remove-node node4
      ramctrl remove-node node4 --force --reason "host retired"
    """
    api = client()
    path = f"/members/{quote(name, safe='')}"
    if not force:
        member = api.request("GET", path)  # an unknown NAME ends here, with the API's member list
        click.echo(f"Member {name}: role {member.get('role')}, Raft {member.get('raft_address')}, "
                   f"PostgreSQL {member.get('pg_address')}", err=True)
        confirm(f"Remove {name} from the cluster?", force)
    params = {"reason": reason} if reason else None
    answer = api.request("DELETE", path, params=params)
    index = (answer.get("write") or {}).get("index")
    click.echo(f"Member {name} removed, committed at index {index}.")
