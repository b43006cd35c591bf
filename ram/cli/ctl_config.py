"""``ramctrl config show|set|edit``: the cluster's dynamic configuration (a committed key -> JSON map)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from typing import Any

import click

from ram.cli.ctl_config_parse import (
    FORMATS,
    config_patch,
    describe_patch,
    dump_document,
    parse_assignments,
    parse_document,
)
from ram.cli.ctl_context import client, confirm, force_option, json_option, print_json
from ram.cli.ctl_http import ApiClient, CtlError
from ram.cli.ctl_table import render_pairs, stale_note


def _show(config: Mapping[str, Any]) -> str:
    if not config:
        return "(no dynamic configuration set)"
    return render_pairs([(k, json.dumps(config[k], ensure_ascii=False)) for k in sorted(config)])


def _report(answer: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
    """What the commit did: the keys changed, and those that wait for a PostgreSQL restart."""
    if answer.get("write") is None:
        click.echo("Nothing changed (the configuration already had these values).")
        return
    write = answer["write"]
    click.echo(f"Changed {len(patch)} key(s), committed at index {write.get('index')}:")
    for key in sorted(patch):
        value = patch[key]
        click.echo(f"  {key} = {json.dumps(value, ensure_ascii=False)}" if value is not None else f"  {key} removed")
    pending = [k for k in answer.get("pending_restart") or [] if k in patch]
    if pending:
        click.echo("Pending restart (takes effect after 'ramctrl restart'): " + ", ".join(pending))


def _patch(api: ApiClient, patch: Mapping[str, Any]) -> Mapping[str, Any]:
    answer = api.request("PATCH", "/config", json=dict(patch))
    if not isinstance(answer, dict):
        raise CtlError("PATCH /config: unexpected answer")
    return answer


@click.group()
def config() -> None:
    """Show or change the cluster's dynamic configuration.

    Keys ``postgresql.parameters.<name>`` set PostgreSQL parameters on every member; others are
    RAM settings. Values are JSON; setting a key to null removes it.

    \b
    Example:
      ramctrl config show
      ramctrl config set postgresql.parameters.work_mem=8MB ttl=30
      ramctrl config edit
    """


@config.command("show")
@json_option
def config_show(as_json: bool) -> None:
    """Print the dynamic configuration, one key per line.

    \b
    Example:
      ramctrl config show
      ramctrl config show --json | jq .config
    """
    body = client().request("GET", "/config")
    if as_json:
        print_json(body)
        return
    click.echo(_show(body.get("config") or {}))
    if body.get("pending_restart"):
        click.echo("Pending restart: " + ", ".join(body["pending_restart"]))
    note = stale_note(body)
    if note:
        click.echo(note)


@config.command("set")
@click.argument("assignments", nargs=-1, metavar="KEY=VALUE...")
def config_set(assignments: tuple[str, ...]) -> None:
    """Set keys: VALUE is JSON when it parses (250, true, null, {"a": 1}), else a plain string.

    KEY=null removes the key. All keys change together in one commit.

    \b
    Example:
      ramctrl config set postgresql.parameters.max_connections=200
      ramctrl config set postgresql.parameters.work_mem=8MB loop_wait=10
      ramctrl config set 'tags={"zone": "a"}' old_key=null
    """
    patch = parse_assignments(assignments)
    _report(_patch(client(), patch), patch)


def _keep(text: str, suffix: str) -> str:
    """Save an edit that was refused, so the operator's work is not lost."""
    with tempfile.NamedTemporaryFile("w", prefix="ramctrl-config-", suffix=suffix, delete=False) as handle:
        handle.write(text)
        return handle.name


@config.command("edit")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="yaml", show_default=True,
              help="How the configuration is shown in the editor.")
@force_option
def config_edit(fmt: str, force: bool) -> None:
    """Edit the configuration in $EDITOR; only the changed keys are sent.

    The edited text is checked (it must parse and be a mapping) before anything is sent; a
    removed key is removed from the cluster. The changes are shown and confirmed unless --force.

    \b
    Example:
      EDITOR=vim ramctrl config edit
      ramctrl config edit --format json --force
    """
    api = client()
    current: dict[str, Any] = api.request("GET", "/config").get("config") or {}
    original = dump_document(current, fmt)
    try:
        edited = click.edit(original, extension="." + fmt, require_save=False)
    except click.ClickException as exc:
        raise CtlError(f"could not run the editor: {exc.message}") from None
    if edited is None or edited == original:
        click.echo("Nothing changed.")
        return
    try:
        new = parse_document(edited, fmt)
    except CtlError as exc:
        raise CtlError(f"{exc.message}; nothing was sent (your edit is in {_keep(edited, '.' + fmt)})") from None
    patch = config_patch(current, new)
    if not patch:
        click.echo("Nothing changed.")
        return
    click.echo("\n".join(describe_patch(current, patch)))
    confirm("Apply these changes?", force)
    _report(_patch(api, patch), patch)
