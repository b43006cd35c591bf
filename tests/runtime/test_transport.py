"""Raft peer transport over real TCP on 127.0.0.1 (no mocks).

Each test builds its transports through the ``net`` fixture, which stops all of them at teardown even
when the test fails, so a broken test never leaves listeners or tasks behind for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from ram.consensus.runtime.framing import (
    HEADER,
    PROTOCOL_VERSION,
    Challenge,
    FrameDecoder,
    FrameTooLarge,
    Hello,
    Proof,
    decode_challenge,
    decode_hello,
    decode_reply,
    encode_frame,
    encode_hello,
    encode_proof,
    handshake_mac,
    read_one_frame,
)
from ram.consensus.runtime.transport import PeerAddress, PeerStats, Transport
from tests.conftest import free_port

CLUSTER = "test-cluster"
LOCAL = "127.0.0.1"




async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``cond`` every 10 ms; fail the test with ``what`` if it is still false after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


class Inbox:
    """Records (peer_id, payload) per receiving transport."""

    def __init__(self) -> None:
        self.frames: dict[int, list[bytes]] = defaultdict(list)

    def __call__(self, peer_id: int, payload: bytes) -> None:
        self.frames[peer_id].append(payload)

    def count(self) -> int:
        return sum(len(v) for v in self.frames.values())


class Net:
    """Builds transports on free loopback ports and remembers them for teardown."""

    def __init__(self) -> None:
        self.transports: list[Transport] = []

    def make(
        self,
        node_id: int,
        peers: dict[int, PeerAddress],
        on_frame: Callable[[int, bytes], None] | None = None,
        *,
        port: int = 0,
        cluster_id: str = CLUSTER,
        **kwargs: object,
    ) -> Transport:
        t = Transport(
            cluster_id=cluster_id,
            node_id=node_id,
            listen=PeerAddress(LOCAL, port),
            peers=peers,
            on_frame=on_frame if on_frame is not None else Inbox(),
            rng=random.Random(node_id),
            backoff_initial=0.01,
            backoff_max=0.2,
            **kwargs,  # type: ignore[arg-type]
        )
        self.transports.append(t)
        return t

    async def cluster(self, n: int, **kwargs: Any) -> tuple[list[Transport], list[Inbox]]:
        """``n`` fully meshed, started transports with node ids 1..n."""
        ports = {i: free_port() for i in range(1, n + 1)}
        addrs = {i: PeerAddress(LOCAL, p) for i, p in ports.items()}
        inboxes = [Inbox() for _ in range(n)]
        ts = [
            self.make(i, {j: a for j, a in addrs.items() if j != i}, inboxes[i - 1], port=ports[i], **kwargs)
            for i in range(1, n + 1)
        ]
        for t in ts:
            await t.start()
        return ts, inboxes

    async def close(self) -> None:
        for t in self.transports:
            await t.stop()


@pytest_asyncio.fixture(loop_scope="function")
async def net() -> AsyncIterator[Net]:
    n = Net()
    try:
        yield n
    finally:
        await n.close()


def all_connected(ts: list[Transport]) -> bool:
    return all(s.connected for t in ts for s in t.stats().values())


async def raw_handshake(
    port: int,
    node_id: int,
    cluster_id: str = CLUSTER,
    *,
    to_node: int = 1,
    secret: bytes | None = None,
    version: int = PROTOCOL_VERSION,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool, str]:
    """Dial ``port`` as a hand-rolled peer (proving ``secret`` if given); returns the stream and the
    (ok, reason) reply."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    nonce = bytes(32)
    writer.write(encode_hello(Hello(version, cluster_id, node_id, to_node, nonce)))
    await writer.drain()
    first = decode_challenge(await asyncio.wait_for(read_one_frame(reader, 4096), 2))
    if not isinstance(first, Challenge):
        return reader, writer, first.ok, first.reason
    mac = handshake_mac(secret, "dialer", cluster_id, node_id, to_node, nonce, first.nonce) if secret else b""
    writer.write(encode_proof(Proof(mac)))
    await writer.drain()
    reply = decode_reply(await asyncio.wait_for(read_one_frame(reader, 4096), 2))
    return reader, writer, reply.ok, reply.reason


