"""The cluster's dynamic PostgreSQL parameters on this node: ``ram.dynamic.conf`` and a reload.

``postgresql.conf`` (ram.postgres.conffiles) includes the file after RAM's own settings, so a value
set for the whole cluster wins over the node file's ``postgres.parameters``; parameters RAM sets
itself are refused before they get here (ram.ha.dynconfig). Whether a changed value is live or waits
for a restart is PostgreSQL's own answer (``pg_settings.pending_restart``), not a list we keep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from ram.postgres import sql
from ram.postgres.conffiles import DYNAMIC_CONF, HEADER, conf_quote, write_owned
from ram.postgres.spec import ManagedInstanceSpec

__all__ = ["pending_restart", "reload", "render", "write"]


def render(parameters: Mapping[str, str]) -> str:
    lines = [HEADER, "# The cluster's dynamic configuration (ramctrl config set postgresql.parameters.<name>=...).\n"]
    lines += [f"{name} = {conf_quote(value)}\n" for name, value in sorted(parameters.items())]
    return "".join(lines)


async def write(spec: ManagedInstanceSpec, parameters: Mapping[str, str]) -> bool:
    """Write ``ram.dynamic.conf`` if its content changes; True when it did."""
    path = spec.data_dir / DYNAMIC_CONF
    text = render(parameters)

    def _write() -> bool:
        if not spec.data_dir.is_dir():
            return False
        try:
            if path.read_text() == text:
                return False
        except OSError:
            pass
        write_owned(path, text, spec.owner)
        return True

    return await asyncio.to_thread(_write)


async def reload(spec: ManagedInstanceSpec) -> None:
    await sql.execute(spec, "SELECT pg_reload_conf()")


async def pending_restart(spec: ManagedInstanceSpec) -> tuple[str, ...]:
    """Parameters whose configured value differs from the running one until a restart."""
    rows = await sql.fetch(spec, "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name")
    return tuple(str(r[0]) for r in rows)
