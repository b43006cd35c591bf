"""The Litestar application of one node, and a uvicorn runner for the node's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import uvicorn
from litestar import Litestar, Router
from litestar.datastructures import CacheControlHeader
from litestar.di import Provide
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router

from ram.api import action_routes, cluster_routes, health_routes, raft_routes
from ram.api.auth import WRITE_METHODS, AccessPolicy, access_middleware
from ram.api.context import ApiContext
from ram.api.errors import EXCEPTION_HANDLERS, error_responses
from ram.api.metrics import ApiMetrics, metrics
from ram.cluster.node import ClusterNode
from ram.ha.live import HAView
from ram.security import ApiSecurity, TlsFiles

log = logging.getLogger("ram.api")

MAX_BODY_BYTES = 1024 * 1024
#: Connections and requests a node serves at once besides its event streams (uvicorn limit_concurrency).
CONCURRENCY_HEADROOM = 512

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


def _policy(security: ApiSecurity) -> AccessPolicy:
    """The access policy: the health checks are the paths of ``health_routes`` (a check added there is
    covered at once), the API docs under ``/schema`` are always open."""
    health = {path for handler in health_routes.ROUTES for path in handler.paths}
    return AccessPolicy(security, open_paths=health, open_prefixes=(f"{SCHEMA_PATH}/",))


def _document_access_errors(handlers: list[HTTPRouteHandler]) -> None:
    """Add the access answers (401, 403; 415 for writes) to every handler's OpenAPI responses, so the
    schema tells clients (and schema-driven tests) what the access middleware may answer."""
    for handler in handlers:
        codes = (401, 403, 415) if set(handler.http_methods) & WRITE_METHODS else (401, 403)
        handler.responses = {**error_responses(*codes), **(handler.responses or {})}


def create_app(
    node: ClusterNode, *, store_dsn: str, pool: asyncpg.Pool, ha: HAView | None = None,
    security: ApiSecurity | None = None,
) -> Litestar:
    """The HTTP API of ``node``: reads from its projection, writes through Raft.

    ``store_dsn`` is used by the event streams' one shared LISTEN connection; ``pool`` serves event
    reads and the store health check; ``ha`` is the HA controller's live view (lag, streaming,
    pending restarts, the lease), None on a node that manages no PostgreSQL. ``security`` (default:
    from ``node.config.api`` and the environment, see :meth:`ApiSecurity.from_settings`) says who may
    call what; it raises :class:`ram.security.SecurityConfigError` for an unusable token file.
    """
    if security is None:
        security = ApiSecurity.from_settings(node.config.api)
    if security.enabled and not len(security.tokens):
        log.warning(
            "api: no tokens configured (api.tokens_file, RAM_ADMIN_TOKEN, RAM_READ_TOKEN): every request that "
            "needs a token is refused; set api.auth = \"none\" to run without authentication"
        )
    elif not security.enabled:
        log.warning(
            "api: authentication is off (api.auth = \"none\"): anyone who reaches the API can change the cluster"
        )
    ctx = ApiContext(node=node, store_dsn=store_dsn, pool=pool, ha=ha, security=security)
    handlers = [*cluster_routes.ROUTES, *action_routes.ROUTES, *raft_routes.ROUTES, *health_routes.ROUTES, metrics]
    _document_access_errors(handlers)
    api_metrics = ApiMetrics(ctx.registry, node, ha)

    def provide_ctx() -> ApiContext:
        return ctx

    async def on_shutdown() -> None:
        await ctx.close_streams()

    app = Litestar(
        route_handlers=[
            *handlers, schema_assets(),
        ],
        dependencies={"ctx": Provide(provide_ctx, sync_to_thread=False, use_cache=True)},
        exception_handlers=EXCEPTION_HANDLERS,
        # The metrics see every answer, refusals included; the access check runs before any handler.
        middleware=[api_metrics.middleware, access_middleware(_policy(security))],
        on_shutdown=[on_shutdown],
        openapi_config=OpenAPIConfig(
            title="RAM",
            version="1",
            description="RAM node API: cluster state, events, actions (committed through Raft) and health checks.",
            path=SCHEMA_PATH,
            render_plugins=[swagger_ui(), JsonRenderPlugin()],
            # Swagger UI's "Authorize" button: paste a token, the page sends it as a Bearer header.
            components=Components(security_schemes={"bearer": SecurityScheme(
                type="http", scheme="bearer",
                description="An API token: `admin` role for writes, `read` (or `admin`) for reads.",
            )}),
            security=[{"bearer": []}],
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
    scheme: str = "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

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


def _tls_options(tls: TlsFiles | None) -> dict[str, object]:
    """uvicorn's HTTPS options: the certificate and key, and with a client CA, certificates required
    from every client (mutual TLS)."""
    if tls is None:
        return {}
    options: dict[str, object] = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
    if tls.client_ca is not None:
        options.update(ssl_ca_certs=str(tls.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


async def serve(
    app: Litestar, host: str, port: int, *, startup_timeout: float = 10.0, tls: TlsFiles | None = None,
) -> ApiServer:
    """Run ``app`` with uvicorn in the current event loop; returns once it accepts connections.

    ``port=0`` picks a free port (see ``ApiServer.port``). HTTPS with ``tls``, by default the app's own
    ``api.tls_cert`` / ``api.tls_key`` (``ApiSecurity.tls``). Raises ``OSError`` when the address can
    not be bound or a TLS file not be loaded, and ``RuntimeError`` when the app fails to start.
    """
    ctx = getattr(app.state, "ctx", None)
    security = ctx.security if isinstance(ctx, ApiContext) else ApiSecurity()
    if tls is None:
        tls = security.tls
    sock = _bind(host, port)
    bound_port = int(sock.getsockname()[1])
    try:
        config = uvicorn.Config(
            app, lifespan="on", log_level="warning", access_log=False, timeout_graceful_shutdown=5,
            # Open connections and requests beyond this get a 503 from uvicorn at once: event streams
            # (capped themselves) plus room for operators and health checks, not unbounded.
            limit_concurrency=security.max_event_streams + CONCURRENCY_HEADROOM,
            **_tls_options(tls),  # type: ignore[arg-type]
        )
        config.load()  # loads the certificate now: a bad file is an error here, not in every handshake
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise OSError(f"API TLS: can not load {tls.cert if tls else 'the certificate'}: {exc}") from None
    except BaseException:
        sock.close()
        raise
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
    return ApiServer(app=app, server=server, task=task, host=host, port=bound_port,
                     scheme="https" if tls is not None else "http")
