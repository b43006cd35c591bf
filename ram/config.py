"""Node configuration: one file (TOML or YAML), validated by pydantic before anything starts.

Unknown keys and bad values are errors that name the key (``raft.election_ms: must be >= ...``),
so a typo never silently falls back to a default. Every field documents itself; the README's
configuration reference is generated from these models.

Secrets (passwords, the cluster secret) are :class:`pydantic.SecretStr` or files named by the
config: they never show in ``repr``, logs or dumps. Every file that holds a secret — the config file
itself when it carries a password inline — must not be accessible to group or others; a node
refuses to start otherwise (:func:`check_secrets`), naming the file and the ``chmod`` that fixes it.
Secret files are read when needed (:func:`read_secret_file`), so a rotated password file is picked
up without a restart.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ram.addresses import parse_address as parse_address
from ram.ha.settings import HASettings
from ram.tomltext import toml_value

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
DEFAULT_API_PORT = 8008
DEFAULT_PG_PORT = 5432


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message names the key."""


def _check_address(value: str) -> str:
    parse_address(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _all_or_none(section: str, **paths: Path | None) -> None:
    given = [k for k, v in paths.items() if v is not None]
    if given and len(given) != len(paths):
        missing = [f"{section}.{k}" for k in paths if k not in given]
        raise ValueError(f"{', '.join(missing)} must be set too: TLS needs {', '.join(paths)} together")


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
    secret_file: Annotated[
        Path | None,
        Field(
            description="File holding the shared cluster secret (one line, at least 16 characters, the same on "
            "every member, mode 0600, e.g. `openssl rand -hex 32`); peers prove they know it when they connect."
        ),
    ] = None
    tls_cert: Annotated[
        Path | None,
        Field(
            description="This member's certificate (PEM) for mutual TLS between peers; its CN or a DNS subjectAltName "
            "must be the member name, and it must allow server and client use."
        ),
    ] = None
    tls_key: Annotated[Path | None, Field(description="The private key of raft.tls_cert (PEM, mode 0600).")] = None
    tls_ca: Annotated[
        Path | None,
        Field(description="CA certificate(s) (PEM) that sign the members' certificates; best one CA per cluster."),
    ] = None
    insecure: Annotated[
        bool,
        Field(
            description="Run a multi-node cluster with neither secret_file nor TLS: anyone who reaches the Raft "
            "port can act as a member. Only for throwaway test setups."
        ),
    ] = False

    _addr = field_validator("listen")(_check_address)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @model_validator(mode="after")
    def _timings(self) -> RaftSettings:
        if self.heartbeat_ms < self.tick_ms:
            raise ValueError(f"heartbeat_ms ({self.heartbeat_ms}) must be >= tick_ms ({self.tick_ms})")
        if self.election_ms < 3 * self.heartbeat_ms:
            raise ValueError(f"election_ms ({self.election_ms}) must be >= 3 x heartbeat_ms ({self.heartbeat_ms})")
        ids = [p.id for p in self.peers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate peer ids: {ids}")
        _all_or_none("raft", tls_cert=self.tls_cert, tls_key=self.tls_key, tls_ca=self.tls_ca)
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
    # Security (docs/security.md). Secure by default: without tokens_file or RAM_ADMIN_TOKEN /
    # RAM_READ_TOKEN in the node's environment, requests that need a token are refused; running
    # without authentication takes an explicit auth = "none".
    auth: Annotated[
        str,
        Field(pattern="^(token|none)$", description="token: requests need a bearer token (writes the admin "
              "role); none: no authentication at all (only on a trusted network)."),
    ] = "token"
    tokens_file: Annotated[
        Path | None,
        Field(description="API tokens: TOML (or .json/.yaml) [tokens.NAME] with role (admin or read) and "
              "token or sha256; must be mode 0600. RAM_ADMIN_TOKEN / RAM_READ_TOKEN add tokens too."),
    ] = None
    auth_reads: Annotated[
        bool, Field(description="Reads (GET) need a token (read or admin role); false: reads are open.")
    ] = True
    auth_health: Annotated[
        bool,
        Field(description="The load-balancer health checks (/primary, /replica, /health, ...) need a token too."),
    ] = False
    allowed_hosts: Annotated[
        list[str],
        Field(description="Accepted Host headers (name or name:port); empty: any. Guards against DNS rebinding."),
    ] = []
    allowed_clients: Annotated[
        list[str],
        Field(description="Client addresses allowed to connect (CIDRs, e.g. 10.0.0.0/24); empty: any. "
              "Applies to every endpoint, health checks included."),
    ] = []
    tls_cert: Annotated[
        Path | None, Field(description="PEM certificate (chain) of the API: with tls_key, the API speaks HTTPS.")
    ] = None
    tls_key: Annotated[Path | None, Field(description="PEM private key of tls_cert (mode 0600).")] = None
    tls_client_ca: Annotated[
        Path | None,
        Field(description="PEM CA bundle: every client must present a certificate signed by it (mutual TLS)."),
    ] = None
    max_event_streams: Annotated[
        int,
        Field(ge=1, le=100_000, description="Open /events/stream clients this node serves at once; more get "
              "a 503. All streams share one store connection."),
    ] = 200

    @field_validator("listen")
    @classmethod
    def _optional_address(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)

    @field_validator("allowed_clients")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        import ipaddress  # here: only this check needs it, and this block is all of ApiSettings

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an address or CIDR (e.g. 10.0.0.0/24)") from None
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> ApiSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (HTTPS)")
        return self


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
        SecretStr | None,
        Field(
            description="Password of the replication user, the same on every member (this or "
            "replication_password_file is required to manage; the config file must then be mode 0600)."
        ),
    ] = None
    replication_password_file: Annotated[
        Path | None,
        Field(
            description="File holding the replication password (one line, mode 0600); re-read while running, so "
            "a changed file rotates the password without a restart."
        ),
    ] = None
    parameters: Annotated[
        dict[str, str], Field(description="Extra postgresql.conf parameters for the managed instance.")
    ] = {}  # pydantic copies mutable defaults per instance
    client_cidrs: Annotated[
        list[str],
        Field(
            description="Networks whose clients may log in to PostgreSQL with a password (scram-sha-256; "
            "hostssl with TLS), e.g. [\"10.0.1.0/24\"] for the application servers. Empty: members only.",
        ),
    ] = []
    extra_listen: Annotated[
        list[Annotated[str, Field(pattern=r"^(\*|[0-9A-Fa-f.:]+)$")]],
        Field(
            description="Addresses PostgreSQL listens on besides postgres.listen's host. [\"*\"] for a virtual IP "
            "that moves between members (PostgreSQL binds only addresses present when it starts).",
        ),
    ] = []
    superuser_password: Annotated[
        SecretStr | None,
        Field(description="Password of the postgres superuser for TCP logins from members (unset: socket only)."),
    ] = None
    superuser_password_file: Annotated[
        Path | None,
        Field(description="File holding the superuser password (one line, mode 0600); re-read while running."),
    ] = None
    tls_cert: Annotated[
        Path | None,
        Field(
            description="Member certificate (PEM) for PostgreSQL TLS: the server's certificate and the client "
            "certificate of replication; it must name this member's PostgreSQL host (IP or DNS subjectAltName)."
        ),
    ] = None
    tls_key: Annotated[Path | None, Field(description="The private key of postgres.tls_cert (PEM, mode 0600).")] = None

    @field_validator("client_cidrs")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        out = []
        for text in value:
            try:
                out.append(str(ipaddress.ip_network(text, strict=False)))
            except ValueError:
                raise ValueError(f"{text!r} is not a network (CIDR such as 10.0.1.0/24 or 2001:db8::/64)") from None
        return out
    tls_ca: Annotated[
        Path | None, Field(description="CA certificate(s) (PEM) that sign the members' PostgreSQL certificates.")
    ] = None
    tls_verify: Annotated[
        str,
        Field(
            pattern="^(full|ca)$",
            description="How members check each other's PostgreSQL certificate: full (sslmode=verify-full: it must "
            "name the host dialed, an IP subjectAltName for members addressed by IP) or ca (signed by tls_ca).",
        ),
    ] = "full"

    @field_validator("listen")
    @classmethod
    def _optional_address(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)

    @model_validator(mode="after")
    def _secrets(self) -> PostgresSettings:
        for name in ("replication_password", "superuser_password"):
            if getattr(self, name) is not None and getattr(self, f"{name}_file") is not None:
                raise ValueError(f"set postgres.{name} or postgres.{name}_file, not both")
        _all_or_none("postgres", tls_cert=self.tls_cert, tls_key=self.tls_key, tls_ca=self.tls_ca)
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def _command(value: Any) -> Any:
    """A callback command: a list of words, or one string split as a shell would (no shell runs it)."""
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"can not split {value!r} into words: {exc}") from None
        return words or None
    return value


