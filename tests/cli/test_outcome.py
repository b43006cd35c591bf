"""``ramctrl switchover|failover`` follow their request to the outcome: each way it can end, against a
scripted API whose events appear over successive polls (the tour test runs the real thing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from ram.cli import ctl_outcome
from ram.cli.ctl_http import ApiClient
from ram.cli.ctl_outcome import wait_outcome
from ram.cli.ramctrl import cli

INDEX = 40


def _event(position: int, etype: str, **payload: Any) -> dict[str, Any]:
    return {"position": position, "sub": 0, "id": f"{position}.0", "type": etype, "term": 2, "proposer": 1,
            "ts": "2026-01-01T00:00:00Z", "payload": payload}


class ScriptedApi:
    """POSTs answer "committed at INDEX"; GET /events reveals one more batch of ``batches`` per poll."""

    def __init__(self, kind: str, batches: list[list[dict[str, Any]]], *, committed: list[str] | None = None) -> None:
        self.kind = kind
        self.batches = batches
        self.committed = committed if committed is not None else [ctl_outcome.START_EVENT[kind]]  # type: ignore[index]
        self.polls = 0
        self.seen_after: list[int] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"operation": f"{self.kind} pg1 -> pg2",
                                             "write": {"index": INDEX, "term": 2, "events": self.committed}})
        if request.url.path == "/cluster":
            return httpx.Response(200, json={"primary": "pg1", "members": [{"name": "pg1"}, {"name": "pg2"}]})
        assert request.url.path == "/events"
        after = int(request.url.params["after"])
        self.seen_after.append(after)
        types = set(request.url.params.get_list("type"))
        shown = [e for batch in self.batches[: self.polls + 1] for e in batch]
        self.polls += 1
        events = [e for e in shown if e["position"] > after and e["type"] in types]
        return httpx.Response(200, json={"events": events, "next_after": after, "more": False, "next_before": None})

    def client(self) -> ApiClient:
        return ApiClient(["http://api:1"], transport=httpx.MockTransport(self.handle))


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(ctl_outcome, "POLL_INTERVAL_S", 0.0)
    yield


def _answer(api: ApiClient, kind: str) -> Any:
    return api.request("POST", f"/{kind}", json={})


def test_a_switchover_the_arbiter_accepts_then_completes() -> None:
    script = ScriptedApi("switchover", [
        [_event(INDEX, "switchover_requested", primary="pg1", candidate=None)],
        [_event(INDEX + 2, "switchover_requested", primary="pg1", candidate="pg3",
                reason="accepted by the arbiter: pg3 has the most WAL")],
        [],
        [_event(INDEX + 5, "switchover_completed", old_primary="pg1", new_primary="pg3", timeline=4, lsn=1,
                duration_ms=812)],
    ])
    api = script.client()
    result = wait_outcome(api, "switchover", _answer(api, "switchover"), 30, progress=False)
    assert result.outcome == "succeeded" and result.ok
    assert (result.old_primary, result.new_primary, result.candidate) == ("pg1", "pg3", "pg3")
    assert result.timeline == 4 and result.duration_ms == 812 and result.position == INDEX + 5
    assert result.summary() == "Switchover completed: pg3 is the primary (was pg1), timeline 4, took 0.8 s."
    assert script.seen_after[0] == INDEX - 1  # from the request's own entry on


def test_switchover_accepted_event_names_the_chosen_candidate() -> None:
    """Nodes record the arbiter's acceptance as its own event (revision 0005)."""
    script = ScriptedApi("switchover", [
        [_event(INDEX, "switchover_requested", primary="pg1", candidate=None)],
        [_event(INDEX + 2, "switchover_accepted", primary="pg1", candidate="pg2", reason="pg2 has the most WAL")],
        [_event(INDEX + 4, "switchover_completed", old_primary="pg1", new_primary="pg2", timeline=3, lsn=1,
                duration_ms=600)],
    ])
    api = script.client()
    result = wait_outcome(api, "switchover", _answer(api, "switchover"), 30, progress=False)
    assert result.outcome == "succeeded" and result.candidate == "pg2" and result.new_primary == "pg2"


