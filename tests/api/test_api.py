"""The HTTP API over real loopback HTTP against a real in-process 3-node cluster (real Raft, real stores)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ram.api import serve
from ram.api.context import ApiContext
from ram.cluster.node import ApplyResult
from ram.consensus.runtime.errors import NoLeaderError, ProposalTimeout
from ram.consensus.types import Role
from ram.projections.sql import load_state
from tests.api.conftest import ADMIN, ApiCluster, test_security
from tests.conftest import free_port, holding


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == status
    assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"]
    return str(body["error"])


# ------------------------------------------------------------------------------------ reads


async def test_cluster_shape_and_values(api_cluster: ApiCluster, client: httpx.AsyncClient) -> None:
    leader = await api_cluster.settled()
    for i, node in enumerate(api_cluster.nodes):
        r = await client.get(api_cluster.url(i) + "/cluster")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["cluster_id"] == "test" and body["cluster_name"] == "ram"
        assert body["node"] == node.config.name
        assert body["raft_leader"] == leader.config.name
        assert body["raft_term"] == leader.term
        assert body["primary"] is None and body["timeline"] is None
        assert body["synchronous"] == {"mode": "off", "num_sync": 0, "standbys": []}
        assert isinstance(body["maintenance"], bool)
        members = {m["name"]: m for m in body["members"]}
        assert sorted(members) == ["node1", "node2", "node3"]
        for peer in api_cluster.nodes:
            m = members[peer.config.name]
            assert m["node_id"] == peer.config.node_id
            assert m["raft_address"] == peer.config.raft.listen
            assert m["pg_address"].endswith(":5432") and m["api_address"] == peer.config.api.listen
            assert m["role"] == "unknown" and m["state"] == "unknown"
            assert m["is_learner"] is False and m["lag_bytes"] is None
            assert m["tags"] == {"nofailover": False, "noloadbalance": False, "nosync": False, "failover_priority": 1}
            assert m["is_raft_leader"] is (peer is leader)


async def test_member_found_and_unknown(api_cluster: ApiCluster, client: httpx.AsyncClient) -> None:
    r = await client.get(api_cluster.url(0) + "/members/node2")
    assert r.status_code == 200 and r.json()["node_id"] == 2
    message = _error(await client.get(api_cluster.url(0) + "/members/nosuch"), 404)
    assert "nosuch" in message


async def test_history_empty_without_ha(api_cluster: ApiCluster, client: httpx.AsyncClient) -> None:
    r = await client.get(api_cluster.url(2) + "/history")
    body = r.json()
    assert r.status_code == 200 and body["operations"] == [] and body["timelines"] == [], body
    assert body["stale"] is False and body["node"] == api_cluster.nodes[2].config.name


# ----------------------------------------------------------------------------------- writes


async def test_maintenance_through_follower_reaches_every_node(
    api_cluster: ApiCluster, client: httpx.AsyncClient
) -> None:
    await api_cluster.settled()
    follower = api_cluster.follower()
    f = api_cluster.index_of(follower)
    r = await client.post(api_cluster.url(f) + "/maintenance", json={"reason": "upgrade", "by": "alice"})
    assert r.status_code == 200, r.text
    body = r.json()
    # Recorded as the authenticated token; what the client claims follows as an unchecked note.
    assert body["maintenance"] is True and body["reason"] == "upgrade" and body["by"] == "token:ops (alice)"
    assert body["write"]["index"] > 0 and body["write"]["events"] in (["maintenance_mode_changed"], [])
    await api_cluster.barrier()
    for i, node in enumerate(api_cluster.nodes):
        assert node.state.maintenance is True
        assert (await client.get(api_cluster.url(i) + "/cluster")).json()["maintenance"] is True
    # Off through another node, with no body at all.
    other = next(i for i in range(3) if i != f)
    r = await client.delete(api_cluster.url(other) + "/maintenance")
    assert r.status_code == 200 and r.json()["maintenance"] is False
    r = await client.post(api_cluster.url(f) + "/maintenance")  # body optional
    assert r.status_code == 200 and r.json()["maintenance"] is True
    r = await client.delete(api_cluster.url(f) + "/maintenance")
    assert r.status_code == 200
    await api_cluster.barrier()
    assert all(n.state.maintenance is False for n in api_cluster.nodes)


async def test_config_roundtrip_and_pending_restart(api_cluster: ApiCluster, client: httpx.AsyncClient) -> None:
    await api_cluster.settled()
    patch = {
        "postgresql.parameters.max_connections": 250,
        "postgresql.parameters.work_mem": "8MB",
        "maximum_lag_on_failover": 2048,
        "synchronous_strict": True,
    }
    r = await client.patch(api_cluster.url(1) + "/config", json=patch)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["write"]["events"] == ["dynamic_config_changed"]
    assert "postgresql.parameters.max_connections" in body["pending_restart"]
    assert "postgresql.parameters.work_mem" not in body["pending_restart"]
    await api_cluster.barrier()
    for i in range(3):
        got = (await client.get(api_cluster.url(i) + "/config")).json()
        for key, value in patch.items():
            assert got["config"][key] == value
        assert "postgresql.parameters.max_connections" in got["pending_restart"]
        assert got["effective"]["maximum_lag_on_failover"] == 2048 and got["defaults"]["maximum_lag_on_failover"] > 2048
    # The same values again change nothing (no entry); null removes a key (back to the node file).
    r = await client.patch(api_cluster.url(2) + "/config", json={"maximum_lag_on_failover": 2048})
    assert r.status_code == 200 and r.json()["write"] is None
    r = await client.patch(api_cluster.url(0) + "/config", json={"maximum_lag_on_failover": None})
    assert r.status_code == 200 and "maximum_lag_on_failover" not in r.json()["config"]
    assert r.json()["effective"]["maximum_lag_on_failover"] == r.json()["defaults"]["maximum_lag_on_failover"]


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"ttl": 30}, "unknown config key 'ttl'; allowed: synchronous_mode"),
        ({"no.such.key": 1}, "unknown config key 'no.such.key'"),
        ({"synchronous_node_count": 0}, "config key 'synchronous_node_count'"),
        ({"report_timeout_s": -1}, "config key 'report_timeout_s'"),
        ({"synchronous_mode": "always"}, "config key 'synchronous_mode'"),
        ({"synchronous_strict": "yes"}, "a JSON boolean is required"),
        ({"lease_s": 3}, "is not dynamic"),
        ({"postgresql.parameters.port": 5433}, "is set by RAM itself"),
        ({"postgresql.parameters.bad name": 1}, "is not a PostgreSQL parameter name"),
        ({"postgresql.parameters.work_mem": {"a": 1}}, "a string, number or boolean is required"),
    ],
)
async def test_config_refuses_bad_keys_and_values(
    api_cluster: ApiCluster, client: httpx.AsyncClient, patch: dict[str, Any], needle: str
) -> None:
    """A bad key or value is a 400 naming the key and what is allowed, and changes nothing."""
    await api_cluster.settled()
    before = (await client.get(api_cluster.url(0) + "/config")).json()["config"]
    r = await client.patch(api_cluster.url(0) + "/config", json=patch)
    assert r.status_code == 400 and needle in r.json()["error"], r.text
    assert (await client.get(api_cluster.url(0) + "/config")).json()["config"] == before


async def test_add_and_remove_member(api_cluster: ApiCluster, client: httpx.AsyncClient) -> None:
    leader = await api_cluster.settled()
    url = api_cluster.url(api_cluster.index_of(leader))
    spec = {
        "name": "node9", "node_id": 9, "raft_address": f"127.0.0.1:{free_port()}",
        "api_address": "127.0.0.1:8009", "pg_host": "127.0.0.1", "pg_port": 5439, "tags": {"nofailover": True},
    }
    r = await client.post(url + "/members", json=spec)
    assert r.status_code == 201, r.text
    assert r.json()["write"]["events"] == ["member_added"]
    member = (await client.get(url + "/members/node9")).json()
    assert member["is_learner"] is True and member["tags"]["nofailover"] is True
    assert "already exists" in _error(await client.post(url + "/members", json=spec), 409)
    r = await client.delete(url + "/members/node9", params={"reason": "test"})
    assert r.status_code == 200, r.text
    assert r.json()["write"]["events"] == ["member_removed"]
    _error(await client.get(url + "/members/node9"), 404)
    _error(await client.delete(url + "/members/node9"), 404)


async def test_ha_operations_are_validated_then_not_available(
    api_cluster: ApiCluster, client: httpx.AsyncClient
) -> None:
    url = api_cluster.url(0)
    for method, path, body in [
        ("POST", "/switchover", None),
        ("POST", "/switchover", {"candidate": "node2", "scheduled_at": "2030-01-01T00:00:00+00:00"}),
        ("POST", "/failover", {"candidate": "node3"}),
        ("POST", "/members/node2/restart", None),
        ("POST", "/members/node2/reinit", None),
    ]:
        r = await client.request(method, url + path, json=body)
        assert "not available yet" in _error(r, 501)
        assert "high-availability layer" in r.json()["error"]


# ------------------------------------------------------------------------------- bad input


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("PATCH", "/config", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "JSON"),
    ("POST", "/maintenance", {"content": b'{"reason": ', "headers": {"content-type": "application/json"}}, 400, "JSON"),
    ("POST", "/maintenance", {"json": {"reason": 5}}, 400, "reason"),
    ("POST", "/maintenance", {"json": {"reasn": "typo"}}, 400, "reasn"),
    ("POST", "/maintenance", {"json": ["x"]}, 400, ""),
    ("PATCH", "/config", {"json": [1, 2]}, 400, ""),
    ("PATCH", "/config", {"json": "ttl"}, 400, ""),
    ("PATCH", "/config", {"json": {"": 1}}, 400, "key"),
    ("PATCH", "/config", {"json": {"postgresql.parameters.no such": 1}}, 400, "no such"),
    ("GET", "/members/ghost", {}, 404, "ghost"),
    ("DELETE", "/members/ghost", {}, 404, "ghost"),
    ("POST", "/members/ghost/restart", {}, 404, "ghost"),
    ("POST", "/members/ghost/reinit", {}, 404, "ghost"),
    ("POST", "/members", {"json": {"name": "x"}}, 400, "node_id"),
    ("POST", "/members", {"json": {"name": "bad name!", "node_id": 5, "raft_address": "h:1", "api_address": "h:2",
                                   "pg_host": "h"}}, 400, "name"),
    ("POST", "/members", {"json": {"name": "n5", "node_id": "five", "raft_address": "h:1", "api_address": "h:2",
                                   "pg_host": "h"}}, 400, "node_id"),
    ("POST", "/members", {"json": {"name": "n5", "node_id": 5, "raft_address": "nohostport", "api_address": "h:2",
                                   "pg_host": "h"}}, 400, "raft_address"),
    ("GET", "/events?limit=0", {}, 400, "limit"),
    ("GET", "/events?limit=1001", {}, 400, "limit"),
    ("GET", "/events?limit=ten", {}, 400, "limit"),
    ("GET", "/events?after=-1", {}, 400, "after"),
    ("GET", "/events?after=99999999999999999999999", {}, 400, "after"),
    ("GET", "/events?type=no_such_event", {}, 400, "no_such_event"),
    ("GET", "/events?last=0", {}, 400, "last"),
    ("GET", "/events?last=1001", {}, 400, "last"),
    ("GET", "/events?last=many", {}, 400, "last"),
    ("GET", "/events?last=5&after=3", {}, 400, "'after'"),
    ("GET", "/events?last=5&limit=3", {}, 400, "'limit'"),
    ("GET", "/events?before=3", {}, 400, "'before' needs 'last'"),
    ("GET", "/events?last=5&before=-1", {}, 400, "before"),
    ("GET", "/cluster?stale=maybe", {}, 400, "'stale'"),
    ("GET", "/members/node1?stale=maybe", {}, 400, "'stale'"),
    ("GET", "/events/stream?type=no_such_event", {}, 400, "no_such_event"),
    ("GET", "/events/stream", {"headers": {"Last-Event-ID": "abc"}}, 400, "Last-Event-ID"),
    ("GET", "/replica?lag=12XB", {}, 400, "lag"),
    ("GET", "/read-only?lag=-5", {}, 400, "lag"),
    ("POST", "/failover", {"json": {}}, 400, "candidate"),
    ("POST", "/failover", {"json": {"candidate": "ghost"}}, 400, "ghost"),
    ("POST", "/switchover", {"json": {"candidate": "ghost"}}, 400, "ghost"),
    ("POST", "/switchover", {"json": {"scheduled_at": "2030-01-01T00:00:00"}}, 400, "scheduled_at"),
    ("POST", "/switchover", {"json": {"scheduled_at": "tomorrow"}}, 400, "scheduled_at"),
    ("PUT", "/cluster", {}, 405, "PUT"),
    ("GET", "/no/such/path", {}, 404, "/no/such/path"),
]


async def test_bad_input_gets_a_4xx_json_error_naming_the_problem(
    api_cluster: ApiCluster, client: httpx.AsyncClient
) -> None:
    before = [n.decided_index for n in api_cluster.nodes]
    for method, path, kwargs, status, mentions in BAD_REQUESTS:
        r = await client.request(method, api_cluster.url(1) + path, **kwargs)
        message = _error(r, status)
        assert mentions in message, f"{method} {path}: {message!r} does not mention {mentions!r}"
    # HEAD gets the status without a body.
    r = await client.head(api_cluster.url(1) + "/replica?lag=12XB")
    assert r.status_code == 400 and r.content == b""
    # Nothing was written by any of them (nothing was even decided).
    assert [n.decided_index for n in api_cluster.nodes] == before


# ----------------------------------------------------------------------------------- events


async def test_events_paging_and_type_filter(api_cluster: ApiCluster, client: httpx.AsyncClient) -> None:
    url = api_cluster.url(2)
    everything = (await client.get(url + "/events", params={"limit": 1000})).json()
    assert everything["events"], "the bootstrap events at least"
    paged: list[dict[str, Any]] = []
    after = 0
    for _ in range(1000):
        page = (await client.get(url + "/events", params={"after": after, "limit": 2})).json()
        if not page["events"]:
            assert page["next_after"] == after and page["more"] is False
            break
        paged.extend(page["events"])
        after = page["next_after"]
    assert [e["id"] for e in paged] == [e["id"] for e in everything["events"]]
    keys = [(e["position"], e["sub"]) for e in paged]
    assert keys == sorted(set(keys))
    assert paged[0]["type"] == "cluster_bootstrapped"
    r = await client.get(url + "/events", params=[("type", "raft_leader_elected"), ("type", "cluster_bootstrapped")])
    types = {e["type"] for e in r.json()["events"]}
    assert types == {"raft_leader_elected", "cluster_bootstrapped"}


async def test_events_last_reads_the_newest_and_pages_back(
    api_cluster: ApiCluster, client: httpx.AsyncClient
) -> None:
    url = api_cluster.url(1)
    for n in range(3):  # a few single-event entries on top of the bootstrap's multi-event entry
        r = await client.patch(url + "/config", json={f"postgresql.parameters.tail.probe{n}": n})
        assert r.status_code == 200
    everything = (await client.get(url + "/events", params={"limit": 1000})).json()["events"]
    ids = [e["id"] for e in everything]

    newest = (await client.get(url + "/events", params={"last": 3})).json()
    got = [e["id"] for e in newest["events"]]
    assert got == ids[-len(got):] and len(got) >= 3, "the newest events, oldest first"
    assert newest["next_after"] == everything[-1]["position"]
    assert newest["next_before"] == newest["events"][0]["position"] and newest["more"] is True
    # The page holds whole entries: nothing of its first position is left out.
    first = newest["events"][0]["position"]
    assert got == [e["id"] for e in everything if e["position"] >= first]
    # Continuing forward from next_after: nothing yet.
    after = (await client.get(url + "/events", params={"after": newest["next_after"]})).json()
    assert after["events"] == [] and after["next_after"] == newest["next_after"]

    # Paging back one event at a time walks the whole history, skipping nothing, repeating nothing.
    pages: list[list[str]] = []
    before: int | None = None
    for _ in range(1000):
        params: dict[str, int] = {"last": 1} if before is None else {"last": 1, "before": before}
        page = (await client.get(url + "/events", params=params)).json()
        if not page["events"]:
            assert page["more"] is False and page["next_before"] is None
            break
        pages.append([e["id"] for e in page["events"]])
        before = page["next_before"]
    assert [i for page_ids in reversed(pages) for i in page_ids] == ids

    # The type filter applies to the newest too.
    typed = (await client.get(url + "/events", params={"last": 1, "type": "dynamic_config_changed"})).json()
    assert [list(e["payload"]["changes"]) for e in typed["events"]] == [["postgresql.parameters.tail.probe2"]]
    nothing = (await client.get(url + "/events", params={"last": 5, "before": 1})).json()
    assert {k: nothing[k] for k in ("events", "next_after", "more", "next_before")} == {
        "events": [], "next_after": 0, "more": False, "next_before": None
    }
    assert nothing["stale"] is False


async def _next_event(lines: AsyncIterator[str]) -> dict[str, str]:
    """The next SSE event that has data (comment-only blocks are skipped)."""
    fields: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if "data" in fields:
                return fields
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value
    raise AssertionError("stream ended")


async def test_sse_stream_delivers_new_events_and_stops_on_disconnect(
    api_cluster: ApiCluster, client: httpx.AsyncClient
) -> None:
    await api_cluster.settled()
    i = api_cluster.index_of(api_cluster.follower())
    ctx: ApiContext = api_cluster.servers[i].app.state.ctx
    url = api_cluster.url(i) + "/events/stream"
    async with client.stream("GET", url, params={"type": "dynamic_config_changed"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        # Produced after connecting, through another node.
        probe = {"postgresql.parameters.probe.sse": time.time()}
        r = await client.patch(api_cluster.url((i + 1) % 3) + "/config", json=probe)
        assert r.status_code == 200
        async with asyncio.timeout(10):
            event = await _next_event(lines)
        assert event["event"] == "dynamic_config_changed"
        position, _, sub = event["id"].partition(".")
        assert int(position) == r.json()["write"]["index"] and sub == "0"
        data = json.loads(event["data"])  # the SSE field is "data"; the event's body is "payload", as in SQL
        assert "postgresql.parameters.probe.sse" in data["payload"]["changes"] and "data" not in data
        assert ctx.events is not None and len(ctx.events) == 1
    # The client went away: the server side ends its follow() and releases its connection.
    deadline = time.monotonic() + 5
    while len(ctx.events) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not len(ctx.events)


async def test_sse_resumes_after_last_event_id(api_cluster: ApiCluster, client: httpx.AsyncClient) -> None:
    events = (await client.get(api_cluster.url(0) + "/events", params={"limit": 1000})).json()["events"]
    assert len(events) >= 2
    first, second = events[0], events[1]
    async with client.stream(
        "GET", api_cluster.url(0) + "/events/stream", headers={"Last-Event-ID": first["id"]}
    ) as response:
        async with asyncio.timeout(10):
            event = await _next_event(response.aiter_lines())
    assert event["id"] == second["id"]


# --------------------------------------------------------------------------- fresh reads


async def test_follower_cluster_read_is_at_least_as_new_as_a_committed_write(
    api_cluster: ApiCluster, client: httpx.AsyncClient
) -> None:
    leader = await api_cluster.settled()
    li, fi = api_cluster.index_of(leader), api_cluster.index_of(api_cluster.follower())
    follower = api_cluster.nodes[fi]
    reason = f"fresh read {time.time()}"
    # Hold the follower's log: it can persist - so acknowledge and apply - nothing new, while the
    # leader and the third node still commit. The follower lags, deterministically. (Holding its
    # applied index row is not enough: a node decides committed entries in memory before its store
    # write.)
    try:
        async with holding(api_cluster.dsns[fi], "LOCK TABLE pgraft.log IN SHARE MODE") as release:
            r = await client.post(api_cluster.url(li) + "/maintenance", json={"reason": reason})
            assert r.status_code == 200, r.text
            index = r.json()["write"]["index"]
            assert follower.applied_index < index

            # ?stale=ok: at once, this node's own (older) state, marked as such.
            started = time.monotonic()
            body = (await client.get(api_cluster.url(fi) + "/cluster", params={"stale": "ok"})).json()
            assert time.monotonic() - started < 0.4
            assert body["stale"] is True and "stale=ok" in body["stale_reason"] and body["read_index"] is None
            assert body["applied_index"] < index and body["maintenance_reason"] != reason

            # Default, the follower still can not apply: it answers anyway (a cut-off node must), marked stale.
            body = (await client.get(api_cluster.url(fi) + "/cluster")).json()
            assert body["stale"] is True and "read barrier" in body["stale_reason"], body
            assert body["applied_index"] < index
            member = (await client.get(api_cluster.url(fi) + "/members/" + leader.config.name)).json()
            assert member["stale"] is True and member["applied_index"] < index
            assert member["node"] == follower.config.name

            # Default, and the follower catches up while the request waits: the answer includes the write.
            async def release_soon() -> None:
                await asyncio.sleep(0.1)
                await release()

            releasing = asyncio.get_running_loop().create_task(release_soon())
            r = await client.get(api_cluster.url(fi) + "/cluster")
            await releasing
            body = r.json()
            assert r.status_code == 200 and body["stale"] is False and body["stale_reason"] == "", body
            assert body["read_index"] >= index and body["applied_index"] >= index
            assert body["maintenance"] is True and body["maintenance_reason"] == reason
            assert body["node"] == follower.config.name
            member = (await client.get(api_cluster.url(fi) + "/members/" + leader.config.name)).json()
            assert member["stale"] is False and member["read_index"] >= index and member["is_raft_leader"] is True
    finally:
        assert (await client.delete(api_cluster.url(li) + "/maintenance")).status_code == 200
        await api_cluster.barrier()


async def test_follower_config_history_and_event_reads_include_a_committed_write(
    api_cluster: ApiCluster, client: httpx.AsyncClient
) -> None:
    """GET /config, /history and /events pass the same read barrier as /cluster: a follower that
    lags answers marked stale, and once it catches up the answer includes the leader's write."""
    leader = await api_cluster.settled()
    li, fi = api_cluster.index_of(leader), api_cluster.index_of(api_cluster.follower())
    follower_url = api_cluster.url(fi)
    key = f"postgresql.parameters.ram.fresh_{int(time.time() * 1000)}"
    try:
        async with holding(api_cluster.dsns[fi], "LOCK TABLE pgraft.log IN SHARE MODE") as release:
            r = await client.patch(api_cluster.url(li) + "/config", json={key: "on"})
            assert r.status_code == 200, r.text
            index = r.json()["write"]["index"]
            assert api_cluster.nodes[fi].applied_index < index

            for path in ("/config", "/history", "/events?last=5"):
                sep = "&" if "?" in path else "?"
                body = (await client.get(follower_url + path + sep + "stale=ok")).json()
                assert body["stale"] is True and "stale=ok" in body["stale_reason"], (path, body)
                assert body["read_index"] is None and body["applied_index"] < index, (path, body)
                # The barrier can not complete while the follower can not apply: served anyway, marked.
                body = (await client.get(follower_url + path)).json()
                assert body["stale"] is True and "read barrier" in body["stale_reason"], (path, body)
                assert body["node"] == api_cluster.nodes[fi].config.name
            assert key not in (await client.get(follower_url + "/config")).json()["config"]

            async def release_soon() -> None:
                await asyncio.sleep(0.1)
                await release()

            releasing = asyncio.get_running_loop().create_task(release_soon())
            config = (await client.get(follower_url + "/config")).json()
            await releasing
        assert config["stale"] is False and config["read_index"] >= index, config
        assert config["config"].get(key) == "on"
        page = (await client.get(follower_url + "/events", params={"after": index - 1, "limit": 10})).json()
        assert page["stale"] is False and page["read_index"] >= index
        assert [e["position"] for e in page["events"]][:1] == [index], page
        history = (await client.get(follower_url + "/history")).json()
        assert history["stale"] is False and history["applied_index"] >= index
        r = await client.get(follower_url + "/history", params={"stale": "maybe"})
        assert r.status_code == 400 and "'stale'" in r.json()["error"]
    finally:
        assert (await client.patch(api_cluster.url(li) + "/config", json={key: None})).status_code == 200
        await api_cluster.barrier()


