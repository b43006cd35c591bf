"""The Litestar application of one node, and a uvicorn runner for the node's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import uvicorn
from litestar import Litestar, Router
from litestar.datastructures import CacheControlHeader
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

from ram.api import action_routes, cluster_routes, health_routes
from ram.api.context import ApiContext
from ram.api.errors import EXCEPTION_HANDLERS
from ram.api.metrics import ApiMetrics, metrics
from ram.consensus.runtime.node import RaftNode
from ram.ha.live import HAView

log = logging.getLogger("ram.api")

MAX_BODY_BYTES = 1024 * 1024

#: The API docs (Swagger UI) and the OpenAPI document, under the node's own API.
SCHEMA_PATH = "/schema"
OPENAPI_JSON_PATH = f"{SCHEMA_PATH}/openapi.json"
#: Swagger UI's script, style sheet and icons, served by the node itself: nodes of a database
#: cluster often have no route to the internet, and a docs page that pulls its code from a CDN
#: stays blank there (and would run third-party code in an operator's browser).
SCHEMA_ASSETS_PATH = f"{SCHEMA_PATH}/assets"


def swagger_ui() -> SwaggerRenderPlugin:
    """Swagger UI at ``/schema`` (and ``/schema/swagger``) with every asset local, none from a CDN."""
    return SwaggerRenderPlugin(
        js_url=f"{SCHEMA_ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{SCHEMA_ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{SCHEMA_ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{SCHEMA_ASSETS_PATH}/favicon-32x32.png'>",
        path=["/", "/swagger"],
    )


def swagger_ui_dir() -> Path:
    """Where the ``swagger-ui-bundle-v2`` package keeps Swagger UI's distribution files.

    Looked up through the module's ``swagger_ui_path`` (the package ships no type information, and
    the directory name carries the Swagger UI version, which changes with the package).
    """
    module = importlib.import_module("swagger_ui_bundle")
    return Path(str(module.swagger_ui_path))


def schema_assets() -> Router:
    """Swagger UI's files as static files of the API (cached by browsers for an hour)."""
    return create_static_files_router(
        path=SCHEMA_ASSETS_PATH, directories=[swagger_ui_dir()], name="schema-assets", include_in_schema=False,
        cache_control=CacheControlHeader(max_age=3600),
    )


def create_app(node: RaftNode, *, store_dsn: str, pool: asyncpg.Pool, ha: HAView | None = None) -> Litestar:
    """The HTTP API of ``node``: reads from its projection, writes through Raft.

    ``store_dsn`` is used by event streams (one LISTEN connection each); ``pool`` serves event reads
    and the store health check; ``ha`` is the HA controller's live view (lag, streaming, pending
    restarts, the lease), None on a node that manages no PostgreSQL.
    """
    ctx = ApiContext(node=node, store_dsn=store_dsn, pool=pool, ha=ha)
    api_metrics = ApiMetrics(ctx.registry, node, ha)

    def provide_ctx() -> ApiContext:
        return ctx

    async def on_shutdown() -> None:
        await ctx.close_streams()

    app = Litestar(
        route_handlers=[
            *cluster_routes.ROUTES, *action_routes.ROUTES, *health_routes.ROUTES, metrics, schema_assets(),
        ],
        dependencies={"ctx": Provide(provide_ctx, sync_to_thread=False, use_cache=True)},
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[api_metrics.middleware],
        on_shutdown=[on_shutdown],
        openapi_config=OpenAPIConfig(
            title="RAM",
            version="1",
            description="RAM node API: cluster state, events, actions (committed through Raft) and health checks.",
            path=SCHEMA_PATH,
            render_plugins=[swagger_ui(), JsonRenderPlugin()],
        ),
        request_max_body_size=MAX_BODY_BYTES,
        debug=False,
        # The node process owns logging (structured, see ram.logs); Litestar must not reconfigure it.
        logging_config=None,
    )
    app.state.ctx = ctx
    return app


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the node process owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class ApiServer:
    """A running API server; ``await stop()`` ends it (open event streams are closed first)."""

    app: Litestar
    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self, timeout: float = 5.0) -> None:
        ctx = getattr(self.app.state, "ctx", None)
        if isinstance(ctx, ApiContext):
            await ctx.close_streams()
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except TimeoutError:
            self.server.force_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout)
            except TimeoutError:
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
        except Exception as exc:  # the server task failed earlier; it is over either way
            log.warning("api server ended with an error: %s", exc)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections (with proto 0 it does not,
    # and Nagle + delayed ACK add ~40 ms to every keep-alive response).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(app: Litestar, host: str, port: int, *, startup_timeout: float = 10.0) -> ApiServer:
    """Run ``app`` with uvicorn in the current event loop; returns once it accepts connections.

    ``port=0`` picks a free port (see ``ApiServer.port``). Raises ``OSError`` when the address can not
    be bound and ``RuntimeError`` when the app fails to start.
    """
    sock = _bind(host, port)
    bound_port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", access_log=False, timeout_graceful_shutdown=5,
    )
    server = _Server(config)

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits on startup failure; never let it end the process
            raise RuntimeError(f"API server failed to start (exit {exc.code})") from None
        finally:
            sock.close()

    task = asyncio.get_running_loop().create_task(run(), name=f"ram.api.serve:{bound_port}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + startup_timeout
    while not server.started:
        if task.done():
            task.result()  # raises the startup error
            raise RuntimeError("API server stopped during startup")
        if loop.time() > deadline:
            server.should_exit = True
            raise RuntimeError(f"API server did not start within {startup_timeout:g} s")
        await asyncio.sleep(0.01)
    return ApiServer(app=app, server=server, task=task, host=host, port=bound_port)
