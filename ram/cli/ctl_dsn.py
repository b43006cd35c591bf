"""``ramctrl dsn``: libpq multi-host connection strings, so clients follow the primary without a proxy.

libpq tries the hosts in order and, with ``target_session_attrs=read-write``, keeps the one that
accepts writes: after a failover the application reconnects to the new primary by itself.

The URIs use only what libpq 14 and later understand (Debian 12 ships libpq 15), because a client
library rejects a URI with a parameter it does not know: ``load_balance_hosts`` (libpq 16) is added
only on request. They name a user (``postgres`` unless told otherwise): without one libpq takes the
OS user's name, which as root is a role that does not exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import click

from ram.cli.ctl_context import client, json_option, print_json

DEFAULT_USER = "postgres"


def _host(pg_address: str) -> str:
    """``10.0.0.1:5432`` as is; a bare IPv6 host gets its brackets (URIs need them)."""
    host, _, port = pg_address.rpartition(":")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def build_uri(hosts: Sequence[str], dbname: str, user: str | None, query: str) -> str:
    auth = f"{quote(user, safe='')}@" if user else ""
    return f"postgresql://{auth}{','.join(hosts)}/{quote(dbname, safe='')}?{query}"


def build_dsns(
    cluster: Mapping[str, Any], dbname: str = "postgres", user: str | None = DEFAULT_USER,
    prefer_standby: bool = False, load_balance: bool = False,
) -> dict[str, Any]:
    """Writers: members that can be primary, the current one first. Readers: members open to reads."""
    members: Sequence[Mapping[str, Any]] = cluster.get("members") or []
    primary = cluster.get("primary")

    def tag(m: Mapping[str, Any], name: str) -> bool:
        return bool((m.get("tags") or {}).get(name))

    ordered = sorted(members, key=lambda m: m.get("name") != primary)  # stable: primary first, then by name
    writers = [_host(m["pg_address"]) for m in ordered if m.get("name") == primary or not tag(m, "nofailover")]
    readers = [_host(m["pg_address"]) for m in ordered if not tag(m, "noloadbalance")]
    read_query = "target_session_attrs=" + ("prefer-standby" if prefer_standby else "any")
    if load_balance:
        read_query += "&load_balance_hosts=random"
    return {
        "writers": build_uri(list(dict.fromkeys(writers)), dbname, user, "target_session_attrs=read-write"),
        "readers": build_uri(list(dict.fromkeys(readers)), dbname, user, read_query),
    }


@click.command()
@json_option
@click.option("--dbname", "-d", default="postgres", show_default=True, help="Database name in the URIs.")
@click.option("--user", "-U", default=DEFAULT_USER, show_default=True,
              help="User name in the URIs; an empty value leaves it out (libpq then uses $PGUSER or the OS user).")
@click.option("--prefer-standby", is_flag=True,
              help="Readers use target_session_attrs=prefer-standby (libpq 14+) instead of any.")
@click.option("--load-balance", is_flag=True,
              help="Readers also get load_balance_hosts=random: spread over the hosts (libpq 16+ only; "
                   "older clients, e.g. Debian 12's psql, reject the URI).")
@click.option("--no-load-balance", is_flag=True, hidden=True)  # the default now; kept so old scripts still run
def dsn(as_json: bool, dbname: str, user: str, prefer_standby: bool, load_balance: bool,
        no_load_balance: bool) -> None:
    """Print libpq connection URIs: one for writers (the primary), one for readers.

    Writers get target_session_attrs=read-write: libpq finds the primary among the hosts, also
    after a failover. Readers take any member (--prefer-standby: a replica when one is up). The
    URIs work with libpq 14 and later (psql 15 on Debian 12 included).

    \b
    Example:
      ramctrl dsn --user app --dbname shop
      psql "$(ramctrl dsn --json | jq -r .writers)" -c 'select 1'
      ramctrl dsn --load-balance                   # libpq 16+: readers spread at random
    """
    uris = build_dsns(client().request("GET", "/cluster"), dbname, user or None, prefer_standby,
                      load_balance and not no_load_balance)
    if as_json:
        print_json(uris)
    else:
        click.echo(f"writers: {uris['writers']}")
        click.echo(f"readers: {uris['readers']}")