async def assert_closed_by_remote(reader: asyncio.StreamReader, timeout: float = 3.0) -> None:
    """The remote end closes (EOF or reset) within ``timeout``."""
    try:
        data = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionError:
        return
    assert isinstance(data, bytes)


# --------------------------------------------------------------------------- framing (pure)


def test_decoder_splits_and_joins_frames() -> None:
    frames = [b"", b"a", b"hello" * 100, bytes(range(256))]
    stream = b"".join(encode_frame(f) for f in frames)
    dec = FrameDecoder(1 << 20)
    got: list[bytes] = []
    for i in range(0, len(stream), 7):  # feed in awkward pieces
        got.extend(dec.feed(stream[i : i + 7]))
    assert got == frames
    assert dec.buffered == 0
    assert FrameDecoder(1 << 20).feed(stream) == frames


def test_decoder_rejects_oversize_header_before_body() -> None:
    dec = FrameDecoder(100)
    with pytest.raises(FrameTooLarge):
        dec.feed(HEADER.pack(101))
    assert FrameDecoder(100).feed(encode_frame(b"x" * 100)) == [b"x" * 100]


def test_decoder_keeps_partial_frame() -> None:
    dec = FrameDecoder(100)
    frame = encode_frame(b"abcdef")
    assert dec.feed(frame[:5]) == []
    assert dec.buffered == 5
    assert dec.feed(frame[5:] + frame[:2]) == [b"abcdef"]
    assert dec.buffered == 2


def test_invalid_settings_rejected() -> None:
    with pytest.raises(ValueError):
        Transport(
            cluster_id=CLUSTER,
            node_id=1,
            listen=PeerAddress(LOCAL, 0),
            peers={},
            on_frame=Inbox(),
            queue_max_frames=0,
        )


# --------------------------------------------------------------------------- over TCP

asyncio_test = pytest.mark.asyncio(loop_scope="function")


@asyncio_test
async def test_frames_delivered_in_order_between_three_nodes(net: Net) -> None:
    ts, inboxes = await net.cluster(3)
    n = 500
    for i in range(n):
        for t in ts:
            for peer in t.stats():
                assert t.send(peer, f"{t.node_id}->{peer}:{i}".encode())
    await wait_until(lambda: all(ib.count() == 2 * n for ib in inboxes), what="all frames delivered")
    for receiver, inbox in zip(ts, inboxes, strict=True):
        assert set(inbox.frames) == {p for p in (1, 2, 3) if p != receiver.node_id}
        for sender, got in inbox.frames.items():
            assert got == [f"{sender}->{receiver.node_id}:{i}".encode() for i in range(n)]
    for t in ts:
        for peer, st in t.stats().items():
            assert st.connected and st.inbound_connected
            assert st.sent_frames == n and st.received_frames == n, (t.node_id, peer, st)
            assert st.dropped_frames == 0 and st.queued_frames == 0 and st.queued_bytes == 0


