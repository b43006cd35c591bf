"""``ramctrl events`` (the newest, a page, or live over server-sent events) and ``ramctrl history``.

An operator asking for events wants what happened lately, not the start of a cluster's life, so the
default is the newest ones (``GET /events?last=N``), printed oldest first like a log's tail.

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
from ram.cli.ctl_http import ApiClient, CtlError
from ram.cli.ctl_table import format_lsn, format_time, one_line_json, render_table, stale_note, summarize

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


def event_payload(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """An event's body: ``payload``, the name it has in ``pgraft.events`` and in the API.

    Nodes from before the API used that name called it ``data``; reading both keeps a newer ramctrl
    useful against them during a rolling upgrade.
    """
    body = event.get("payload", event.get("data"))
    return body if isinstance(body, Mapping) else {}


def _event_row(event: Mapping[str, Any]) -> list[str]:
    return [
        str(event.get("id", event.get("position", ""))), format_time(event.get("ts")), str(event.get("type", "")),
        summarize(event_payload(event)),
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
                    click.echo(one_line_json(event) if as_json else _stream_line(event))
        except (httpx.TransportError, httpx.StreamError) as exc:
            click.echo(f"ramctrl: event stream interrupted ({type(exc).__name__}), reconnecting", err=True)
        time.sleep(RECONNECT_PAUSE_S)


def _stream_error(data: str) -> str:
    try:
        body = json.loads(data)
    except ValueError:
        return data
    return str(body.get("error", data)) if isinstance(body, dict) else data


DEFAULT_LAST = 20


def _print_events(items: list[Mapping[str, Any]], as_json: bool, *, as_lines: bool) -> None:
    """A page as JSON lines, a table, or (before a live stream) lines formatted like the stream's."""
    if as_json:
        for event in items:
            click.echo(one_line_json(event))
    elif as_lines:
        for event in items:
            click.echo(_stream_line(event))
    else:
        click.echo(render_table(["Pos", "Time", "Type", "Summary"], [_event_row(e) for e in items]))


def _stream_line(event: Mapping[str, Any]) -> str:
    row = _event_row(event)
    return f"{row[0]:<10} {row[1]:<19}  {row[2]:<26} {row[3]}".rstrip()


@click.command()
@json_option
@click.option("--type", "-t", "types", multiple=True, metavar="TYPE",
              help="Only events of this type (repeatable), e.g. maintenance_mode_changed.")
@click.option("--last", "-n", type=click.IntRange(0, 1000), metavar="N",
              help=f"The N newest events (the default, N={DEFAULT_LAST}); 0 with --follow: only new ones.")
@click.option("--before", type=click.IntRange(min=0), metavar="POS",
              help="With the newest events: only those before this position (page back).")
@click.option("--after", type=click.IntRange(min=0), metavar="POS",
              help="Instead of the newest: events after this position, oldest first (page forward).")
@click.option("--limit", type=click.IntRange(1, 1000), metavar="N",
              help="About this many events: a page of --after [default: 100], else the same as --last N.")
@click.option("--follow", "-f", is_flag=True, help="Then keep printing new events as they are committed, until Ctrl-C.")
def events(as_json: bool, types: tuple[str, ...], last: int | None, before: int | None, after: int | None,
           limit: int | None, follow: bool) -> None:
    """List the cluster's events (its audit trail): the newest, oldest first; or follow them live.

    Positions are Raft indexes: every node has the same events at the same positions. By default
    the 20 newest events are shown (--last N for more or fewer, --before POS to page back);
    --after POS pages forward from a position instead. --follow shows the newest events, then
    every new one from there on (with --after: everything after that position).

    \b
    Example:
      ramctrl events
      ramctrl events --last 100 --type dynamic_config_changed --type maintenance_mode_changed
      ramctrl events --after 0 --limit 50          # from the beginning
      ramctrl events --follow --json
    """
    if after is not None and (last is not None or before is not None):
        raise click.UsageError("--after pages forward from a position; it can not be combined with --last/--before")
    if limit is not None and last is not None:
        raise click.UsageError("--last N and --limit N both say how many events; give one")
    if after is None and limit is not None:
        last = limit
    if last == 0 and not follow:
        raise click.UsageError("--last 0 shows nothing; it only makes sense with --follow")
    if before is not None and follow:
        raise click.UsageError("--before reads older events; it can not be combined with --follow")
    api = client()
    type_params: dict[str, Any] = {"type": list(types)} if types else {}
    params: dict[str, Any] = {}
    if after is not None:
        params = {"after": after, "limit": limit or 100, **type_params}
    elif last != 0:
        params = {"last": last or DEFAULT_LAST, **type_params}
        if before is not None:
            params["before"] = before
    page: Mapping[str, Any] = api.request("GET", "/events", params=params) if params else {}
    items: list[Mapping[str, Any]] = list(page.get("events", []))
    if follow:
        # Ctrl-C is how a follow ends: a clean exit 0 from the first line printed on.
        try:
            if items:
                _print_events(items, as_json, as_lines=True)
            if page:
                start = int(page.get("next_after", 0))
            else:  # --last 0: from what this node has applied now (no read barrier needed for a position)
                start = int(api.request("GET", "/cluster", params={"stale": "ok"})["applied_index"])
            # An explicit start, even for "from now on": a reconnect to another node then misses nothing.
            _follow(api, {"after": start, **type_params}, as_json)
        except KeyboardInterrupt:
            return
    note = None if as_json else stale_note(page)
    if note:  # on stderr: the events on stdout stay one per line for scripts
        click.echo(note, err=True)
    if not items:
        if not as_json:
            where = f" after position {after}" if after else f" before position {before}" if before is not None else ""
            click.echo(f"No events{where}.")
        return
    _print_events(items, as_json, as_lines=False)
    if page.get("more") and not as_json:
        if after is not None:
            click.echo(f"(more: ramctrl events --after {page.get('next_after')})", err=True)
        else:
            click.echo(f"(older: ramctrl events --last {params.get('last')} --before {page.get('next_before')})",
                       err=True)


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
        parts.append(
            "Took: a failover from the old primary's last report as primary to the new one's first (the write "
            "outage clients saw); a switchover from its acceptance to the promotion."
        )
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
    note = stale_note(history)
    if note:
        parts.append(note)
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
