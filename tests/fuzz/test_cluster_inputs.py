"""Bad input against a real 3-node cluster: the OpenAPI of every node fuzzed by schemathesis (no 5xx),
and garbage on every node's Raft port — random bytes, truncated and oversized frames, a silent
connection, a flood of connections, a peer of another cluster, an authenticated peer sending
malformed messages. Each node logs and drops what it can not use and keeps serving: afterwards the
cluster is healthy, every API answers and a write commits.

Only the frame header (4-byte length) is assumed of the wire format; the peers that get past the
handshake use RAM's own transport (the handshake is another engineer's moving target).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ram import localcluster as lc
from ram.consensus.runtime.transport import PeerAddress, PeerAuth, Transport
from tests.faults.cluster import HEADERS, ChaosCluster


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[ChaosCluster]:
    c = ChaosCluster(3)
    try:
        await c.start()
        yield c
    finally:
        await c.close()


async def _still_serving(c: ChaosCluster) -> None:
    """Every node alive, every API answers, the cluster healthy, and a write commits."""
    for m in c.info.members:
        assert lc.pid_alive(m.pid), f"{m.name}'s ram process died"
    await c.wait_healthy(60)
    async with httpx.AsyncClient(timeout=10, headers=HEADERS) as http:
        for m in c.info.members:
            reply = await http.get(f"{m.api_url}/health")
            assert reply.status_code in (200, 503), (m.name, reply.status_code)
        name = c.info.members[0].name
        reply = await http.put(f"{c.info.members[1].api_url}/members/{name}/tags", json={})
        assert reply.status_code == 200, reply.text


# ------------------------------------------------------------------------------------ Raft port


def _raw(host: str, port: int, payload: bytes, *, linger: float = 0.2) -> None:
    with socket.create_connection((host, port), timeout=3) as sock, contextlib.suppress(OSError):
        sock.sendall(payload)
        sock.settimeout(linger)
        with contextlib.suppress(TimeoutError, OSError):
            sock.recv(4096)


def _garbage(rng: random.Random) -> list[bytes]:
    header = lambda n: n.to_bytes(4, "big")  # noqa: E731  the only wire detail assumed
    return [
        rng.randbytes(1),
        rng.randbytes(3),                                   # a truncated header
        rng.randbytes(512),                                 # random bytes
        header(0),                                          # an empty frame
        header(100) + rng.randbytes(10),                    # a truncated body
        header(0xFFFFFFFF) + rng.randbytes(64),             # the largest length a header can say
        header(64 << 20) + rng.randbytes(1024),             # oversized for a handshake
        header(20) + rng.randbytes(20),                     # a frame of garbage
        header(8) + b"\x81\xa4type\xa5hello",               # msgpack that is no hello
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",               # the wrong protocol
        (header(16) + rng.randbytes(16)) * 200,             # many garbage frames
    ]


async def test_garbage_on_every_raft_port(cluster: ChaosCluster) -> None:
    rng = random.Random(13)
    for m in cluster.info.members:
        for payload in _garbage(rng):
            await asyncio.to_thread(_raw, m.host, m.raft_port, payload)
    await _still_serving(cluster)


async def test_silent_and_flooding_connections(cluster: ChaosCluster) -> None:
    """A connection that never speaks (the handshake times out) and 60 at once (the accept cap)."""
    m = cluster.info.members[0]
    socks = []
    try:
        for _ in range(60):
            with contextlib.suppress(OSError):
                socks.append(socket.create_connection((m.host, m.raft_port), timeout=2))
        await asyncio.sleep(3)
    finally:
        for s in socks:
            s.close()
    await _still_serving(cluster)


def _secret(c: ChaosCluster) -> bytes:
    return lc.raft_secret_file(c.info).read_text().strip().encode()


async def _fake_peer(c: ChaosCluster, *, cluster_id: str, node_id: int, to: lc.MemberInfo, secret: bytes | None,
                     frames: list[bytes], hold: float = 2.0) -> None:
    """RAM's own transport dialing ``to`` as ``node_id`` and sending ``frames`` (data frames)."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    listen = PeerAddress("127.0.0.1", port.getsockname()[1], "fake")
    port.close()
    transport = Transport(cluster_id=cluster_id, node_id=node_id, listen=listen,
                          peers={to.node_id: PeerAddress(to.host, to.raft_port, to.name)},
                          on_frame=lambda _peer, _body: None, auth=PeerAuth(secret=secret) if secret else None)
    await transport.start()
    try:
        await asyncio.sleep(0.5)
        for body in frames:
            transport.send(to.node_id, body)
        await asyncio.sleep(hold)
    finally:
        await transport.stop()


