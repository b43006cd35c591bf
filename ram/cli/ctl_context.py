"""What every ``ramctrl`` command shares: the API client of this invocation, ``--json``, confirmations."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from ram.cli.ctl_http import CONNECT_TIMEOUT_S, ApiClient, Credentials, CtlError, resolve_credentials

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Settings:
    """Parsed global options, kept in the click context for the subcommands."""

    urls: list[str]
    connect_timeout: float = CONNECT_TIMEOUT_S
    token_file: Path | None = None
    cacert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    _credentials: list[Credentials] = field(default_factory=list, compare=False, repr=False)

    def credentials(self) -> Credentials:
        """Token and TLS setup, read when a command first needs them (so ``--help`` never fails on a
        token file), then kept for the rest of the command."""
        if not self._credentials:
            self._credentials.append(resolve_credentials(self.token_file, self.cacert, self.client_cert,
                                                         self.client_key))
        return self._credentials[0]

    def client(self, urls: Sequence[str] | None = None, **kwargs: Any) -> ApiClient:
        return ApiClient(list(urls or self.urls), connect_timeout=self.connect_timeout,
                         credentials=self.credentials(), **kwargs)


def settings() -> Settings:
    found = click.get_current_context().find_object(Settings)
    if found is None:  # a command invoked outside the ramctrl group (tests, embedding)
        raise CtlError("internal: ramctrl settings missing")
    return found


def client() -> ApiClient:
    """A client for the APIs of this invocation (with its token and TLS setup), closed when the
    command ends."""
    api = settings().client()
    click.get_current_context().call_on_close(api.close)
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