_CALLBACK_HELP = (
    "Command run {when}: its words, then ACTION ROLE CLUSTER_NAME are appended "
    '(e.g. ["/usr/local/bin/vip.sh"] runs vip.sh {hook} primary main).'
)


class CallbacksSettings(_Strict):
    """Operator scripts run on this member's PostgreSQL life-cycle events (Patroni's callbacks):
    asynchronous, in order, with a timeout; their outcome is logged and recorded as a
    ``callback_ran`` event and never changes what RAM does."""

    on_start: Annotated[
        list[Annotated[str, Field(min_length=1)]] | None,
        Field(min_length=1, description=_CALLBACK_HELP.format(when="when PostgreSQL starts", hook="on_start")),
    ] = None
    on_stop: Annotated[
        list[Annotated[str, Field(min_length=1)]] | None,
        Field(min_length=1, description=_CALLBACK_HELP.format(when="when PostgreSQL stops", hook="on_stop")),
    ] = None
    on_restart: Annotated[
        list[Annotated[str, Field(min_length=1)]] | None,
        Field(min_length=1, description=_CALLBACK_HELP.format(when="after an operator's restart", hook="on_restart")),
    ] = None
    on_role_change: Annotated[
        list[Annotated[str, Field(min_length=1)]] | None,
        Field(min_length=1, description=_CALLBACK_HELP.format(when="when the role changes (promotion, demotion)",
                                                               hook="on_role_change")),
    ] = None
    on_reload: Annotated[
        list[Annotated[str, Field(min_length=1)]] | None,
        Field(min_length=1, description=_CALLBACK_HELP.format(when="after a configuration reload", hook="on_reload")),
    ] = None
    timeout_s: Annotated[
        float, Field(gt=0, le=3600, description="A callback still running after this is killed (its process group).")
    ] = 30.0

    _split = field_validator("on_start", "on_stop", "on_restart", "on_role_change", "on_reload", mode="before")(
        _command
    )


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
    callbacks: CallbacksSettings = CallbacksSettings()
    log_format: Annotated[str, Field(pattern="^(json|kv)$", description="Log lines as json or key=value.")] = "kv"
    log_level: Annotated[str, Field(pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Log level.")] = "INFO"

    @model_validator(mode="after")
    def _consistent(self) -> NodeConfig:
        if self.postgres.manage and not (self.postgres.replication_password or self.postgres.replication_password_file):
            raise ValueError(
                "postgres.replication_password or postgres.replication_password_file is required when "
                "postgres.manage is true"
            )
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


#: Shortest cluster secret accepted (characters of the file's line).
MIN_SECRET_CHARS = 16


def check_private_file(path: Path, what: str) -> None:
    """Refuse (ConfigError, one line) a secret-holding file that is missing, unreadable or accessible
    to group or others: a secret readable by every local user is no secret."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what} {path} is not a regular file")
    if mode & 0o077:
        raise ConfigError(
            f"{path} holds a secret ({what}) but group or others may access it (mode {stat.S_IMODE(mode):04o}); "
            f"fix: chmod 600 {path}"
        )


def read_secret_file(path: Path, what: str) -> str:
    """The secret in ``path``: its content with surrounding whitespace (the trailing newline) removed.

    Checked like :func:`check_private_file`; an empty file or one holding several lines is an error.
    Read anew on each call, so a rotated file takes effect without a restart.
    """
    check_private_file(path, what)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not text:
        raise ConfigError(f"{what} {path} is empty")
    if "\n" in text or "\r" in text or "\0" in text:
        raise ConfigError(f"{what} {path} must hold the secret on one line")
    return text


def raft_secret(config: NodeConfig) -> bytes | None:
    """The shared cluster secret (``raft.secret_file``), or None when none is configured."""
    path = config.raft.secret_file
    if path is None:
        return None
    secret = read_secret_file(path, "raft.secret_file")
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"raft.secret_file {path}: the secret has {len(secret)} characters, at least {MIN_SECRET_CHARS} are "
            f"needed (e.g. openssl rand -hex 32 > {path})"
        )
    return secret.encode()


def _password(config: NodeConfig, name: str) -> str | None:
    value: SecretStr | None = getattr(config.postgres, name)
    path: Path | None = getattr(config.postgres, f"{name}_file")
    if path is not None:
        return read_secret_file(path, f"postgres.{name}_file")
    return value.get_secret_value() if value is not None else None


def replication_password(config: NodeConfig) -> str | None:
    """The replication password now: ``postgres.replication_password_file`` (re-read) or the inline value."""
    return _password(config, "replication_password")


def superuser_password(config: NodeConfig) -> str | None:
    """The superuser password now: ``postgres.superuser_password_file`` (re-read) or the inline value."""
    return _password(config, "superuser_password")


def _inline_secrets(model: BaseModel, prefix: str = "") -> list[str]:
    """Keys holding a non-empty SecretStr anywhere in the config (whoever added them)."""
    found: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr) and value.get_secret_value():
            found.append(f"{prefix}{name}")
        elif isinstance(value, BaseModel):
            found.extend(_inline_secrets(value, f"{prefix}{name}."))
    return found


def check_secrets(config: NodeConfig, source: Path | None = None) -> None:
    """What a node checks before it starts (ConfigError, one line, naming the file or key):

    * a multi-node cluster (peers or join) authenticates its peers — ``raft.secret_file`` or
      ``raft.tls_*`` — unless ``raft.insecure`` says otherwise, explicitly;
    * every file holding a secret is private (mode 0600 or stricter) and readable: the cluster secret,
      TLS keys, password files, and the config file ``source`` itself when it carries a secret inline.
    """
    raft = config.raft
    if (raft.peers or config.join) and raft.secret_file is None and not raft.tls and not raft.insecure:
        raise ConfigError(
            "raft: peers must authenticate: set raft.secret_file (a file holding a shared secret, e.g. "
            "openssl rand -hex 32) or raft.tls_cert/tls_key/tls_ca; raft.insecure = true runs without "
            "(test setups only)"
        )
    raft_secret(config)
    for key, path in (("raft.tls_key", raft.tls_key), ("postgres.tls_key", config.postgres.tls_key)):
        if path is not None:
            check_private_file(path, key)
    for key, tls_path in (
        ("raft.tls_cert", raft.tls_cert), ("raft.tls_ca", raft.tls_ca),
        ("postgres.tls_cert", config.postgres.tls_cert), ("postgres.tls_ca", config.postgres.tls_ca),
    ):
        if tls_path is not None and not os.access(tls_path, os.R_OK):
            raise ConfigError(f"{key} {tls_path} does not exist or is not readable")
    for section, cert, key_file, ca in (
        ("raft", raft.tls_cert, raft.tls_key, raft.tls_ca),
        ("postgres", config.postgres.tls_cert, config.postgres.tls_key, config.postgres.tls_ca),
    ):
        if cert is not None and key_file is not None and ca is not None:
            _check_tls_files(section, cert, key_file, ca)
    replication_password(config)
    superuser_password(config)
    inline = _inline_secrets(config)
    if inline and source is not None:
        check_private_file(source, f"config file with {', '.join(inline)}")


def _check_tls_files(section: str, cert: Path, key: Path, ca: Path) -> None:
    """Load the certificate, key and CA once, so a bad PEM or a key of another certificate stops the
    start with a line naming the files (not a TLS error at the first connection)."""
    import ssl  # only nodes with TLS need it

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{section}.tls_cert {cert} / {section}.tls_key {key}: cannot load them as a certificate and its key "
            f"({getattr(exc, 'reason', None) or exc})"
        ) from None
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{section}.tls_ca {ca}: not a PEM CA certificate ({getattr(exc, 'reason', None) or exc})"
        ) from None


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


def load_config(path: Path, *, check: bool = True) -> NodeConfig:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file and validate it; with ``check`` (what
    ``ram node run`` does) also :func:`check_secrets`."""
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
    config = parse_config(data, str(path))
    if check:
        check_secrets(config, path)
    return config


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
        try:
            return toml_value(value)
        except TypeError:  # a default with no TOML form (e.g. a secret): show the key unset
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
