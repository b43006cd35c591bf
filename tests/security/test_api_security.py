"""API access control against a real in-process 3-node cluster over real HTTP (issue #11, API side).

Every mutating endpoint is enumerated from the node's own OpenAPI document, so an endpoint added later
is covered without touching this file: without a token it answers 401, with a read token 403, and
nothing is committed. Also: JSON-only writes, health checks open by default and closable, reads open
only when configured, requested_by naming the token, allow-lists, HTTPS with ramctrl --cacert (and
client certificates), and 200 concurrent event streams sharing one store connection.
"""

# ruff: noqa: F811  (api_cluster: the API tests' fixture, imported, then requested by name)
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from ram.api import ApiServer, create_app, health_routes, serve
from ram.api.context import ApiContext
from ram.security import ApiSecurity, TlsFiles
from ram.tls import make_ca, make_cert
from tests.api.conftest import ADMIN, ADMIN_TOKEN, READ, READ_TOKEN, ApiCluster, api_cluster, test_security  # noqa: F401
from tests.cli.conftest import ctl, one_error_line

WRITES = ("post", "put", "patch", "delete")
HEALTH_PATHS = sorted({p for handler in health_routes.ROUTES for p in handler.paths})


@contextlib.asynccontextmanager
async def node_server(cluster: ApiCluster, security: ApiSecurity, i: int = 0, host: str = "127.0.0.1",
                      ) -> AsyncIterator[ApiServer]:
    """One more API server of node ``i`` with its own security settings, on a free port."""
    app = create_app(cluster.nodes[i], store_dsn=cluster.dsns[i], pool=cluster.pools[i], security=security)
    server = await serve(app, host, 0)
    try:
        yield server
    finally:
        await server.stop()


def _error_shape(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    body = response.json()
    assert set(body) == {"error", "status"} and body["status"] == status, body
    assert ADMIN_TOKEN not in body["error"] and READ_TOKEN not in body["error"]
    return str(body["error"])


async def _write_operations(base: str) -> list[tuple[str, str]]:
    async with httpx.AsyncClient(timeout=10) as http:  # the API docs need no token
        doc = (await http.get(base + "/schema/openapi.json")).json()
    ops = [(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in WRITES]
    assert len(ops) >= 10 and ("POST", "/switchover") in ops and ("PATCH", "/config") in ops, ops
    return ops


async def test_every_write_needs_an_admin_token(api_cluster: ApiCluster) -> None:
    """Enumerated from the OpenAPI document: 401 without / with a bad token, 403 with a read token, and
    nothing committed by any of them."""
    await api_cluster.settled()
    base = api_cluster.url(0)
    ops = await _write_operations(base)
    node = api_cluster.nodes[0]
    before = node.commit_index
    body = {"candidate": "node2", "reason": "x", "name": "node9", "node_id": 9}
    async with httpx.AsyncClient(timeout=10) as http:
        for method, template in ops:
            path = re.sub(r"\{[^}]+\}", "node2", template)
            for headers, status in (({}, 401), ({"Authorization": "Bearer not-a-token-at-all-0000"}, 401),
                                    ({"Authorization": f"Basic {ADMIN_TOKEN}"}, 401), (READ, 403)):
                r = await http.request(method, base + path, json=body if method != "DELETE" else None,
                                       headers=headers)
                message = _error_shape(r, status)
                if status == 401:
                    assert r.headers["www-authenticate"].startswith("Bearer"), (method, path)
                else:
                    assert "admin" in message, message
    # Refused before any handler ran: nothing proposed (no entry beyond what Raft itself committed).
    events = await _events_since(api_cluster, before)
    assert not events, events


async def _events_since(cluster: ApiCluster, index: int) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10, headers=READ) as http:
        page = (await http.get(cluster.url(0) + "/events", params={"after": index, "limit": 1000})).json()
    return [e for e in page["events"] if e["type"] not in ("raft_leader_elected", "raft_leader_changed")]


async def test_writes_take_only_json_bodies(api_cluster: ApiCluster) -> None:
    """A form post or text/plain body (what a web page can make a browser send) is refused with 415."""
    base = api_cluster.url(0)
    async with httpx.AsyncClient(timeout=10, headers=ADMIN) as http:
        r = await http.post(base + "/maintenance", content=b'{"reason": "x"}', headers={"Content-Type": "text/plain"})
        assert "application/json" in _error_shape(r, 415)
        r = await http.post(base + "/maintenance", data={"reason": "x"})  # application/x-www-form-urlencoded
        _error_shape(r, 415)
        r = await http.post(base + "/maintenance", files={"f": b"x"})  # multipart/form-data
        _error_shape(r, 415)
        r = await http.post(base + "/maintenance", content=b'{"reason": "x"}')  # a body, no content type
        _error_shape(r, 415)
        assert not (await http.get(base + "/cluster")).json()["maintenance"]
        # JSON (with a charset parameter) is fine, and so is a write without a body.
        r = await http.post(base + "/maintenance", content=b'{"reason": "json"}',
                            headers={"Content-Type": "application/json; charset=utf-8"})
        assert r.status_code == 200, r.text
        r = await http.delete(base + "/maintenance")
        assert r.status_code == 200, r.text


async def test_requested_by_is_the_authenticated_token(api_cluster: ApiCluster) -> None:
    base = api_cluster.url(1)
    async with httpx.AsyncClient(timeout=10, headers=ADMIN) as http:
        r = await http.post(base + "/maintenance", json={"reason": "who", "by": "admin-of-everything"})
        assert r.status_code == 200, r.text
        index = r.json()["write"]["index"]
        await http.delete(base + "/maintenance")
        events = (await http.get(base + "/events", params={"after": index - 1, "limit": 5,
                                                           "type": "maintenance_mode_changed"})).json()["events"]
    recorded = next(e for e in events if e["position"] == index)
    # The token's name, not the claim (kept after it as an unchecked note).
    assert recorded["payload"]["by"] == "token:ops (admin-of-everything)", recorded


async def test_reads_need_a_token_unless_configured_open(api_cluster: ApiCluster) -> None:
    base = api_cluster.url(0)
    async with httpx.AsyncClient(timeout=10) as http:
        for path in ("/cluster", "/members/node1", "/events", "/history", "/config", "/metrics"):
            _error_shape(await http.get(base + path), 401)
            assert (await http.get(base + path, headers=READ)).status_code == 200, path
            assert (await http.get(base + path, headers=ADMIN)).status_code == 200, path
        _error_shape(await http.get(base + "/events/stream"), 401)
        # The API docs describe the API, not the cluster: open.
        assert (await http.get(base + "/schema/openapi.json")).status_code == 200
    async with node_server(api_cluster, test_security(auth_reads=False)) as server, \
            httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(server.url + "/cluster")).status_code == 200
        _error_shape(await http.post(server.url + "/maintenance", json={}), 401)  # writes still need admin
        _error_shape(await http.post(server.url + "/maintenance", json={}, headers=READ), 403)


