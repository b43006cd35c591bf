"""WAL positions: the one home of converting between PostgreSQL's ``X/Y`` text and integers.

RAM keeps every LSN as an int (bytes since the start of WAL, ``X << 32 | Y``) so that lag is a
subtraction and comparisons are plain; only the edges (SQL results, history files, tables shown to
operators) speak text. The event catalogue, the PostgreSQL status reader and ``ramctrl`` all use
these two functions, so the parse rules (1 to 8 hex digits on either side of the slash, nothing
else) and the spelling can not drift apart again.
"""

from __future__ import annotations

import re

__all__ = ["MAX_LSN", "format_lsn", "parse_lsn"]

MAX_LSN = 2**64 - 1
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` -> ``0x16B374D848``; ``ValueError`` for anything PostgreSQL would not print
    (each half is at most 8 hex digits, so the value always fits in 64 bits)."""
    match = _LSN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int, *, fixed_width: bool = False) -> str:
    """``0x16B374D848`` -> ``'16/B374D848'``, PostgreSQL's own spelling (what ``pg_stat_*`` show).

    ``fixed_width`` zero-pads the low half to 8 digits (``'16/0374D848'``): same value, but a table
    column of positions lines up (``ramctrl`` uses it; ``parse_lsn`` reads both forms)."""
    if not 0 <= value <= MAX_LSN:
        raise ValueError(f"LSN out of range: {value}")
    low = f"{value & 0xFFFFFFFF:08X}" if fixed_width else f"{value & 0xFFFFFFFF:X}"
    return f"{value >> 32:X}/{low}"