async def test_every_node_reads_fresh_and_names_the_leader_api(
    api_cluster: ApiCluster, client: httpx.AsyncClient
) -> None:
    leader = await api_cluster.settled()
    leader_url = api_cluster.url(api_cluster.index_of(leader))
    for i in range(3):
        body = (await client.get(api_cluster.url(i) + "/cluster")).json()
        assert body["stale"] is False and body["read_index"] <= body["applied_index"]
        assert body["raft_leader_api"] == leader_url


async def test_a_503_names_the_leader_api(
    api_cluster: ApiCluster, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = await api_cluster.settled()
    li, fi = api_cluster.index_of(leader), api_cluster.index_of(api_cluster.follower())
    follower, leader_url = api_cluster.nodes[fi], api_cluster.url(li)
    lid, raft = leader.config.node_id, leader.config.raft.listen
    before = [n.decided_index for n in api_cluster.nodes]

    async def moved(command: object, *, timeout: float | None = None, **_: object) -> ApplyResult:
        raise NoLeaderError(f"not the leader; the leader is node {lid} at {raft}", lid, raft)

    monkeypatch.setattr(follower, "propose", moved)
    r = await client.post(api_cluster.url(fi) + "/maintenance?x=1", json={"reason": "hint"})
    message = _error(r, 503)
    body = r.json()
    assert body["leader"] == raft and body["leader_name"] == leader.config.name
    assert body["leader_api"] == leader_url and leader_url in message
    assert r.headers["location"] == leader_url + "/maintenance?x=1" and r.headers["retry-after"] == "1"

    async def silent(command: object, *, timeout: float | None = None, **_: object) -> ApplyResult:
        raise ProposalTimeout(f"leader (node {lid}) did not answer within 10 s")

    monkeypatch.setattr(follower, "propose", silent)
    r = await client.patch(api_cluster.url(fi) + "/config", json={"postgresql.parameters.hint.probe": 1})
    assert "did not answer" in _error(r, 503)
    assert r.json()["leader_api"] == leader_url and r.headers["location"] == leader_url + "/config"

    # The leader itself without a quorum: there is nobody to point at.
    monkeypatch.setattr(leader, "propose", silent)
    r = await client.post(leader_url + "/maintenance", json={})
    _error(r, 503)
    assert "leader_api" not in r.json() and "location" not in r.headers
    assert [n.decided_index for n in api_cluster.nodes] == before


# ----------------------------------------------------------------------------------- health


CHECKS = ["/primary", "/read-write", "/replica", "/read-only", "/sync", "/async", "/health", "/liveness", "/readiness"]


async def _codes(client: httpx.AsyncClient, base: str, path: str) -> int:
    got = await client.get(base + path)
    head = await client.head(base + path)
    assert head.status_code == got.status_code, f"HEAD {path} {head.status_code} != GET {got.status_code}"
    assert head.content == b""
    body = got.json()
    assert body["ok"] is (got.status_code == 200)
    assert {"role", "state", "name", "raft_role"} <= set(body)
    return got.status_code


async def test_health_checks_follow_the_state(api_cluster: ApiCluster, client: httpx.AsyncClient) -> None:
    await api_cluster.settled()
    # No primary and no health reports yet (the HA layer is not running): only Raft-level checks pass.
    for i in range(3):
        codes = {p: await _codes(client, api_cluster.url(i), p) for p in CHECKS}
        assert codes == {p: 200 if p in ("/health", "/liveness", "/readiness") else 503 for p in CHECKS}, codes

    # Give the projection a primary and health reports (what the HA layer will commit) and check again.
    names = [n.config.name for n in api_cluster.nodes]
    originals = [n.state for n in api_cluster.nodes]
    try:
        for node in api_cluster.nodes:
            s = node.state
            members = dict(s.members)
            members[names[1]] = dataclasses.replace(
                members[names[1]], healthy=True, pg_running=True, reported_role="replica", lag_bytes=1000
            )
            members[names[2]] = dataclasses.replace(
                members[names[2]], healthy=True, pg_running=True, reported_role="replica", lag_bytes=50 * 1024**2
            )
            node.machine.state = dataclasses.replace(
                s, members=members, primary=names[0], timeline=3, sync_mode="on", num_sync=1, sync_standbys=(names[1],)
            )
        expected = {
            0: {"/primary": 200, "/read-write": 200, "/replica": 503, "/read-only": 200, "/sync": 503, "/async": 503},
            1: {"/primary": 503, "/read-write": 503, "/replica": 200, "/read-only": 200, "/sync": 200, "/async": 503},
            2: {"/primary": 503, "/read-write": 503, "/replica": 200, "/read-only": 200, "/sync": 503, "/async": 200},
        }
        for i, want in expected.items():
            got = {p: await _codes(client, api_cluster.url(i), p) for p in want}
            assert got == want, (i, got)
        assert await _codes(client, api_cluster.url(1), "/replica?lag=512") == 503
        assert await _codes(client, api_cluster.url(1), "/replica?lag=1kB") == 200
        assert await _codes(client, api_cluster.url(2), "/replica?lag=16MB") == 503
        assert await _codes(client, api_cluster.url(2), "/async?lag=1GB") == 200
        assert await _codes(client, api_cluster.url(0), "/read-only?lag=1") == 200  # the primary has no lag
        body = (await client.get(api_cluster.url(0) + "/primary")).json()
        assert body["role"] == "primary"
        cluster = (await client.get(api_cluster.url(2) + "/cluster")).json()
        roles = {m["name"]: m["role"] for m in cluster["members"]}
        assert roles == {names[0]: "primary", names[1]: "replica", names[2]: "replica"}
        assert cluster["primary"] == names[0] and cluster["synchronous"]["standbys"] == [names[1]]
    finally:
        for node, pool, original in zip(api_cluster.nodes, api_cluster.pools, originals, strict=True):
            if node.state is not original:
                async with pool.acquire() as conn:
                    node.machine.state = await load_state(conn)


# ---------------------------------------------------------------------------------- metrics


async def test_metrics_parse_and_name_the_essentials(api_cluster: ApiCluster, client: httpx.AsyncClient) -> None:
    await api_cluster.settled()
    leaders = 0.0
    for i, node in enumerate(api_cluster.nodes):
        assert (await client.get(api_cluster.url(i) + "/cluster")).status_code == 200
        r = await client.get(api_cluster.url(i) + "/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        for name in ("ram_raft_term", "ram_raft_commit_index", "ram_raft_applied_index", "ram_raft_is_leader",
                     "ram_pg_role", "ram_pg_timeline", "ram_replication_lag_bytes", "ram_lease_remaining_seconds",
                     "ram_failovers", "ram_switchovers", "ram_member_healthy", "ram_primary_known",
                     "ram_synchronous_degraded", "ram_raft_has_leader", "ram_api_request_duration_seconds",
                     "ram_raft_sealed_index", "ram_raft_store_failures", "ram_raft_reapplied_batches",
                     "ram_raft_decided_index"):
            assert name in families, name
        samples = {s.name: s for f in families.values() for s in f.samples if not s.labels}
        assert samples["ram_raft_term"].value >= 1
        # The store never has more than the node decided in memory.
        assert samples["ram_raft_decided_index"].value >= samples["ram_raft_applied_index"].value >= 1
        assert samples["ram_raft_reapplied_batches_total"].value == 0  # no store crash here
        outcomes = {s.labels["outcome"]: s.value for s in families["ram_failovers"].samples}
        assert outcomes == {"succeeded": 0.0, "failed": 0.0, "superseded": 0.0}
        leaders += samples["ram_raft_is_leader"].value
        assert samples["ram_raft_is_leader"].value == (1.0 if node.role is Role.LEADER else 0.0)
        roles = {s.labels["role"]: s.value for s in families["ram_pg_role"].samples}
        assert roles == {"primary": 0.0, "replica": 0.0, "unknown": 1.0}
        counted = [
            s for s in families["ram_api_request_duration_seconds"].samples
            if s.name.endswith("_count") and s.labels == {"route": "/cluster", "method": "GET", "status": "200"}
        ]
        assert counted and counted[0].value >= 1
    assert leaders == 1.0


# ------------------------------------------------------------------------------- the server


async def test_serve_refuses_a_busy_port_and_stops_cleanly(api_cluster: ApiCluster) -> None:
    busy = api_cluster.servers[0]
    with pytest.raises(OSError):
        await serve(busy.app, "127.0.0.1", busy.port)
    node, pool, dsn = api_cluster.nodes[0], api_cluster.pools[0], api_cluster.dsns[0]
    from ram.api import create_app

    server = await serve(create_app(node, store_dsn=dsn, pool=pool, security=test_security()), "127.0.0.1", 0)
    async with httpx.AsyncClient(timeout=5, headers=ADMIN) as c:
        assert (await c.get(server.url + "/liveness")).status_code == 200
        schema = (await c.get(server.url + "/schema/openapi.json")).json()
        assert schema["info"]["title"] == "RAM"
        # An open event stream does not hold up the stop.
        async with c.stream("GET", server.url + "/events/stream") as response:
            assert response.status_code == 200
            started = time.monotonic()
            await server.stop()
            assert time.monotonic() - started < 3
    assert server.task.done()


# ------------------------------------------------------------------------------ schemathesis


def _fuzz_one(base_url: str, operation: Any, max_examples: int, checks: list[Any], is_check: bool) -> Any:
    from hypothesis import HealthCheck, given, settings

    @settings(
        max_examples=max_examples, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=15, headers=ADMIN)
        assert response.status_code < 500 or (is_check and response.status_code == 503), response.text
        case.validate_response(response, checks=checks)

    return run


def _fuzz(base_url: str, max_examples: int) -> list[str]:
    """Schema-driven requests (GET endpoints and PATCH /config) against a running node; returns failures."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(base_url + "/schema/openapi.json")
    schema = schema.include(method=["GET", "PATCH"]).exclude(path="/events/stream")  # the stream never ends
    conformance = [status_code_conformance, content_type_conformance, response_schema_conformance]
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    for operation in operations:
        # A health check answers 503 when false (documented); anything else must never be a 5xx.
        is_check = "health" in (operation.tags or [])
        run = _fuzz_one(base_url, operation, max_examples, conformance if is_check else [not_a_server_error,
                                                                                          *conformance], is_check)
        try:
            run()
        except BaseException as exc:  # schemathesis reports a group of failures
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            failures.append(f"{operation.label}: {' '.join(str(exc).split())[:2000]}")
    return failures


async def test_schemathesis_get_endpoints_and_config_patch(api_cluster: ApiCluster) -> None:
    await api_cluster.settled()
    i = api_cluster.index_of(api_cluster.follower())
    failures = await asyncio.to_thread(_fuzz, api_cluster.url(i), 20)
    assert not failures, "\n".join(failures)
