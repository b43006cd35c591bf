"""Operations: maintenance on/off, switchover, failover, restart and reinit of a member.

Each is one write the API commits through Raft; the high-availability layer then carries it out.
Those that move the primary or touch a running PostgreSQL ask first, unless ``--force``.
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import click

from ram.cli.ctl_context import client, confirm, force_option, json_option, print_json
from ram.cli.ctl_events import event_payload
from ram.cli.ctl_http import ApiClient, CtlError
from ram.cli.ctl_outcome import Kind, OperationResult, accepted_line, finish, wait_outcome

#: A scheduled switchover this far in the past is a typo, not a plan.
PAST_TOLERANCE = timedelta(minutes=1)


def operator() -> str:
    """Who asked, recorded with the event (``ramctrl:alice@laptop``)."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers): the host still says something
        user = "unknown"
    return f"ramctrl:{user}@{socket.gethostname()}"[:200]


def parse_at(text: str, now: datetime | None = None) -> tuple[datetime, bool]:
    """ISO 8601 (``2025-06-01T02:00``, ``...Z``, ``...+02:00``) -> aware datetime, and whether it was naive.

    A time without zone is taken as local time: the operator's own clock is the least surprising.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CtlError(f"--at {text!r}: expected an ISO 8601 time such as 2025-06-01T02:00:00+02:00") from None
    naive = moment.tzinfo is None
    moment = moment.astimezone() if naive else moment
    now = now or datetime.now().astimezone()
    if moment < now - PAST_TOLERANCE:
        raise CtlError(f"--at {moment.isoformat()} is in the past")
    return moment, naive


def _accepted(answer: Mapping[str, Any], what: str) -> None:
    write = answer.get("write") or {}
    click.echo(f"{what} accepted (operation {answer.get('operation', '?')}, committed at index {write.get('index')}).")


def _cluster(api: ApiClient) -> Mapping[str, Any]:
    body = api.request("GET", "/cluster")
    if not isinstance(body, dict):
        raise CtlError("GET /cluster: unexpected answer")
    return body


def _member_names(cluster: Mapping[str, Any]) -> list[str]:
    return [str(m.get("name")) for m in cluster.get("members") or []]


def _require_member(cluster: Mapping[str, Any], name: str) -> None:
    names = _member_names(cluster)
    if name not in names:
        raise CtlError(f"no member named {name!r}; members: {', '.join(names) or '(none)'}")


@click.command()
@click.option("--reason", default="", help="Why (recorded with the event).")
def pause(reason: str) -> None:
    """Turn maintenance mode on: no automatic failover until 'ramctrl resume'.

    PostgreSQL keeps running; use it around planned work on the hosts.

    \b
    Example:
      ramctrl pause --reason "kernel upgrade"
    """
    answer = client().request("POST", "/maintenance", json={"reason": reason, "by": operator()})
    changed = bool((answer.get("write") or {}).get("events"))
    click.echo("Maintenance mode: on" + ("" if changed else " (it already was)"))


@click.command()
def resume() -> None:
    """Turn maintenance mode off: automatic failover is active again.

    \b
    Example:
      ramctrl resume
    """
    answer = client().request("DELETE", "/maintenance")
    changed = bool((answer.get("write") or {}).get("events"))
    click.echo("Maintenance mode: off" + ("" if changed else " (it already was)"))


#: How long switchover and failover wait for their outcome by default: a switchover takes about a
#: second and a failover waits out the old primary's lease (a few seconds); a minute leaves room for
#: a slow promotion (``primary_start_timeout_s`` bounds it on the cluster's side, 30 s by default).
OPERATION_WAIT_S = 60.0


def _operation_wait_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--no-wait", is_flag=True,
                        help="Return once the request is committed; do not wait for the outcome.")(func)
    func = click.option(
        "--wait", "wait", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
        help=f"How long to wait for the outcome [default: {OPERATION_WAIT_S:g}; with --at: no wait]. "
             "Exit status 1 when it failed or did not end in time.",
    )(func)
    return json_option(func)


def _run_operation(api: ApiClient, kind: Kind, path: str, body: Mapping[str, Any], wait: float | None,
                   as_json: bool) -> None:
    """Send the request, then (``wait`` > 0) follow it to its outcome and report that."""
    answer = api.request("POST", path, json=body)
    if not wait:
        write = dict(answer.get("write") or {})
        result = OperationResult(operation=kind, outcome="accepted", accepted=str(answer.get("operation") or ""),
                                 write=write)
        if as_json:
            print_json(result.as_json())
        else:
            click.echo(accepted_line(kind, answer))
        return
    if not as_json:
        click.echo(accepted_line(kind, answer))
    finish(wait_outcome(api, kind, answer, wait), as_json, print_json)


def _effective_wait(wait: float | None, no_wait: bool, scheduled: bool) -> float | None:
    if no_wait:
        if wait:
            raise click.UsageError("--no-wait and --wait SECONDS contradict each other; give one")
        return None
    if wait is None:
        return None if scheduled else OPERATION_WAIT_S
    return wait


@click.command()
@click.option("--to", "candidate", metavar="NAME", help="The member to promote (default: the cluster picks the best).")
@click.option("--at", "at", metavar="TIME", help="When, ISO 8601; without a zone it is local time.")
@click.option("--reason", default="", help="Why (recorded with the event).")
@force_option
@_operation_wait_options
def switchover(candidate: str | None, at: str | None, reason: str, force: bool, wait: float | None, no_wait: bool,
               as_json: bool) -> None:
    """Planned switchover: the primary hands over to a healthy replica.

    Waits until the switchover completed or failed, then prints the new primary, its timeline
    and how long it took (exit status 1 if it failed or did not end within --wait seconds).

    \b
    Example:
      ramctrl switchover --to node2
      ramctrl switchover --force --json            # the cluster picks the replica
      ramctrl switchover --to node2 --at 2025-06-01T02:00:00+02:00 --force
    """
    body: dict[str, Any] = {"reason": reason}
    if candidate:
        body["candidate"] = candidate
    when = "now"
    if at:
        moment, naive = parse_at(at)
        body["scheduled_at"] = moment.isoformat()
        when = moment.isoformat() + (" (no zone given: local time)" if naive else "")
        if naive:
            click.echo(f"Note: --at has no time zone; taking it as local time: {moment.isoformat()}", err=True)
    waiting = _effective_wait(wait, no_wait, scheduled=bool(at))
    api = client()
    if not force:
        cluster = _cluster(api)
        if candidate:
            _require_member(cluster, candidate)
        click.echo(f"Current primary: {cluster.get('primary') or 'none'}", err=True)
        click.echo(f"Candidate: {candidate or '(chosen by the cluster)'}", err=True)
        click.echo(f"When: {when}", err=True)
        confirm("Switch over?", force)
    _run_operation(api, "switchover", "/switchover", body, waiting, as_json)


@click.command()
@click.option("--to", "candidate", metavar="NAME", required=True, help="The member to promote.")
@click.option("--reason", default="", help="Why (recorded with the event).")
@force_option
@_operation_wait_options
def failover(candidate: str, reason: str, force: bool, wait: float | None, no_wait: bool, as_json: bool) -> None:
    """Manual failover: promote NAME now, even if the primary is not healthy.

    Use switchover when the primary is healthy; a failover may lose transactions not yet
    replicated to NAME (in asynchronous mode). NAME promotes once the old primary's lease has
    expired; ramctrl waits for that and prints the new primary, timeline and duration (exit
    status 1 if it failed or did not end within --wait seconds).

    \b
    Example:
      ramctrl failover --to node3
      ramctrl failover --to node3 --force --wait 120
    """
    waiting = _effective_wait(wait, no_wait, scheduled=False)
    api = client()
    if not force:
        cluster = _cluster(api)
        _require_member(cluster, candidate)
        click.echo(f"Current primary: {cluster.get('primary') or 'none'}; candidate: {candidate}", err=True)
        confirm(f"Fail over to {candidate}? Unreplicated transactions may be lost.", force)
    _run_operation(api, "failover", "/failover", {"candidate": candidate, "reason": reason}, waiting, as_json)


def _member_operation(name: str, force: bool, action: str, question: str, wait: float) -> None:
    api = client()
    if not force:
        _require_member(_cluster(api), name)
        confirm(question, force)
    answer = api.request("POST", f"/members/{quote(name, safe='')}/{action}")
    _accepted(answer, f"{action.capitalize()} of {name}")
    if wait > 0:
        write = answer.get("write") or {}
        _wait_member_action(api, name, action, int(write.get("index") or 0), wait)


def _wait_member_action(api: ApiClient, name: str, action: str, since: int, timeout: float) -> None:
    """Follow the events until NAME reports how the action ended (a dot a second meanwhile)."""
    deadline = time.monotonic() + timeout
    after = max(0, since - 1)
    click.echo(f"Waiting for {name} to {action}", nl=False, err=True)
    while time.monotonic() < deadline:
        page = api.request("GET", "/events", params={"after": after, "type": "member_action_completed"})
        for ev in (page.get("events") or []) if isinstance(page, dict) else []:
            after = max(after, int(ev.get("position") or 0))
            data = event_payload(ev)
            if data.get("name") == name and data.get("action") == action:
                click.echo("", err=True)
                if not data.get("ok"):
                    raise CtlError(f"{action} of {name} failed: {data.get('message')}")
                click.echo(f"{action.capitalize()} of {name} done: {data.get('message')}")
                return
        click.echo(".", nl=False, err=True)
        time.sleep(1.0)
    click.echo("", err=True)
    raise CtlError(f"{name} did not report the end of the {action} within {timeout:g} s "
                   f"(see 'ramctrl events --type member_action_completed')")


def _wait_option(default: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--wait", "wait", type=click.FloatRange(min=0), default=default, show_default=True, metavar="SECONDS",
        help="How long to wait for the member to report the outcome (0: return once the request is committed).",
    )


@click.command()
@click.argument("name")
@force_option
@_wait_option(120)
def restart(name: str, force: bool, wait: float) -> None:
    """Restart NAME's PostgreSQL in its current role (e.g. to apply parameters pending restart).

    \b
    Example:
      ramctrl restart node2
      ramctrl restart node2 --force --wait 0
    """
    _member_operation(name, force, "restart", f"Restart PostgreSQL on {name}?", wait)


@click.command()
@click.argument("name")
@force_option
@_wait_option(1800)
def reinit(name: str, force: bool, wait: float) -> None:
    """Re-clone replica NAME from the primary, discarding its data directory.

    \b
    Example:
      ramctrl reinit node3 --force
    """
    _member_operation(name, force, "reinit", f"Discard {name}'s data and clone it again from the primary?", wait)
