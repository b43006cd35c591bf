"""Waiting for a switchover or failover to end, so that ``ramctrl`` reports what happened, not only
that the request was committed.

A committed request is only the start: the arbiter (the Raft leader) accepts it, the candidate
promotes, and the arbiter records ``switchover_completed`` / ``failover_completed`` — or gives up
with ``*_failed``. Those events are committed through Raft like everything else, so any node's
``GET /events`` shows them; we read forward from the request's own position and stop at the first
event that settles it. Reading events (rather than comparing ``GET /cluster`` snapshots) tells a
failure and its reason apart from "not yet", and cannot mistake an unrelated change of primary for
the outcome of this request.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import click

from ram.cli.ctl_events import event_payload
from ram.cli.ctl_http import ApiClient, CtlError

Kind = Literal["switchover", "failover"]
Outcome = Literal["accepted", "succeeded", "failed", "rejected", "superseded", "timeout"]

#: The event that opens an operation of each kind (also what a committed request produces).
START_EVENT: dict[Kind, str] = {"switchover": "switchover_requested", "failover": "failover_started"}
DONE_EVENT: dict[Kind, str] = {"switchover": "switchover_completed", "failover": "failover_completed"}
FAILED_EVENT: dict[Kind, str] = {"switchover": "switchover_failed", "failover": "failover_failed"}
#: Before revision 0005 the arbiter's acceptance was a ``switchover_requested`` whose reason started
#: so; nodes now record ``switchover_accepted``, and ramctrl still understands an older node.
ACCEPTED_PREFIX = "accepted by the arbiter: "
POLL_INTERVAL_S = 0.25
PAGE = 200


@dataclass
class OperationResult:
    """What ``ramctrl switchover|failover`` reports, also its ``--json`` output."""

    operation: Kind
    outcome: Outcome
    accepted: str = ""
    write: dict[str, Any] = field(default_factory=dict)
    old_primary: str | None = None
    new_primary: str | None = None
    candidate: str | None = None
    timeline: int | None = None
    duration_ms: int | None = None
    waited_s: float | None = None
    position: int | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("accepted", "succeeded")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for the operator."""
        what = self.operation.capitalize()
        if self.outcome == "succeeded":
            took = self.duration_ms / 1000 if self.duration_ms is not None else self.waited_s or 0.0
            was = f" (was {self.old_primary})" if self.old_primary else ""
            return (f"{what} completed: {self.new_primary} is the primary{was}, timeline {self.timeline}, "
                    f"took {took:.1f} s.")
        if self.outcome == "accepted":
            return f"{what} accepted ({self.accepted}, committed at index {self.write.get('index')})."
        return f"{self.operation} {self.outcome}: {self.error}"


def accepted_line(kind: Kind, answer: Mapping[str, Any]) -> str:
    write = answer.get("write") or {}
    return (f"{kind.capitalize()} accepted (operation {answer.get('operation', '?')}, "
            f"committed at index {write.get('index')}).")


class _Progress:
    """Dots on a terminal (stderr), nothing otherwise: scripts and logs get only the result."""

    def __init__(self, kind: Kind, enabled: bool) -> None:
        self.enabled = enabled
        self.kind = kind
        self.started = False
        self.last_dot = 0.0

    def note(self, text: str) -> None:
        if self.enabled:
            click.echo(("\n" if self.started else "") + text, nl=False, err=True)
            self.started = True

    def tick(self) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last_dot >= 1.0:
            if not self.started:
                click.echo(f"Waiting for the {self.kind}", nl=False, err=True)
                self.started = True
            click.echo(".", nl=False, err=True)
            self.last_dot = now

    def end(self) -> None:
        if self.enabled and self.started:
            click.echo("", err=True)


