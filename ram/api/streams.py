"""Live events for every ``/events/stream`` client of a node through ONE store connection.

Before, each stream opened its own LISTEN connection to the store: a few hundred clients (or one
misbehaving script) exhausted the store's ``max_connections`` and with it the node's own Raft
storage. Now one :class:`EventHub` per node LISTENs, reads each new batch of events once, and fans
it out to the subscribers' bounded queues:

* a stream first registers (so nothing committed from then on can be missed), then catches up from
  its start position with paged reads through the node's pool, one catch-up read at a time (so
  streams never take more than one pooled connection away from Raft), then takes live events from
  its queue, skipping those its catch-up already delivered;
* a subscriber whose queue is full is too slow: it is dropped (its stream ends; the client resumes
  with ``Last-Event-ID`` and catches up from the store) instead of the node buffering without bound;
* at most ``max_streams`` streams are open at once; one more gets :class:`TooManyStreams` (a 503).

The hub keeps a position (the newest event it has fanned out) and always reads after it, so a lost
LISTEN connection (store restart) only delays events: it reconnects and reads what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from ram.eventstore.events import StoredEvent
from ram.eventstore.store import NOTIFY_CHANNEL, read_range

log = logging.getLogger("ram.api.streams")

QUEUE_SIZE = 1000
PAGE = 500
#: Without a notification, the hub still looks for new events this often (a lost NOTIFY, or a
#: connection that died silently, delays a stream by at most this).
POLL_S = 5.0
RECONNECT_S = 1.0
#: A stream that was granted but never started (its client vanished before the response began)
#: gives its place back after this long.
UNSTARTED_EXPIRY_S = 30.0
READY_TIMEOUT_S = 10.0


class TooManyStreams(Exception):
    """This node already serves ``limit`` streams."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many event streams on this node (limit {limit}, api.max_event_streams)")
        self.limit = limit


class StreamUnavailable(Exception):
    """The hub could not reach the store in time; the message says why (one line)."""


_END = object()


class Subscription:
    """One stream's place in the hub: its filter, bounded queue, and whether it fell behind."""

    def __init__(self, hub: EventHub, after: int, types: Sequence[str] | None, queue_size: int) -> None:
        self.hub = hub
        self.after = after
        self.types = frozenset(types) if types else None
        self.queue: asyncio.Queue[Any] = asyncio.Queue(queue_size)
        self.overflowed = False
        self.started = False
        self.closed = False

    def offer(self, event: StoredEvent) -> None:
        """Called by the hub for each new event (never blocks: a full queue drops the subscriber)."""
        if self.closed or (self.types is not None and event.event.type not in self.types):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.hub.unsubscribe(self)
            self._wake_end()

    def _wake_end(self) -> None:
        # The reader must notice the end even on a full queue: make room (it is done with these anyway).
        while True:
            try:
                self.queue.put_nowait(_END)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub.unsubscribe(self)
            self._wake_end()

    async def events(self, keepalive: float) -> AsyncIterator[StoredEvent | None]:
        """Every event after ``after`` (of the subscribed types), then each new one; ``None`` after
        ``keepalive`` seconds without one (the caller sends a keep-alive). Ends when the hub closes
        or the subscriber fell behind (``overflowed``)."""
        self.started = True
        try:
            await self.hub.ready()
            last = (self.after, 2**31)  # everything at positions <= after counts as delivered
            position = self.after
            while not self.closed:
                page = await self.hub.catch_up(position, self.types)
                if not page:
                    break
                for stored in page:
                    position = stored.position
                    last = (stored.position, stored.sub)
                    yield stored
            while not self.closed:
                try:
                    item = await asyncio.wait_for(self.queue.get(), keepalive)
                except TimeoutError:
                    yield None
                    continue
                if item is _END:
                    return
                if (item.position, item.sub) <= last:
                    continue
                last = (item.position, item.sub)
                yield item
        finally:
            self.close()


