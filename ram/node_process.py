"""``ram node run``: bring up the store, migrate it, start the Raft node and its HTTP API, stop cleanly
on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import importlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import asyncpg

from ram.cluster.node import ClusterNode
from ram.config import NodeConfig, api_address, parse_address
from ram.consensus.runtime.storage import open_store_pool
from ram.eventstore import schema
from ram.gctuning import tune_collector
from ram.ha.controller import HAController
from ram.heaptrim import trim_heap_periodically
from ram.postgres.server import PostgresServer

if TYPE_CHECKING:
    from ram.api.app import ApiServer

log = logging.getLogger("ram.process")


class NodeFailed(RuntimeError):
    """The node stopped itself after an internal failure."""


def embedded_store(config: NodeConfig) -> PostgresServer:
    """The node's private store instance under its data directory (unix socket only)."""
    return PostgresServer(
        datadir=config.data_dir / "store" / "data",
        port=config.store.embedded_port,
        socket_dir=config.data_dir / "store" / "run",
    )


async def open_store(config: NodeConfig) -> tuple[str, PostgresServer | None]:
    """Return the store DSN, starting the embedded store first when no DSN is configured."""
    if config.store.dsn:
        return config.store.dsn, None
    server = embedded_store(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    await server.init()
    await server.start()
    conn = await asyncpg.connect(server.dsn())
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'ram'"):
            await conn.execute("CREATE DATABASE ram")
    finally:
        await conn.close()
    return server.dsn("ram"), server


async def run_node(config: NodeConfig) -> None:
    """Run until SIGTERM/SIGINT; a leader transfers leadership before it goes."""
    dsn, server = await open_store(config)
    await schema.ensure_schema(dsn)
    pool = await open_store_pool(dsn, size=config.store.pool_size)
    node = ClusterNode(config, pool)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    # SIGUSR2: every thread's Python stack, written by the interpreter at once - also when the event
    # loop itself is blocked (which SIGUSR1's task dump, running in the loop, can not show).
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    api: ApiServer | None = None
    ha: HAController | None = None
    try:
        await node.start()
        if config.postgres.manage:
            ha = HAController(node, config)
            await ha.start()
        # The API framework takes most of our import time; importing it only now (in a thread, the
        # event loop keeps running) lets Raft and the HA controller start — and a rejoin's pg_rewind
        # run — while it loads.
        api_module = await asyncio.to_thread(importlib.import_module, "ram.api.app")
        api_host, api_port = parse_address(api_address(config))
        api = await api_module.serve(api_module.create_app(node, store_dsn=dsn, pool=pool, ha=ha), api_host, api_port)
        log.info("api listening url=%s", api.url)
        tune_collector()  # everything loaded at start stays: the collector stops walking it
        trimmer = asyncio.ensure_future(trim_heap_periodically())
        stop_wait = asyncio.ensure_future(stop.wait())
        fail_wait = asyncio.ensure_future(node.failed.wait())
        await asyncio.wait({stop_wait, fail_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        fail_wait.cancel()
        trimmer.cancel()
        if node.failed.is_set():
            raise NodeFailed("the Raft node failed; see the log above")
        log.info("stop requested; shutting down")
    finally:
        # Each step is timed: whoever stops us may not wait for ever (`ram cluster down` SIGKILLs
        # after 30 s), and a log that names the slow step is how such a stop gets explained.
        if api is not None:
            async with _shutdown_step("api"):
                await api.stop()
        if ha is not None:
            async with _shutdown_step("ha"):
                await ha.stop()
        async with _shutdown_step("raft"):
            await node.stop(transfer=True)
        async with _shutdown_step("store-pool"):
            await _close_pool(pool)
        if server is not None:
            async with _shutdown_step("embedded-store"):
                with contextlib.suppress(Exception):
                    await server.stop()


#: A shutdown step slower than this is logged as a warning.
_SLOW_STEP_S = 5.0
#: How long the store pool may wait for its connections to come back before they are cut.
_POOL_CLOSE_S = 10.0


@contextlib.asynccontextmanager
async def _shutdown_step(step: str) -> AsyncIterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - started
        log.log(logging.WARNING if took > _SLOW_STEP_S else logging.INFO,
                "shutdown step done step=%s took_s=%.2f", step, took)


async def _close_pool(pool: asyncpg.Pool) -> None:
    """Close the store pool gracefully; a connection still held (a request or task that did not
    end) must not keep the process from exiting, so after a while all are terminated."""
    try:
        await asyncio.wait_for(pool.close(), _POOL_CLOSE_S)
    except TimeoutError:
        log.warning("store pool connections still in use after %g s; terminating them", _POOL_CLOSE_S)
        pool.terminate()


def _dump_tasks() -> None:
    """SIGUSR1: log every asyncio task with where it waits (what a stuck node is doing)."""
    import io

    for task in asyncio.all_tasks():
        out = io.StringIO()
        task.print_stack(limit=12, file=out)
        log.warning("task dump name=%s stack=%s", task.get_name(), " | ".join(out.getvalue().split("\n")))
