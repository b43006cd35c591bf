"""Making this node a copy of a primary with pg_basebackup.

``-X stream`` brings the WAL needed to make the copy consistent; ``--checkpoint=fast`` avoids
waiting up to checkpoint_timeout for a spread checkpoint on the primary; ``-R`` writes
standby.signal as part of the copy, so a copy interrupted after pg_basebackup (RAM crash) can never
start as a second primary. The primary_conninfo that ``-R`` writes to postgresql.auto.conf is then
replaced by RAM's own ram.replication.conf (see :mod:`ram.postgres.conffiles`). The password comes
from the passfile (``passfile=`` in the conninfo), never the command line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ram.postgres import conffiles
from ram.postgres.bootstrap import prepare_dirs
from ram.postgres.commands import chown_to_owner, run_command
from ram.postgres.durability import sync_data_directory
from ram.postgres.errors import InstanceStateError
from ram.postgres.spec import ManagedInstanceSpec, PrimaryEndpoint

if TYPE_CHECKING:
    from ram.postgres.instance import ManagedInstance

log = logging.getLogger(__name__)

_PROGRESS = re.compile(r"(\d+)/(\d+) kB \((\d+)%\), (\d+)/(\d+) tablespace")


@dataclass(frozen=True)
class CloneProgress:
    """One ``pg_basebackup --progress`` report. ``total_bytes`` is the server's estimate (it may grow)."""

    done_bytes: int
    total_bytes: int
    percent: int
    tablespaces_done: int
    tablespaces_total: int


def parse_progress(line: str) -> CloneProgress | None:
    """A progress line of pg_basebackup (``12345/67890 kB (18%), 0/1 tablespace``), else None."""
    match = _PROGRESS.search(line)
    if not match:
        return None
    done, total, pct, ts_done, ts_total = (int(g) for g in match.groups())
    return CloneProgress(done * 1024, total * 1024, pct, ts_done, ts_total)


def _empty_datadir(spec: ManagedInstanceSpec, wipe: bool) -> None:
    data = spec.data_dir
    if data.exists() and any(data.iterdir()):
        if not wipe:
            raise InstanceStateError(f"{data} is not empty; pass wipe=True to replace it with a clone")
        for entry in data.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    prepare_dirs(spec)
    os.chmod(data, 0o700)
    chown_to_owner(data, spec.owner)


async def clone_from(
    instance: ManagedInstance,
    primary: PrimaryEndpoint,
    progress_cb: Callable[[CloneProgress], None] | None = None,
    *,
    wipe: bool = False,
    use_slot: bool = True,
) -> None:
    """Replace this (stopped) node's data directory by a base backup of ``primary``; leave it a standby.

    The data directory must be empty or absent, unless ``wipe``. ``progress_cb`` receives each
    progress report (about once a second, and a final one); its exceptions are logged, not
    propagated: a display problem must not abort a clone. With ``use_slot`` the backup streams WAL
    through this node's slot on the primary (which must exist: :func:`ensure_slots` there). The
    server is not started: call ``start()``.
    """
    spec = instance.spec
    if await instance.is_running():
        raise InstanceStateError("refusing to clone over a running instance; stop it first")
    await asyncio.to_thread(_empty_datadir, spec, wipe)
    await asyncio.to_thread(conffiles.write_passfile, spec)
    await asyncio.to_thread(conffiles.write_tls_files, spec)  # the client certificate, with TLS
    slot = spec.slot_name if use_slot else None

    def on_line(line: str) -> None:
        report = parse_progress(line)
        if report is None or progress_cb is None:
            return
        try:
            progress_cb(report)
        except Exception:
            log.exception("clone progress callback failed")

    argv = [
        str(instance.bindir / "pg_basebackup"),
        "--pgdata", str(spec.data_dir),
        "--dbname", conffiles.primary_conninfo(spec, primary, application_name=f"{spec.name}_clone"),
        "--wal-method=stream",
        "--write-recovery-conf",
        "--checkpoint=fast",
        "--progress",
        "--no-password",
    ]
    if slot:
        argv += ["--slot", slot]
    argv.append("--no-sync")  # one syncfs below instead of an fsync per file (see ram.postgres.durability)
    await run_command(
        argv,
        owner=spec.owner,
        timeout=spec.timeouts.clone,
        env={"PGPASSFILE": str(spec.pgpass)},
        on_stderr=on_line,
    )
    await asyncio.to_thread(conffiles.write_config, spec)
    await asyncio.to_thread(conffiles.write_standby_config, spec, primary, slot)
    if spec.sync_data:
        await asyncio.to_thread(sync_data_directory, spec.data_dir)
