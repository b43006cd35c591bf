"""The cluster's dynamic configuration: which keys exist, what they accept, and what runs from them.

A key is one of:

* a cluster-wide HA setting (:data:`DYNAMIC_HA_KEYS`): read from the committed dynamic configuration
  by every node, with the node's own file (``[ha]``) as the value while the key is not set
  dynamically. Precedence: **dynamic configuration over the node file**; removing the key (null)
  goes back to the file. It applies at once on every node as it applies the entry: the arbiter and
  the keepers act on committed state, so a change of the synchronous mode goes through the same
  two-step sync-set protocol as any other change of the desired set (:mod:`ram.ha.syncset`).
* ``postgresql.parameters.<name>``: a PostgreSQL parameter rendered into every member's
  ``ram.dynamic.conf`` (included after RAM's own settings and the node file's ``postgres.parameters``)
  and reloaded; one that needs a restart is reported per member as pending restart (PostgreSQL's
  own ``pg_settings.pending_restart``) until the member restarts.

The lease timing (``lease_s``, ``clock_drift``, ``safety_margin_s``, ``fence_duration_s``) is NOT
dynamic (:data:`NODE_ONLY_HA_KEYS`): the safety argument of :mod:`ram.ha.lease` needs the holder and
the arbiter to agree on when a lease ends, and nodes apply a committed change at different moments;
these stay in every node's file (changed with a rolling restart; a node's ``lease_s`` is committed
by the node itself, ``member_lease_announced``, so a new Raft leader knows it). Anything else is
refused with the list of what is allowed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import JsonValue, ValidationError
from pydantic.fields import FieldInfo

from ram.ha.settings import HASettings
from ram.postgres.parameters import valid_parameter_name
from ram.postgres.spec import PROTECTED_PARAMETERS

__all__ = [
    "DYNAMIC_HA_KEYS",
    "NODE_ONLY_HA_KEYS",
    "PG_PREFIX",
    "DynamicConfigError",
    "KeySpec",
    "effective_settings",
    "key_specs",
    "pg_parameters",
    "reference_markdown",
    "render_pg_value",
    "validate_changes",
]

PG_PREFIX = "postgresql.parameters."

#: HA settings an operator may change for the whole cluster at runtime.
DYNAMIC_HA_KEYS: tuple[str, ...] = (
    "synchronous_mode",
    "synchronous_node_count",
    "synchronous_strict",
    "maximum_lag_on_failover",
    "rewind_fallback_to_clone",
    "primary_start_timeout_s",
    "report_interval_s",
    "report_timeout_s",
    "renew_interval_s",
)

#: HA settings that must stay in each node's file (see the module docstring).
NODE_ONLY_HA_KEYS: tuple[str, ...] = ("lease_s", "clock_drift", "safety_margin_s", "fence_duration_s")

#: PostgreSQL parameters RAM sets itself and that dynamic configuration may not override.
RESERVED_PG_PARAMETERS = PROTECTED_PARAMETERS | frozenset(
    {"synchronous_standby_names", "hot_standby", "wal_level", "max_wal_senders", "max_replication_slots",
     "wal_log_hints", "primary_slot_name", "restore_command", "archive_cleanup_command", "ssl"}
)

_MAX_PG_VALUE = 4096


class DynamicConfigError(ValueError):
    """One line naming the key and what is allowed."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    key: str
    type: str
    allowed: str
    default: str
    applies: str
    description: str


def _allowed(info: FieldInfo) -> tuple[str, str]:
    """(type, allowed range) of an HASettings field, from its annotation and constraints."""
    ann = info.annotation
    if getattr(ann, "__origin__", None) is Literal:
        return "string", " or ".join(json.dumps(a) for a in get_args(ann))
    low = high = None
    low_open = high_open = False
    for m in info.metadata:
        bounds = (("gt", True, True), ("ge", True, False), ("lt", False, True), ("le", False, False))
        for attr, is_low, is_open in bounds:
            value = getattr(m, attr, None)
            if value is None:
                continue
            if is_low:
                low, low_open = value, is_open
            else:
                high, high_open = value, is_open
    kinds: dict[object, str] = {bool: "boolean", int: "integer", float: "number"}
    kind = kinds.get(ann, str(ann))
    if kind == "boolean":
        return kind, "true or false"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return kind, " and ".join(parts) or "any"


def key_specs() -> list[KeySpec]:
    """Every dynamic key, in the order of the reference table (generated docs and validation)."""
    out = []
    for key in DYNAMIC_HA_KEYS:
        info = HASettings.model_fields[key]
        kind, allowed = _allowed(info)
        applies = "immediately (synchronous set through the two-step protocol)" if key.startswith("synchronous") else (
            "immediately"
        )
        out.append(KeySpec(key, kind, allowed, json.dumps(info.default), applies, info.description or ""))
    out.append(
        KeySpec(
            PG_PREFIX + "<name>",
            "string, number or boolean",
            "a PostgreSQL parameter name; not one RAM sets itself",
            "unset",
            "reload on every member; parameters of context postmaster: after `ramctrl restart` of each member "
            "(reported as pending restart until then)",
            "A PostgreSQL parameter for every member (overrides the node file's postgres.parameters).",
        )
    )
    return out