@asyncio_test
async def test_pipelined_throughput(net: Net) -> None:
    n = 50_000
    # Queue bound above n so the assertion is about speed, not about the scheduler's timing.
    ts, inboxes = await net.cluster(2, queue_max_frames=n)
    await wait_until(lambda: all_connected(ts), what="connected")
    payload = b"x" * 32
    started = time.perf_counter()
    for _ in range(n // 1000):  # interleave sends with loop turns, as a real runtime would
        for _ in range(1000):
            assert ts[0].send(2, payload)
        await asyncio.sleep(0)
    await wait_until(lambda: inboxes[1].count() == n, timeout=10, what="50k frames")
    elapsed = time.perf_counter() - started
    assert elapsed < 3.0, f"{n} frames took {elapsed:.2f}s"
    assert inboxes[1].frames[1] == [payload] * n
    assert ts[0].stats()[2].dropped_frames == 0


@asyncio_test
async def test_wrong_cluster_id_refused(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ram.transport")
    good_port, bad_port = free_port(), free_port()
    inbox = Inbox()
    good = net.make(1, {2: PeerAddress(LOCAL, bad_port)}, inbox, port=good_port)
    bad = net.make(2, {1: PeerAddress(LOCAL, good_port)}, port=bad_port, cluster_id="other-cluster")
    await good.start()
    await bad.start()
    assert bad.send(1, b"should never arrive")
    await wait_until(
        lambda: any("wrong cluster id 'other-cluster'" in r.getMessage() for r in caplog.records),
        what="refusal logged",
    )
    await asyncio.sleep(0.3)  # several backoff rounds
    assert inbox.count() == 0
    assert not bad.stats()[1].connected
    assert bad.stats()[1].queued_frames == 1  # kept for when the config is fixed
    msgs = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("peer refused: wrong cluster id 'other-cluster' (expected 'test-cluster') from 127.0.0.1:")
        for m in msgs
    ), msgs
    # The dialer learns only "refused", never the expected cluster id.
    dialer_side = [m for m in msgs if "refused by peer" in m and "peer_id=1" in m]
    assert dialer_side and all("reason='refused'" in m and "test-cluster" not in m for m in dialer_side), msgs
    # Logged once per reason and interval, not once per retry.
    refusals = [m for m in msgs if m.startswith("peer refused: wrong cluster id 'other-cluster'")]
    assert len(refusals) == 1


@asyncio_test
async def test_unknown_node_id_refused(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ram.transport")
    a_port = free_port()
    inbox = Inbox()
    a = net.make(1, {2: PeerAddress(LOCAL, free_port())}, inbox, port=a_port)
    stranger = net.make(7, {1: PeerAddress(LOCAL, a_port)})
    await a.start()
    await stranger.start()
    stranger.send(1, b"nope")
    _reader, writer, ok, reason = await raw_handshake(a_port, node_id=9)
    writer.close()
    assert not ok and reason == "refused"
    await wait_until(
        lambda: any("peer refused: unknown node id 7" in r.getMessage() for r in caplog.records),
        what="refusal of node 7 logged",
    )
    await asyncio.sleep(0.1)
    assert inbox.count() == 0
    assert 7 not in a.stats()


@asyncio_test
async def test_handshake_ok_then_oversize_frame_closes_only_that_connection(net: Net) -> None:
    ts, inboxes = await net.cluster(3, max_frame_bytes=1024)
    await wait_until(lambda: all_connected(ts), what="connected")
    # Node 1 also knows a node 4 that has no transport; a raw client poses as it.
    ts[0].set_peers(
        {
            **{p: PeerAddress(LOCAL, t.bound_port) for p, t in ((2, ts[1]), (3, ts[2]))},
            4: PeerAddress(LOCAL, free_port()),
        }
    )
    reader, writer, ok, _ = await raw_handshake(ts[0].bound_port, node_id=4, to_node=1)
    assert ok
    writer.write(encode_frame(b"fine") + HEADER.pack(10_000) + b"garbage")
    await writer.drain()
    await assert_closed_by_remote(reader)
    writer.close()
    assert inboxes[0].frames[4] == [b"fine"]  # the valid frame before the bad header still counts
    assert not ts[0].stats()[4].inbound_connected
    # Node 1 keeps serving its other peers, on their original connections.
    assert ts[2].send(1, b"from 3")
    assert ts[1].send(1, b"from 2")
    await wait_until(lambda: inboxes[0].frames[3] == [b"from 3"], what="node 3 still delivers")
    await wait_until(lambda: inboxes[0].frames[2] == [b"from 2"], what="node 2 still delivers")
    assert ts[1].stats()[1].reconnects == 0 and ts[2].stats()[1].reconnects == 0


@asyncio_test
async def test_garbage_before_handshake_is_refused(net: Net) -> None:
    ts, inboxes = await net.cluster(2)
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", HEADER.pack(3) + b"\xc1\xc1\xc1"):
        reader, writer = await asyncio.open_connection(LOCAL, ts[0].bound_port)
        writer.write(junk)
        await writer.drain()
        await assert_closed_by_remote(reader)
        writer.close()
    assert ts[1].send(1, b"still fine")
    await wait_until(lambda: inboxes[0].frames[2] == [b"still fine"], what="delivery after garbage")


@asyncio_test
async def test_truncated_frame_closes_connection(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ram.transport")
    inbox = Inbox()
    t = net.make(1, {4: PeerAddress(LOCAL, free_port())}, inbox)
    await t.start()
    _reader, writer, ok, _ = await raw_handshake(t.bound_port, node_id=4)
    assert ok
    writer.write(encode_frame(b"one") + HEADER.pack(100) + b"only part")
    await writer.drain()
    writer.close()
    await wait_until(lambda: any("truncated frame" in r.getMessage() for r in caplog.records), what="truncation logged")
    assert inbox.frames[4] == [b"one"]
    await wait_until(lambda: not t.stats()[4].inbound_connected, what="connection closed")


@asyncio_test
async def test_silent_client_times_out(net: Net) -> None:
    ts, _ = await net.cluster(2, handshake_timeout=0.2)
    reader, writer = await asyncio.open_connection(LOCAL, ts[0].bound_port)
    started = time.perf_counter()
    await assert_closed_by_remote(reader)
    assert time.perf_counter() - started < 1.5
    writer.close()


@asyncio_test
async def test_on_frame_exception_does_not_kill_reader(net: Net) -> None:
    got: list[bytes] = []

    def on_frame(peer_id: int, payload: bytes) -> None:
        if payload == b"boom":
            raise ValueError("callback bug")
        got.append(payload)

    port = free_port()
    a = net.make(1, {2: PeerAddress(LOCAL, free_port())}, on_frame, port=port)
    await a.start()
    b = net.make(2, {1: PeerAddress(LOCAL, port)})
    await b.start()
    for p in (b"1", b"boom", b"2"):
        b.send(1, p)
    await wait_until(lambda: got == [b"1", b"2"], what="frames around the failing one")
    assert a.stats()[2].inbound_connected


@asyncio_test
async def test_reconnect_after_peer_restarts_on_same_port(net: Net) -> None:
    ts, inboxes = await net.cluster(2)
    await wait_until(lambda: all_connected(ts), what="connected")
    assert ts[0].send(2, b"before")
    await wait_until(lambda: inboxes[1].frames[1] == [b"before"], what="first delivery")
    port2 = ts[1].bound_port
    await ts[1].stop()
    await wait_until(lambda: not ts[0].stats()[2].connected, what="disconnect noticed")
    for i in range(10):
        assert ts[0].send(2, f"while down {i}".encode())  # queued, not lost
    assert ts[0].stats()[2].queued_frames == 10
    await asyncio.sleep(0.2)
    inbox2 = Inbox()
    revived = net.make(2, {1: PeerAddress(LOCAL, ts[0].bound_port)}, inbox2, port=port2)
    await revived.start()
    await wait_until(lambda: ts[0].stats()[2].connected, what="reconnected")
    await wait_until(lambda: inbox2.count() == 10, what="queued frames flushed")
    assert inbox2.frames[1] == [f"while down {i}".encode() for i in range(10)]
    st = ts[0].stats()[2]
    assert st.reconnects >= 1 and st.queued_frames == 0


@asyncio_test
async def test_bounded_queue_drops_when_peer_down(net: Net) -> None:
    down = PeerAddress(LOCAL, free_port())  # nobody listens there
    t = net.make(1, {2: down}, queue_max_frames=100, queue_max_bytes=10_000)
    await t.start()
    # Count bound.
    results = [t.send(2, b"x") for _ in range(150)]
    assert results == [True] * 100 + [False] * 50
    st = t.stats()[2]
    assert (st.queued_frames, st.queued_bytes, st.dropped_frames) == (100, 500, 50)
    assert not st.connected

    # Byte bound (10_000 bytes, 4-byte headers included): ten 996-byte frames fill it exactly.
    t2 = net.make(3, {2: down}, queue_max_frames=1000, queue_max_bytes=10_000)
    await t2.start()
    big = b"y" * 996
    sent = [t2.send(2, big) for _ in range(50)]
    assert sent == [True] * 10 + [False] * 40
    st2 = t2.stats()[2]
    assert st2.queued_bytes == 10_000 and st2.dropped_frames == 40
    assert not t2.send(2, b"")  # even an empty frame costs its header
    # Over the frame limit is refused outright, and unknown peers too.
    t3 = net.make(4, {2: down}, max_frame_bytes=10)
    assert not t3.send(2, b"z" * 11)
    assert not t3.send(99, b"z")
    # Memory stays bounded however long we keep sending while the peer is down.
    await asyncio.sleep(0.1)
    for _ in range(10_000):
        t.send(2, b"x" * 100)
    assert t.stats()[2].queued_bytes <= 10_000


@asyncio_test
async def test_queued_while_never_connected_flushes_on_first_connect(net: Net) -> None:
    port = free_port()
    a = net.make(1, {2: PeerAddress(LOCAL, port)})
    await a.start()
    for i in range(5):
        assert a.send(2, bytes([i]))
    await asyncio.sleep(0.1)
    inbox = Inbox()
    b = net.make(2, {1: PeerAddress(LOCAL, a.bound_port)}, inbox, port=port)
    await b.start()
    await wait_until(lambda: inbox.frames[1] == [bytes([i]) for i in range(5)], what="flush")


@asyncio_test
async def test_set_peers_removal_closes_connections(net: Net) -> None:
    ts, inboxes = await net.cluster(3)
    await wait_until(lambda: all_connected(ts), what="connected")
    await wait_until(lambda: all(s.inbound_connected for t in ts for s in t.stats().values()), what="in")
    a, b, c = ts
    a.send(2, b"hi")
    await wait_until(lambda: inboxes[1].frames[1] == [b"hi"], what="delivery")
    # Node 1 drops node 2 from its membership.
    a.set_peers({3: PeerAddress(LOCAL, c.bound_port)})
    assert set(a.stats()) == {3}
    assert not a.send(2, b"gone")
    # Both directions between 1 and 2 go down: 1's outbound is closed (2 sees its inbound vanish),
    # 1 closes 2's inbound connection and refuses 2's redials (2 is no longer a known peer).
    await wait_until(lambda: not b.stats()[1].inbound_connected, what="2 sees 1's connection close")
    await wait_until(lambda: not b.stats()[1].connected, what="2's connection to 1 closed")
    b.send(1, b"after removal")
    await asyncio.sleep(0.3)
    assert inboxes[0].frames[2] == []
    assert not b.stats()[1].connected
    # 1 <-> 3 unaffected.
    a.send(3, b"to 3")
    c.send(1, b"to 1")
    await wait_until(lambda: inboxes[2].frames[1] == [b"to 3"], what="1->3")
    await wait_until(lambda: inboxes[0].frames[3] == [b"to 1"], what="3->1")
    # Adding it back restores both directions.
    a.set_peers({2: PeerAddress(LOCAL, b.bound_port), 3: PeerAddress(LOCAL, c.bound_port)})
    await wait_until(lambda: a.stats()[2].connected, what="1 redials 2")
    a.send(2, b"welcome back")
    await wait_until(lambda: inboxes[1].frames[1][-1:] == [b"welcome back"], what="1->2 again")
    await wait_until(lambda: inboxes[0].frames[2][-1:] == [b"after removal"], timeout=5, what="2->1 again")


@asyncio_test
async def test_start_on_busy_port_raises_clear_error(net: Net) -> None:
    a = net.make(1, {})
    await a.start()
    b = net.make(2, {}, port=a.bound_port)
    with pytest.raises(OSError, match=r"cannot listen for raft peers on 127\.0\.0\.1:\d+"):
        await b.start()


@asyncio_test
async def test_stop_is_idempotent_and_final(net: Net) -> None:
    ts, _ = await net.cluster(2)
    await wait_until(lambda: all_connected(ts), what="connected")
    await ts[0].stop()
    await ts[0].stop()
    assert not ts[0].send(2, b"x")
    with pytest.raises(RuntimeError):
        await ts[0].start()
    never_started = net.make(5, {})
    await never_started.stop()


def test_stats_type() -> None:
    st = PeerStats(
        connected=False,
        queued_frames=0,
        queued_bytes=0,
        dropped_frames=0,
        sent_frames=0,
        received_frames=0,
        reconnects=0,
    )
    assert not st.inbound_connected


@asyncio_test
async def test_frame_sizes_up_to_the_limit(net: Net) -> None:
    limit = 1 << 20
    ts, inboxes = await net.cluster(2, max_frame_bytes=limit)
    payloads = [b"", b"\x00", bytes(range(256)) * 17, b"L" * limit, b"after"]
    for p in payloads:
        assert ts[0].send(2, p)
    assert not ts[0].send(2, b"L" * (limit + 1))
    await wait_until(lambda: inboxes[1].count() == len(payloads), what="all sizes delivered")
    assert inboxes[1].frames[1] == payloads


@asyncio_test
async def test_set_peers_address_change_redials(net: Net) -> None:
    ts, _ = await net.cluster(2)
    await wait_until(lambda: all_connected(ts), what="connected")
    await ts[1].stop()
    inbox = Inbox()
    moved = net.make(2, {1: PeerAddress(LOCAL, ts[0].bound_port)}, inbox)  # new, different port
    await moved.start()
    ts[0].set_peers({2: PeerAddress(LOCAL, moved.bound_port)})
    assert ts[0].send(2, b"at the new address")
    await wait_until(lambda: inbox.frames[1] == [b"at the new address"], what="delivery at new address")


@asyncio_test
async def test_send_before_start_is_queued(net: Net) -> None:
    inbox = Inbox()
    b = net.make(2, {1: PeerAddress(LOCAL, free_port())}, inbox)
    await b.start()
    a = net.make(1, {2: PeerAddress(LOCAL, b.bound_port)})
    assert a.send(2, b"early")
    await a.start()
    await wait_until(lambda: inbox.frames[1] == [b"early"], what="early frame delivered")


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    t = Transport(
        cluster_id=CLUSTER,
        node_id=1,
        listen=PeerAddress(LOCAL, 0),
        peers={},
        on_frame=Inbox(),
        rng=random.Random(42),
    )
    delays = [t._backoff(i) for i in range(12)]
    for i, d in enumerate(delays):
        ceiling = min(1.0, 0.05 * 2**i)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 1.0
    again = Transport(
        cluster_id=CLUSTER,
        node_id=1,
        listen=PeerAddress(LOCAL, 0),
        peers={},
        on_frame=Inbox(),
        rng=random.Random(42),
    )
    assert [again._backoff(i) for i in range(12)] == delays  # injectable rng: reproducible


# --------------------------------------------------------------------------- application level


def test_a_hello_or_reply_from_an_older_release_has_app_level_0() -> None:
    """Releases before app levels send neither field: they read as level 0 (and ours as theirs do)."""
    legacy_hello = msgspec.msgpack.encode(
        {"type": "hello", "version": PROTOCOL_VERSION, "cluster_id": CLUSTER, "node_id": 2, "to_node": 1,
         "nonce": bytes(32)}
    )
    assert decode_hello(legacy_hello).app_level == 0
    legacy_reply = msgspec.msgpack.encode({"type": "hello_reply", "ok": True, "mac": b""})
    assert decode_reply(legacy_reply).app_level == 0
    ours = msgspec.msgpack.decode(encode_hello(Hello(PROTOCOL_VERSION, CLUSTER, 2, 1, bytes(32), 7))[HEADER.size:])
    assert ours["app_level"] == 7 and ours["nonce"] == bytes(32)  # an older decoder ignores the extra key


@asyncio_test
async def test_peers_learn_each_others_app_level(net: Net) -> None:
    p1, p2 = free_port(), free_port()
    a = net.make(1, {2: PeerAddress(LOCAL, p2)}, port=p1, app_level=3)
    b = net.make(2, {1: PeerAddress(LOCAL, p1)}, port=p2)  # an older release: announces nothing
    assert a.peer_app_levels == {} and b.peer_app_levels == {}  # not connected yet: unknown
    await a.start()
    await b.start()
    assert a.send(2, b"hello") and b.send(1, b"hello")
    await wait_until(lambda: a.peer_app_levels.get(2) == 0 and b.peer_app_levels.get(1) == 3,
                     what="both levels learned")
