"""Bringing a former primary back as a replica of the new one: pg_rewind, or a fresh clone.

A former primary may hold WAL the new primary never saw (it kept writing after the fork). It
must never stream that diverged timeline to anyone (DESIGN invariant 5): pg_rewind rolls its data
directory back to the fork point, copying from the new primary every block changed since, and
it then replays the new timeline as a standby.

pg_rewind insists on a cleanly shut down target. After a crash, a kill -9 or a fencing immediate
shutdown, the control file says "in production", so — as Patroni does — we first finish crash
recovery in single-user mode (``postgres --single`` with stdin at EOF: it replays WAL, writes a
shutdown checkpoint and exits) with standby.signal removed (single-user mode refuses standby mode)
and archiving off (the diverged WAL must not reach an archive). pg_rewind 13+ could do this itself;
doing it ourselves makes the step, its timeout and its error visible.

When pg_rewind fails (WAL the fork point needs was recycled, different system identifier, ...),
:func:`rejoin` falls back to wiping the directory and cloning — only if allowed by configuration
(``clone_on_rewind_failure``), since that throws the node's data away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ram.postgres import conffiles
from ram.postgres.clone import CloneProgress, clone_from
from ram.postgres.commands import PostgresCommandError, run_command
from ram.postgres.durability import sync_data_directory
from ram.postgres.errors import InstanceStateError
from ram.postgres.reachability import reachable
from ram.postgres.spec import PrimaryEndpoint

if TYPE_CHECKING:
    from ram.postgres.instance import ManagedInstance

log = logging.getLogger(__name__)

CLEAN_STATES = frozenset({"shut down", "shut down in recovery"})


@dataclass(frozen=True)
class RewindResult:
    """What pg_rewind did. ``message`` is pg_rewind's (or PostgreSQL's) own last lines."""

    ok: bool
    #: True when blocks were copied; False when pg_rewind found no rewind necessary (or failed).
    rewound: bool
    message: str
    #: Crash recovery in single-user mode ran first (the target was not shut down cleanly).
    crash_recovered: bool = False
    #: False when pg_rewind failed after it started modifying the data directory: clone it.
    usable: bool = True
    #: pg_rewind failed and the source's port did not open when probed right after: the source was
    #: down or cut off, which says nothing about this data directory (retry; do not re-clone).
    source_unreachable: bool = False


@dataclass(frozen=True)
class RejoinResult:
    method: Literal["rewind", "clone", "none"]
    rewind: RewindResult
    #: The node runs as a standby of the primary now.
    started: bool


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " / ".join(lines[-n:])


async def ensure_clean_shutdown(instance: ManagedInstance) -> bool:
    """Make a stopped data directory cleanly shut down; True if crash recovery had to run."""
    state = await instance.cluster_state()
    if state in CLEAN_STATES:
        return False
    spec = instance.spec
    await asyncio.to_thread(conffiles.remove_signals, spec)
    await asyncio.to_thread(conffiles.write_config, spec)
    await run_command(
        [str(instance.bindir / "postgres"), "--single", "-F", "-D", str(spec.data_dir),
         "-c", "archive_mode=off", "-c", "log_min_messages=warning", "template1"],
        owner=spec.owner,
        timeout=spec.timeouts.single_user,
    )
    state = await instance.cluster_state()
    if state not in CLEAN_STATES:
        raise InstanceStateError(f"crash recovery in single-user mode left the cluster {state!r}")
    return True


async def rewind_from(instance: ManagedInstance, primary: PrimaryEndpoint, *, use_slot: bool = True) -> RewindResult:
    """Rewind this node's data directory onto ``primary``'s timeline; leave it stopped, configured as its standby.

    Stops the instance first if it runs (fast; falls back as :meth:`ManagedInstance.stop`).
    Never raises for pg_rewind's own failure: the result carries the message, and whether the
    directory is still usable. Timeouts of pg_rewind are failures like any other.
    """
    spec = instance.spec
    if not instance.initialized:
        return RewindResult(False, False, f"{spec.data_dir} holds no cluster", usable=False)
    started = time.monotonic()
    await instance.stop_unlocked("fast", None)
    try:
        crashed = await ensure_clean_shutdown(instance)
    except (PostgresCommandError, InstanceStateError) as exc:
        return RewindResult(False, False, str(exc))
    recovered = time.monotonic()
    await asyncio.to_thread(conffiles.write_passfile, spec)
    await asyncio.to_thread(conffiles.write_tls_files, spec)  # the client certificate, with TLS
    argv = [
        str(instance.bindir / "pg_rewind"),
        "--target-pgdata", str(spec.data_dir),
        "--source-server", conffiles.primary_conninfo(
            spec, primary, dbname="postgres", application_name=f"{spec.name}_rewind"
        ),
    ]
    argv.append("--no-sync")  # one syncfs below instead of an fsync per file (see ram.postgres.durability)
    try:
        result = await run_command(
            argv, owner=spec.owner, timeout=spec.timeouts.rewind, env={"PGPASSFILE": str(spec.pgpass)}, check=False
        )
    except PostgresCommandError as exc:  # timeout: it may have been half-way through copying
        return RewindResult(False, False, exc.message, crash_recovered=crashed, usable=False)
    output = result.stderr + result.stdout
    if result.returncode != 0:
        started_copying = "rewinding from last common checkpoint" in output
        return RewindResult(False, False, _last_lines(output) or f"exit code {result.returncode}",
                            crash_recovered=crashed, usable=not started_copying,
                            source_unreachable=not await reachable(primary.host, primary.port))
    rewound = "no rewind required" not in output
    # pg_rewind copied the source's configuration files over ours: put the node's own back.
    await asyncio.to_thread(conffiles.write_config, spec)
    await asyncio.to_thread(conffiles.write_standby_config, spec, primary, spec.slot_name if use_slot else None)
    if spec.sync_data:
        await asyncio.to_thread(sync_data_directory, spec.data_dir)
    log.info("pg_rewind done rewound=%s crash_recovery_s=%.2f rewind_and_sync_s=%.2f", rewound,
             recovered - started if crashed else 0.0, time.monotonic() - recovered)
    return RewindResult(True, rewound, _last_lines(output), crash_recovered=crashed)


async def rejoin(
    instance: ManagedInstance,
    primary: PrimaryEndpoint,
    *,
    allow_clone: bool | None = None,
    progress_cb: Callable[[CloneProgress], None] | None = None,
    use_slot: bool = True,
) -> RejoinResult:
    """Make this former primary (or a lost replica) a standby of ``primary`` and start it.

    pg_rewind first; if that fails and cloning is allowed (``allow_clone``, default the spec's
    ``clone_on_rewind_failure``), a fresh pg_basebackup into the wiped directory. If neither
    works the node stays stopped (never started on its own timeline) and the result says why.
    """
    allow = instance.spec.clone_on_rewind_failure if allow_clone is None else allow_clone
    result = await rewind_from(instance, primary, use_slot=use_slot)
    if result.ok:
        started = time.monotonic()
        await instance.start_unlocked()
        log.info("rewound standby started start_s=%.2f", time.monotonic() - started)
        return RejoinResult("rewind", result, True)
    if not allow:
        return RejoinResult("none", result, False)
    await clone_from(instance, primary, progress_cb, wipe=True, use_slot=use_slot)
    await instance.start_unlocked()
    return RejoinResult("clone", result, True)
