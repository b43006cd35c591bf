"""Python values as TOML text: the one writer RAM uses for every TOML file it generates (node
configs from ``ram node init`` and ``ram cluster up``, the API tokens file).

Why our own and not a library: RAM writes commented files (every key's description above it, unset
keys commented out with their default), which tomli-w can not do, and tomlkit would be a whole
document model for a few scalar kinds. The rules below are the TOML 1.0 basic-string rules; what is
written is always parsed back with :mod:`tomllib` by the callers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and every control character escaped."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    """A key, bare when TOML allows it, quoted otherwise."""
    return key if _BARE_KEY.match(key) else toml_string(key)


def toml_value(value: object) -> str:
    """A TOML value for a bool, number, string, path, list or table (inline). ``None`` has no TOML
    form: callers leave such keys out (:class:`TypeError`, as for any other type)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, PurePath):
        return toml_string(str(value))
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_line(key: str, value: object) -> str:
    """``key = value``."""
    return f"{toml_key(key)} = {toml_value(value)}"
