"""Peer-to-peer TCP transport for Raft: moves opaque, length-prefixed frames between nodes.

Shape
-----
* **One outbound connection per peer, one direction of traffic per connection.** Each node dials
  every peer in its peer map and only *writes* data frames on that connection; it only *reads* data
  frames on connections it accepted. Between two nodes there are therefore two TCP connections.
  The alternative (one shared connection per pair) needs a tie-break when both sides dial at once,
  and every such dedupe scheme has races (both close, or each keeps a different one) exactly during
  the partitions and restarts Raft must survive. Two independent connections have no such races and
  each can be reasoned about alone: a dialer owns its connection's whole life.
* **Handshake and authentication** (see :mod:`.framing`): the dialer sends
  ``Hello(version, cluster_id, node_id, to_node, nonce)``, the acceptor a challenge nonce, the dialer
  its proof, the acceptor its verdict and its own proof. With a shared cluster secret
  (:class:`PeerAuth.secret`) both proofs are HMACs of the transcript, so each side knows the other
  holds the secret and the node id a connection speaks for is the one that was proven. With TLS
  (:class:`PeerAuth` contexts) the connection is mutual TLS first and the peer's certificate must
  name the member it claims to be (CN or a DNS/URI subjectAltName equal to the member name). Both
  can be combined. The acceptor refuses a wrong cluster id, a node id that is not in its current
  peer map, another protocol version, a bad proof or certificate — logging why, and telling the
  dialer only "refused". A message from an unknown peer must change nothing, so it never reaches
  ``on_frame``; and every frame reaches ``on_frame`` with the *authenticated* peer id.
* **Limits**: at most ``len(peers) + extra_inbound`` accepted connections at once (handshaking or
  authenticated; more are closed at once), the whole handshake (TLS included) within
  ``handshake_timeout``, handshake frames of at most 4 KiB, data frames of at most
  ``max_frame_bytes`` (only from an authenticated peer), and one task per connection.
* **Pipelining and batching**: :meth:`Transport.send` never waits. When the connection is idle (no
  queue, nothing unsent in the socket's buffer) the frame goes straight to the socket, so a commit
  does not wait for a writer task to be scheduled; otherwise it is queued and a per-peer writer
  task drains the queue, coalescing everything queued (up to ``batch_max_bytes``) into one
  ``write`` and one ``drain``. Under load this turns thousands of small frames into a few syscalls.
* **Bounded memory**: each peer's queue is capped by frame count and by bytes. A full queue drops the
  new frame (``send`` returns False) and counts it; Raft retransmits what matters, so loss is safe,
  while unbounded buffering towards a dead or slow peer would eventually take the node down.
* **Reconnect** with exponential backoff and jitter (from an injectable :class:`random.Random`, so
  tests and simulations stay deterministic). Frames queued while disconnected are kept (up to the
  bound) and flushed once the connection is back. A batch that failed mid-write is counted dropped.

Everything runs on the event loop; there are no threads and no blocking calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import random
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ram.backoff import Backoff
from ram.consensus.runtime.framing import (
    HANDSHAKE_MAX_BYTES,
    HEADER,
    HEADER_SIZE,
    MAX_ENCODABLE_FRAME,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    REFUSED,
    Challenge,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    Hello,
    HelloReply,
    Proof,
    decode_challenge,
    decode_hello,
    decode_proof,
    decode_reply,
    encode_challenge,
    encode_hello,
    encode_proof,
    encode_reply,
    handshake_mac,
    read_one_frame,
)

__all__ = ["PeerAddress", "PeerAuth", "PeerStats", "Transport", "certificate_names", "tls_contexts"]

log: Final = logging.getLogger("ram.transport")

#: Bytes asked of the socket per read on inbound connections: large enough to parse many small frames
#: per wakeup, small enough that one read's callbacks do not hog the loop.
_READ_CHUNK: Final = 256 << 10
#: StreamReader buffer limit; the reader pauses the socket above twice this (TCP flow control then
#: pushes back on the sender instead of us buffering).
_STREAM_LIMIT: Final = 1 << 20
#: Repeated identical warnings about one peer (unreachable, refused) are logged at most this often.
_WARN_INTERVAL: Final = 30.0
#: Linux TCP_USER_TIMEOUT (ms): abort a connection whose sent data stays unacknowledged this long, so
#: a peer host that vanished (no RST ever comes) is noticed in seconds, not after ~15 min of retries.
_TCP_USER_TIMEOUT_MS: Final = 10_000
#: A peer that is merely not up yet (cluster start, a restart) is not worth a warning; one that stays
#: unreachable longer than this is.
_UNREACHABLE_GRACE: Final = 5.0


@dataclass(frozen=True)
class PeerAddress:
    """Where a peer listens for Raft traffic, and its member name (what its TLS certificate must name)."""

    host: str
    port: int
    name: str = ""

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PeerAuth:
    """How peers prove who they are. ``secret``: the shared cluster secret of the HMAC handshake;
    ``server_context``/``client_context``: mutual TLS (both or neither, see :func:`tls_contexts`).
    A transport without a PeerAuth (or with an empty one) trusts the hello: insecure, for tests and
    explicitly insecure single-network clusters only."""

    secret: bytes | None = None
    server_context: ssl.SSLContext | None = field(default=None, repr=False)
    client_context: ssl.SSLContext | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.server_context is None) != (self.client_context is None):
            raise ValueError("TLS needs both a server and a client context")
        if self.secret is not None and len(self.secret) < 16:
            raise ValueError("the cluster secret must be at least 16 bytes")

    def __repr__(self) -> str:  # never the secret
        return f"PeerAuth(secret={'set' if self.secret else 'none'}, tls={self.tls})"

    @property
    def tls(self) -> bool:
        return self.server_context is not None


def tls_contexts(cert: Path, key: Path, ca: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for mutual TLS between members: TLS 1.2+, the member certificate on
    both sides, peers verified against ``ca`` only (not the system store), CERT_REQUIRED both ways.

    Hostname checking is off on purpose: peers are dialed by IP address, and what must match is the
    *member* the certificate names, which the transport checks itself (:func:`certificate_names`).
    The certificate therefore needs both serverAuth and clientAuth usage (or no extendedKeyUsage).
    Raises :class:`ssl.SSLError`/:class:`OSError` for unreadable or mismatched files.
    """
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(cafile=str(ca))
    return server, client


