"""Raft peer authentication at the transport, over real TCP on 127.0.0.1 (issue #11).

A peer with a wrong secret, no secret, an untrusted certificate or a certificate naming another
member is refused and is told only "refused"; a connection authenticated as node 2 delivers frames
as node 2 whatever they claim; another protocol version is refused with a clear log line; the
inbound connection cap, the handshake deadline and broken frames leave the node serving.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from ram.consensus.runtime.framing import (
    HEADER,
    PROTOCOL_VERSION,
    Challenge,
    Hello,
    HelloReply,
    Proof,
    decode_challenge,
    decode_reply,
    encode_frame,
    encode_hello,
    encode_proof,
    handshake_mac,
    read_one_frame,
)
from ram.consensus.runtime.transport import PeerAddress, PeerAuth, Transport, tls_contexts
from ram.tls import make_ca, make_cert
from tests.conftest import free_port

CLUSTER = "sec-cluster"
LOCAL = "127.0.0.1"
SECRET = b"0123456789abcdef0123456789abcdef"
asyncio_test = pytest.mark.asyncio(loop_scope="function")


class Inbox:
    def __init__(self) -> None:
        self.frames: dict[int, list[bytes]] = defaultdict(list)

    def __call__(self, peer_id: int, payload: bytes) -> None:
        self.frames[peer_id].append(payload)

    def count(self) -> int:
        return sum(len(v) for v in self.frames.values())


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


class Net:
    def __init__(self) -> None:
        self.transports: list[Transport] = []

    def make(
        self, node_id: int, port: int, peers: dict[int, PeerAddress], auth: PeerAuth | None,
        inbox: Inbox | None = None, **kwargs: object,
    ) -> Transport:
        t = Transport(
            cluster_id=CLUSTER, node_id=node_id, listen=PeerAddress(LOCAL, port, f"n{node_id}"), peers=peers,
            on_frame=inbox if inbox is not None else Inbox(), rng=random.Random(node_id), backoff_initial=0.01,
            backoff_max=0.2, auth=auth, **kwargs,  # type: ignore[arg-type]
        )
        self.transports.append(t)
        return t


@pytest_asyncio.fixture(loop_scope="function")
async def net() -> AsyncIterator[Net]:
    n = Net()
    try:
        yield n
    finally:
        for t in n.transports:
            await t.stop()


def addr(node_id: int, port: int) -> PeerAddress:
    return PeerAddress(LOCAL, port, f"n{node_id}")


async def pair(net: Net, auth1: PeerAuth | None, auth2: PeerAuth | None) -> tuple[Transport, Transport, Inbox]:
    """Node 1 (listening, recording) and node 2 (dialing it); both started."""
    p1, p2 = free_port(), free_port()
    inbox = Inbox()
    t1 = net.make(1, p1, {2: addr(2, p2)}, auth1, inbox)
    t2 = net.make(2, p2, {1: addr(1, p1)}, auth2)
    await t1.start()
    await t2.start()
    return t1, t2, inbox


async def dial(
    port: int, node_id: int, *, secret: bytes | None, cluster_id: str = CLUSTER, to_node: int = 1,
    version: int = PROTOCOL_VERSION,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, HelloReply]:
    """A hand-rolled dialer: hello, proof with ``secret`` (empty without), the listener's verdict."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    nonce = b"\x07" * 32
    writer.write(encode_hello(Hello(version, cluster_id, node_id, to_node, nonce)))
    await writer.drain()
    first = decode_challenge(await asyncio.wait_for(read_one_frame(reader, 4096), 3))
    if not isinstance(first, Challenge):
        return reader, writer, first
    mac = handshake_mac(secret, "dialer", cluster_id, node_id, to_node, nonce, first.nonce) if secret else b""
    writer.write(encode_proof(Proof(mac)))
    await writer.drain()
    reply = decode_reply(await asyncio.wait_for(read_one_frame(reader, 4096), 3))
    if reply.ok and secret:
        # The listener proves itself in return, for this very exchange.
        assert reply.mac == handshake_mac(secret, "listener", cluster_id, node_id, to_node, nonce, first.nonce)
    return reader, writer, reply


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


