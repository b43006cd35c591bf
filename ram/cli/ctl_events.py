"""``ramctrl events`` (a page, or live over server-sent events) and ``ramctrl history``.

Events are the cluster's audit trail: every node holds the same ones in the same order, so any
API will do, and a live stream that breaks resumes on the next API from the last event seen.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import click
import httpx

from ram.cli.ctl_context import client, json_option, print_json
from ram.cli.ctl_http import ApiClient, CtlError, Params
from ram.cli.ctl_table import format_lsn, format_time, one_line_json, render_table, summarize

#: The server sends a keepalive every 15 s; silence for this long means the connection is dead.
STREAM_READ_TIMEOUT_S = 45.0
RECONNECT_PAUSE_S = 1.0


@dataclass
class SseMessage:
    """One server-sent event as the wire gives it (``id``, ``event``, the joined ``data`` lines)."""

    event: str = "message"
    id: str | None = None
    data_lines: list[str] = field(default_factory=list)

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)


def parse_sse(lines: Iterable[str]) -> Iterator[SseMessage]:
    """The event-stream format (WHATWG): fields until a blank line; ``:`` lines are comments."""
    current = SseMessage()
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if current.data_lines:
                yield current
            current = SseMessage()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            current.data_lines.append(value)
        elif name == "event":
            current.event = value
        elif name == "id":
            current.id = value
    if current.data_lines:
        yield current


def _event_row(event: Mapping[str, Any]) -> list[str]:
    return [
        str(event.get("id", event.get("position", ""))), format_time(event.get("ts")), str(event.get("type", "")),
        summarize(event.get("data") or {}),
    ]


def _follow(api: ApiClient, params: dict[str, Any], as_json: bool) -> None:
    """Print events as they come; on a dropped connection resume after the last one seen."""
    last_id: str | None = None
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with api.stream("/events/stream", params=params, headers=headers,
                            read_timeout=STREAM_READ_TIMEOUT_S) as response:
                for message in parse_sse(response.iter_lines()):
                    if message.event == "error":
                        raise CtlError(_stream_error(message.data))
                    try:
                        event = json.loads(message.data)
                    except ValueError:
                        continue
                    last_id = message.id or last_id
                    if as_json:
                        click.echo(one_line_json(event))
                    else:
                        row = _event_row(event)
                        click.echo(f"{row[0]:<10} {row[1]:<19}  {row[2]:<26} {row[3]}".rstrip())
        except (httpx.TransportError, httpx.StreamError) as exc:
            click.echo(f"ramctrl: event stream interrupted ({type(exc).__name__}), reconnecting", err=True)
        time.sleep(RECONNECT_PAUSE_S)


def _stream_error(data: str) -> str:
    try:
        body = json.loads(data)
    except ValueError:
        return data
    return str(body.get("error", data)) if isinstance(body, dict) else data


@click.command()
@json_option
@click.option("--type", "-t", "types", multiple=True, metavar="TYPE",
              help="Only events of this type (repeatable), e.g. maintenance_mode_changed.")
@click.option("--after", type=click.IntRange(min=0), help="Only events after this position.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="About this many events (a page).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they are committed, until Ctrl-C.")
def events(as_json: bool, types: tuple[str, ...], after: int | None, limit: int, follow: bool) -> None:
    """List the cluster's events (its audit trail), oldest first, or follow them live.

    Positions are Raft indexes: every node has the same events at the same positions. With
    --follow and no --after, only events committed from now on are shown.

    \b
    Example:
      ramctrl events --limit 20
      ramctrl events --type dynamic_config_changed --type maintenance_mode_changed
      ramctrl events --follow --json
    """
    api = client()
    if follow:
        stream_params: dict[str, Any] = {"type": list(types)} if types else {}
        # An explicit start, even for "from now on": a reconnect to another node then misses nothing.
        stream_params["after"] = after if after is not None else int(api.request("GET", "/cluster")["applied_index"])
        try:
            _follow(api, stream_params, as_json)
        except KeyboardInterrupt:
            return
    params: Params = {"after": after or 0, "limit": limit, **({"type": list(types)} if types else {})}
    page = api.request("GET", "/events", params=params)
    items = page.get("events", [])
    if as_json:
        for event in items:
            click.echo(one_line_json(event))
        return
    if not items:
        click.echo("No events" + (f" after position {after}" if after else "") + ".")
        return
    click.echo(render_table(["Pos", "Time", "Type", "Summary"], [_event_row(e) for e in items]))
    if page.get("more"):
        click.echo(f"(more: ramctrl events --after {page.get('next_after')})", err=True)


def render_history(history: Mapping[str, Any]) -> str:
    operations = history.get("operations") or []
    timelines = history.get("timelines") or []
    parts: list[str] = []
    if operations:
        rows = []
        for op in operations:
            took = op.get("duration_ms")
            rows.append([
                str(op.get("started_position", "")), format_time(op.get("started_at")), str(op.get("kind", "")),
                str(op.get("outcome", "")), str(op.get("old_primary") or ""), str(op.get("new_primary") or ""),
                "" if took is None else f"{took / 1000:.1f} s",
                " ".join(str(op.get("error") or op.get("reason") or "").split()),
            ])
        parts.append(render_table(["Pos", "Started", "Kind", "Outcome", "From", "To", "Took", "Reason"], rows))
    else:
        parts.append("No failovers or switchovers recorded.")
    if timelines:
        rows = [
            [str(t.get("timeline", "")), str(t.get("primary", "")), format_lsn(t.get("lsn")),
             str(t.get("position", "")), format_time(t.get("at"))]
            for t in timelines
        ]
        parts.append(render_table(["TL", "Primary", "Start LSN", "Pos", "At"], rows))
    else:
        parts.append("No timelines recorded.")
    return "\n\n".join(parts)


@click.command()
@json_option
def history(as_json: bool) -> None:
    """Show past failovers and switchovers, and which primary started each timeline.

    \b
    Example:
      ramctrl history
      ramctrl history --json
    """
    body = client().request("GET", "/history")
    if as_json:
        print_json(body)
    else:
        click.echo(render_history(body))