def certificate_names(cert: dict[str, Any] | None) -> set[str]:
    """The names a verified peer certificate carries: its CN(s) and DNS/URI subjectAltNames."""
    names: set[str] = set()
    if not cert:
        return names
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(str(value))
    for kind, value in cert.get("subjectAltName", ()):
        if kind in ("DNS", "URI"):
            names.add(str(value))
    return names


@dataclass(frozen=True)
class PeerStats:
    """A snapshot of one peer's transport counters (counters are cumulative since the peer was added).

    ``connected`` is about our outbound connection (handshake done); ``inbound_connected`` about the
    peer's connection to us.
    """

    connected: bool
    queued_frames: int
    queued_bytes: int
    dropped_frames: int
    sent_frames: int
    received_frames: int
    reconnects: int
    inbound_connected: bool = False


def _tune_socket(writer: asyncio.StreamWriter) -> None:
    """TCP_NODELAY (Raft messages are latency-sensitive and we batch ourselves), keepalive, user timeout."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
    if user_timeout is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, user_timeout, _TCP_USER_TIMEOUT_MS)


def _format_peername(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _close_writer(writer: asyncio.StreamWriter, *, abort: bool = False) -> None:
    """Close without awaiting: ``abort`` drops unsent bytes (used on stop/removal, where promptness wins)."""
    with contextlib.suppress(Exception):
        if abort:
            writer.transport.abort()
        else:
            writer.close()


class _Outbound:
    """One live, handshaken outbound connection. ``lost`` flips once and for all when it dies."""

    __slots__ = ("lost", "reader", "watcher", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.lost = False
        self.watcher: asyncio.Task[None] | None = None

    def close(self, *, abort: bool = False) -> None:
        self.lost = True
        if self.watcher is not None:
            self.watcher.cancel()
        _close_writer(self.writer, abort=abort)


class _Inbound:
    """An accepted connection that passed the handshake (registered so it can be closed on removal)."""

    __slots__ = ("address", "task", "writer")

    def __init__(self, task: asyncio.Task[None], writer: asyncio.StreamWriter, address: str) -> None:
        self.task = task
        self.writer = writer
        self.address = address


class _Peer:
    """Per-peer state: the bounded send queue, the writer task, counters."""

    __slots__ = (
        "address",
        "conn",
        "connects",
        "down_since",
        "dropped",
        "last_warning",
        "last_warning_at",
        "peer_id",
        "queue",
        "queued_bytes",
        "received",
        "sent",
        "task",
        "wake",
    )

    def __init__(self, peer_id: int, address: PeerAddress) -> None:
        self.peer_id = peer_id
        self.address = address
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.dropped = 0
        self.sent = 0
        self.received = 0
        self.connects = 0
        self.task: asyncio.Task[None] | None = None
        self.conn: _Outbound | None = None
        # Set by send() (work to do), by the connection watcher (connection died) and on removal.
        self.wake = asyncio.Event()
        self.last_warning = ""
        self.last_warning_at = float("-inf")
        #: Loop time the peer last became unreachable from us (start, or loss of the connection).
        self.down_since = 0.0

    def clear_queue(self) -> int:
        n = len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        return n


class Transport:
    """Asyncio TCP transport carrying opaque ``bytes`` payloads between the nodes of one Raft cluster.

    ``on_frame(peer_id, payload)`` is called synchronously on the event loop for each data frame that
    arrives on an accepted, handshaken connection, in the order the peer sent them. It must not block;
    an exception from it is logged and the connection keeps going (one bad message must not cut a
    peer off).

    A transport is single-use: after :meth:`stop` it can not be started again (make a new one).
    """

    def __init__(
        self,
        *,
        cluster_id: str,
        node_id: int,
        listen: PeerAddress,
        peers: dict[int, PeerAddress],
        on_frame: Callable[[int, bytes], None],
        max_frame_bytes: int = 64 << 20,
        queue_max_frames: int = 4096,
        queue_max_bytes: int = 64 << 20,
        rng: random.Random | None = None,
        connect_timeout: float = 1.0,
        handshake_timeout: float = 2.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 1.0,
        batch_max_bytes: int = 4 << 20,
        auth: PeerAuth | None = None,
        extra_inbound: int = 4,
        app_level: int = 0,
    ) -> None:
        if not 0 < max_frame_bytes <= MAX_ENCODABLE_FRAME:
            raise ValueError(f"max_frame_bytes must be in 1..{MAX_ENCODABLE_FRAME}, got {max_frame_bytes}")
        if queue_max_frames < 1 or queue_max_bytes < 1:
            raise ValueError("queue_max_frames and queue_max_bytes must be positive")
        if connect_timeout <= 0 or handshake_timeout <= 0:
            raise ValueError("connect_timeout and handshake_timeout must be positive")
        if batch_max_bytes < 1:
            raise ValueError("batch_max_bytes must be positive")
        if extra_inbound < 1:
            raise ValueError("extra_inbound must be positive")
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.listen = listen
        self._on_frame = on_frame
        self._max_frame_bytes = max_frame_bytes
        self._queue_max_frames = queue_max_frames
        self._queue_max_bytes = queue_max_bytes
        self._rng = rng if rng is not None else random.Random()
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._backoff_policy = Backoff(backoff_initial, backoff_max, jitter=True, rng=self._rng)
        self._backoff_max = backoff_max
        self._batch_max_bytes = batch_max_bytes
        self._auth = auth if auth is not None else PeerAuth()
        self._extra_inbound = extra_inbound
        self.app_level = app_level
        #: Peer id -> the application level it announced when it last authenticated (Hello or
        #: HelloReply; 0: an older release that announces none). Absent: not connected yet.
        self.peer_app_levels: dict[int, int] = {}
        #: Accepted connections closed at once because too many were open (handshaking or not).
        self.inbound_rejected = 0
        self._last_cap_warning = float("-inf")
        #: Refusal reason -> (loop time last logged, refusals since): a misconfigured or hostile dialer
        #: retrying every second must not flood the log.
        self._refusal_log: dict[str, tuple[float, int]] = {}

        self._peers: dict[int, _Peer] = {}
        self._inbound: dict[int, _Inbound] = {}
        self._handlers: set[asyncio.Task[None]] = set()  # every accepted connection's task
        self._aux_tasks: set[asyncio.Task[None]] = set()  # watchers, tasks of removed peers
        self._server: asyncio.Server | None = None
        self._started = False
        self._stopped = False
        #: Frames passed to send() for a peer id not in the peer map (or after stop).
        self.unknown_peer_drops = 0
        self._apply_peers(peers)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the listen socket and start dialing every peer.

        Raises :class:`OSError` naming the address if it can not be bound (port in use, bad host).
        """
        if self._stopped:
            raise RuntimeError("transport was stopped; create a new Transport")
        if self._started:
            return
        try:
            self._server = await asyncio.start_server(
                self._on_accept, self.listen.host, self.listen.port, limit=_STREAM_LIMIT
            )
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot listen for raft peers on {self.listen}: {exc.strerror or exc}",
            ) from exc
        self._started = True
        log.info(
            "transport started node_id=%d cluster_id=%r listen=%s:%d peers=%s auth=%s",
            self.node_id,
            self.cluster_id,
            self.listen.host,
            self.bound_port,
            sorted(self._peers),
            self._auth_mode(),
        )
        for peer in self._peers.values():
            self._start_peer_task(peer)

    def _local_addr(self, remote_host: str) -> tuple[str, int] | None:
        """Bind outgoing connections to our listen host when it is a concrete address of the same
        family as the peer's (not a wildcard)."""
        host = self.listen.host
        if host in ("", "0.0.0.0", "::") or (":" in host) != (":" in remote_host):
            return None
        return (host, 0)

    def _auth_mode(self) -> str:
        parts = [name for name, on in (("tls", self._auth.tls), ("secret", self._auth.secret is not None)) if on]
        return "+".join(parts) or "none"

    async def stop(self) -> None:
        """Close the listener and every connection, cancel and await every task. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.close()
        tasks: list[asyncio.Task[None]] = []
        for peer in self._peers.values():
            if peer.conn is not None:
                peer.conn.close(abort=True)
            if peer.task is not None:
                tasks.append(peer.task)
        for inbound in self._inbound.values():
            _close_writer(inbound.writer, abort=True)
        tasks.extend(self._handlers)
        tasks.extend(self._aux_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # Watchers of connections closed by the cancelled writer tasks.
        while self._aux_tasks:
            rest = list(self._aux_tasks)
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            self._aux_tasks.difference_update(rest)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self._started:
            log.info("transport stopped node_id=%d", self.node_id)

    @property
    def bound_port(self) -> int:
        """The port actually bound (differs from ``listen.port`` when that is 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("transport is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    # ------------------------------------------------------------------ sending

    def send(self, peer_id: int, payload: bytes) -> bool:
        """Send ``payload`` to ``peer_id`` now if the connection is idle, else queue it; never blocks,
        never waits for the peer.

        Returns False (and counts the drop) when the peer is unknown, the payload is over the frame
        limit, or the peer's queue is full by frame count or by bytes. A True return means queued,
        not delivered: Raft must (and does) tolerate loss.
        """
        peer = self._peers.get(peer_id)
        if peer is None or self._stopped:
            self.unknown_peer_drops += 1
            return False
        size = len(payload)
        if size > self._max_frame_bytes:
            peer.dropped += 1
            log.warning(
                "frame dropped: too large peer_id=%d size=%d max_frame_bytes=%d",
                peer_id,
                size,
                self._max_frame_bytes,
            )
            return False
        cost = size + HEADER_SIZE
        if len(peer.queue) >= self._queue_max_frames or peer.queued_bytes + cost > self._queue_max_bytes:
            peer.dropped += 1
            return False
        conn = peer.conn
        if conn is not None and not peer.queue and not conn.lost:
            transport = conn.writer.transport
            if transport.get_write_buffer_size() == 0 and not transport.is_closing():
                # Nothing waits before it and the socket keeps up: straight onto the wire, without
                # waking the writer task (one task switch less on every commit's path). Anything
                # the kernel does not take stays in the transport's buffer, which the writer task
                # drains before its next batch, so order holds and the byte bound still applies.
                transport.write(HEADER.pack(size) + payload)
                peer.sent += 1
                return True
        peer.queue.append(payload)
        peer.queued_bytes += cost
        peer.wake.set()
        return True

    # ------------------------------------------------------------------ membership

    def set_peers(self, peers: dict[int, PeerAddress]) -> None:
        """Replace the peer map (membership change).

        Removed peers lose their queue, their outbound connection and their inbound connection (which
        is closed: an ex-member must not keep feeding us frames). New peers are dialed. A peer whose
        address changed is redialed at the new address. Our own id, if present, is ignored.
        """
        self._apply_peers(peers)

    def _apply_peers(self, peers: dict[int, PeerAddress]) -> None:
        wanted = {pid: addr for pid, addr in peers.items() if pid != self.node_id}
        for pid in [pid for pid in self._peers if pid not in wanted]:
            self._remove_peer(pid)
        for pid, addr in wanted.items():
            peer = self._peers.get(pid)
            if peer is None:
                peer = _Peer(pid, addr)
                self._peers[pid] = peer
                if self._started and not self._stopped:
                    self._start_peer_task(peer)
                    log.info("peer added peer_id=%d addr=%s", pid, addr)
            elif peer.address != addr:
                log.info("peer address changed peer_id=%d old=%s new=%s", pid, peer.address, addr)
                peer.address = addr
                if peer.conn is not None:
                    peer.conn.close()
                peer.wake.set()

    def _remove_peer(self, peer_id: int) -> None:
        peer = self._peers.pop(peer_id)
        discarded = peer.clear_queue()
        if peer.conn is not None:
            peer.conn.close(abort=True)
        if peer.task is not None:
            peer.task.cancel()
            self._track_aux(peer.task)
        inbound = self._inbound.pop(peer_id, None)
        if inbound is not None:
            _close_writer(inbound.writer, abort=True)
            inbound.task.cancel()
        log.info("peer removed peer_id=%d addr=%s discarded_frames=%d", peer_id, peer.address, discarded)

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[int, PeerStats]:
        """Per-peer counters, as a snapshot."""
        return {
            pid: PeerStats(
                connected=peer.conn is not None and not peer.conn.lost,
                queued_frames=len(peer.queue),
                queued_bytes=peer.queued_bytes,
                dropped_frames=peer.dropped,
                sent_frames=peer.sent,
                received_frames=peer.received,
                reconnects=max(0, peer.connects - 1),
                inbound_connected=pid in self._inbound,
            )
            for pid, peer in self._peers.items()
        }

    # ------------------------------------------------------------------ outbound side

    def _track_aux(self, task: asyncio.Task[None]) -> None:
        self._aux_tasks.add(task)
        task.add_done_callback(self._aux_tasks.discard)

    def _start_peer_task(self, peer: _Peer) -> None:
        peer.task = asyncio.get_running_loop().create_task(
            self._run_peer(peer), name=f"ram.transport.peer-{peer.peer_id}"
        )

    def _backoff(self, attempt: int) -> float:
        return self._backoff_policy.delay(attempt)

    def _warn_peer(self, peer: _Peer, message: str, *args: object, quiet_for: float = 0.0) -> None:
        """Warn, but the same complaint about the same peer at most every _WARN_INTERVAL (debug otherwise).

        Within ``quiet_for`` seconds of the peer going down the message is only logged at debug.
        """
        text = message % args if args else message
        now = asyncio.get_running_loop().time()
        if now - peer.down_since < quiet_for:
            log.debug(text)
        elif text != peer.last_warning or now - peer.last_warning_at >= _WARN_INTERVAL:
            peer.last_warning = text
            peer.last_warning_at = now
            log.warning(text)
        else:
            log.debug(text)

    async def _run_peer(self, peer: _Peer) -> None:
        """The peer's writer task: dial (with backoff) and pump the queue, forever until cancelled."""
        loop = asyncio.get_running_loop()
        attempt = 0
        peer.down_since = loop.time()
        while True:
            try:
                conn = await self._dial(peer)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug, not a network condition: log it, keep the peer alive
                log.exception("unexpected error dialing peer_id=%d", peer.peer_id)
                conn = None
            if conn is None:
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            peer.connects += 1
            peer.conn = conn
            peer.last_warning = ""
            log.info(
                "peer connected peer_id=%d addr=%s connects=%d queued_frames=%d",
                peer.peer_id,
                peer.address,
                peer.connects,
                len(peer.queue),
            )
            connected_at = loop.time()
            conn.watcher = loop.create_task(self._watch(peer, conn), name=f"ram.transport.watch-{peer.peer_id}")
            self._track_aux(conn.watcher)
            try:
                await self._pump(peer, conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("unexpected error writing to peer_id=%d", peer.peer_id)
            finally:
                peer.conn = None
                peer.down_since = loop.time()
                conn.close()
            # A connection that lived a while resets the backoff; one that keeps dying right after the
            # handshake keeps growing it, so a flapping peer can not make us hot-loop.
            if loop.time() - connected_at > self._backoff_max:
                attempt = 0
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    async def _dial(self, peer: _Peer) -> _Outbound | None:
        """Connect and handshake; None (after logging) on any failure or refusal."""
        addr = peer.address
        tls = self._auth.client_context
        try:
            # The TLS handshake (if any) is part of connecting; give it its own budget.
            async with asyncio.timeout(self._connect_timeout + (self._handshake_timeout if tls else 0.0)):
                # Dial from our own listen address: on a host with several addresses (or loopback
                # aliases) peers then see who we are, and a network cut between two addresses
                # (firewall rules) cuts our traffic too.
                reader, writer = await asyncio.open_connection(
                    addr.host,
                    addr.port,
                    limit=_STREAM_LIMIT,
                    local_addr=self._local_addr(addr.host),
                    ssl=tls,
                    server_hostname=(addr.name or addr.host) if tls else None,
                )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            if isinstance(exc, ssl.SSLError):
                reason = f"TLS handshake failed: {exc.reason or exc}"
            else:
                reason = "timeout" if isinstance(exc, TimeoutError) else (exc.strerror or repr(exc))
            self._warn_peer(
                peer,
                "peer unreachable peer_id=%d addr=%s error=%r",
                peer.peer_id,
                addr,
                reason,
                quiet_for=0.0 if isinstance(exc, ssl.SSLError) else _UNREACHABLE_GRACE,
            )
            return None
        _tune_socket(writer)
        if tls is not None:
            names = certificate_names(writer.get_extra_info("peercert"))
            if not addr.name or addr.name not in names:
                _close_writer(writer, abort=True)
                self._warn_peer(
                    peer,
                    "peer refused: its certificate does not name member %r peer_id=%d addr=%s names=%s",
                    addr.name,
                    peer.peer_id,
                    addr,
                    sorted(names),
                )
                return None
        try:
            async with asyncio.timeout(self._handshake_timeout):
                reply = await self._dialer_handshake(peer, reader, writer)
        except asyncio.CancelledError:
            _close_writer(writer, abort=True)
            raise
        except (OSError, TimeoutError, asyncio.IncompleteReadError, FrameError) as exc:
            _close_writer(writer)
            if isinstance(exc, TimeoutError):
                error = f"no reply within {self._handshake_timeout}s"
            elif isinstance(exc, asyncio.IncompleteReadError):
                error = "connection closed during handshake"
            else:
                error = str(exc) or repr(exc)
            self._warn_peer(peer, "peer handshake failed peer_id=%d addr=%s error=%r", peer.peer_id, addr, error)
            return None
        if reply is not None:
            _close_writer(writer)
            self._warn_peer(peer, "%s peer_id=%d addr=%s", reply, peer.peer_id, addr)
            return None
        return _Outbound(reader, writer)

    async def _dialer_handshake(
        self, peer: _Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> str | None:
        """Our side of the handshake on a fresh outbound connection; None when accepted, else why not."""
        secret = self._auth.secret
        my_nonce = os.urandom(NONCE_BYTES)
        writer.write(encode_hello(
            Hello(PROTOCOL_VERSION, self.cluster_id, self.node_id, peer.peer_id, my_nonce, self.app_level)
        ))
        await writer.drain()
        first = decode_challenge(await read_one_frame(reader, HANDSHAKE_MAX_BYTES))
        if isinstance(first, HelloReply):
            return f"refused by peer (it logs why; a protocol version mismatch?) reason={first.reason!r}"
        their_nonce = first.nonce
        if len(their_nonce) != NONCE_BYTES:
            return f"peer handshake failed: challenge nonce of {len(their_nonce)} bytes"
        mac = b""
        if secret is not None:
            mac = handshake_mac(
                secret, "dialer", self.cluster_id, self.node_id, peer.peer_id, my_nonce, their_nonce
            )
        writer.write(encode_proof(Proof(mac)))
        await writer.drain()
        reply = decode_reply(await read_one_frame(reader, HANDSHAKE_MAX_BYTES))
        if not reply.ok:
            return f"refused by peer (its log says why) reason={reply.reason!r}"
        if secret is not None:
            expected = handshake_mac(
                secret, "listener", self.cluster_id, self.node_id, peer.peer_id, my_nonce, their_nonce
            )
            if not hmac.compare_digest(reply.mac, expected):
                # Either the peer has another secret or none (raft.secret_file differs), or it is not
                # our peer at all: never send it anything.
                return "peer refused: it did not prove the cluster secret (raft.secret_file differs?)"
        self.peer_app_levels[peer.peer_id] = reply.app_level
        return None

    async def _watch(self, peer: _Peer, conn: _Outbound) -> None:
        """Notice the death of an outbound connection while we have nothing to write.

        The acceptor never sends anything after its ok, so any read completing means EOF, a reset or a
        protocol violation; in all cases the connection is done and the writer task must redial.
        """
        try:
            data = await conn.reader.read(1)
        except (OSError, asyncio.IncompleteReadError):
            data = b""
        if data:
            log.warning("unexpected data from peer on outbound connection peer_id=%d; closing", peer.peer_id)
        elif not conn.lost:
            log.info("peer connection closed by remote peer_id=%d addr=%s", peer.peer_id, peer.address)
        conn.lost = True
        _close_writer(conn.writer)
        peer.wake.set()

    async def _pump(self, peer: _Peer, conn: _Outbound) -> None:
        """Drain the queue onto the connection in coalesced batches until the connection dies."""
        writer = conn.writer
        queue = peer.queue
        pack = HEADER.pack
        batch_max = self._batch_max_bytes
        while True:
            while not queue and not conn.lost:
                peer.wake.clear()
                await peer.wake.wait()
            if conn.lost:
                return
            parts: list[bytes] = []
            size = 0
            count = 0
            while queue and size < batch_max:
                payload = queue.popleft()
                parts.append(pack(len(payload)))
                parts.append(payload)
                size += len(payload) + HEADER_SIZE
                count += 1
            peer.queued_bytes -= size
            try:
                writer.write(b"".join(parts))
                del parts
                await writer.drain()
            except (OSError, RuntimeError) as exc:  # RuntimeError: write on a closing transport
                peer.dropped += count
                conn.lost = True
                log.info(
                    "peer write failed peer_id=%d addr=%s error=%r lost_frames=%d",
                    peer.peer_id,
                    peer.address,
                    str(exc) or repr(exc),
                    count,
                )
                return
            peer.sent += count

    # ------------------------------------------------------------------ inbound side

    def _check_hello(self, hello: Hello, peercert: dict[str, Any] | None) -> str | None:
        """Why ``hello`` must be refused (for our log only), or None if its proof may decide."""
        if hello.cluster_id != self.cluster_id:
            return f"wrong cluster id {hello.cluster_id!r} (expected {self.cluster_id!r})"
        if hello.node_id == self.node_id:
            return f"node id {hello.node_id} is this node's own id"
        peer = self._peers.get(hello.node_id)
        if peer is None:
            return f"unknown node id {hello.node_id} (not a peer of node {self.node_id})"
        if hello.to_node != self.node_id:
            return f"node {hello.node_id} meant to reach node {hello.to_node}, this is node {self.node_id}"
        if self._auth.secret is not None and len(hello.nonce) != NONCE_BYTES:
            return f"node {hello.node_id} sent no valid nonce (is raft.secret_file set on it?)"
        if self._auth.tls:
            names = certificate_names(peercert)
            if not peer.address.name or peer.address.name not in names:
                return (
                    f"the certificate of node {hello.node_id} does not name member {peer.address.name!r} "
                    f"(it names {sorted(names)})"
                )
        return None

    def _log_refusal(self, problem: str, where: str) -> None:
        """Warn about a refusal; the same reason at most once per _WARN_INTERVAL (then with a count)."""
        now = asyncio.get_running_loop().time()
        last, since = self._refusal_log.get(problem, (float("-inf"), 0))
        if now - last < _WARN_INTERVAL:
            self._refusal_log[problem] = (last, since + 1)
            log.debug("peer refused: %s from %s", problem, where)
            return
        if len(self._refusal_log) > 1000:  # reasons embed peer-chosen values: keep the map bounded
            self._refusal_log.clear()
        self._refusal_log[problem] = (now, 0)
        suffix = f" (and {since} more times since the last warning)" if since else ""
        log.warning("peer refused: %s from %s%s", problem, where, suffix)

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Tell the dialer "refused" and nothing else (best effort, bounded in time); the caller closes."""
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            writer.write(encode_reply(HelloReply(ok=False, reason=REFUSED)))
            async with asyncio.timeout(self._handshake_timeout):
                await writer.drain()

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server callback: run the connection in a task we own, if there is room for it.

        A plain function on purpose: given a coroutine, asyncio wraps it in a task whose completion
        callback calls ``task.exception()``, which logs a spurious error when we cancel it on stop.
        The cap counts every accepted connection still open (handshaking or authenticated): each
        peer needs one, and a few more cover reconnects that overlap the old connection's end.
        """
        if self._stopped:
            _close_writer(writer, abort=True)
            return
        if len(self._handlers) >= len(self._peers) + self._extra_inbound:
            self.inbound_rejected += 1
            now = asyncio.get_running_loop().time()
            if now - self._last_cap_warning >= _WARN_INTERVAL:
                self._last_cap_warning = now
                log.warning(
                    "peer connection refused: %d connections open (limit %d) from %s rejected_so_far=%d",
                    len(self._handlers),
                    len(self._peers) + self._extra_inbound,
                    _format_peername(writer),
                    self.inbound_rejected,
                )
            _close_writer(writer, abort=True)
            return
        task = asyncio.get_running_loop().create_task(
            self._handle_inbound(reader, writer), name="ram.transport.inbound"
        )
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _listener_handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
    ) -> int | None:
        """Authenticate an accepted connection; the proven peer id, or None (logged, "refused" sent).

        A wrong cluster id or unknown node id is not refused at once: the dialer still gets a
        challenge and is refused only after its proof, exactly like a wrong secret, so a stranger can
        not tell which of its guesses was wrong. Only another protocol version is refused right away
        (there is nothing to hide about it, and the other side may not understand the challenge).
        """
        if self._auth.server_context is not None:
            await writer.start_tls(self._auth.server_context)
        hello = decode_hello(await read_one_frame(reader, HANDSHAKE_MAX_BYTES))
        if hello.version != PROTOCOL_VERSION:
            self._log_refusal(
                f"protocol version {hello.version} (node_id={hello.node_id}), this node speaks version "
                f"{PROTOCOL_VERSION}; upgrade the older node",
                where,
            )
            await self._refuse(writer)
            return None
        problem = self._check_hello(hello, writer.get_extra_info("peercert"))
        my_nonce = os.urandom(NONCE_BYTES)
        writer.write(encode_challenge(Challenge(my_nonce)))
        await writer.drain()
        proof = decode_proof(await read_one_frame(reader, HANDSHAKE_MAX_BYTES))
        secret = self._auth.secret
        reply_mac = b""
        if problem is None and secret is not None:
            expected = handshake_mac(
                secret, "dialer", self.cluster_id, hello.node_id, self.node_id, hello.nonce, my_nonce
            )
            if not hmac.compare_digest(proof.mac, expected):
                problem = f"node {hello.node_id} did not prove the cluster secret (raft.secret_file differs?)"
            else:
                reply_mac = handshake_mac(
                    secret, "listener", self.cluster_id, hello.node_id, self.node_id, hello.nonce, my_nonce
                )
        if problem is not None:
            self._log_refusal(problem, where)
            await self._refuse(writer)
            return None
        writer.write(encode_reply(HelloReply(ok=True, mac=reply_mac, app_level=self.app_level)))
        await writer.drain()
        self.peer_app_levels[hello.node_id] = hello.app_level
        return hello.node_id

    async def _handle_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One accepted connection: handshake, then deliver its data frames to ``on_frame``."""
        task = asyncio.current_task()
        assert task is not None
        where = _format_peername(writer)
        registered: _Inbound | None = None
        try:
            _tune_socket(writer)
            try:
                async with asyncio.timeout(self._handshake_timeout):
                    peer_id = await self._listener_handshake(reader, writer, where)
            except TimeoutError:
                log.warning("peer refused: handshake not completed within %ss from %s", self._handshake_timeout, where)
                return
            except asyncio.IncompleteReadError:
                log.info("connection closed before handshake from %s", where)
                return
            except ssl.SSLError as exc:
                log.warning("peer refused: TLS handshake failed from %s error=%r", where, exc.reason or str(exc))
                return
            except OSError as exc:
                log.info("connection error before handshake from %s error=%r", where, str(exc))
                return
            except FrameError as exc:
                log.warning("peer refused: bad handshake from %s error=%r", where, str(exc))
                await self._refuse(writer)
                return
            if peer_id is None:
                return
            registered = _Inbound(task, writer, where)
            previous = self._inbound.get(peer_id)
            self._inbound[peer_id] = registered
            if previous is not None:
                # The dialer keeps one connection per peer, so a new one means the old is stale
                # (e.g. half-open after the peer restarted). Keeping both would leak connections.
                log.info("replacing inbound connection peer_id=%d old=%s new=%s", peer_id, previous.address, where)
                _close_writer(previous.writer, abort=True)
                previous.task.cancel()
            log.info("peer accepted peer_id=%d from %s auth=%s", peer_id, where, self._auth_mode())
            await self._read_frames(peer_id, reader, where)
        except (OSError, RuntimeError) as exc:
            log.info("inbound connection error from %s error=%r", where, str(exc) or repr(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error on inbound connection from %s", where)
        finally:
            if registered is not None:
                for pid, inbound in list(self._inbound.items()):
                    if inbound is registered:
                        del self._inbound[pid]
            _close_writer(writer, abort=self._stopped)

    async def _read_frames(self, peer_id: int, reader: asyncio.StreamReader, where: str) -> None:
        """Read until EOF or a framing error; a bad frame closes only this connection."""
        decoder = FrameDecoder(self._max_frame_bytes)
        on_frame = self._on_frame
        while True:
            chunk = await reader.read(_READ_CHUNK)
            if not chunk:
                if decoder.buffered:
                    log.warning(
                        "truncated frame: connection closed mid-frame peer_id=%d from %s buffered=%d",
                        peer_id,
                        where,
                        decoder.buffered,
                    )
                else:
                    log.info("inbound connection closed peer_id=%d from %s", peer_id, where)
                return
            try:
                frames = decoder.feed(chunk)
            except FrameTooLarge as exc:
                log.warning("closing connection: %s peer_id=%d from %s", exc, peer_id, where)
                return
            peer = self._peers.get(peer_id)
            if peer is None:  # removed while this chunk was in flight
                return
            peer.received += len(frames)
            for frame in frames:
                try:
                    on_frame(peer_id, frame)
                except Exception:
                    log.exception("on_frame callback failed peer_id=%d size=%d", peer_id, len(frame))
            if decoder.error is not None:
                log.warning("closing connection: %s peer_id=%d from %s", decoder.error, peer_id, where)
                return
