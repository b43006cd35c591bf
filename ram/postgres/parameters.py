"""PostgreSQL parameters whose change only takes effect after a server restart (context ``postmaster``).

Dynamic configuration keys ``postgresql.parameters.<name>`` for these names are flagged
``pending_restart`` when changed. The list is the commonly tuned subset; the HA layer may refine it
from ``pg_settings.context`` of the running server.
"""

from __future__ import annotations

import re

PG_PARAMETER_PREFIX = "postgresql.parameters."

RESTART_PARAMETERS: frozenset[str] = frozenset(
    {
        "archive_mode",
        "autovacuum_max_workers",
        "hot_standby",
        "huge_pages",
        "listen_addresses",
        "max_connections",
        "max_locks_per_transaction",
        "max_logical_replication_workers",
        "max_pred_locks_per_transaction",
        "max_prepared_transactions",
        "max_replication_slots",
        "max_wal_senders",
        "max_worker_processes",
        "port",
        "shared_buffers",
        "shared_preload_libraries",
        "superuser_reserved_connections",
        "track_commit_timestamp",
        "unix_socket_directories",
        "wal_buffers",
        "wal_level",
        "wal_log_hints",
    }
)

# GUC names: identifiers, optionally qualified by an extension prefix (``pg_stat_statements.max``).
_GUC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


def parameter_name(key: str) -> str | None:
    """The PostgreSQL parameter a dynamic-config key sets, or None when it is not one."""
    if key.startswith(PG_PARAMETER_PREFIX):
        return key[len(PG_PARAMETER_PREFIX) :]
    return None


def valid_parameter_name(name: str) -> bool:
    return bool(_GUC_NAME.match(name)) and len(name) <= 63


def needs_restart(key: str) -> bool:
    """Whether changing ``key`` takes effect only after PostgreSQL restarts."""
    name = parameter_name(key)
    return name is not None and name.lower() in RESTART_PARAMETERS