def reference_markdown() -> str:
    """The table of dynamic keys for docs/operations.md (a test keeps the copy there in sync)."""
    lines = ["| key | type | allowed | default | applies | description |", "|---|---|---|---|---|---|"]
    for s in key_specs():
        lines.append(f"| `{s.key}` | {s.type} | {s.allowed} | {s.default} | {s.applies} | {s.description} |")
    lines.append("")
    lines.append(
        "Not dynamic (set them in every node's `[ha]` section and restart the nodes one by one; they need not "
        "be identical - each node commits its `lease_s` when longer than 2 s or changed, and a new Raft leader "
        "presumes the longest): " + ", ".join(f"`{k}`" for k in NODE_ONLY_HA_KEYS) + "."
    )
    return "\n".join(lines) + "\n"


START = (
    "<!-- dynamic-config-reference:start (generated by ram.ha.dynconfig.reference_markdown; a test keeps it in "
    "sync) -->\n"
)
END = "<!-- dynamic-config-reference:end -->"


def write_docs_reference(doc: Path) -> bool:
    """Regenerate the table in docs/operations.md in place (``python -m ram.ha.dynconfig``)."""
    text = doc.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    new = text[:a] + reference_markdown() + text[b:]
    if new == text:
        return False
    doc.write_text(new)
    return True


def _allowed_keys() -> str:
    return ", ".join(DYNAMIC_HA_KEYS) + f", {PG_PREFIX}<name>"


def _check_pg(key: str, value: JsonValue) -> None:
    name = key[len(PG_PREFIX):]
    if not valid_parameter_name(name):
        raise DynamicConfigError(f"config key {key[:80]!r}: {name[:60]!r} is not a PostgreSQL parameter name")
    if name.lower() in RESERVED_PG_PARAMETERS:
        raise DynamicConfigError(
            f"config key {key[:80]!r}: {name} is set by RAM itself (replication, addresses, sync set) and can not "
            "be changed here"
        )
    if value is None:
        return
    if isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DynamicConfigError(f"config key {key[:80]!r}: a finite number is required")
        return
    if isinstance(value, str):
        if len(value) > _MAX_PG_VALUE or "\x00" in value or "\n" in value:
            raise DynamicConfigError(
                f"config key {key[:80]!r}: a single-line value of at most {_MAX_PG_VALUE} characters is required"
            )
        return
    raise DynamicConfigError(
        f"config key {key[:80]!r}: a string, number or boolean is required, not a {type(value).__name__}"
    )


def validate_changes(
    base: HASettings, current: Mapping[str, JsonValue], changes: Mapping[str, JsonValue]
) -> dict[str, JsonValue]:
    """Check a patch (key -> new value; None removes the key) against the key table and the HA
    settings' own rules after merging; raises :class:`DynamicConfigError` naming the key."""
    out: dict[str, JsonValue] = {}
    for key, value in changes.items():
        if key in NODE_ONLY_HA_KEYS:
            raise DynamicConfigError(
                f"config key {key!r} is not dynamic: it must be identical in every node's file ([ha] {key}) and is "
                "changed with a rolling restart (a live change could let a primary and the arbiter disagree on when "
                "its lease ends)"
            )
        if key.startswith(PG_PREFIX):
            _check_pg(key, value)
        elif key not in DYNAMIC_HA_KEYS:
            raise DynamicConfigError(f"unknown config key {key[:80]!r}; allowed: {_allowed_keys()}")
        out[key] = value
    merged = {k: v for k, v in {**current, **out}.items() if v is not None}
    ha = {k: merged[k] for k in DYNAMIC_HA_KEYS if k in merged}
    if ha:
        try:
            HASettings.model_validate({**base.model_dump(), **ha}, strict=False)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ())) or next(iter(ha))
            name = loc if loc in ha else next((k for k in out if k in DYNAMIC_HA_KEYS), loc)
            spec = next((s for s in key_specs() if s.key == name), None) if loc in ha else None
            allowed = f" (allowed: {spec.allowed})" if spec is not None else ""
            raise DynamicConfigError(f"config key {name!r}: {err.get('msg', 'invalid')}{allowed}") from None
        for key, value in ha.items():
            if isinstance(value, bool) and HASettings.model_fields[key].annotation is not bool:
                raise DynamicConfigError(f"config key {key!r}: a number is required, not a boolean")
            if isinstance(value, str) and HASettings.model_fields[key].annotation in (int, float, bool):
                raise DynamicConfigError(f"config key {key!r}: a JSON {_allowed(HASettings.model_fields[key])[0]} "
                                         f"is required, not a string")
    return out


def effective_settings(base: HASettings, dynamic: Mapping[str, JsonValue]) -> HASettings:
    """The HA settings in force: the node file's, overridden by the committed dynamic keys. A
    combination that does not validate (e.g. a node file differing from the one the change was
    checked against) keeps the node file's value for every dynamic key, never a half-merged mix."""
    ha: dict[str, Any] = {k: dynamic[k] for k in DYNAMIC_HA_KEYS if dynamic.get(k) is not None}
    if not ha:
        return base
    try:
        return HASettings.model_validate({**base.model_dump(), **ha}, strict=False)
    except ValidationError:
        return base


def render_pg_value(value: JsonValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def pg_parameters(dynamic: Mapping[str, JsonValue]) -> dict[str, str]:
    """``postgresql.parameters.*`` of the committed configuration, as postgresql.conf values."""
    return {
        key[len(PG_PREFIX):]: render_pg_value(value)
        for key, value in sorted(dynamic.items())
        if key.startswith(PG_PREFIX) and value is not None and not isinstance(value, (dict, list))
    }


if __name__ == "__main__":  # python -m ram.ha.dynconfig  → refresh docs/operations.md
    changed = write_docs_reference(Path(__file__).resolve().parents[2] / "docs" / "operations.md")
    print("docs/operations.md dynamic configuration table " + ("updated" if changed else "already current"))
