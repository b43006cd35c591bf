"""What RAM needs to know to drive one managed PostgreSQL instance.

A :class:`ManagedInstanceSpec` is plain data: where the data lives, where the server listens, who
owns it, which members may connect, and how long each external step may take. It is built by the
node from its configuration; nothing here touches the disk.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ram.postgres.commands import default_owner

_SLOT_UNSAFE = re.compile(r"[^a-z0-9_]")
#: PostgreSQL truncates identifiers (and slot names) at NAMEDATALEN - 1 bytes.
MAX_SLOT_NAME = 63


#: Replication settings RAM writes in ram.replication.conf (and strips from postgresql.auto.conf).
REPLICATION_PARAMETERS = frozenset({"primary_conninfo", "primary_slot_name", "recovery_target_timeline"})
#: Parameters only the spec decides (they make the node reachable where the cluster expects it).
PROTECTED_PARAMETERS = (
    frozenset(
        {"listen_addresses", "port", "unix_socket_directories", "unix_socket_permissions", "hba_file",
         "ident_file", "data_directory", "config_file", "include", "include_if_exists", "include_dir"}
    )
    | REPLICATION_PARAMETERS
)


def slot_name_for(member: str) -> str:
    """The physical replication slot name for a member: lower-case, ``[a-z0-9_]`` only, ≤ 63 chars.

    Slot names accept only that alphabet, while member names may contain ``-`` and ``.``; mapping
    them deterministically lets every node compute the same slot name for a member without asking.
    """
    name = _SLOT_UNSAFE.sub("_", member.lower())[:MAX_SLOT_NAME]
    if not name:
        raise ValueError(f"member name {member!r} gives an empty slot name")
    return name


def _check_ident(kind: str, value: str) -> str:
    # Role names end up in SQL, pg_hba and conninfo strings; a small safe alphabet removes every
    # quoting question (and the HA layer has no reason to need more).
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
        raise ValueError(f"{kind} {value!r} must match [a-z_][a-z0-9_]* (at most 63 characters)")
    return value


@dataclass(frozen=True)
class Timeouts:
    """Upper bounds, in seconds, for each external step; every program and query has one."""

    command: float = 30.0  # short programs: pg_ctl status/reload, pg_controldata
    start: float = 120.0  # pg_ctl start -w, until the server accepts connections
    stop: float = 60.0  # the fast shutdown, before escalating to immediate
    stop_immediate: float = 15.0  # the immediate shutdown, before SIGKILL (postmaster waits 5 s itself)
    fence: float = 8.0  # fence(): immediate stop, then SIGKILL
    promote: float = 60.0
    connect: float = 5.0  # asyncpg connect to the local instance
    query: float = 15.0  # one local SQL statement (a CHECKPOINT after promotion included)
    follow: float = 30.0  # walreceiver toward the new primary after re-pointing
    clone: float = 3600.0  # pg_basebackup
    rewind: float = 1800.0  # pg_rewind
    single_user: float = 600.0  # crash recovery in single-user mode before pg_rewind


@dataclass(frozen=True)
class TlsFiles:
    """The member's certificate, its key and the CA (PEM paths as configured). RAM copies them next
    to the data directory, owned by the PostgreSQL owner (the server refuses a key it does not own),
    and points both the server and RAM's clients (walreceiver, pg_basebackup, pg_rewind) at the copies."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class PrimaryEndpoint:
    """Where a primary (or any upstream) accepts replication connections."""

    host: str
    port: int
    #: Member name of that node, for logs only.
    name: str | None = None


