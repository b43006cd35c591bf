"""Errors raised while driving the managed PostgreSQL instance.

Failures of external programs are :class:`~ram.postgres.commands.PostgresCommandError` (the
program's own stderr). Failures of SQL are :class:`SqlError`, carrying the server's own message and
SQLSTATE. Everything else that is not a programming error derives from :class:`InstanceError`, so
the HA layer can catch one family and log PostgreSQL's words rather than ours.
"""

from __future__ import annotations


class InstanceError(RuntimeError):
    """The managed instance could not do what was asked (the message says why)."""


class InstanceStateError(InstanceError):
    """The instance is in the wrong state for the operation (e.g. cloning into a running data dir)."""


class SqlError(InstanceError):
    """A query on the managed instance failed; ``message`` is PostgreSQL's own, ``sqlstate`` its code."""

    def __init__(self, message: str, sqlstate: str | None = None, query: str | None = None) -> None:
        self.message = message
        self.sqlstate = sqlstate
        self.query = query
        super().__init__(f"{message} (SQLSTATE {sqlstate})" if sqlstate else message)


class FollowError(InstanceError):
    """The walreceiver did not come up toward the requested primary in time."""