async def test_peer_with_wrong_cluster_id_or_secret_is_refused(cluster: ChaosCluster) -> None:
    rng = random.Random(5)
    target = cluster.info.members[0]
    frames = [rng.randbytes(64) for _ in range(20)]
    await _fake_peer(cluster, cluster_id="someone-else", node_id=2, to=target, secret=_secret(cluster), frames=frames)
    await _fake_peer(cluster, cluster_id=cluster.info.cluster_id, node_id=2, to=target,
                     secret=b"not-the-secret-0123456789", frames=frames)
    await _fake_peer(cluster, cluster_id=cluster.info.cluster_id, node_id=2, to=target, secret=None, frames=frames)
    await _fake_peer(cluster, cluster_id=cluster.info.cluster_id, node_id=77, to=target, secret=_secret(cluster),
                     frames=frames)
    log = await asyncio.to_thread(Path(target.log_file).read_text)
    assert "refused" in log, "the node does not log why it refused peers"
    await _still_serving(cluster)


async def test_authenticated_peer_sending_malformed_messages(cluster: ChaosCluster) -> None:
    """A member (it knows the secret) whose messages are garbage, truncated or huge: dropped, logged,
    and the node keeps serving (the real member reconnects when the impostor is gone)."""
    rng = random.Random(7)
    target = cluster.info.members[0]
    frames = [b"", b"\x00", rng.randbytes(7), rng.randbytes(4096), b"\xc1" * 100, b"\x81\xa4type\xa3bad",
              rng.randbytes(2 << 20)] + [rng.randbytes(rng.randrange(1, 300)) for _ in range(100)]
    await _fake_peer(cluster, cluster_id=cluster.info.cluster_id, node_id=cluster.info.members[1].node_id,
                     to=target, secret=_secret(cluster), frames=frames, hold=3.0)
    await _still_serving(cluster)


# --------------------------------------------------------------------------------- the HTTP API


def _one_operation(base_url: str, operation: Any, max_examples: int, is_check: bool) -> Any:
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=15, headers=HEADERS)
        # A health check answers 503 when false (documented); nothing else may be a 5xx.
        assert response.status_code < 500 or (is_check and response.status_code == 503), response.text
        if not is_check:
            case.validate_response(response, checks=[not_a_server_error])

    return run


def _fuzz_node(base_url: str, max_examples: int) -> list[str]:
    """Schema-driven requests (every GET and PATCH /config) against one node; returns the failures."""
    import schemathesis

    schema = schemathesis.openapi.from_url(base_url + "/schema/openapi.json", headers=HEADERS)
    schema = schema.include(method=["GET", "PATCH"]).exclude(path="/events/stream")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    for operation in operations:
        run = _one_operation(base_url, operation, max_examples, "health" in (operation.tags or []))
        try:
            run()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            failures.append(f"{base_url} {operation.label}: {' '.join(str(exc).split())[:1500]}")
    return failures


async def test_schemathesis_on_every_node(cluster: ChaosCluster) -> None:
    examples = int(os.environ.get("RAM_FUZZ_EXAMPLES", "6"))
    failures: list[str] = []
    for m in cluster.info.members:
        failures += await asyncio.to_thread(_fuzz_node, m.api_url, examples)
    assert not failures, "\n".join(failures)
    await _still_serving(cluster)
