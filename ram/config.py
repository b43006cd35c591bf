"""Node configuration: one file (TOML or YAML), validated by pydantic before anything starts.

Unknown keys and bad values are errors that name the key (``raft.election_ms: must be >= ...``),
so a typo never silently falls back to a default. Every field documents itself; the README's
configuration reference is generated from these models.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ram.ha.settings import HASettings

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
DEFAULT_API_PORT = 8008
DEFAULT_PG_PORT = 5432


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message names the key."""


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` → (host, port), with a clear error for anything else."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected host:port with a port in 1..65535, got {value!r}")
    return host, int(port_text)


def _check_address(value: str) -> str:
    parse_address(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PeerConfig(_Strict):
    """Another member of the cluster as this node first knows it."""

    id: Annotated[int, Field(gt=0, description="The peer's Raft node id (unique, positive).")]
    name: Annotated[str, Field(pattern=NAME_PATTERN, description="The peer's member name.")]
    address: Annotated[str, Field(description="The peer's Raft address, host:port.")]
    api_address: Annotated[
        str | None, Field(description="The peer's HTTP API address, host:port (default: its Raft host, port 8008).")
    ] = None
    pg_address: Annotated[
        str | None,
        Field(description="The peer's managed PostgreSQL, host:port (default: its Raft host, port 5432)."),
    ] = None

    _addr = field_validator("address")(_check_address)

    @field_validator("api_address", "pg_address")
    @classmethod
    def _optional_address(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)

    def api(self) -> str:
        return self.api_address or f"{parse_address(self.address)[0]}:{DEFAULT_API_PORT}"

    def pg(self) -> tuple[str, int]:
        return parse_address(self.pg_address or f"{parse_address(self.address)[0]}:{DEFAULT_PG_PORT}")


class RaftSettings(_Strict):
    """Consensus timings and limits. Defaults suit a LAN or one machine."""

    listen: Annotated[str, Field(description="Raft listen address of this node, host:port.")]
    peers: Annotated[
        list[PeerConfig],
        Field(default_factory=list, description="The other members (all of them when bootstrapping)."),
    ]
    tick_ms: Annotated[int, Field(ge=5, le=1000, description="Raft clock tick in milliseconds.")] = 50
    heartbeat_ms: Annotated[int, Field(ge=10, le=10_000, description="Leader heartbeat interval (ms).")] = 100
    election_ms: Annotated[
        int,
        Field(ge=50, le=60_000, description="Election timeout (ms); each node draws from [election_ms, 2x)."),
    ] = 600
    snapshot_entries: Annotated[
        int, Field(ge=100, description="Take a snapshot and compact the log every this many applied entries.")
    ] = 10_000
    proposal_timeout_s: Annotated[
        float, Field(gt=0, le=600, description="How long a proposal waits for commit before failing.")
    ] = 10.0
    pre_vote: Annotated[
        bool, Field(description="Pre-vote: a partitioned node can not disrupt a healthy leader.")
    ] = True
    check_quorum: Annotated[
        bool, Field(description="A leader that loses its quorum steps down after an election timeout.")
    ] = True

    _addr = field_validator("listen")(_check_address)

    @model_validator(mode="after")
    def _timings(self) -> RaftSettings:
        if self.heartbeat_ms < self.tick_ms:
            raise ValueError(f"heartbeat_ms ({self.heartbeat_ms}) must be >= tick_ms ({self.tick_ms})")
        if self.election_ms < 3 * self.heartbeat_ms:
            raise ValueError(f"election_ms ({self.election_ms}) must be >= 3 x heartbeat_ms ({self.heartbeat_ms})")
        ids = [p.id for p in self.peers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate peer ids: {ids}")
        return self

    @property
    def heartbeat_ticks(self) -> int:
        return max(1, self.heartbeat_ms // self.tick_ms)

    @property
    def election_ticks(self) -> int:
        return max(self.heartbeat_ticks + 1, self.election_ms // self.tick_ms)


class StoreSettings(_Strict):
    """Where the node keeps its Raft log and events (schema pgraft)."""

    dsn: Annotated[
        str | None,
        Field(description="libpq URI of the store database. Empty: run an embedded store under data_dir."),
    ] = None
    embedded_port: Annotated[
        int, Field(gt=0, lt=65536, description="Port of the embedded store (unix socket only).")
    ] = 5433
    pool_size: Annotated[int, Field(ge=2, le=50, description="Connections to the store.")] = 4


class ApiSettings(_Strict):
    """The node's HTTP API (operators, ramctrl, load-balancer health checks)."""

    listen: Annotated[
        str | None, Field(description="HTTP listen address, host:port (default: the Raft host, port 8008).")
    ] = None

    @field_validator("listen")
    @classmethod
    def _optional_address(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)


class PostgresSettings(_Strict):
    """The PostgreSQL instance this node manages."""

    manage: Annotated[
        bool, Field(description="Manage a PostgreSQL instance on this node (off: consensus and API only).")
    ] = False
    listen: Annotated[
        str | None,
        Field(description="Where the managed PostgreSQL listens, host:port (default: the Raft host, port 5432)."),
    ] = None
    data_dir: Annotated[
        Path | None, Field(description="PostgreSQL data directory (default: <data_dir>/pgdata).")
    ] = None
    replication_password: Annotated[
        str | None,
        Field(description="Password of the replication user, the same on every member (required to manage)."),
    ] = None
    parameters: Annotated[
        dict[str, str], Field(description="Extra postgresql.conf parameters for the managed instance.")
    ] = {}  # pydantic copies mutable defaults per instance
    superuser_password: Annotated[
        str | None,
        Field(description="Password of the postgres superuser for TCP logins from members (unset: socket only)."),
    ] = None

    @field_validator("listen")
    @classmethod
    def _optional_address(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)


class NodeConfig(_Strict):
    """The whole configuration of one ``ram node run`` process."""

    cluster_id: Annotated[
        str, Field(pattern=NAME_PATTERN, description="Cluster identity; peers with another id are refused.")
    ]
    cluster_name: Annotated[str, Field(pattern=NAME_PATTERN, description="Human-readable cluster name.")] = "ram"
    node_id: Annotated[int, Field(gt=0, lt=2**31, description="This node's Raft id (unique, positive).")]
    name: Annotated[str, Field(pattern=NAME_PATTERN, description="This node's member name.")]
    data_dir: Annotated[Path, Field(description="Directory for this node's files (embedded store, logs).")]
    bootstrap: Annotated[
        bool,
        Field(description="Start a NEW cluster with this node and raft.peers as the initial voters."),
    ] = False
    join: Annotated[
        list[str],
        Field(default_factory=list, description="Join an existing cluster via these members' Raft addresses."),
    ]
    raft: RaftSettings
    store: StoreSettings = StoreSettings()
    api: ApiSettings = ApiSettings()
    postgres: PostgresSettings = PostgresSettings()
    ha: HASettings = HASettings()
    log_format: Annotated[str, Field(pattern="^(json|kv)$", description="Log lines as json or key=value.")] = "kv"
    log_level: Annotated[str, Field(pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Log level.")] = "INFO"

    @model_validator(mode="after")
    def _consistent(self) -> NodeConfig:
        if self.postgres.manage and not self.postgres.replication_password:
            raise ValueError("postgres.replication_password is required when postgres.manage is true")
        if self.bootstrap and self.join:
            raise ValueError("bootstrap and join are exclusive: bootstrap starts a new cluster, join enters one")
        for peer in self.raft.peers:
            if peer.id == self.node_id:
                raise ValueError(f"raft.peers lists this node's own id {self.node_id}")
            if peer.name == self.name:
                raise ValueError(f"raft.peers lists this node's own name {self.name!r}")
        for address in self.join:
            parse_address(address)
        return self


def pg_data_dir(config: NodeConfig) -> Path:
    """The managed PostgreSQL's data directory."""
    return config.postgres.data_dir or config.data_dir / "pgdata"


def api_address(config: NodeConfig) -> str:
    """This node's API address (explicit, or the Raft host with the default port)."""
    return config.api.listen or f"{parse_address(config.raft.listen)[0]}:{DEFAULT_API_PORT}"


def pg_address(config: NodeConfig) -> tuple[str, int]:
    """This node's managed PostgreSQL address."""
    return parse_address(config.postgres.listen or f"{parse_address(config.raft.listen)[0]}:{DEFAULT_PG_PORT}")


def _format_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_config(data: Any, source: str = "config") -> NodeConfig:
    """Validate a parsed document into a :class:`NodeConfig` (errors name each bad key)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_error(exc)}") from None


def load_config(path: Path) -> NodeConfig:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file and validate it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{path}: unknown config format {path.suffix!r}; use .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {' '.join(str(exc).split())}") from None
    return parse_config(data, str(path))


def reference_markdown() -> str:
    """The configuration reference as a Markdown table, generated from the models (README embeds it)."""
    lines = ["| key | type | default | description |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            key = f"{prefix}{name}"
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{key}.")
                continue
            type_name = getattr(annotation, "__name__", str(annotation)).replace("typing.", "").replace(" | ", " or ")
            if info.is_required():
                default = "required"
            elif info.default_factory is not None:
                default = f"`{info.default_factory()!r}`"  # type: ignore[call-arg]
            else:
                default = f"`{info.default!r}`" if info.default is not None else "empty"
            description = (info.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {type_name} | {default} | {description} |")

    walk(NodeConfig, "")
    lines.append("")
    lines.append("`raft.peers` entries: " + ", ".join(
        f"`{name}` ({info.description})" for name, info in PeerConfig.model_fields.items()
    ))
    return "\n".join(lines)


def config_template(values: dict[str, Any]) -> str:
    """A commented TOML config: the given values set, every other key shown commented out with its
    default and description (generated from the models, like the README reference)."""
    out: list[str] = ["# RAM node configuration (ram node init). Reference: README, 'Configuration reference'.", ""]

    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(value, list):
            return "[" + ", ".join(literal(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{ " + ", ".join(f"{k} = {literal(v)}" for k, v in value.items()) + " }"
        return '""'

    def section(model: type[BaseModel], given: dict[str, Any], header: str | None) -> None:
        if header:
            out.extend(["", f"[{header}]"])
        nested = []
        for name, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                nested.append((name, annotation))
                continue
            out.append(f"# {info.description or name}")
            if name in given:
                out.append(f"{name} = {literal(given[name])}")
            elif info.is_required():
                out.append(f"# {name} = ...  (required)")
            else:
                default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
                out.append(f"# {name} = {literal(default)}" if default is not None else f"# {name} =")
        for name, sub in nested:
            section(sub, dict(given.get(name, {})), f"{header}.{name}" if header else name)

    section(NodeConfig, values, None)
    return "\n".join(out) + "\n"


def write_readme_reference(readme: Path) -> bool:
    """Regenerate the README's configuration reference in place; True if it changed."""
    start = "<!-- config-reference:start (generated by ram.config.reference_markdown; a test keeps it in sync) -->\n"
    end = "<!-- config-reference:end -->"
    text = readme.read_text()
    a, b = text.index(start) + len(start), text.index(end)
    new = text[:a] + reference_markdown() + "\n" + text[b:]
    if new == text:
        return False
    readme.write_text(new)
    return True


if __name__ == "__main__":  # python -m ram.config  → refresh the README reference
    changed = write_readme_reference(Path(__file__).resolve().parent.parent / "README.md")
    print("README configuration reference " + ("updated" if changed else "already current"))
