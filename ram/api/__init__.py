"""The node's HTTP API (Litestar): cluster state, events, actions through Raft, health checks, metrics."""

from ram.api.app import ApiServer, create_app, serve

__all__ = ["ApiServer", "create_app", "serve"]