async def test_health_checks_are_open_by_default_and_can_be_closed(api_cluster: ApiCluster) -> None:
    assert {"/primary", "/replica", "/read-only", "/read-write", "/sync", "/async", "/health", "/liveness",
            "/readiness"} <= set(HEALTH_PATHS)
    base = api_cluster.url(0)
    async with httpx.AsyncClient(timeout=10) as http:
        for path in HEALTH_PATHS:
            assert (await http.get(base + path)).status_code in (200, 503), path
            assert (await http.head(base + path)).status_code in (200, 503), path
    async with node_server(api_cluster, test_security(auth_health=True)) as server, \
            httpx.AsyncClient(timeout=10) as http:
        for path in HEALTH_PATHS:
            _error_shape(await http.get(server.url + path), 401)
            assert (await http.get(server.url + path, headers=READ)).status_code in (200, 503), path


async def test_without_any_token_configured_only_health_checks_answer(api_cluster: ApiCluster) -> None:
    """Secure by default: a node with neither a tokens file nor a token in its environment refuses
    reads and writes (it logs why at start); running open takes api.auth = "none"."""
    async with node_server(api_cluster, ApiSecurity()) as server, httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(server.url + "/liveness")).status_code == 200
        _error_shape(await http.get(server.url + "/cluster"), 401)
        _error_shape(await http.get(server.url + "/cluster", headers=ADMIN), 401)
        _error_shape(await http.post(server.url + "/maintenance", json={}, headers=ADMIN), 401)
    async with node_server(api_cluster, ApiSecurity.open()) as server, httpx.AsyncClient(timeout=10) as http:
        r = await http.post(server.url + "/maintenance", json={"by": "someone"})
        assert r.status_code == 200 and r.json()["by"] == "api:127.0.0.1 (someone)", r.text
        assert (await http.delete(server.url + "/maintenance")).status_code == 200