@dataclass(frozen=True)
class ManagedInstanceSpec:
    """Everything needed to create, run and replicate one managed instance.

    Local access: RAM talks SQL to its own instance only over the unix socket in ``socket_dir``,
    as ``superuser``, authenticated by ``peer`` with an ident map that admits the owner and the OS
    user RAM runs as (root, when PostgreSQL runs as ``postgres``). The socket directory is 0700 and
    owned by the owner. The superuser has no password: it cannot log in over TCP at all.

    Remote access: members (``members``, host IPs) may connect over TCP with SCRAM only, as the
    replication user (streaming, pg_basebackup, pg_rewind source) or any role that has a password.
    With ``tls``, only over TLS (``hostssl``): the replication user must also show a member
    certificate signed by the CA, and RAM's clients verify the server's (``tls_verify``) and insist
    on SCRAM with channel binding, so a server that is not a member never gets a password.

    The password is kept out of ``repr`` (specs end up in logs and tracebacks).
    """

    #: Member name; used as ``application_name`` upstream and for this node's slot name.
    name: str
    data_dir: Path
    host: str
    port: int
    replication_password: str = field(repr=False)
    members: Sequence[str] = ()
    #: Every member's PostgreSQL (host, port): one passfile line each, so the replication password is
    #: offered to members only. Empty (a spec built by hand, tests): one ``*:*`` line.
    member_endpoints: Sequence[tuple[str, int]] = ()
    #: Networks whose clients may log in with a password (besides the members).
    client_cidrs: Sequence[str] = ()
    #: Addresses PostgreSQL listens on besides ``host`` ("*": every address, for a virtual IP).
    extra_listen: Sequence[str] = ()
    #: Member certificate for PostgreSQL TLS (None: no TLS).
    tls: TlsFiles | None = None
    #: How RAM's clients check the upstream's certificate: ``verify-full`` (it must name the host
    #: RAM dials, an IP subjectAltName for members addressed by IP) or ``verify-ca`` (signed by the
    #: CA is enough — for certificates without the hosts in them).
    tls_verify: Literal["verify-full", "verify-ca"] = "verify-full"
    socket_dir: Path | None = None
    owner: str = field(default_factory=default_owner)
    superuser: str = "postgres"
    replication_user: str = "replicator"
    #: Extra postgresql.conf parameters; they win over RAM's defaults (except the listen/socket ones).
    parameters: Mapping[str, str] = field(default_factory=dict)
    #: initdb --data-checksums (wal_log_hints is on regardless: pg_rewind needs one of the two).
    data_checksums: bool = False
    #: When pg_rewind fails, may ``rejoin`` wipe the data directory and clone afresh?
    clone_on_rewind_failure: bool = False
    #: Flush the data directory (syncfs, see ram.postgres.durability) after initdb / pg_basebackup /
    #: pg_rewind. Only tests turn this off (as PostgreSQL's own test suites do with --no-sync): a
    #: crash could then corrupt the copy.
    sync_data: bool = True
    log_file: Path | None = None
    #: A libpq password file RAM writes (outside the data dir, so clones don't copy it).
    passfile: Path | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).absolute())
        if self.socket_dir is None:
            object.__setattr__(self, "socket_dir", self.data_dir.parent / "run")
        if self.log_file is None:
            object.__setattr__(self, "log_file", self.data_dir.parent / f"{self.data_dir.name}.log")
        if self.passfile is None:
            object.__setattr__(self, "passfile", self.data_dir.parent / f".{self.data_dir.name}.pgpass")
        _check_ident("superuser", self.superuser)
        _check_ident("replication_user", self.replication_user)
        if self.superuser == self.replication_user:
            raise ValueError("the replication user must differ from the superuser")
        if not self.replication_password or any(c in self.replication_password for c in "\n\r\0"):
            raise ValueError("replication_password must be non-empty and on one line")
        if not self.replication_password.isascii():
            # PostgreSQL SASLprep-normalises non-ASCII passwords; our client-side SCRAM verifier does not.
            raise ValueError("replication_password must be ASCII")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        ipaddress.ip_address(self.host)  # raises ValueError with a clear message
        for member in self.members:
            ipaddress.ip_address(member)
        slot_name_for(self.name)
        for key in self.parameters:
            if key in PROTECTED_PARAMETERS:
                raise ValueError(f"parameter {key!r} is set by RAM from the node configuration, not by parameters")

    @property
    def sockdir(self) -> Path:
        assert self.socket_dir is not None
        return self.socket_dir

    @property
    def logfile(self) -> Path:
        assert self.log_file is not None
        return self.log_file

    @property
    def pgpass(self) -> Path:
        assert self.passfile is not None
        return self.passfile

    @property
    def tls_dir(self) -> Path:
        """Where RAM keeps the owner's copies of the TLS files (outside the data dir: clones don't copy it)."""
        return self.data_dir.parent / f".{self.data_dir.name}.tls"

    @property
    def slot_name(self) -> str:
        """The slot this node uses on its upstream."""
        return slot_name_for(self.name)

    @property
    def listen_addresses(self) -> str:
        """PostgreSQL's listen_addresses: the member's own address, then any extra ones."""
        if "*" in self.extra_listen:
            return "*"
        return ",".join(dict.fromkeys([self.host, *self.extra_listen]))

    def member_cidrs(self) -> list[str]:
        """Each member as a single-host CIDR (``/32`` or ``/128``), deduplicated, in order."""
        out: list[str] = []
        for member in self.members:
            address = ipaddress.ip_address(member)
            cidr = f"{address}/{address.max_prefixlen}"
            if cidr not in out:
                out.append(cidr)
        return out
