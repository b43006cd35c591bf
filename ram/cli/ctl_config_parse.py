"""Pure helpers of ``ramctrl config``: ``KEY=VALUE`` parsing, edited documents, and the patch to send.

Everything here is checked on the operator's side first so a typo is reported before anything is
sent (the API checks again; this is about never sending half-meant changes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from ram.cli.ctl_http import CtlError

FORMATS = ("yaml", "json")


def parse_value(text: str) -> Any:
    """JSON when it parses (``250``, ``true``, ``null``, ``{"a": 1}``, ``"quoted"``), else the raw string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, float) and not math.isfinite(value):  # NaN / Infinity are not JSON for the API
        return text
    return value


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``["ttl=30", "postgresql.parameters.work_mem=8MB"]`` -> ``{"ttl": 30, "...work_mem": "8MB"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise CtlError(f"{item!r}: expected KEY=VALUE (use KEY=null to remove a key)")
        if not key or key != key.strip():
            raise CtlError(f"{item!r}: the key must be non-empty, without surrounding spaces")
        if key in out:
            raise CtlError(f"key {key!r} given twice")
        out[key] = parse_value(raw)
    if not out:
        raise CtlError("nothing to set: give at least one KEY=VALUE")
    return out


def dump_document(config: Mapping[str, Any], fmt: str) -> str:
    """The config as the operator edits it: sorted keys, one per line (block style)."""
    if fmt == "json":
        return json.dumps(dict(config), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if not config:
        return "{}\n"
    text: str = yaml.safe_dump(dict(config), sort_keys=True, default_flow_style=False, allow_unicode=True)
    return text


def _check_json(value: Any, where: str) -> None:
    """What YAML can hold but JSON can not (dates, sets, non-string keys, NaN) is an error here."""
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CtlError(f"{where}: {value!r} is not a JSON number")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CtlError(f"{where}: key {key!r} is not a string")
            _check_json(item, f"{where}.{key}")
        return
    raise CtlError(f"{where}: a {type(value).__name__} is not a JSON value (quote it to make it a string)")


def parse_document(text: str, fmt: str) -> dict[str, Any]:
    """An edited document back to a config: it must parse and be a mapping of JSON values."""
    try:
        value = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise CtlError(f"the edited config is not valid {fmt.upper()}: {detail}") from None
    if not isinstance(value, dict):
        kind = "empty" if value is None else f"a {type(value).__name__}"
        raise CtlError(f"the edited config must be a mapping of key -> value, not {kind} (use {{}} for no keys)")
    for key, item in value.items():
        if not isinstance(key, str) or not key.strip() or key != key.strip():
            raise CtlError(f"config key {key!r}: must be a non-empty string without surrounding spaces")
        _check_json(item, f"config key {key!r}")
    return value


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``1``, ``1.0`` and ``true`` differ here although Python says they are equal."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def config_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Only what changed: new or different keys with their value, removed keys as ``None``."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if k not in old or not _same(old[k], v)}
    patch.update({k: None for k in old if k not in new})
    return patch


def describe_patch(old: Mapping[str, Any], patch: Mapping[str, Any]) -> list[str]:
    """Lines like a diff, for the confirmation question: ``- key: old`` / ``+ key: new``."""
    lines: list[str] = []
    for key in sorted(patch):
        if key in old:
            lines.append(f"- {key}: {json.dumps(old[key], ensure_ascii=False)}")
        if patch[key] is not None:
            lines.append(f"+ {key}: {json.dumps(patch[key], ensure_ascii=False)}")
    return lines
