"""Making a freshly written data directory durable in one step.

initdb, pg_basebackup and pg_rewind end by fsyncing every file of the data directory, one file at a
time. On virtualised disks each fsync costs a journal commit, and a 100 MB data directory took
5.5 s on our CI machine — most of a rejoin. Running them with ``--no-sync`` and then calling
``syncfs(2)`` on the data directory's file system flushes the same data with one journal commit
(the approach of PostgreSQL's own ``recovery_init_sync_method = syncfs``). RAM does not start the
server before this returns, so a crash in between leaves at worst an unsynced copy that is never
used as if it were durable: the next attempt redoes the step.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: libc's syncfs (None where the C library has none: then sync(2)), looked up once, as
#: ram.postgres.commands looks up prctl.
_SYNCFS = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)


def sync_data_directory(data_dir: Path) -> float:
    """Flush everything written to ``data_dir``'s file system; returns the seconds it took.

    Falls back to ``sync(2)`` (every file system) where ``syncfs`` is not available. Blocking: call
    it in a thread.
    """
    started = time.monotonic()
    if _SYNCFS is None:
        os.sync()
    else:
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs({data_dir}) failed: {os.strerror(err)}")
        finally:
            os.close(fd)
    took = time.monotonic() - started
    log.debug("data directory synced path=%s seconds=%.3f", data_dir, took)
    return took