def wait_outcome(
    api: ApiClient,
    kind: Kind,
    answer: Mapping[str, Any],
    timeout: float,
    *,
    progress: bool | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> OperationResult:
    """Follow the events after the request's position until the operation completed or failed.

    Never raises for the operation's own failure: the result says it (the caller decides the exit
    status). ``progress`` defaults to "stderr is a terminal".
    """
    write = dict(answer.get("write") or {})
    index = int(write.get("index") or 0)
    result = OperationResult(operation=kind, outcome="timeout", accepted=str(answer.get("operation") or ""),
                             write=write)
    show = _Progress(kind, sys.stderr.isatty() if progress is None else progress)
    started = clock()
    deadline = started + timeout
    after = max(0, index - 1)  # the request's own entry first: it may say the request was rejected
    types = [START_EVENT[kind], DONE_EVENT[kind], FAILED_EVENT[kind], "command_rejected"]
    if kind == "switchover":
        types.append("switchover_accepted")
    try:
        while True:
            page = api.request("GET", "/events", params={"after": after, "limit": PAGE, "type": types})
            events = page.get("events") if isinstance(page, dict) else None
            for event in events or []:
                position = int(event.get("position") or 0)
                after = max(after, position)
                if _settles(result, kind, index, event, show):
                    result.waited_s = round(clock() - started, 3)
                    return result
            if events and page.get("more"):
                continue  # a full page: read on before sleeping
            if clock() >= deadline:
                result.waited_s = round(clock() - started, 3)
                result.error = (f"no outcome within {timeout:g} s (see 'ramctrl history' and "
                                f"'ramctrl events --after {index}')")
                return result
            show.tick()
            sleep(POLL_INTERVAL_S)
    finally:
        show.end()


def _settles(result: OperationResult, kind: Kind, index: int, event: Mapping[str, Any], show: _Progress) -> bool:
    """Fold one event into ``result``; True once it decides the outcome."""
    position = int(event.get("position") or 0)
    etype = event.get("type")
    body = event_payload(event)
    result.position = position
    if position == index:  # the request's own entry
        if etype == "command_rejected":
            result.outcome = "rejected"
            result.error = f"the cluster rejected the request: {body.get('reason') or 'no reason given'}"
            return True
        if etype == START_EVENT[kind]:
            result.old_primary = body.get("primary") if kind == "switchover" else body.get("old_primary")
            result.candidate = body.get("candidate") if kind == "switchover" else body.get("chosen")
        return False
    if position < index:
        return False
    if kind == "switchover" and etype == "switchover_accepted":
        result.candidate = body.get("candidate") or result.candidate
        show.note(f"{kind} accepted by the arbiter: {result.old_primary or '?'} -> {result.candidate or '?'}")
        return False
    if etype == START_EVENT[kind]:
        reason = str(body.get("reason") or "")
        if kind == "switchover" and reason.startswith(ACCEPTED_PREFIX):  # nodes older than revision 0005
            result.candidate = body.get("candidate") or result.candidate
            show.note(f"{kind} accepted by the arbiter: {result.old_primary or '?'} -> {result.candidate or '?'}")
            return False
        result.outcome = "superseded"
        result.error = (f"superseded by another {kind} at position {position}"
                        + (f" ({reason})" if reason else "") + "; see 'ramctrl history'")
        return True
    if etype == DONE_EVENT[kind]:
        result.outcome = "succeeded"
        result.old_primary = body.get("old_primary") or result.old_primary
        result.new_primary = body.get("new_primary")
        result.timeline = body.get("timeline")
        result.duration_ms = body.get("duration_ms")
        return True
    if etype == FAILED_EVENT[kind]:
        result.outcome = "failed"
        result.error = str(body.get("reason") or "no reason given")
        return True
    return False


def finish(result: OperationResult, as_json: bool, print_json: Callable[[Any], None]) -> None:
    """Print the result; a failed, rejected, superseded or timed-out operation exits 1."""
    if as_json:
        print_json(result.as_json())
    elif result.ok:
        click.echo(result.summary())
    if not result.ok:
        raise CtlError(f"{result.operation} {result.outcome}: {result.error}")