def test_a_failed_failover_and_a_rejected_request() -> None:
    script = ScriptedApi("failover", [
        [_event(INDEX, "failover_started", old_primary="pg1", chosen="pg2", reason="manual")],
        [_event(INDEX + 3, "failover_failed", old_primary="pg1", reason="no promotion within 30 s")],
    ])
    api = script.client()
    result = wait_outcome(api, "failover", _answer(api, "failover"), 30, progress=False)
    assert result.outcome == "failed" and not result.ok and result.error == "no promotion within 30 s"
    assert result.candidate == "pg2"

    rejected = ScriptedApi("switchover", [[_event(INDEX, "command_rejected", command="request_switchover",
                                                  reason="a failover is already in progress")]],
                           committed=["command_rejected"])
    api = rejected.client()
    result = wait_outcome(api, "switchover", _answer(api, "switchover"), 30, progress=False)
    assert result.outcome == "rejected" and "a failover is already in progress" in result.error


def test_superseded_and_timeout() -> None:
    script = ScriptedApi("switchover", [
        [_event(INDEX, "switchover_requested", primary="pg1", candidate="pg2")],
        [_event(INDEX + 1, "switchover_requested", primary="pg1", candidate="pg3", reason="")],
    ])
    api = script.client()
    result = wait_outcome(api, "switchover", _answer(api, "switchover"), 30, progress=False)
    assert result.outcome == "superseded" and f"position {INDEX + 1}" in result.error

    ticks = iter(float(t) for t in range(100))
    slow = ScriptedApi("switchover", [[_event(INDEX, "switchover_requested", primary="pg1", candidate="pg2")]])
    api = slow.client()
    result = wait_outcome(api, "switchover", _answer(api, "switchover"), 5, progress=False,
                          clock=lambda: next(ticks), sleep=lambda _: None)
    assert result.outcome == "timeout" and "within 5 s" in result.error and result.waited_s is not None


def _run(script: ScriptedApi, *args: str) -> Any:
    transport = httpx.MockTransport(script.handle)
    real = ApiClient.__init__

    def patched(self: ApiClient, urls: Any, **kwargs: Any) -> None:
        real(self, urls, **{**kwargs, "transport": transport})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ApiClient, "__init__", patched)
        return CliRunner().invoke(cli, ["--api", "http://api:1", *args], env={"RAM_API": None})


def test_the_commands_exit_status_and_json() -> None:
    done = [
        [_event(INDEX, "switchover_requested", primary="pg1", candidate="pg2")],
        [_event(INDEX + 4, "switchover_completed", old_primary="pg1", new_primary="pg2", timeline=3, lsn=1,
                duration_ms=640)],
    ]
    ok = _run(ScriptedApi("switchover", done), "switchover", "--to", "pg2", "--force")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines() == [
        f"Switchover accepted (operation switchover pg1 -> pg2, committed at index {INDEX}).",
        "Switchover completed: pg2 is the primary (was pg1), timeline 3, took 0.6 s.",
    ]
    as_json = _run(ScriptedApi("switchover", done), "switchover", "--force", "--json")
    body = json.loads(as_json.stdout)
    assert as_json.exit_code == 0 and body["outcome"] == "succeeded" and body["new_primary"] == "pg2"
    assert body["write"]["index"] == INDEX and body["duration_ms"] == 640

    failed = [[_event(INDEX, "failover_started", old_primary="pg1", chosen="pg2")],
              [_event(INDEX + 1, "failover_failed", old_primary="pg1", reason="pg2 did not promote")]]
    bad = _run(ScriptedApi("failover", failed), "failover", "--to", "pg2", "--force", "--json")
    assert bad.exit_code == 1 and json.loads(bad.stdout)["outcome"] == "failed"
    assert bad.stderr.strip().splitlines() == ["Error: failover failed: pg2 did not promote"]

    script = ScriptedApi("switchover", failed)
    no_wait = _run(script, "switchover", "--to", "pg2", "--force", "--no-wait")
    assert no_wait.exit_code == 0 and "accepted" in no_wait.stdout and script.polls == 0
    scheduled = _run(script, "switchover", "--to", "pg2", "--force", "--at", "2999-01-01T00:00:00+00:00")
    assert scheduled.exit_code == 0 and script.polls == 0, scheduled.output  # scheduled: no wait by default
    both = _run(script, "switchover", "--force", "--no-wait", "--wait", "5")
    assert both.exit_code == 2 and "contradict" in both.stderr
