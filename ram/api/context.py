"""What every handler needs: the Raft node, the store, and the app's own metrics registry."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from litestar.di import NamedDependency
from prometheus_client import CollectorRegistry

from ram.api.streams import EventHub
from ram.cluster.node import ClusterNode
from ram.ha.live import HAView
from ram.security import ApiSecurity


@dataclass
class ApiContext:
    node: ClusterNode
    store_dsn: str
    pool: asyncpg.Pool
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    # Tasks that serve event streams, cancelled on shutdown (the streams' places are in ``events``).
    streams: set[asyncio.Task[Any]] = field(default_factory=set)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    #: The HA controller's live view (None when this node manages no PostgreSQL).
    ha: HAView | None = None
    #: Who may call what (tokens, roles, allow-lists, TLS); see ram.api.auth and docs/security.md.
    security: ApiSecurity = field(default_factory=ApiSecurity)
    #: The one LISTEN connection every /events/stream shares (see ram.api.streams).
    events: EventHub | None = None

    @property
    def name(self) -> str:
        return self.node.config.name

    def track(self, task: asyncio.Task[Any]) -> None:
        self.streams.add(task)
        task.add_done_callback(self.streams.discard)

    async def close_streams(self) -> None:
        """End every open event stream (on shutdown: uvicorn waits for open responses)."""
        self.closing.set()
        if self.events is not None:
            await self.events.close()
        tasks = list(self.streams)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


#: How handlers receive the context (an explicitly named dependency).
Ctx = NamedDependency[ApiContext]
