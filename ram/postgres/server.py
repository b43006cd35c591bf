"""One local PostgreSQL server: create, start, stop, and say how to connect.

Used for the node's embedded store (a small private instance under the node's data directory,
reached over its own unix socket) and by the test suite, so both exercise the same code. The
managed, replicated instance builds on the same primitives in its own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ram.postgres.commands import (
    PostgresCommandError,
    chown_to_owner,
    default_owner,
    find_bindir,
    run_command,
)

#: Settings for a store instance: it holds a Raft log and events, not user data, so it stays small,
#: but durability is the point of it (fsync and synchronous_commit stay on).
STORE_SETTINGS: dict[str, str] = {
    "shared_buffers": "16MB",
    "max_connections": "40",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "256MB",
    "log_min_messages": "warning",
    "logging_collector": "off",
    "dynamic_shared_memory_type": "posix",
}


#: Without waiting for readiness, a postmaster that is still "starting" after this long survived its
#: start (configuration, locks, the data directory were fine); recovery is the caller's to watch.
_START_GRACE_S = 1.0


@dataclass
class PostgresServer:
    """A PostgreSQL server whose data directory and life we own.

    ``socket_dir`` defaults to the data directory's parent ``run`` folder so that paths stay short
    (unix socket paths are limited to ~107 bytes).
    """

    datadir: Path
    port: int
    listen_addresses: str = ""
    socket_dir: Path | None = None
    owner: str = field(default_factory=default_owner)
    settings: Mapping[str, str] = field(default_factory=lambda: dict(STORE_SETTINGS))
    superuser: str = "postgres"
    timeout: float = 60.0
    #: Where ``pg_ctl start -l`` sends the server's log (default: ``server.log`` in the data directory).
    log_file: Path | None = None

    def __post_init__(self) -> None:
        self.datadir = Path(self.datadir).absolute()
        if self.socket_dir is None:
            self.socket_dir = self.datadir.parent / "run"
        self.bindir = find_bindir()

    @property
    def sockdir(self) -> Path:
        assert self.socket_dir is not None
        return self.socket_dir

    def dsn(self, dbname: str = "postgres", *, tcp: bool = False) -> str:
        """A libpq URI for this server (over the unix socket unless ``tcp``)."""
        if tcp:
            host = self.listen_addresses.split(",")[0].strip() or "127.0.0.1"
            return f"postgresql://{self.superuser}@{host}:{self.port}/{dbname}"
        return f"postgresql://{self.superuser}@/{dbname}?host={self.sockdir}&port={self.port}"

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def _prepare_dir(self, path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
        chown_to_owner(path, self.owner)

    async def init(self) -> None:
        """``initdb`` a new cluster: local trust only, listening where we say, our settings."""
        if self.initialized:
            return
        self._prepare_dir(self.datadir.parent, 0o755)
        self._prepare_dir(self.datadir, 0o700)
        self._prepare_dir(self.sockdir, 0o700)
        await run_command(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.datadir),
                "-U", self.superuser,
                "--auth-local=trust",
                "--auth-host=trust" if self.listen_addresses else "--auth-host=reject",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            owner=self.owner,
            timeout=self.timeout,
        )
        conf = self.datadir / "postgresql.auto.conf"
        lines = [f"{key} = '{value}'" for key, value in self.settings.items()]
        lines += [
            f"port = {self.port}",
            f"listen_addresses = '{self.listen_addresses}'",
            f"unix_socket_directories = '{self.sockdir}'",
            "unix_socket_permissions = 0700",
        ]
        with conf.open("a") as fh:
            fh.write("\n".join(lines) + "\n")

    async def is_running(self) -> bool:
        if not self.initialized:
            return False
        result = await run_command(
            [str(self.bindir / "pg_ctl"), "status", "-D", str(self.datadir)],
            owner=self.owner,
            timeout=self.timeout,
            check=False,
        )
        return result.returncode == 0

    async def start(self, *, until_ready: bool = True) -> None:
        """Start the server (idempotent) and wait until it accepts connections - or, without
        ``until_ready``, only until its postmaster runs and survived its first moments.

        Why the second: a standby accepts connections only once its recovery is consistent, which
        may take long or never happen (its WAL runs past the primary's history); ``pg_ctl start -w``
        would hold its caller - RAM's keeper - for the whole start timeout, while it is the keeper
        that must notice the standby is stuck and rewind or re-clone it."""
        self._prepare_dir(self.sockdir, 0o700)
        if await self.is_running():
            return
        logfile = self.log_file or self.datadir / "server.log"
        if until_ready:
            await run_command(
                [
                    str(self.bindir / "pg_ctl"), "start", "-w", "-t", str(int(self.timeout)),
                    "-D", str(self.datadir), "-l", str(logfile),
                ],
                owner=self.owner,
                timeout=self.timeout + 5,
            )
            return
        await run_command(
            [str(self.bindir / "pg_ctl"), "start", "-W", "-D", str(self.datadir), "-l", str(logfile)],
            owner=self.owner,
            timeout=self.timeout + 5,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        seen_at: float | None = None
        while loop.time() < deadline:
            status = await asyncio.to_thread(self._pidfile_status)
            if status in ("ready", "standby"):
                return
            if status == "starting":
                seen_at = loop.time() if seen_at is None else seen_at
                if loop.time() - seen_at >= _START_GRACE_S:
                    return  # running, still recovering: the caller watches it from here
            elif seen_at is not None:  # it was starting and is gone: it failed
                break
            await asyncio.sleep(0.05)
        raise PostgresCommandError(
            [str(self.bindir / "pg_ctl"), "start"],
            f"the postmaster {'exited while starting' if seen_at is not None else 'did not come up'}; see {logfile}",
            None,
        )

    def _pidfile_status(self) -> str | None:
        """The postmaster's own status line in ``postmaster.pid`` (starting, ready, standby, stopping),
        None when no live postmaster owns the file."""
        pidfile = self._pidfile()
        if pidfile is None:
            return None
        _, status = pidfile
        return status or "starting"

    def _pidfile(self) -> tuple[int, str | None] | None:
        """``postmaster.pid``'s PID and status line (None before the postmaster wrote it), when a
        process with that PID is alive; None otherwise. The one reader of that file here."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            lines = (self.datadir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
            os.kill(pid, 0)
            return pid, (lines[7].strip() if len(lines) > 7 else None)
        return None

    async def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server: ``fast`` first, ``immediate`` when that takes longer than ``timeout``."""
        if not await self.is_running():
            return
        try:
            await run_command(
                [str(self.bindir / "pg_ctl"), "stop", "-w", "-m", mode, "-t", str(int(timeout)),
                 "-D", str(self.datadir)],
                owner=self.owner,
                timeout=timeout + 5,
            )
        except PostgresCommandError:
            if mode == "immediate":
                raise
            await self.stop("immediate", timeout)

    def postmaster_pid(self) -> int | None:
        """The postmaster's PID from ``postmaster.pid``, if the server looks alive."""
        pidfile = self._pidfile()
        return None if pidfile is None else pidfile[0]

    async def destroy(self) -> None:
        """Stop the server and remove its data directory (tests and ``--purge``)."""
        with contextlib.suppress(PostgresCommandError):
            await self.stop("immediate", 10)
        await asyncio.to_thread(shutil.rmtree, self.datadir, True)
