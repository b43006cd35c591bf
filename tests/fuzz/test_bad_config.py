"""Broken configuration files, every field wrong in turn: ``ram node run --config`` refuses the file
with one line naming the key, never a traceback and never a started node.

Every key of the configuration (from the models, like the README reference) gets a value of a wrong
type in an otherwise valid file; it goes through exactly what ``ram node run`` does before it
starts anything (``load_config`` and the API security check, turned into the CLI's one-line error).
A few files also go through the real ``ram node run`` process, to see the line as a user does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from ram.cli.ram_cmd import cli as ram_cli
from ram.config import NodeConfig, PeerConfig, load_config
from ram.security import ApiSecurity

REPO = Path(__file__).resolve().parents[2]


def _base(tmp: Path) -> dict[str, Any]:
    secret = tmp / "raft.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    return {
        "cluster_id": "fuzz", "node_id": 1, "name": "pg1", "data_dir": str(tmp / "data"), "bootstrap": True,
        "raft": {"listen": "127.0.0.1:1", "secret_file": str(secret),
                 "peers": [{"id": 2, "name": "pg2", "address": "127.0.0.2:1"}]},
        "store": {"dsn": "postgresql://nobody@127.0.0.1:1/none"},
        "api": {"auth": "none"},
    }


def _keys() -> list[tuple[str, Any]]:
    """Every configuration key (dotted) with its annotation; raft.peers entries as raft.peers.0.<field>."""
    out: list[tuple[str, Any]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                out.append((f"{prefix}{name}", dict))
                walk(annotation, f"{prefix}{name}.")
            else:
                out.append((f"{prefix}{name}", annotation))

    walk(NodeConfig, "")
    out += [(f"raft.peers.0.{name}", info.annotation) for name, info in PeerConfig.model_fields.items()]
    return out


def _wrong(annotation: Any) -> Any:
    """A value no field of this annotation accepts: a table for scalars, a number for lists/tables."""
    origin = typing.get_origin(annotation)
    if annotation is dict or origin is dict or origin is list or annotation is list:
        return 42
    return {"wrong": 1}


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dump(doc: dict[str, Any]) -> str:
    lines = [f"{k} = {_toml(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, body in doc.items():
        if isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml(v)}" for k, v in body.items()]
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)
    return text


def _set(doc: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def _write(tmp: Path, doc: dict[str, Any], name: str = "node.toml") -> Path:
    path = tmp / name
    path.write_text(_dump(doc))
    path.chmod(0o600)
    return path


def _error_of(path: Path) -> str | None:
    """What ``ram node run`` says before starting anything (None: it would start)."""
    try:
        config = load_config(path)
        ApiSecurity.from_settings(config.api)
    except Exception as exc:
        return " ".join(str(exc).split())
    return None


def test_the_base_config_is_valid(tmp_path: Path) -> None:
    assert _error_of(_write(tmp_path, _base(tmp_path))) is None


KEYS = _keys()


@pytest.mark.parametrize("key", [k for k, _ in KEYS])
def test_every_key_wrong_in_turn_is_named(tmp_path: Path, key: str) -> None:
    annotation = dict(KEYS)[key]
    doc = _base(tmp_path)
    _set(doc, key, _wrong(annotation))
    path = _write(tmp_path, doc)
    message = _error_of(path)
    assert message is not None, f"{key} = {_wrong(annotation)!r} was accepted"
    assert key in message, f"the error does not name {key}: {message}"
    assert "\n" not in message and "Traceback" not in message
    # The same file through the CLI (in-process): exit 1, one line "Error: ...".
    result = CliRunner().invoke(ram_cli, ["node", "run", "--config", str(path)])
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and key in lines[0], result.stderr


@pytest.mark.parametrize("text, expect", [
    ("cluster_id = \n", "not valid TOML"),
    ("\x00\x01garbage", "not valid TOML"),
    ("[raft\nlisten = 1\n", "not valid TOML"),
    ("node_id = 1\n", "required key is missing"),
    ("", "required key is missing"),
])
def test_unparsable_files_one_line(tmp_path: Path, text: str, expect: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    path.chmod(0o600)
    result = CliRunner().invoke(ram_cli, ["node", "run", "--config", str(path)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expect in lines[0], result.stderr


def test_unknown_key_and_unreadable_file(tmp_path: Path) -> None:
    doc = _base(tmp_path)
    doc["raft"]["tick_msec"] = 50
    message = _error_of(_write(tmp_path, doc))
    assert message is not None and "raft.tick_msec: unknown key" in message
    assert _error_of(tmp_path / "missing.toml") is not None
    assert "unknown config format" in (_error_of(_write(tmp_path, _base(tmp_path), "node.ini")) or "")


@pytest.mark.parametrize("key", ["raft.tick_ms", "postgres.parameters", "raft.peers.0.address"])
def test_real_process_prints_one_line(tmp_path: Path, key: str) -> None:
    """The real ``ram node run`` process: exit 1, one line on stderr naming the key, nothing else."""
    doc = _base(tmp_path)
    _set(doc, key, _wrong(dict(KEYS)[key]))
    path = _write(tmp_path, doc)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "ram.cli.ram_cmd", "node", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and key in lines[0], proc.stderr
    assert not proc.stdout.strip()


@pytest.mark.parametrize("key, value", [
    ("node_id", 0), ("node_id", -3), ("cluster_id", "has space"), ("name", ""),
    ("raft.listen", "no-port"), ("raft.listen", "127.0.0.1:99999"), ("raft.tick_ms", -1), ("raft.tick_ms", 0),
    ("raft.election_ms", 1), ("raft.snapshot_entries", -5), ("raft.proposal_timeout_s", -1.0),
    ("raft.peers.0.id", -2), ("raft.peers.0.address", "nowhere"),
    ("store.pool_size", 0), ("store.embedded_port", 70000),
    ("api.listen", "x"), ("api.auth", "maybe"), ("api.allowed_clients", ["not-a-cidr"]),
    ("api.max_event_streams", -1),
    ("postgres.listen", "::nope"),
    ("ha.lease_s", -1.0), ("ha.renew_interval_s", 0), ("ha.clock_drift", 5.0), ("ha.synchronous_mode", "sometimes"),
    ("ha.synchronous_node_count", 0), ("ha.report_timeout_s", -2.0), ("ha.maximum_lag_on_failover", -1),
    ("log_format", "xml"), ("log_level", "LOUD"),
])
def test_wrong_values_of_the_right_type_are_named(tmp_path: Path, key: str, value: Any) -> None:
    doc = _base(tmp_path)
    _set(doc, key, value)
    message = _error_of(_write(tmp_path, doc))
    assert message is not None, f"{key} = {value!r} was accepted"
    leaf = key.rsplit(".", 1)[-1]
    assert key in message or leaf in message, f"the error does not name {key}: {message}"
    assert "\n" not in message and "Traceback" not in message