@asyncio_test
async def test_same_secret_connects_and_delivers(net: Net) -> None:
    _t1, t2, inbox = await pair(net, PeerAuth(SECRET), PeerAuth(SECRET))
    assert t2.send(1, b"hello")
    await wait_until(lambda: inbox.frames[2] == [b"hello"], what="delivery")


@asyncio_test
async def test_wrong_or_missing_secret_refused_and_learns_nothing(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ram.transport")
    t1, t2, inbox = await pair(net, PeerAuth(SECRET), PeerAuth(b"another secret, 32 bytes long...."))
    t2.send(1, b"must not arrive")
    await wait_until(lambda: any("did not prove the cluster secret" in m for m in messages(caplog)),
                     what="refusal logged by the listener")
    # A hand-rolled stranger: wrong secret, no secret, wrong cluster id, unknown node id — always the
    # same one-word answer, and the listener never proved anything to it.
    for kwargs in (
        {"node_id": 2, "secret": b"x" * 32},
        {"node_id": 2, "secret": None},
        {"node_id": 2, "secret": SECRET, "cluster_id": "guess"},
        {"node_id": 9, "secret": SECRET},
    ):
        _r, writer, reply = await dial(t1.bound_port, **kwargs)  # type: ignore[arg-type]
        writer.close()
        assert (reply.ok, reply.reason, reply.mac) == (False, "refused", b""), kwargs
    await asyncio.sleep(0.2)
    assert inbox.count() == 0 and not t2.stats()[1].connected
    dialer_lines = [m for m in messages(caplog) if "refused by peer" in m]
    assert dialer_lines and all("reason='refused'" in m and CLUSTER not in m for m in dialer_lines)
    listener = [m for m in messages(caplog) if m.startswith("peer refused:")]
    assert any("wrong cluster id 'guess'" in m for m in listener)
    assert any("unknown node id 9" in m for m in listener)


@asyncio_test
async def test_listener_without_the_secret_is_not_trusted_by_the_dialer(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    """The dialer checks the listener's proof too: a listener that lacks the secret (an impostor on
    the peer's address) gets no data frame."""
    caplog.set_level(logging.INFO, logger="ram.transport")
    _t1, t2, inbox = await pair(net, PeerAuth(), PeerAuth(SECRET))
    t2.send(1, b"secret data")
    await wait_until(lambda: any("it did not prove the cluster secret" in m for m in messages(caplog)),
                     what="dialer refuses the listener")
    await asyncio.sleep(0.1)
    assert inbox.count() == 0


@asyncio_test
async def test_authenticated_connection_speaks_only_for_its_node(net: Net) -> None:
    """Frames on a connection proven as node 2 reach on_frame as node 2; there is no field a sender
    could set to be taken for node 3."""
    p1 = free_port()
    inbox = Inbox()
    t1 = net.make(1, p1, {2: addr(2, free_port()), 3: addr(3, free_port())}, PeerAuth(SECRET), inbox)
    await t1.start()
    _reader, writer, reply = await dial(p1, 2, secret=SECRET)
    assert reply.ok
    writer.write(encode_frame(b"I am node 3, honest"))
    await writer.drain()
    await wait_until(lambda: inbox.count() == 1, what="delivery")
    assert dict(inbox.frames) == {2: [b"I am node 3, honest"]}
    # A proof made for node 2 does not open a connection as node 3 (the node id is in the MAC).
    _r, w3, reply3 = await dial(p1, 3, secret=None)
    w3.close()
    assert not reply3.ok
    writer.close()


@asyncio_test
async def test_proof_is_bound_to_node_id_and_nonces() -> None:
    base = handshake_mac(SECRET, "dialer", CLUSTER, 2, 1, b"a" * 32, b"b" * 32)
    assert base != handshake_mac(SECRET, "dialer", CLUSTER, 3, 1, b"a" * 32, b"b" * 32)
    assert base != handshake_mac(SECRET, "dialer", CLUSTER, 2, 1, b"a" * 32, b"c" * 32)
    assert base != handshake_mac(SECRET, "listener", CLUSTER, 2, 1, b"a" * 32, b"b" * 32)
    assert base != handshake_mac(SECRET, "dialer", "other", 2, 1, b"a" * 32, b"b" * 32)


@asyncio_test
async def test_other_protocol_version_refused_with_clear_log(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ram.transport")
    t1, _t2, _ = await pair(net, PeerAuth(SECRET), PeerAuth(SECRET))
    _r, writer, reply = await dial(t1.bound_port, 2, secret=SECRET, version=1)
    writer.close()
    assert (reply.ok, reply.reason) == (False, "refused")
    assert any(
        "protocol version 1" in m and f"this node speaks version {PROTOCOL_VERSION}" in m for m in messages(caplog)
    )


@asyncio_test
async def test_connection_cap_and_handshake_deadline(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    """Silent strangers can hold at most peers+extra connections, each for the handshake deadline;
    meanwhile and afterwards the real peer still gets through."""
    caplog.set_level(logging.INFO, logger="ram.transport")
    t1, t2, inbox = await pair(net, PeerAuth(SECRET), PeerAuth(SECRET))
    await wait_until(lambda: t2.stats()[1].connected, what="peer connected")
    limit = 1 + 4  # one peer + extra_inbound
    socks = [await asyncio.open_connection(LOCAL, t1.bound_port) for _ in range(limit + 3)]
    await wait_until(lambda: t1.inbound_rejected >= 4, what="connections over the cap closed")
    assert any("connections open (limit 5)" in m for m in messages(caplog))
    # The handshake deadline (2 s by default) frees the slots the silent ones hold.
    started = asyncio.get_running_loop().time()
    for reader, _w in socks:
        assert await asyncio.wait_for(reader.read(), 4) == b""
    assert asyncio.get_running_loop().time() - started < 3.5
    for _r, writer in socks:
        writer.close()
    assert t2.send(1, b"still served")
    await wait_until(lambda: inbox.frames[2] == [b"still served"], what="delivery after the flood")


@asyncio_test
async def test_malformed_truncated_oversized_frames_dropped_node_keeps_serving(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ram.transport")
    p1 = free_port()
    inbox = Inbox()
    t1 = net.make(1, p1, {2: addr(2, free_port()), 3: addr(3, free_port())}, PeerAuth(SECRET), inbox,
                  max_frame_bytes=1024)
    await t1.start()
    # Garbage instead of a hello, and an oversize hello: refused before anything is allocated.
    for junk in (b"\x00\x00\x00\x03\xc1\xc1\xc1", HEADER.pack(1 << 30)):
        reader, writer = await asyncio.open_connection(LOCAL, p1)
        writer.write(junk)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 3)  # read() returns at EOF: the listener closed
        assert CLUSTER.encode() not in answer
        writer.close()
    # Authenticated, then an oversize frame: that connection is closed, the frame never delivered.
    reader, writer, reply = await dial(p1, 2, secret=SECRET)
    assert reply.ok
    writer.write(encode_frame(b"ok") + HEADER.pack(5000) + b"x" * 10)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 3) == b""
    writer.close()
    # Authenticated, then a truncated frame and EOF.
    _r, writer, reply = await dial(p1, 3, secret=SECRET)
    assert reply.ok
    writer.write(HEADER.pack(100) + b"part")
    await writer.drain()
    writer.close()
    await wait_until(lambda: any("truncated frame" in m for m in messages(caplog)), what="truncation logged")
    assert sum("bad handshake" in m for m in messages(caplog)) >= 2
    assert any("exceeds the limit of 1024 bytes" in m for m in messages(caplog))
    assert dict(inbox.frames) == {2: [b"ok"]}
    # Still serving: a well-behaved peer connects and delivers.
    _r, writer, reply = await dial(p1, 3, secret=SECRET)
    assert reply.ok
    writer.write(encode_frame(b"fine"))
    await writer.drain()
    await wait_until(lambda: inbox.frames[3] == [b"fine"], what="delivery after the bad frames")
    writer.close()


# ----------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cluster CA with certificates n1, n2, n3, and an unrelated CA with its own n2."""
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root / "ca")
    for name in ("n1", "n2", "n3"):
        make_cert(ca, name, [LOCAL], root / "certs")
    rogue = make_ca(root / "rogue-ca", name="rogue")
    make_cert(rogue, "n2", [LOCAL], root / "rogue")
    return root


def tls_auth(pki: Path, name: str, *, cert_dir: str = "certs", secret: bytes | None = None) -> PeerAuth:
    server, client = tls_contexts(pki / cert_dir / f"{name}.crt", pki / cert_dir / f"{name}.key", pki / "ca" / "ca.crt")
    return PeerAuth(secret, server, client)


@asyncio_test
async def test_mutual_tls_connects_and_delivers(net: Net, pki: Path) -> None:
    _t1, t2, inbox = await pair(net, tls_auth(pki, "n1"), tls_auth(pki, "n2", secret=None))
    assert t2.send(1, b"over tls")
    await wait_until(lambda: inbox.frames[2] == [b"over tls"], what="delivery over TLS")


@asyncio_test
async def test_tls_and_secret_combined(net: Net, pki: Path) -> None:
    _t1, t2, inbox = await pair(net, tls_auth(pki, "n1", secret=SECRET), tls_auth(pki, "n2", secret=SECRET))
    assert t2.send(1, b"both")
    await wait_until(lambda: inbox.frames[2] == [b"both"], what="delivery over TLS with the secret")


@asyncio_test
async def test_untrusted_certificate_refused(net: Net, pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ram.transport")
    _t1, t2, inbox = await pair(net, tls_auth(pki, "n1"), tls_auth(pki, "n2", cert_dir="rogue"))
    t2.send(1, b"must not arrive")
    await wait_until(lambda: any("TLS handshake failed" in m for m in messages(caplog)), what="TLS refusal")
    await asyncio.sleep(0.2)
    assert inbox.count() == 0 and not t2.stats()[1].connected


@asyncio_test
async def test_certificate_of_another_member_refused(net: Net, pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Node 3's valid certificate does not let it speak as node 2."""
    caplog.set_level(logging.INFO, logger="ram.transport")
    _t1, t2, inbox = await pair(net, tls_auth(pki, "n1"), tls_auth(pki, "n3"))
    t2.send(1, b"must not arrive")
    await wait_until(lambda: any("does not name member 'n2'" in m for m in messages(caplog)), what="name refusal")
    await asyncio.sleep(0.2)
    assert inbox.count() == 0


@asyncio_test
async def test_plain_client_refused_by_tls_listener(net: Net, pki: Path) -> None:
    t1, _t2, inbox = await pair(net, tls_auth(pki, "n1"), tls_auth(pki, "n2"))
    reader, writer = await asyncio.open_connection(LOCAL, t1.bound_port)
    writer.write(encode_hello(Hello(PROTOCOL_VERSION, CLUSTER, 2, 1, b"\0" * 32)))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 4)
    assert b"refused" not in data and CLUSTER.encode() not in data
    writer.close()
    # And a TLS client without a client certificate.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(pki / "ca" / "ca.crt"))
    try:
        reader, writer = await asyncio.open_connection(LOCAL, t1.bound_port, ssl=ctx)
        writer.write(encode_hello(Hello(PROTOCOL_VERSION, CLUSTER, 2, 1, b"\0" * 32)))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 4) == b""
        writer.close()
    except (ssl.SSLError, ConnectionResetError):
        pass
    assert inbox.count() == 0
