"""Plain-text rendering for ``ramctrl``: aligned tables and the small formats operators read.

No terminal library on purpose: output must stay greppable, stable in scripts and logs, and free of
colour codes when piped; a fixed-width table does all of that.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ram import lsn

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_bytes(value: int | None) -> str:
    """``16777216`` -> ``16 MB`` (powers of 1024 and unit names as PostgreSQL prints them)."""
    if value is None:
        return ""
    size = float(value)
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(size)} B"
            text = f"{size:.1f}" if abs(size) < 10 else f"{size:.0f}"
            return f"{text.removesuffix('.0')} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_lsn(value: int | None) -> str:
    """Byte position -> PostgreSQL's ``X/Y`` notation (low half zero-padded so a column lines up)."""
    if value is None:
        return ""
    return lsn.format_lsn(value, fixed_width=True)


def format_time(value: str | None) -> str:
    """An API timestamp in local time to the second: short enough for a table, unambiguous enough."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def one_line_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def summarize(data: Mapping[str, Any], width: int = 100) -> str:
    """An event payload as ``key=value`` pairs on one line, cut at ``width`` with an ellipsis."""
    parts = []
    for key, value in data.items():
        text = value if isinstance(value, str) else one_line_json(value)
        parts.append(f"{key}={text}")
    line = " ".join(" ".join(parts).split())
    return line if len(line) <= width else line[: width - 1] + "…"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, a dashed rule under the header, no trailing spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def render_pairs(pairs: Sequence[tuple[str, str]]) -> str:
    """``key  value`` lines with the values aligned (config, single objects)."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in pairs)


def stale_note(body: Mapping[str, Any]) -> str | None:
    """One line saying a read is this node's own view, not confirmed by the Raft leader (``stale``
    in every read of ``/cluster``, ``/members``, ``/config``, ``/history``, ``/events``); None when
    the answer was confirmed current. A partitioned or lagging node still answers: say plainly that
    this may be old news."""
    if not body.get("stale"):
        return None
    reason = body.get("stale_reason") or "not confirmed by the Raft leader"
    node, applied = body.get("node", "?"), body.get("applied_index", "?")
    return f"Stale: {node}'s own view, applied up to position {applied}; it may be behind ({reason})"