class EventHub:
    """One LISTEN connection per node, fanned out to every event stream (see the module docstring)."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, *, max_streams: int, queue_size: int = QUEUE_SIZE) -> None:
        self.dsn = dsn
        self.pool = pool
        self.max_streams = max_streams
        self.queue_size = queue_size
        self.subscribers: set[Subscription] = set()
        self.position: int | None = None
        self.connections_opened = 0
        self._ready = asyncio.Event()
        self._done = asyncio.Event()
        self._wake = asyncio.Event()
        self._catch_up = asyncio.Semaphore(1)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_error = ""

    def __len__(self) -> int:
        return len(self.subscribers)

    # ---------------------------------------------------------------------------- subscribers

    def subscribe(self, after: int, types: Sequence[str] | None = None) -> Subscription:
        """A place for one more stream (raises :class:`TooManyStreams` beyond the limit). Synchronous,
        so concurrent requests can never together exceed the limit."""
        if self._closed:
            raise StreamUnavailable("the API is shutting down")
        if len(self.subscribers) >= self.max_streams:
            raise TooManyStreams(self.max_streams)
        sub = Subscription(self, after, types, self.queue_size)
        self.subscribers.add(sub)
        self._start()
        asyncio.get_running_loop().call_later(UNSTARTED_EXPIRY_S, self._expire, sub)
        return sub

    def _expire(self, sub: Subscription) -> None:
        if not sub.started:
            sub.close()

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    async def ready(self) -> None:
        """Wait until the hub listens and knows its position (a stream's catch-up must start after),
        or is closed (shutdown: the caller checks whether its subscription was closed)."""
        if self._ready.is_set() or self._done.is_set():
            return
        waits = [asyncio.ensure_future(self._ready.wait()), asyncio.ensure_future(self._done.wait())]
        try:
            done, _ = await asyncio.wait(waits, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if not done:
            raise StreamUnavailable(
                f"the event store is not reachable: {self._last_error or 'no connection yet'}"
            )

    async def catch_up(self, after: int, types: frozenset[str] | None) -> list[StoredEvent]:
        """One page of stored events after ``after``; one such read at a time for the whole node."""
        async with self._catch_up, self.pool.acquire() as conn:
            return await read_range(conn, after=after, limit=PAGE, types=sorted(types) if types else None)

    # ------------------------------------------------------------------------------ the reader

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ram.api.event-hub")

    async def _run(self) -> None:
        while not self._closed:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn)
                self.connections_opened += 1
                lost = asyncio.Event()

                def on_lost(*_: object, lost: asyncio.Event = lost) -> None:
                    lost.set()
                    self._wake.set()

                conn.add_termination_listener(on_lost)
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
                if self.position is None:
                    self.position = int(
                        await conn.fetchval("SELECT coalesce(max(position), 0) FROM pgraft.events")
                    )
                self._ready.set()
                if self._last_error:
                    log.info("event hub reconnected to the store")
                    self._last_error = ""
                while not self._closed and not lost.is_set():
                    self._wake.clear()
                    await self._drain(conn)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # store down or restarting: keep the position, try again
                message = " ".join(str(exc).split()) or type(exc).__name__
                if message != self._last_error:
                    log.warning("event hub lost the store: %s; retrying every %g s", message, RECONNECT_S)
                self._last_error = message
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            if not self._closed:
                await asyncio.sleep(RECONNECT_S)

    async def _drain(self, conn: asyncpg.Connection) -> None:
        assert self.position is not None
        while page := await read_range(conn, after=self.position, limit=PAGE):
            for stored in page:
                for sub in list(self.subscribers):
                    sub.offer(stored)
            self.position = page[-1].position

    async def close(self) -> None:
        """End every stream and the LISTEN connection (shutdown)."""
        self._closed = True
        self._done.set()
        for sub in list(self.subscribers):
            sub.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
