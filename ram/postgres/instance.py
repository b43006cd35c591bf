"""The managed PostgreSQL instance: lifecycle (start, stop, restart, reload), role changes
(promote, demote, follow, rejoin), cloning, rewinding, slots, status and fencing.

Everything runs as the instance's owner through :func:`ram.postgres.commands.run_command` (with a
timeout, failures in PostgreSQL's words) or over asyncpg on the local unix socket (with a timeout).
Lifecycle operations are serialised by a lock, so the HA layer can not interleave a stop with a
start; :meth:`ManagedInstance.fence` deliberately bypasses it, because it must act at once even
while a slow operation is in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from ram.postgres import conffiles, proctree, replication
from ram.postgres.bootstrap import ensure_role_password, initdb_primary, prepare_dirs
from ram.postgres.clone import CloneProgress, clone_from
from ram.postgres.commands import PostgresCommandError, find_bindir, run_command
from ram.postgres.errors import InstanceStateError
from ram.postgres.rewind import RejoinResult, RewindResult, ensure_clean_shutdown, rejoin, rewind_from
from ram.postgres.server import PostgresServer
from ram.postgres.spec import ManagedInstanceSpec, PrimaryEndpoint
from ram.postgres.sql import fetch, local_connection
from ram.postgres.status import InstanceStatus, read_status

log = logging.getLogger(__name__)

#: A start taking longer than this is logged with the server's own lines.
_SLOW_START_S = 10.0
#: A fenced server gets this long to exit after its SIGQUITs before what is left is SIGKILLed.
_FENCE_KILL_AFTER_S = 1.0
#: After a start was cancelled, a stop waits this long for the postmaster it may have launched to
#: show itself (postmaster.pid) before it concludes that nothing runs.
_LAUNCH_GRACE_S = 3.0

StopMode = Literal["smart", "fast", "immediate"]


@dataclass(frozen=True)
class StopResult:
    """How the instance went down.

    ``mode`` is what finally stopped it: ``fast``/``smart`` (clean: shutdown checkpoint written,
    pg_rewind can use the data directory as is), ``immediate`` or ``kill`` (crash-like: needs crash
    recovery first). ``None`` when it was not running. ``messages`` say why we escalated.
    """

    was_running: bool
    mode: Literal["smart", "fast", "immediate", "kill"] | None
    messages: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return self.mode in (None, "smart", "fast")


@dataclass(frozen=True)
class ReloadResult:
    """After a reload: settings that need a restart, and configuration file errors (PostgreSQL's)."""

    pending_restart: tuple[str, ...]
    errors: tuple[str, ...]


class ManagedInstance:
    """One PostgreSQL instance RAM manages (see the module docstring)."""

    def __init__(self, spec: ManagedInstanceSpec) -> None:
        self.spec = spec
        self.bindir = find_bindir()
        self._server = PostgresServer(
            datadir=spec.data_dir,
            port=spec.port,
            listen_addresses=spec.listen_addresses,
            socket_dir=spec.sockdir,
            owner=spec.owner,
            settings={},
            superuser=spec.superuser,
            timeout=spec.timeouts.start,
            log_file=spec.logfile,
        )
        self._lock = asyncio.Lock()
        #: A start was cancelled after pg_ctl may have launched a postmaster: pg_ctl puts it in a
        #: session of its own, so killing pg_ctl does not stop it, and it may come up later.
        self._launch_interrupted = False

    # -- facts ---------------------------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        return (self.spec.data_dir / "PG_VERSION").exists()

    def postmaster_pid(self) -> int | None:
        """The postmaster PID from postmaster.pid when that process is alive (no subprocess)."""
        pid = self._server.postmaster_pid()
        return pid if pid is not None and proctree.alive(pid) else None

    async def is_running(self) -> bool:
        """Is a postmaster alive for this data directory?

        Reads postmaster.pid like ``pg_ctl status`` does, but counts a zombie as dead: where PID 1
        does not reap orphans (containers without an init), a killed postmaster lingers as a zombie
        and ``kill(pid, 0)`` — pg_ctl's test — would call it running forever.
        """
        return self.postmaster_pid() is not None

    def _clear_stale_pidfile(self) -> None:
        """Remove postmaster.pid (and the socket's lock file) when their process is dead (zombie or gone).

        PostgreSQL removes it itself unless it was SIGKILLed; it would refuse to start over a
        zombie's PID ("lock file already exists"). PostgreSQL still refuses if any old backend
        keeps the shared memory attached, so this can not let two postmasters share a directory.
        """
        lockfiles = [self.spec.data_dir / "postmaster.pid", self.spec.sockdir / f".s.PGSQL.{self.spec.port}.lock"]
        for lockfile in lockfiles:
            try:
                pid = int(lockfile.read_text().splitlines()[0])
            except (OSError, ValueError, IndexError):
                continue
            if not proctree.alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    lockfile.unlink()

    async def status(self) -> InstanceStatus:
        return await read_status(self.spec, self.postmaster_pid())

    async def controldata(self) -> dict[str, str]:
        """pg_controldata's fields (works on a stopped or crashed cluster)."""
        result = await run_command(
            [str(self.bindir / "pg_controldata"), "-D", str(self.spec.data_dir)],
            owner=self.spec.owner,
            timeout=self.spec.timeouts.command,
        )
        fields: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        return fields

    async def cluster_state(self) -> str:
        """``Database cluster state`` from pg_controldata ("shut down", "in production", …)."""
        state = (await self.controldata()).get("Database cluster state")
        if state is None:
            raise InstanceStateError(f"pg_controldata gave no cluster state for {self.spec.data_dir}")
        return state

    async def finish_crash_recovery(self) -> bool:
        """If this stopped data directory was a primary that crashed, run its crash recovery now
        (single-user mode, see :func:`ram.postgres.rewind.ensure_clean_shutdown`); True if it ran.

        Every way on needs it first — a start as primary would do it anyway, and pg_rewind needs a
        cleanly shut down target — so a node restarting after a crash does it while it still
        catches up with the cluster, not after. A crashed standby is left alone."""
        async with self._lock:
            if not self.initialized or await self.is_running():
                return False
            if await self.cluster_state() != "in production":
                return False
            return await ensure_clean_shutdown(self)

    # -- creation ------------------------------------------------------------------------------

    async def initdb_primary(self, *, start: bool = True) -> None:
        """See :func:`ram.postgres.bootstrap.initdb_primary`."""
        await initdb_primary(self, start=start)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Rewrite RAM's configuration files from the spec, then start and wait until it accepts connections.

        Whether it comes up as a primary or a standby is decided by standby.signal (see
        :meth:`demote`). A failure carries the server's own log lines from this attempt.
        """
        async with self._lock:
            await self.start_unlocked()

    async def start_unlocked(self) -> None:
        """:meth:`start` for callers already holding the lifecycle lock (the role-change modules)."""
        if not self.initialized:
            raise InstanceStateError(f"{self.spec.data_dir} holds no PostgreSQL cluster (no PG_VERSION)")
        await asyncio.to_thread(prepare_dirs, self.spec)
        await asyncio.to_thread(conffiles.write_config, self.spec)
        await asyncio.to_thread(self._clear_stale_pidfile)
        offset = self.log_size()
        started = time.monotonic()
        # A standby is watched, not awaited: its recovery may never become consistent (see
        # PostgresServer.start); a primary is started until it accepts connections.
        standby = (self.spec.data_dir / conffiles.STANDBY_SIGNAL).exists()
        try:
            await self._server.start(until_ready=not standby)
        except asyncio.CancelledError:
            self._launch_interrupted = True
            raise
        except PostgresCommandError as exc:
            raise self._with_log(exc, offset) from exc
        self._launch_interrupted = False
        took = time.monotonic() - started
        if took > _SLOW_START_S:
            # Rare multi-second starts are worth their own account in our log.
            log.warning("postgres start was slow seconds=%.1f server_log=%s", took,
                        " / ".join(self.log_since(offset, lines=8)))
        else:
            log.info("postgres started seconds=%.2f", took)

    async def stop(self, mode: StopMode = "fast", timeout: float | None = None) -> StopResult:
        """Stop: ``mode`` first (fast by default), ``immediate`` if that exceeds ``timeout``, SIGKILL last.

        Fast shutdown disconnects clients and writes a shutdown checkpoint, so the data directory is
        clean (what pg_rewind and a switchover want). It can hang on a stuck backend or a slow
        checkpoint; then immediate shutdown (SIGQUIT; the postmaster SIGKILLs children after 5 s)
        bounds the wait. ``pg_ctl -t`` has one-second granularity, so ``timeout`` rounds up.
        """
        async with self._lock:
            return await self.stop_unlocked(mode, timeout)

    async def stop_unlocked(self, mode: StopMode, timeout: float | None) -> StopResult:
        """:meth:`stop` for callers already holding the lifecycle lock."""
        if not await self.is_running() and not await self._launched_after_all():
            return StopResult(False, None)
        messages: list[str] = []
        timeout = self.spec.timeouts.stop if timeout is None else timeout
        if mode != "immediate":
            try:
                await self._pg_ctl_stop(mode, timeout)
                return StopResult(True, mode)
            except PostgresCommandError as exc:
                messages.append(exc.message)
        return await self._stop_hard(self.spec.timeouts.stop_immediate, messages)

    async def _launched_after_all(self) -> bool:
        """After a cancelled start: whether the postmaster it launched shows up within
        :data:`_LAUNCH_GRACE_S` (else nothing was launched, or it already died)."""
        if not self._launch_interrupted:
            return False
        self._launch_interrupted = False
        deadline = time.monotonic() + _LAUNCH_GRACE_S
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if await self.is_running():
                log.info("a postmaster launched by a cancelled start came up; stopping it")
                return True
        return False

    async def _pg_ctl_stop(self, mode: StopMode, timeout: float) -> None:
        await run_command(
            [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.spec.data_dir), "-w",
             "-m", mode, "-t", str(max(1, math.ceil(timeout)))],
            owner=self.spec.owner,
            timeout=timeout + 5,
        )

    async def _stop_hard(self, timeout: float, messages: list[str]) -> StopResult:
        try:
            await self._pg_ctl_stop("immediate", timeout)
            return StopResult(True, "immediate", tuple(messages))
        except PostgresCommandError as exc:
            messages.append(exc.message)
        pid = self.postmaster_pid()
        if pid is not None:
            await asyncio.to_thread(_kill_tree, pid, timeout)
            if proctree.alive(pid):
                raise InstanceStateError(f"PostgreSQL (pid {pid}) survived SIGKILL: " + " / ".join(messages))
            await asyncio.to_thread(self._clear_stale_pidfile)
        return StopResult(True, "kill", tuple(messages))

    async def restart(self, mode: StopMode = "fast") -> StopResult:
        """Stop (with the usual escalation) and start again, picking up any new configuration."""
        async with self._lock:
            result = await self.stop_unlocked(mode, None)
            await self.start_unlocked()
            return result

    async def reload(self) -> ReloadResult:
        """Rewrite RAM's configuration files and SIGHUP the server (``pg_ctl reload``).

        Returns what PostgreSQL says about the result: parameters that need a restart and lines it
        could not parse (``pg_file_settings``), so a bad value is reported, not silently ignored.
        """
        async with self._lock:
            return await self._reload()

    async def _reload(self) -> ReloadResult:
        await asyncio.to_thread(conffiles.write_config, self.spec)
        offset = self.log_size()
        await run_command(
            [str(self.bindir / "pg_ctl"), "reload", "-D", str(self.spec.data_dir)],
            owner=self.spec.owner,
            timeout=self.spec.timeouts.command,
        )
        errors = await fetch(
            self.spec,
            "SELECT sourcefile, sourceline, name, error FROM pg_file_settings WHERE error IS NOT NULL",
        )
        pending = await fetch(self.spec, "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name")
        restart_only = {row["name"] for row in pending}
        # A restart-only change also shows up here as "could not be applied"; it is not an error.
        messages = [
            f"{r['sourcefile']}:{r['sourceline']}: {r['name'] or ''}: {r['error']}"
            for r in errors
            if r["name"] not in restart_only
        ]
        if messages:
            # pg_file_settings only says "setting could not be applied"; the postmaster logs why
            # (e.g. 'invalid value for parameter "work_mem": "lots"') once it has processed SIGHUP.
            messages += await self._reload_log(offset)
        return ReloadResult(pending_restart=tuple(row["name"] for row in pending), errors=tuple(messages))

    async def _reload_log(self, offset: int, wait: float = 2.0) -> list[str]:
        deadline = time.monotonic() + wait
        while True:
            lines = self.log_since(offset, 20)
            if any("configuration file" in ln for ln in lines) or time.monotonic() >= deadline:
                return [
                    ln for ln in lines
                    if ("parameter" in ln or "configuration file" in ln) and "without restarting" not in ln
                ]
            await asyncio.sleep(0.05)

    async def reconfigure(self, spec: ManagedInstanceSpec) -> ReloadResult | None:
        """Adopt a new spec (e.g. a changed member list → pg_hba) and reload if running.

        Data directory, host and port can not change this way (they need a restart the HA layer
        must plan for).
        """
        if (spec.data_dir, spec.host, spec.port) != (self.spec.data_dir, self.spec.host, self.spec.port):
            raise InstanceStateError("data_dir, host and port can not change on a live instance")
        async with self._lock:
            self.spec = spec
            if self.postmaster_pid() is None:
                await asyncio.to_thread(conffiles.write_config, spec)
                return None
            return await self._reload()

    async def sync_passwords(
        self, replication_password: str, *, superuser_password: str | None = None, primary: bool
    ) -> tuple[str, ...]:
        """Adopt the passwords configured now (password files are re-read by the caller); what changed.

        Every node: the spec takes the new replication password and the passfile is rewritten when
        its content changes (the next walreceiver, pg_basebackup or pg_rewind connection uses it).
        On the primary (``primary``): the replication user's and, when given, the superuser's
        password are set in PostgreSQL if they differ (:func:`ram.postgres.bootstrap.ensure_role_password`).
        Cheap when nothing changed; safe to call on every HA pass. Does not take the lifecycle lock:
        a rotation must not wait behind an hour-long clone (each step is atomic on its own).
        Returns e.g. ``("passfile", "replicator")``.
        """
        changed: list[str] = []
        if replication_password != self.spec.replication_password:
            self.spec = dataclasses.replace(self.spec, replication_password=replication_password)
        if await asyncio.to_thread(conffiles.write_passfile, self.spec):
            changed.append("passfile")
        if primary:
            if await ensure_role_password(self.spec, self.spec.replication_user, replication_password):
                changed.append(self.spec.replication_user)
            if superuser_password and await ensure_role_password(self.spec, self.spec.superuser, superuser_password):
                changed.append(self.spec.superuser)
        if changed:
            log.info("passwords updated changed=%s", ",".join(changed))
        return tuple(changed)

    # -- role changes ----------------------------------------------------------------------------

    async def promote(self, *, wait: bool = True) -> int | None:
        """Promote this standby to primary; returns the new timeline (``wait``) or None.

        ``pg_ctl promote -w`` waits until the server accepts writes. Then a CHECKPOINT, as Patroni
        does: until the first checkpoint after promotion pg_control still names the old timeline, and
        pg_rewind against this node would conclude the old primary needs no rewind. Without ``wait``
        it only signals promotion (``SELECT pg_promote(wait => false)``).
        """
        async with self._lock:
            status = await self.status()
            if not status.accepting:
                raise InstanceStateError(f"can not promote: not accepting connections ({status.error or 'stopped'})")
            if status.in_recovery is False:
                return status.timeline
            if not wait:
                async with local_connection(self.spec) as conn:
                    await conn.execute("SELECT pg_promote(wait => false)")
                return None
            await run_command(
                [str(self.bindir / "pg_ctl"), "promote", "-D", str(self.spec.data_dir), "-w",
                 "-t", str(max(1, math.ceil(self.spec.timeouts.promote)))],
                owner=self.spec.owner,
                timeout=self.spec.timeouts.promote + 5,
            )
            await asyncio.to_thread(conffiles.write_standby_config, self.spec, None, None)
            async with local_connection(self.spec) as conn:
                await conn.execute("CHECKPOINT")
            return (await self.status()).timeline

    async def demote(
        self,
        primary: PrimaryEndpoint,
        *,
        use_slot: bool = True,
        on_stopped: Callable[[], Awaitable[None]] | None = None,
    ) -> StopResult:
        """Turn this node into a standby of ``primary``: clean stop, standby.signal + primary_conninfo, start.

        For a planned switchover: the old primary stopped cleanly before the new one was promoted,
        so its WAL is a prefix of the new timeline and it can simply follow. After a failover (it
        may have diverged) use :meth:`rejoin`, which runs pg_rewind first. ``on_stopped`` runs
        between the clean stop and the start as a standby: a switchover lets the candidate promote
        from that moment instead of waiting for this server to come back up.
        """
        async with self._lock:
            stopped = await self.stop_unlocked("fast", None)
            if on_stopped is not None:
                await on_stopped()
            slot = self.spec.slot_name if use_slot else None
            await asyncio.to_thread(conffiles.write_standby_config, self.spec, primary, slot)
            await self.start_unlocked()
            return stopped

    async def follow(self, primary: PrimaryEndpoint, *, use_slot: bool = True, wait: bool = True) -> bool:
        """Re-point this standby to ``primary`` without a restart; see :func:`ram.postgres.replication.follow`."""
        async with self._lock:
            return await replication.follow(self, primary, use_slot=use_slot, wait=wait)

    async def clone_from(
        self,
        primary: PrimaryEndpoint,
        progress_cb: Callable[[CloneProgress], None] | None = None,
        *,
        wipe: bool = False,
        use_slot: bool = True,
    ) -> None:
        """See :func:`ram.postgres.clone.clone_from`."""
        async with self._lock:
            await clone_from(self, primary, progress_cb, wipe=wipe, use_slot=use_slot)

    async def rewind_from(self, primary: PrimaryEndpoint, *, use_slot: bool = True) -> RewindResult:
        """See :func:`ram.postgres.rewind.rewind_from`."""
        async with self._lock:
            return await rewind_from(self, primary, use_slot=use_slot)

    async def rejoin(
        self,
        primary: PrimaryEndpoint,
        *,
        allow_clone: bool | None = None,
        progress_cb: Callable[[CloneProgress], None] | None = None,
        use_slot: bool = True,
    ) -> RejoinResult:
        """See :func:`ram.postgres.rewind.rejoin`."""
        async with self._lock:
            return await rejoin(self, primary, allow_clone=allow_clone, progress_cb=progress_cb, use_slot=use_slot)

    # -- slots -----------------------------------------------------------------------------------

    async def ensure_slots(self, members: list[str], *, drop_others: bool = False) -> list[str]:
        """See :func:`ram.postgres.replication.ensure_slots`."""
        return await replication.ensure_slots(self.spec, members, drop_others=drop_others)

    async def drop_slot(self, member: str, *, force: bool = False) -> bool:
        """See :func:`ram.postgres.replication.drop_slot`."""
        return await replication.drop_slot(self.spec, member, force=force)

    # -- fencing ---------------------------------------------------------------------------------

    async def fence(self) -> StopResult:
        """Stop accepting writes now: immediate shutdown, then SIGKILL of the postmaster and its children.

        When this returns, no backend of this instance exists, so no further write can be
        acknowledged. It does not take the lifecycle lock.

        Why not ``ALTER SYSTEM SET default_transaction_read_only = on`` + reload + terminating
        backends, which keeps the server up for reads: it is advisory. Any session can ``SET
        default_transaction_read_only = off`` or ``BEGIN READ WRITE``; a backend that started
        before the reload reaches it only at its next transaction; and the setting lands in
        postgresql.auto.conf, which clones copy. It narrows the window, it does not close it.
        The immediate shutdown is sent as signals (:func:`ram.postgres.proctree.quit_tree`), not
        through ``pg_ctl``: a subprocess costs time the lease must reserve (``fence_duration_s``).
        Why immediate and not fast: fast shutdown also refuses new work at once, but returns only
        after the shutdown checkpoint, whose length depends on dirty buffers — the lease needs a
        bound. Immediate needs crash recovery on the next start; that node is about to be rejoined
        through pg_rewind anyway, which handles it (:mod:`ram.postgres.rewind`).
        """
        pid = self.postmaster_pid()
        if pid is None:
            return StopResult(False, None)
        # The SIGQUITs go out here, in the event loop, before any await: no thread pool or
        # subprocess stands between the decision to fence and the backends' exit.
        tree = proctree.quit_tree(pid)
        killed = await asyncio.to_thread(proctree.reap, tree, min(_FENCE_KILL_AFTER_S, self.spec.timeouts.fence))
        if killed:
            await asyncio.to_thread(_wait_gone, tree, self.spec.timeouts.fence)
        if proctree.alive(pid):
            raise InstanceStateError(f"PostgreSQL (pid {pid}) survived SIGKILL while fencing")
        await asyncio.to_thread(self._clear_stale_pidfile)
        if killed:
            return StopResult(True, "kill", (f"SIGKILL to {killed} after SIGQUIT",))
        return StopResult(True, "immediate")

    # -- helpers ---------------------------------------------------------------------------------

    def log_size(self) -> int:
        try:
            return self.spec.logfile.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int, lines: int = 6) -> list[str]:
        """The server log written since ``offset`` (last ``lines`` lines): PostgreSQL's own account."""
        try:
            with self.spec.logfile.open("rb") as fh:
                fh.seek(offset)
                text = fh.read(1 << 20).decode(errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if ln.strip()][-lines:]

    def _with_log(self, exc: PostgresCommandError, offset: int) -> PostgresCommandError:
        log = self.log_since(offset)
        if not log:
            return exc
        return PostgresCommandError(exc.argv, f"{exc.message} / server log: " + " / ".join(log), exc.returncode)


def _kill_tree(pid: int, timeout: float) -> None:
    """SIGKILL the postmaster's children, then the postmaster; wait until they are gone.

    Children first: a backend whose postmaster is gone may still finish a commit and answer its
    client, and that is exactly what fencing must prevent.
    """
    tree = [pid, *proctree.children(pid)]
    proctree.reap(tree, 0.0)
    _wait_gone(tree, timeout)


def _wait_gone(tree: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(proctree.alive(p) for p in tree):
        time.sleep(0.02)
