"""ramctrl end to end: real HTTP to a real in-process 3-node cluster (real Raft, real stores)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from ram.cli.ctl_events import render_history
from ram.cli.ctl_status import render_status
from ram.cli.ctl_table import stale_note
from ram.cluster.node import ApplyResult
from ram.consensus.runtime.errors import NoLeaderError
from tests.api.conftest import ADMIN, ApiCluster
from tests.cli.conftest import ctl, ctl_process, one_error_line
from tests.conftest import free_port, holding

#: Probe keys: custom PostgreSQL parameters (``prefix.name``), which dynamic configuration accepts.
P = "postgresql.parameters."


async def _get(cluster: ApiCluster, path: str, i: int = 0) -> Any:
    async with httpx.AsyncClient(timeout=10, headers=ADMIN) as http:
        r = await http.get(cluster.url(i) + path)
        assert r.status_code == 200, r.text
        return r.json()


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# ------------------------------------------------------------------------------------- reads


async def test_status_table_and_json(api_cluster: ApiCluster) -> None:
    leader = await api_cluster.settled()
    run = await ctl(api_cluster, "status")
    assert run.exit_code == 0, run
    lines = run.stdout.splitlines()
    assert lines[0].startswith("Cluster: ram (test)") and f"Raft leader: {leader.config.name}" in lines[0]
    assert lines[1].split() == ["Member", "Host", "Role", "State", "TL", "Lag", "in", "MB", "Raft"]
    rows = {line.split()[0]: line.split() for line in lines[3:6]}
    assert sorted(rows) == ["node1", "node2", "node3"]
    for name, row in rows.items():
        assert row[-1] == ("leader" if name == leader.config.name else "voter")
        assert "unknown" in row  # no HA layer yet: role and state unknown
    run = await ctl(api_cluster, "status", "--json")
    assert run.exit_code == 0
    body = json.loads(run.stdout)
    assert body["raft_leader"] == leader.config.name and len(body["members"]) == 3


async def test_pause_and_resume_show_in_status(api_cluster: ApiCluster) -> None:
    run = await ctl(api_cluster, "pause", "--reason", "kernel upgrade")
    assert run.exit_code == 0 and "Maintenance mode: on" in run.stdout, run
    await api_cluster.barrier()
    status = await ctl(api_cluster, "status")
    assert "Maintenance mode: on (kernel upgrade)" in status.stdout
    again = await ctl(api_cluster, "pause")
    assert again.exit_code == 0 and "already" in again.stdout
    run = await ctl(api_cluster, "resume")
    assert run.exit_code == 0 and "Maintenance mode: off" in run.stdout
    await api_cluster.barrier()
    assert "Maintenance mode" not in (await ctl(api_cluster, "status")).stdout
    events = await ctl(api_cluster, "events", "--type", "maintenance_mode_changed", "--json")
    records = [json.loads(line) for line in events.stdout.splitlines()]
    assert records and all(r["type"] == "maintenance_mode_changed" for r in records)
    assert records[-1]["payload"]["enabled"] is False
    # Recorded as the token that asked (the fixture's admin token is named "ops"), then ramctrl's own note.
    assert any(r["payload"]["reason"] == "kernel upgrade" and r["payload"]["by"].startswith("token:ops (ramctrl:")
               for r in records)


async def test_config_set_and_show_roundtrip(api_cluster: ApiCluster) -> None:
    run = await ctl(
        api_cluster, "config", "set", "postgresql.parameters.cli.number=42", "postgresql.parameters.cli.flag=true",
        "postgresql.parameters.cli.text=8MB", "maximum_lag_on_failover=4096",
        "postgresql.parameters.max_connections=300",
    )
    assert run.exit_code == 0, run
    assert "Pending restart" in run.stdout and "postgresql.parameters.max_connections" in run.stdout
    config = (await _get(api_cluster, "/config", 2))["config"]
    assert config[P + "cli.number"] == 42 and config[P + "cli.flag"] is True and config[P + "cli.text"] == "8MB"
    assert config["maximum_lag_on_failover"] == 4096
    show = await ctl(api_cluster, "config", "show")
    assert show.exit_code == 0
    assert any(line.split() == [P + "cli.number", "42"] for line in show.stdout.splitlines())
    assert any(line.split() == [P + "cli.text", '"8MB"'] for line in show.stdout.splitlines())
    shown = json.loads((await ctl(api_cluster, "config", "show", "--json")).stdout)
    assert shown["config"]["maximum_lag_on_failover"] == 4096 and shown["effective"]["maximum_lag_on_failover"] == 4096
    same = await ctl(api_cluster, "config", "set", P + "cli.number=42")
    assert same.exit_code == 0 and "Nothing changed" in same.stdout
    removed = await ctl(api_cluster, "config", "set", P + "cli.flag=null")
    assert removed.exit_code == 0 and P + "cli.flag removed" in removed.stdout
    assert P + "cli.flag" not in (await _get(api_cluster, "/config"))["config"]


async def test_config_set_bad_input(api_cluster: ApiCluster) -> None:
    before = await _get(api_cluster, "/config")
    for args, needle in [
        (("novalue",), "KEY=VALUE"),
        (("=5",), "key"),
        (("a=1", "a=2"), "twice"),
        (("postgresql.parameters.bad-name=1",), "not a PostgreSQL parameter name"),  # refused by the API
        (("ttl=30",), "unknown config key 'ttl'"),
        (("synchronous_node_count=0",), "synchronous_node_count"),
    ]:
        run = await ctl(api_cluster, "config", "set", *args)
        assert run.exit_code == 1, run
        assert needle in one_error_line(run)
    assert await _get(api_cluster, "/config") == before


async def test_config_edit_sends_only_changes(api_cluster: ApiCluster, editor: Path) -> None:
    setup = await ctl(api_cluster, "config", "set", P + "edit.keep=1", P + "edit.change=old", P + "edit.drop=true")
    assert setup.exit_code == 0, setup
    current = (await _get(api_cluster, "/config"))["config"]
    new = {k: v for k, v in current.items() if k != P + "edit.drop"}
    new[P + "edit.change"] = "new"
    new[P + "edit.added"] = 12
    (editor.parent / "edited").write_text(json.dumps(new))  # JSON is YAML too
    run = await ctl(api_cluster, "config", "edit", input="y\n", env={"EDITOR": str(editor)})
    assert run.exit_code == 0, run
    assert f'+ {P}edit.change: "new"' in run.stdout and f"- {P}edit.drop: true" in run.stdout
    assert P + "edit.keep" not in run.stdout.split("Changed")[0]
    await api_cluster.barrier()
    assert (await _get(api_cluster, "/config", 1))["config"] == new
    last = (await ctl(api_cluster, "events", "--type", "dynamic_config_changed", "--json", "--limit", "1000"))
    changes = json.loads(last.stdout.splitlines()[-1])["payload"]["changes"]
    assert sorted(changes) == [P + "edit.added", P + "edit.change", P + "edit.drop"]
    # Saving the same document again: nothing to send.
    (editor.parent / "edited").write_text(json.dumps(new))
    run = await ctl(api_cluster, "config", "edit", "--format", "json", env={"EDITOR": str(editor)})
    assert run.exit_code == 0 and "Nothing changed" in run.stdout


async def test_config_edit_invalid_sends_nothing(api_cluster: ApiCluster, editor: Path) -> None:
    before = await _get(api_cluster, "/config")
    decided = api_cluster.nodes[0].decided_index
    for content, needle in [
        ("key: [unclosed\n", "not valid YAML"),
        ("- a\n- list\n", "must be a mapping"),
        ("", "must be a mapping"),
        ("when: 2024-01-01\n", "not a JSON value"),
    ]:
        (editor.parent / "edited").write_text(content)
        run = await ctl(api_cluster, "config", "edit", "--force", env={"EDITOR": str(editor)})
        message = one_error_line(run)
        assert run.exit_code == 1 and needle in message and "nothing was sent" in message, run
    run = await ctl(api_cluster, "config", "edit", "--format", "json", "--force", env={"EDITOR": "false"})
    assert run.exit_code == 1 and "editor" in one_error_line(run)
    await api_cluster.barrier()
    assert await _get(api_cluster, "/config") == before
    assert api_cluster.nodes[0].decided_index == decided  # no entry was proposed


async def test_events_table_type_and_paging(api_cluster: ApiCluster) -> None:
    run = await ctl(api_cluster, "events", "--limit", "1000")
    assert run.exit_code == 0, run
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["Pos", "Time", "Type", "Summary"]
    assert any("raft_leader_elected" in line for line in lines[2:])
    run = await ctl(api_cluster, "events", "-t", "cluster_bootstrapped", "-t", "raft_leader_elected", "--json")
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert {r["type"] for r in records} == {"cluster_bootstrapped", "raft_leader_elected"}
    assert [r["position"] for r in records] == sorted(r["position"] for r in records)
    page = await ctl(api_cluster, "events", "--after", "0", "--limit", "1")
    assert page.exit_code == 0 and "(more: ramctrl events --after " in page.stderr
    assert "cluster_bootstrapped" in page.stdout.splitlines()[2]  # --after 0: from the start
    older = await ctl(api_cluster, "events", "--limit", "1")  # without --after: the newest
    assert older.exit_code == 0 and "(older: ramctrl events --last 1 --before " in older.stderr
    bad = await ctl(api_cluster, "events", "--type", "no_such_type")
    assert bad.exit_code == 1 and "unknown event type" in one_error_line(bad)
    far = await ctl(api_cluster, "events", "--after", "999999999")
    assert far.exit_code == 0 and "No events" in far.stdout


async def test_events_show_the_newest_by_default(api_cluster: ApiCluster) -> None:
    async with httpx.AsyncClient(timeout=10, headers=ADMIN) as http:
        for n in range(22):  # more than a default screen of events
            r = await http.patch(api_cluster.url(n % 3) + "/config", json={P + "newest.probe": n})
            assert r.status_code == 200, r.text
    await api_cluster.barrier()
    everything = (await _get(api_cluster, "/events?limit=1000"))["events"]
    run = await ctl(api_cluster, "events", "--json")
    assert run.exit_code == 0, run
    shown = [json.loads(line)["id"] for line in run.stdout.splitlines()]
    assert len(shown) == 20 and shown == [e["id"] for e in everything][-20:]  # oldest -> newest
    table = await ctl(api_cluster, "events")
    rows = table.stdout.splitlines()[2:]
    assert len(rows) == 20 and rows[-1].split()[0] == everything[-1]["id"] and "newest.probe" in rows[-1]
    assert f"--before {everything[-20]['position']}" in table.stderr

    three = await ctl(api_cluster, "events", "--last", "3", "--json")
    assert [json.loads(line)["id"] for line in three.stdout.splitlines()] == [e["id"] for e in everything][-3:]
    back = await ctl(api_cluster, "events", "--last", "2", "--before", str(everything[-3]["position"]), "--json")
    assert [json.loads(line)["id"] for line in back.stdout.splitlines()] == [e["id"] for e in everything][-5:-3]

    for args, needle in [
        (("--after", "3", "--last", "2"), "--after"),
        (("--last", "2", "--limit", "3"), "--limit"),
        (("--last", "0"), "--follow"),
        (("--before", "5", "--follow"), "--before"),
        (("--last", "1001"), "--last"),
    ]:
        bad = await ctl(api_cluster, "events", *args)
        assert bad.exit_code == 2 and needle in bad.stderr and "Traceback" not in bad.stderr, (args, bad)


async def test_events_follow_receives_a_new_event(api_cluster: ApiCluster) -> None:
    after = api_cluster.nodes[0].applied_index
    urls = [a for i in (2, 0) for a in ("--api", api_cluster.url(i))]
    proc = await ctl_process(*urls, "events", "--follow", "--json", "--after", str(after),
                             "--type", "dynamic_config_changed")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(timeout=10, headers=ADMIN) as http:
            r = await http.patch(api_cluster.url(1) + "/config", json={P + "follow.marker": 7})
            assert r.status_code == 200, r.text
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        event = json.loads(line)
        assert event["type"] == "dynamic_config_changed" and P + "follow.marker" in event["payload"]["changes"]
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean end, exit 0
        code = await asyncio.wait_for(proc.wait(), 10)
    stderr = (await proc.stderr.read()).decode()
    assert code == 0 and "Traceback" not in stderr, stderr


async def test_events_follow_starts_after_the_newest_shown(api_cluster: ApiCluster) -> None:
    async with httpx.AsyncClient(timeout=10, headers=ADMIN) as http:
        for n in range(3):
            assert (await http.patch(api_cluster.url(0) + "/config", json={P + "tail.follow": n})).status_code == 200
    await api_cluster.barrier()
    typed = (await _get(api_cluster, "/events?last=2&type=dynamic_config_changed"))["events"]
    urls = [a for i in (1, 2) for a in ("--api", api_cluster.url(i))]
    proc = await ctl_process(*urls, "events", "--follow", "--json", "--last", "2", "--type", "dynamic_config_changed")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        shown = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 20)) for _ in range(2)]
        assert [e["id"] for e in shown] == [e["id"] for e in typed]
        async with httpx.AsyncClient(timeout=10, headers=ADMIN) as http:
            r = await http.patch(api_cluster.url(0) + "/config", json={P + "tail.follow": "new"})
            assert r.status_code == 200, r.text
        event = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert event["position"] == r.json()["write"]["index"], "the next line is the new event, nothing replayed"
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
    stderr = (await proc.stderr.read()).decode()
    assert code == 0 and "Traceback" not in stderr, stderr


async def test_history_empty(api_cluster: ApiCluster) -> None:
    run = await ctl(api_cluster, "history")
    assert run.exit_code == 0 and "No failovers or switchovers recorded." in run.stdout
    body = json.loads((await ctl(api_cluster, "history", "--json")).stdout)
    assert body["operations"] == [] and body["timelines"] == [] and body["stale"] is False


async def test_config_history_and_events_say_when_the_answer_may_be_stale(api_cluster: ApiCluster) -> None:
    """The same 'Stale:' line as status, from what the node says of its own read."""
    for path in ("/config", "/history", "/events"):
        body = await _get(api_cluster, path + "?stale=ok")
        assert body["stale"] is True, (path, body)
        assert (stale_note(body) or "").startswith(f"Stale: {body['node']}'s own view, applied up to position ")
        assert stale_note(await _get(api_cluster, path)) is None, path
    assert render_history(await _get(api_cluster, "/history?stale=ok")).splitlines()[-1].startswith("Stale: ")
    assert "Stale" not in (await ctl(api_cluster, "config", "show")).stdout
    assert "Stale" not in (await ctl(api_cluster, "history")).stdout

    # A follower that can not apply (its log held) answers with its own, older view, and says so.
    leader = await api_cluster.settled()
    li, fi = api_cluster.index_of(leader), api_cluster.index_of(api_cluster.follower())
    name, key = api_cluster.nodes[fi].config.name, "postgresql.parameters.ram.stale_probe"
    try:
        async with holding(api_cluster.dsns[fi], "LOCK TABLE pgraft.log IN SHARE MODE"):
            assert (await ctl(api_cluster, "config", "set", f"{key}=1", apis=[api_cluster.url(li)])).exit_code == 0
            shown = {}
            for args in (("config", "show"), ("history",)):
                run = shown[args[0]] = await ctl(None, *args, apis=[api_cluster.url(fi)])
                assert run.exit_code == 0 and f"Stale: {name}'s own view" in run.stdout, (args, run)
            assert key not in shown["config"].stdout  # the older view indeed
            run = await ctl(None, "events", "--last", "3", apis=[api_cluster.url(fi)])
            assert run.exit_code == 0 and f"Stale: {name}'s own view" in run.stderr, run
    finally:
        assert (await ctl(api_cluster, "config", "set", f"{key}=null", apis=[api_cluster.url(li)])).exit_code == 0
        await api_cluster.barrier()


async def test_dsn(api_cluster: ApiCluster) -> None:
    cluster = await _get(api_cluster, "/cluster")
    hosts = ",".join(dict.fromkeys(m["pg_address"] for m in cluster["members"]))  # same host once
    run = await ctl(api_cluster, "dsn")
    assert run.exit_code == 0, run
    assert run.stdout.splitlines() == [
        f"writers: postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write",
        f"readers: postgresql://postgres@{hosts}/postgres?target_session_attrs=any",
    ]
    body = json.loads((await ctl(api_cluster, "dsn", "--json", "--user", "app", "--dbname", "shop")).stdout)
    assert body["writers"] == f"postgresql://app@{hosts}/shop?target_session_attrs=read-write"
    spread = json.loads((await ctl(api_cluster, "dsn", "--json", "--user", "", "--load-balance")).stdout)
    assert spread["readers"] == f"postgresql://{hosts}/postgres?target_session_attrs=any&load_balance_hosts=random"


async def test_health(api_cluster: ApiCluster) -> None:
    await api_cluster.settled()
    run = await ctl(api_cluster, "health")
    assert run.exit_code == 0, run
    assert run.stdout.count(" ok ") == 3
    dead = _dead_url()
    run = await ctl(api_cluster, "health", "--json", apis=[api_cluster.url(0), dead])
    results = json.loads(run.stdout)
    assert run.exit_code == 1 and [r["ok"] for r in results] == [True, False]
    assert dead in one_error_line(run)


# ------------------------------------------------------------------------------ membership


async def test_add_and_remove_node(api_cluster: ApiCluster) -> None:
    raft = f"127.0.0.1:{free_port()}"
    run = await ctl(api_cluster, "add-node", "node7", "--node-id", "7", "--raft", raft, "--api", "127.0.0.1:8017",
                    "--pg", "127.0.0.1:5437", "--nofailover")
    assert run.exit_code == 0 and "learner" in run.stdout, run
    member = await _get(api_cluster, "/members/node7")
    assert member["pg_address"] == "127.0.0.1:5437" and member["tags"]["nofailover"] is True
    status = await ctl(api_cluster, "status")
    assert any(line.startswith("node7") and "learner" in line and "nofailover" in line
               for line in status.stdout.splitlines())
    dup = await ctl(api_cluster, "add-node", "node7", "--node-id", "8", "--raft", raft, "--api", "h:1", "--pg", "h:2")
    assert "already exists" in one_error_line(dup)
    bad = await ctl(api_cluster, "add-node", "node8", "--node-id", "8", "--raft", raft, "--api", "h:1", "--pg", "h")
    assert "--pg" in one_error_line(bad)
    declined = await ctl(api_cluster, "remove-node", "node7", input="n\n")
    assert declined.exit_code == 1 and "aborted" in one_error_line(declined, only=False)
    await _get(api_cluster, "/members/node7")  # still there
    removed = await ctl(api_cluster, "remove-node", "node7", input="y\n")
    assert removed.exit_code == 0 and "removed" in removed.stdout, removed
    await api_cluster.barrier()
    assert all(m["name"] != "node7" for m in (await _get(api_cluster, "/cluster", 2))["members"])


async def test_remove_unknown_member(api_cluster: ApiCluster) -> None:
    for args in (("remove-node", "ghost"), ("remove-node", "ghost", "--force")):
        run = await ctl(api_cluster, *args)
        assert run.exit_code == 1 and "no member named 'ghost'" in one_error_line(run), run


# --------------------------------------------------------------------- HA operations (501)


async def test_ha_operations_show_the_api_error(api_cluster: ApiCluster) -> None:
    for args in (
        ("switchover", "--force"),
        ("switchover", "--to", "node2", "--at", "2999-01-01T00:00:00+00:00", "--force"),
        ("failover", "--to", "node3", "--force"),
        ("restart", "node2", "--force"),
        ("reinit", "node2", "--force"),
    ):
        run = await ctl(api_cluster, *args)
        message = one_error_line(run)
        assert run.exit_code == 1 and "not available yet" in message, (args, run)
    asked = await ctl(api_cluster, "switchover", "--to", "node2", input="y\n")
    assert "Current primary: none" in asked.stderr and "Candidate: node2" in asked.stderr
    assert asked.exit_code == 1 and "not available yet" in one_error_line(asked, only=False)
    unknown = await ctl(api_cluster, "failover", "--to", "ghost", "--force")
    assert "ghost" in one_error_line(unknown)
    past = await ctl(api_cluster, "switchover", "--at", "2001-01-01T00:00", "--force")
    assert "in the past" in one_error_line(past, only=False)


# ------------------------------------------------------------------------- connections


async def test_all_apis_unreachable_exit_2() -> None:
    dead = [_dead_url(), _dead_url()]
    proc = await ctl_process("--api", dead[0], "--api", dead[1], "status")
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no RAM API reachable"), err
    assert all(url in lines[0] for url in dead) and out == b""


async def test_dead_first_url_fails_over_to_the_next(api_cluster: ApiCluster) -> None:
    run = await ctl(api_cluster, "status", "--json", apis=[_dead_url(), api_cluster.url(1)])
    assert run.exit_code == 0, run
    # status answers from the Raft leader (it measures every member), reached through the live URL
    assert json.loads(run.stdout)["raft_leader"] in {n.config.name for n in api_cluster.nodes}
    write = await ctl(api_cluster, "config", "set", P + "failover.ok=1", apis=[_dead_url(), api_cluster.url(2)])
    assert write.exit_code == 0, write


async def test_a_refusing_node_sends_ramctrl_to_the_leader(
    api_cluster: ApiCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = await api_cluster.settled()
    fi = api_cluster.index_of(api_cluster.follower())
    follower = api_cluster.nodes[fi]
    lid, raft = leader.config.node_id, leader.config.raft.listen

    async def moved(command: object, *, timeout: float | None = None, **_: object) -> ApplyResult:
        raise NoLeaderError(f"not the leader; the leader is node {lid} at {raft}", lid, raft)

    monkeypatch.setattr(follower, "propose", moved)
    # Only the refusing node is named: its 503 names the leader's API, which ramctrl tries once.
    run = await ctl(api_cluster, "pause", "--reason", "via the leader", apis=[api_cluster.url(fi)])
    assert run.exit_code == 0 and "Maintenance mode: on" in run.stdout, run
    await api_cluster.barrier()
    assert (await _get(api_cluster, "/cluster"))["maintenance_reason"] == "via the leader"
    monkeypatch.undo()
    assert (await ctl(api_cluster, "resume")).exit_code == 0


async def test_status_says_when_the_answer_may_be_stale(api_cluster: ApiCluster) -> None:
    run = await ctl(api_cluster, "status")
    assert run.exit_code == 0 and "Stale" not in run.stdout
    body = await _get(api_cluster, "/cluster?stale=ok")
    assert body["stale"] is True
    text = render_status(body)
    assert text.splitlines()[-1].startswith(f"Stale: {body['node']}'s own view, applied up to position ")


async def test_ram_api_environment_variable(api_cluster: ApiCluster) -> None:
    run = await ctl(None, "config", "show", "--json", env={"RAM_API": f"{_dead_url()},{api_cluster.url(2)}"})
    assert run.exit_code == 0 and "config" in json.loads(run.stdout), run  # the live URL of $RAM_API answered
    run = await ctl(None, "status", "--json", env={"RAM_API": _dead_url()})
    assert run.exit_code == 2, run  # and $RAM_API is what was asked (no default URL behind it)