async def test_client_and_host_allow_lists(api_cluster: ApiCluster) -> None:
    async with node_server(api_cluster, test_security(allowed_clients=_networks("10.0.0.0/8"))) as server, \
            httpx.AsyncClient(timeout=10, headers=ADMIN) as http:
        assert "client address" in _error_shape(await http.get(server.url + "/cluster"), 403)
        _error_shape(await http.get(server.url + "/liveness"), 403)  # health checks included
    async with node_server(api_cluster, test_security(allowed_clients=_networks("10.0.0.0/8", "127.0.0.0/8"))) \
            as server, httpx.AsyncClient(timeout=10, headers=ADMIN) as http:
        assert (await http.get(server.url + "/cluster")).status_code == 200
    async with node_server(api_cluster, test_security(allowed_hosts=("ram.example",))) as server, \
            httpx.AsyncClient(timeout=10, headers=ADMIN) as http:
        assert "Host" in _error_shape(await http.get(server.url + "/cluster"), 400)
        r = await http.get(server.url + "/cluster", headers={"Host": f"ram.example:{server.port}"})
        assert r.status_code == 200, r.text


def _networks(*cidrs: str) -> tuple[Any, ...]:
    import ipaddress

    return tuple(ipaddress.ip_network(c) for c in cidrs)


async def test_refusals_are_logged_briefly_and_never_with_the_token(api_cluster: ApiCluster,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    guess = "guessed-token-guessed-token-0001"
    async with node_server(api_cluster, test_security()) as server, httpx.AsyncClient(timeout=10) as http:
        with caplog.at_level("WARNING", logger="ram.api.auth"):
            for _ in range(20):
                _error_shape(await http.get(server.url + "/cluster", headers={"Authorization": f"Bearer {guess}"}), 401)
            _error_shape(await http.post(server.url + "/maintenance", json={}, headers=READ), 403)
    lines = [r.getMessage() for r in caplog.records if r.name == "ram.api.auth"]
    assert sum("invalid token" in line for line in lines) == 1, lines  # one line per client per 10 s, not 20
    assert any("role too low" in line and "token=viewer" in line for line in lines), lines
    assert not any(secret in line for line in lines for secret in (guess, READ_TOKEN, ADMIN_TOKEN)), lines


# ---------------------------------------------------------------------------------------- ramctrl


async def test_ramctrl_with_token_env_token_file_and_without(api_cluster: ApiCluster, tmp_path: Path) -> None:
    plain = {"RAM_TOKEN": None}
    run = await ctl(api_cluster, "status", env=plain)
    line = one_error_line(run)
    assert "needs an API token (401)" in line and "RAM_TOKEN_FILE" in line, line
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    token_file.chmod(0o600)
    assert (await ctl(api_cluster, "status", env={"RAM_TOKEN": None, "RAM_TOKEN_FILE": str(token_file)})).exit_code == 0
    assert (await ctl(api_cluster, "--token-file", str(token_file), "status", env=plain)).exit_code == 0
    assert (await ctl(api_cluster, "status")).exit_code == 0  # $RAM_TOKEN (the fixture's default)
    # A wrong token: one line naming where it came from, never the token.
    run = await ctl(api_cluster, "status", env={"RAM_TOKEN": "wrong-token-wrong-token-0000"})
    line = one_error_line(run)
    assert "(401)" in line and "$RAM_TOKEN" in line and "wrong-token" not in line, line
    # A read token reads, and may not write.
    reader = {"RAM_TOKEN": READ_TOKEN}
    assert (await ctl(api_cluster, "status", env=reader)).exit_code == 0
    line = one_error_line(await ctl(api_cluster, "pause", env=reader))
    assert "admin role" in line and "(403" in line, line
    # A token file others can read is refused before anything is sent.
    token_file.chmod(0o644)
    line = one_error_line(await ctl(api_cluster, "--token-file", str(token_file), "status", env=plain))
    assert str(token_file) in line and f"chmod 600 {token_file}" in line, line


def test_ramctrl_takes_no_token_on_the_command_line() -> None:
    from click.testing import CliRunner

    from ram.cli.ramctrl import cli

    result = CliRunner().invoke(cli, ["--token", "x", "status"])
    assert result.exit_code == 2 and "No such option '--token'" in result.output


# -------------------------------------------------------------------------------------------- HTTPS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory)
    server = make_cert(ca, "node1", ["127.0.0.1", "localhost"], directory)
    client = make_cert(ca, "operator", [], directory, server=False)
    other_ca = make_ca(directory / "other")
    yield {"ca": ca.cert_path, "cert": server.cert, "key": server.key, "client_cert": client.cert,
           "client_key": client.key, "other_ca": other_ca.cert_path}


async def test_https_api_with_ramctrl_cacert(api_cluster: ApiCluster, pki: dict[str, Path]) -> None:
    security = test_security(tls=TlsFiles(pki["cert"], pki["key"]))
    async with node_server(api_cluster, security) as server:
        assert server.url.startswith("https://127.0.0.1:")
        run = await ctl(None, "--cacert", str(pki["ca"]), "status", apis=[server.url])
        assert run.exit_code == 0 and "Cluster:" in run.stdout, run
        # RAM_CACERT, and an address without a scheme means https when a CA is given.
        run = await ctl(None, "status", apis=[f"127.0.0.1:{server.port}"], env={"RAM_CACERT": str(pki["ca"])})
        assert run.exit_code == 0, run
        # Not verified (no CA given, or another CA): exit 2 with one line saying what to pass.
        run = await ctl(None, "status", apis=[server.url])
        line = one_error_line(run)
        assert run.exit_code == 2 and "certificate not verified" in line and "RAM_CACERT" in line, line
        run = await ctl(None, "--cacert", str(pki["other_ca"]), "status", apis=[server.url])
        assert run.exit_code == 2 and "certificate not verified" in one_error_line(run)
        # Plain HTTP to the HTTPS port gets nothing useful.
        async with httpx.AsyncClient(timeout=5) as http:
            with pytest.raises(httpx.HTTPError):
                await http.get(f"http://127.0.0.1:{server.port}/liveness")
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        async with httpx.AsyncClient(timeout=5, verify=context) as http:
            assert (await http.get(server.url + "/liveness")).status_code == 200


async def test_https_with_client_certificates(api_cluster: ApiCluster, pki: dict[str, Path]) -> None:
    security = test_security(tls=TlsFiles(pki["cert"], pki["key"], client_ca=pki["ca"]))
    async with node_server(api_cluster, security) as server:
        run = await ctl(None, "--cacert", str(pki["ca"]), "status", apis=[server.url])
        assert run.exit_code != 0 and "Traceback" not in run.stderr, run
        run = await ctl(None, "--cacert", str(pki["ca"]), "--client-cert", str(pki["client_cert"]),
                        "--client-key", str(pki["client_key"]), "status", apis=[server.url])
        assert run.exit_code == 0, run


# ------------------------------------------------------------------------------------ event streams


async def _store_connections(cluster: ApiCluster, i: int) -> int:
    database = cluster.dsns[i].rsplit("/", 1)[1].split("?", 1)[0]
    conn = await asyncpg.connect(cluster.dsns[i])
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database))
    finally:
        await conn.close()


