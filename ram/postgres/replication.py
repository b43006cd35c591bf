"""Streaming replication: re-pointing a standby without a restart, and physical slots on the primary.

Since PostgreSQL 13, ``primary_conninfo`` and ``primary_slot_name`` are reloadable: on SIGHUP the
startup process notices the change and restarts the walreceiver toward the new upstream, and
``recovery_target_timeline = 'latest'`` makes it follow the new primary's timeline switch (as long
as this standby has not replayed past the fork point). So a failover need not restart healthy
replicas; :func:`follow` re-points and then verifies, in ``pg_stat_wal_receiver``, that the
walreceiver streams from the new sender.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ram.postgres import conffiles
from ram.postgres.commands import run_command
from ram.postgres.errors import FollowError, InstanceStateError
from ram.postgres.spec import ManagedInstanceSpec, PrimaryEndpoint, slot_name_for
from ram.postgres.sql import fetch, local_connection
from ram.postgres.status import WalReceiverStatus

if TYPE_CHECKING:
    from ram.postgres.instance import ManagedInstance


def streams_from(receiver: WalReceiverStatus | None, primary: PrimaryEndpoint) -> bool:
    return (
        receiver is not None
        and receiver.status == "streaming"
        and receiver.sender_host == primary.host
        and receiver.sender_port == primary.port
    )


async def follow(instance: ManagedInstance, primary: PrimaryEndpoint, *, use_slot: bool = True,
                 wait: bool = True) -> bool:
    """Point a running standby at ``primary`` by rewriting ram.replication.conf and reloading.

    Returns True when the server had to be started (it was not running), False when it was
    re-pointed live. With ``wait`` it returns only once the walreceiver streams from ``primary``,
    and raises :class:`FollowError` (with the server's log lines, where the walreceiver explains
    itself: authentication, missing slot, diverged timeline) if that does not happen in
    ``timeouts.follow``. A running primary can not follow: it must be rejoined (rewind) first.
    """
    spec = instance.spec
    slot = spec.slot_name if use_slot else None
    status = await instance.status()
    offset = instance.log_size()
    if not status.running:
        await asyncio.to_thread(conffiles.write_standby_config, spec, primary, slot)
        await instance.start_unlocked()
        started = True
    else:
        if status.in_recovery is False:
            raise InstanceStateError("this instance is a primary; it must be demoted or rejoined, not re-pointed")
        if streams_from(status.wal_receiver, primary) and (
            status.wal_receiver is None or status.wal_receiver.slot_name == slot
        ):
            return False
        if not wait and await asyncio.to_thread(conffiles.standby_config_current, spec, primary, slot):
            # Already pointed there: the walreceiver retries on its own (wal_retrieve_retry_interval).
            # Rewriting and reloading on every keeper pass only stormed the server with SIGHUPs.
            return False
        await asyncio.to_thread(conffiles.write_standby_config, spec, primary, slot)
        await run_command(
            [str(instance.bindir / "pg_ctl"), "reload", "-D", str(spec.data_dir)],
            owner=spec.owner,
            timeout=spec.timeouts.command,
        )
        started = False
    if wait:
        await wait_for_walreceiver(instance, primary, spec.timeouts.follow, log_offset=offset)
    return started


async def wait_for_walreceiver(instance: ManagedInstance, primary: PrimaryEndpoint, timeout: float, *,
                               log_offset: int = 0) -> WalReceiverStatus:
    """Poll until the walreceiver streams from ``primary``; FollowError with the server log otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        status = await instance.status()
        last = status.wal_receiver
        if streams_from(last, primary):
            assert last is not None
            return last
        if time.monotonic() >= deadline:
            seen = (
                f"walreceiver {last.status} from {last.sender_host}:{last.sender_port}" if last
                else f"no walreceiver ({status.error or 'none running'})"
            )
            log = instance.log_since(log_offset or max(0, instance.log_size() - 4096))
            raise FollowError(
                f"not streaming from {primary.host}:{primary.port} after {timeout:g} s; {seen}"
                + ("; server log: " + " / ".join(log) if log else "")
            )
        await asyncio.sleep(0.1)


async def ensure_slots(spec: ManagedInstanceSpec, members: list[str], *, drop_others: bool = False) -> list[str]:
    """Create a physical slot for each member (name from :func:`slot_name_for`) that lacks one.

    Run on the primary (slots are not replicated in PostgreSQL 15, so a newly promoted primary
    must create them). Slots reserve WAL immediately, so a replica that connects later still finds
    everything since now. This node's own slot is skipped. With ``drop_others``, inactive physical
    slots not in the list are dropped (a removed member must not pin WAL forever). Returns the
    names created.
    """
    wanted = [slot_name_for(m) for m in members]
    wanted = [s for i, s in enumerate(wanted) if s != spec.slot_name and s not in wanted[:i]]
    created = []
    async with local_connection(spec) as conn:
        existing = {
            row["slot_name"]: row
            for row in await conn.fetch(
                "SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'physical'"
            )
        }
        for slot in wanted:
            if slot not in existing:
                await conn.execute("SELECT pg_create_physical_replication_slot($1, true)", slot)
                created.append(slot)
        if drop_others:
            for slot, row in existing.items():
                if slot not in wanted and not row["active"]:
                    await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
    return created


async def drop_slot(spec: ManagedInstanceSpec, member: str, *, force: bool = False) -> bool:
    """Drop the member's physical slot; False if it did not exist or is in use (and not ``force``).

    With ``force`` the walsender using it is terminated first (it may reconnect at once, so this
    retries for a few seconds).
    """
    slot = slot_name_for(member)
    deadline = time.monotonic() + spec.timeouts.query
    while True:
        rows = await fetch(spec, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot)
        if not rows:
            return False
        pid = rows[0]["active_pid"]
        if pid is None:
            async with local_connection(spec) as conn:
                try:
                    await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
                    return True
                except Exception:  # became active in between: retry until the deadline
                    if time.monotonic() >= deadline:
                        raise
        elif not force:
            return False
        else:
            await fetch(spec, "SELECT pg_terminate_backend($1)", pid)
        if time.monotonic() >= deadline:
            raise InstanceStateError(f"slot {slot} stays in use (walsender pid {pid})")
        await asyncio.sleep(0.05)
