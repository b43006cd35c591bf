"""``GET /metrics``: Prometheus text format from a registry of this app's own (never the global one).

Node gauges are computed at scrape time from the node (a custom collector), so they are never stale;
request durations are a histogram labelled by route template, method and status.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

from litestar import Response, get
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ram.api.context import Ctx
from ram.api.views import member_role
from ram.cluster.node import ClusterNode
from ram.consensus.types import Role
from ram.ha.live import HAView

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class NodeCollector(Collector):
    """Raft and cluster gauges of one node, read when scraped."""

    def __init__(self, node: ClusterNode, ha: HAView | None = None) -> None:
        self.node = node
        self.ha = ha

    def collect(self) -> Iterator[Any]:
        """Names follow Prometheus conventions (base units in the name, ``_total`` counters); every
        figure is read from the node or measured by the HA layer when scraped, never a placeholder."""
        node = self.node
        state = node.state
        me = node.config.name
        yield _gauge("ram_raft_term", "Current Raft term.", node.term)
        yield _gauge("ram_raft_commit_index", "Highest Raft index known committed.", node.commit_index)
        yield _gauge("ram_raft_applied_index", "Highest Raft index applied to the store.", node.applied_index)
        yield _gauge("ram_raft_decided_index", "Highest Raft index decided in memory (its proposer answered).",
                     node.decided_index)
        yield _gauge("ram_raft_is_leader", "1 when this node leads Raft.", 1 if node.role is Role.LEADER else 0)
        yield _gauge("ram_raft_has_leader", "1 when this node knows a Raft leader.", 1 if node.leader_id else 0)
        yield _gauge("ram_raft_sealed_index", "Highest Raft index whose apply is known durable in the store.",
                     node.raft.sealed_index)
        yield _counter("ram_raft_store_failures", "Store writes that failed and were retried.",
                       node.stats.store_failures)
        yield _counter("ram_raft_reapplied_batches",
                       "Applied batches written again because the store had lost them (a store crash).",
                       node.stats.reapplied_batches)
        member = state.members.get(me)
        role = member_role(state, member) if member is not None else "unknown"
        roles = GaugeMetricFamily("ram_pg_role", "PostgreSQL role of this member (1 for the current one).",
                                  labels=["role"])
        for name in ("primary", "replica", "unknown"):
            roles.add_metric([name], 1 if name == role else 0)
        yield roles
        timeline = member.timeline if member is not None and member.timeline is not None else state.timeline
        yield _gauge("ram_pg_timeline", "PostgreSQL timeline of this member (NaN: unknown).", timeline)
        yield _gauge("ram_cluster_timeline", "The cluster's committed timeline (NaN: none yet).", state.timeline)
        yield _gauge("ram_primary_known", "1 when the committed state names a primary.", 1 if state.primary else 0)
        yield self._lag()
        lease = self.ha.lease_seconds_left() if self.ha is not None else None
        yield _gauge(
            "ram_lease_remaining_seconds",
            "Seconds until this node must fence its primary (NaN: it holds no lease, or manages no PostgreSQL).",
            lease,
        )
        healthy = GaugeMetricFamily("ram_member_healthy", "1 when the arbiter judged the member healthy.",
                                    labels=["member"])
        fenced = GaugeMetricFamily("ram_member_fenced", "1 while the member's PostgreSQL is recorded fenced.",
                                   labels=["member"])
        for name, m in sorted(state.members.items()):
            healthy.add_metric([name], 1 if m.healthy else 0)
            fenced.add_metric([name], 1 if m.fenced else 0)
        yield healthy
        yield fenced
        for kind in ("failover", "switchover"):
            family = CounterMetricFamily(
                f"ram_{kind}s", f"{kind.capitalize()}s recorded in the cluster history, by outcome.", labels=["outcome"]
            )
            for outcome in ("succeeded", "failed", "superseded"):
                count = sum(1 for op in state.operations if op.kind == kind and op.outcome == outcome)
                family.add_metric([outcome], count)
            yield family
        yield _gauge("ram_members", "Members of the cluster.", len(state.members))
        yield _gauge("ram_maintenance", "1 while maintenance mode is on.", 1 if state.maintenance else 0)
        yield _gauge("ram_synchronous_standbys", "Committed synchronous standbys.", len(state.sync_standbys))
        degraded = state.sync_mode != "off" and state.num_sync == 0
        yield _gauge(
            "ram_synchronous_degraded", "1 while synchronous mode is on but no standby confirms commits.",
            1 if degraded else 0,
        )
        local = self.ha.local() if self.ha is not None else None
        yield _gauge(
            "ram_pending_restart", "Parameters this member's PostgreSQL runs with an old value until restarted.",
            len(local.pending_restart) if local is not None else 0,
        )

    def _lag(self) -> GaugeMetricFamily:
        """Replay lag per member, in bytes behind the primary's WAL: every member on the Raft leader
        (from the reports it receives), this node's own (from its walreceiver) elsewhere."""
        family = GaugeMetricFamily(
            "ram_replication_lag_bytes",
            "Replay lag of a replica behind the primary's WAL position, in bytes (leader: every member).",
            labels=["member"],
        )
        if self.ha is None:
            return family
        live = self.ha.members_live()
        if live:
            for name, m in sorted(live.items()):
                if m.replay_lag_bytes is not None:
                    family.add_metric([name], float(m.replay_lag_bytes))
            return family
        local = self.ha.local()
        if local is not None and local.replay_lag_bytes is not None:
            family.add_metric([self.node.config.name], float(local.replay_lag_bytes))
        return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=math.nan if value is None else float(value))


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry, node: ClusterNode, ha: HAView | None = None) -> None:
        self.registry = registry
        registry.register(NodeCollector(node, ha))
        self.requests = Histogram(
            "ram_api_request_duration_seconds",
            "HTTP API request duration.",
            labelnames=("route", "method", "status"),
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware observing each routed request (unrouted 404s are not counted)."""

        async def observe(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                route = scope.get("path_template") or "unmatched"
                self.requests.labels(str(route), str(scope.get("method", "")), str(status)).observe(
                    time.perf_counter() - start
                )

        return observe


@get("/metrics", summary="Prometheus metrics", tags=["metrics"], media_type=CONTENT_TYPE_LATEST, sync_to_thread=False)
def metrics(ctx: Ctx) -> Response[bytes]:
    return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)


__all__ = ["ApiMetrics", "NodeCollector", "metrics"]