async def test_200_concurrent_event_streams_share_one_store_connection(api_cluster: ApiCluster) -> None:
    """200 clients follow /events/stream on one node: its store sees one more connection (before, 200:
    more than a store's max_connections, typically 40-100, which also starves Raft's own pool), the
    node keeps answering, and one new event reaches every stream. The 201st is refused with a 503."""
    streams = 200
    i = api_cluster.index_of(api_cluster.follower())
    async with node_server(api_cluster, test_security(max_event_streams=streams), i=i) as server:
        ctx: ApiContext = server.app.state.ctx
        before = await _store_connections(api_cluster, i)
        limits = httpx.Limits(max_connections=streams + 20, max_keepalive_connections=streams + 20)
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=10), headers=READ, limits=limits) as http, \
                contextlib.AsyncExitStack() as stack:
            opened = await asyncio.gather(*(
                stack.enter_async_context(http.stream("GET", server.url + "/events/stream",
                                                      params={"type": "dynamic_config_changed"}))
                for _ in range(streams)
            ))
            assert all(r.status_code == 200 for r in opened)
            readers = [r.aiter_lines() for r in opened]
            assert len(ctx.events or ()) == streams
            # One more is refused, with a message saying why and what to do instead.
            r = await http.get(server.url + "/events/stream")
            assert r.status_code == 503 and "api.max_event_streams" in r.json()["error"], r.text
            assert r.headers.get("retry-after")
            # The node keeps answering, and the store is far from its connection limit.
            started = time.monotonic()
            assert (await http.get(server.url + "/cluster")).status_code == 200
            assert (await http.get(server.url + "/health")).status_code == 200
            assert time.monotonic() - started < 5
            during = await _store_connections(api_cluster, i)
            assert ctx.events is not None and ctx.events.connections_opened == 1
            assert during - before <= 2, (before, during)  # the hub's LISTEN (+ at most a pooled one)
            # One write reaches every stream.
            r = await http.patch(api_cluster.url((i + 1) % 3) + "/config",
                                 json={"postgresql.parameters.streams.probe": time.time()}, headers=ADMIN)
            assert r.status_code == 200, r.text
            index = r.json()["write"]["index"]

            async def first_event(lines: AsyncIterator[str]) -> int:
                async for line in lines:
                    if line.startswith("data:"):
                        return int(json.loads(line[5:])["position"])
                raise AssertionError("stream ended")

            async with asyncio.timeout(30):
                positions = await asyncio.gather(*(first_event(lines) for lines in readers))
            assert positions == [index] * streams
        # Clients gone: every place is given back.
        deadline = time.monotonic() + 10
        while len(ctx.events or ()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not len(ctx.events or ())
