"""What every ``ramctrl`` command shares: the API client of this invocation, ``--json``, confirmations."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from ram.cli.ctl_http import CONNECT_TIMEOUT_S, ApiClient, CtlError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Settings:
    """Parsed global options, kept in the click context for the subcommands."""

    urls: list[str]
    connect_timeout: float = CONNECT_TIMEOUT_S


def client() -> ApiClient:
    """A client for the APIs of this invocation, closed when the command ends."""
    ctx = click.get_current_context()
    settings = ctx.find_object(Settings)
    if settings is None:  # a command invoked outside the ramctrl group (tests, embedding)
        raise CtlError("internal: ramctrl settings missing")
    api = ApiClient(settings.urls, connect_timeout=settings.connect_timeout)
    ctx.call_on_close(api.close)
    return api


def json_option(func: F) -> F:
    """``--json``: the API's answer as JSON instead of a table, for scripts (every read command)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def force_option(func: F) -> F:
    return click.option("--force", "-f", is_flag=True, help="Do not ask for confirmation.")(func)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def confirm(question: str, force: bool) -> None:
    """Ask before a destructive step; "no" (or no terminal answer) ends the command with exit 1."""
    if force:
        return
    try:
        answer = click.confirm(question, default=False, err=True)
    except click.Abort:  # end of input or Ctrl-C at the prompt
        answer = False
    if not answer:
        raise CtlError("aborted, nothing was changed (use --force to skip the question)")
