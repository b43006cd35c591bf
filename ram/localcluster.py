"""A local cluster on this machine: one store instance, N nodes each managing its own PostgreSQL.

Used by ``ram cluster up/down`` and by the end-to-end tests, so both exercise the same path. Each
node gets its own loopback address (127.0.0.11, .12, …) so that a test can cut the network between
two nodes with iptables; ports derive from one base port. ``DIR/cluster.json`` describes the result
(member names, API URLs, PostgreSQL host and port, data directories, process ids) for tools.

Secure by default, like a real deployment: the nodes' APIs require tokens (``DIR/api-tokens.toml``
holds their SHA-256 digests; ``DIR/admin.token`` and ``DIR/read.token`` the tokens for ramctrl, all
mode 0600 from creation), and with ``tls`` they speak HTTPS with certificates from a cluster CA
(``DIR/tls/``, made by :mod:`ram.tls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets
import signal
import ssl
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from ram.eventstore import schema
from ram.postgres import proctree
from ram.postgres.commands import default_owner
from ram.postgres.server import PostgresServer
from ram.security import new_token, read_token_file, tokens_file_text, write_private
from ram.tomltext import toml_line, toml_value

CLUSTER_FILE = "cluster.json"


@dataclass
class MemberInfo:
    """One member of a local cluster as tools and scripts see it."""

    name: str
    node_id: int
    host: str
    pg_port: int
    api_port: int
    raft_port: int
    node_dir: str
    pg_data_dir: str
    config_file: str
    log_file: str
    pid: int | None = None
    api_scheme: str = "http"

    @property
    def api_url(self) -> str:
        return f"{self.api_scheme}://{self.host}:{self.api_port}"

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["api_url"] = self.api_url
        return doc


@dataclass
class ClusterInfo:
    name: str
    cluster_id: str
    dir: str
    store_port: int
    replication_password: str
    superuser_password: str = ""
    members: list[MemberInfo] = field(default_factory=list)
    #: The nodes' API over HTTPS with certificates of the cluster's own CA (``ram cluster up --tls``).
    tls: bool = False

    @property
    def pgpass_file(self) -> Path:
        return Path(self.dir) / "pgpass"

    @property
    def tokens_file(self) -> Path:
        """The nodes' ``api.tokens_file``: token names, roles and SHA-256 digests (no token itself)."""
        return Path(self.dir) / "api-tokens.toml"

    @property
    def admin_token_file(self) -> Path:
        """The admin token for ramctrl (``export RAM_TOKEN_FILE=...``)."""
        return Path(self.dir) / "admin.token"

    @property
    def read_token_file(self) -> Path:
        """A read-only token (monitoring, dashboards)."""
        return Path(self.dir) / "read.token"

    @property
    def tls_dir(self) -> Path:
        return Path(self.dir) / "tls"

    @property
    def ca_file(self) -> Path | None:
        """The cluster CA's certificate (``export RAM_CACERT=...``), when the APIs speak HTTPS."""
        return self.tls_dir / "ca.crt" if self.tls else None

    def admin_token(self) -> str:
        return read_token_file(self.admin_token_file)

    def api_headers(self) -> dict[str, str]:
        """What an HTTP client of the nodes' APIs sends: the admin token."""
        return {"Authorization": f"Bearer {self.admin_token()}"}

    def api_verify(self) -> ssl.SSLContext | bool:
        """How an HTTP client checks the nodes' certificates (``httpx`` ``verify=``)."""
        ca = self.ca_file
        return ssl.create_default_context(cafile=str(ca)) if ca is not None else True

    def writer_dsn(self) -> str:
        hosts = ",".join(f"{m.host}:{m.pg_port}" for m in self.members)
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"

    def reader_dsn(self) -> str:
        hosts = ",".join(f"{m.host}:{m.pg_port}" for m in self.members)
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=any"

    def save(self) -> None:
        path = Path(self.dir) / CLUSTER_FILE
        doc = {
            "name": self.name,
            "cluster_id": self.cluster_id,
            "dir": self.dir,
            "store_port": self.store_port,
            "replication_password": self.replication_password,
            "superuser_password": self.superuser_password,
            "pgpass_file": str(self.pgpass_file),
            "tokens_file": str(self.tokens_file),
            "admin_token_file": str(self.admin_token_file),
            "read_token_file": str(self.read_token_file),
            "tls": self.tls,
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "writer_dsn": self.writer_dsn(),
            "reader_dsn": self.reader_dsn(),
            "members": [m.as_json() for m in self.members],
        }
        write_private(path, json.dumps(doc, indent=2) + "\n", overwrite=True)  # passwords: 0600 from creation

    @classmethod
    def load(cls, directory: Path) -> ClusterInfo:
        path = directory / CLUSTER_FILE
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no local cluster in {directory} ({CLUSTER_FILE} not found)") from None
        members = []
        for m in doc["members"]:
            m = dict(m)
            m.pop("api_url", None)
            members.append(MemberInfo(**m))
        return cls(
            name=doc["name"], cluster_id=doc["cluster_id"], dir=doc["dir"], store_port=doc["store_port"],
            replication_password=doc["replication_password"], superuser_password=doc.get("superuser_password", ""),
            members=members, tls=bool(doc.get("tls", False)),
        )


SYNC_MODES = ("off", "on", "quorum")


def sync_settings(mode: str, *, strict: bool = False, count: int = 1, nodes: int = 3) -> dict[str, Any] | None:
    """The ``[ha]`` keys of every node for ``ram cluster up --sync MODE [--strict] [--sync-count N]``.

    None for ``off`` without options: the nodes' defaults (asynchronous) apply and their configs stay
    minimal. Raises ValueError for a combination that could never work, so a typo is not a cluster
    that quietly runs in another mode.
    """
    if mode not in SYNC_MODES:
        raise ValueError(f"--sync must be one of {', '.join(SYNC_MODES)}, got {mode!r}")
    if mode == "off":
        if strict or count != 1:
            raise ValueError("--strict and --sync-count need --sync on or --sync quorum")
        return None
    if count < 1:
        raise ValueError(f"--sync-count must be at least 1, got {count}")
    if count > nodes - 1:
        raise ValueError(
            f"--sync-count {count} needs at least {count + 1} nodes (the primary and {count} standbys); "
            f"this cluster has {nodes}"
        )
    return {"synchronous_mode": mode, "synchronous_node_count": count, "synchronous_strict": strict}


def member_host(index: int) -> str:
    """Node ``index`` (1-based) listens on its own loopback address: 127.0.0.11, .12, …"""
    return f"127.0.0.{10 + index}"


def plan(directory: Path, nodes: int, base_port: int, name: str = "ram", *, tls: bool = False) -> ClusterInfo:
    """Lay out a new cluster: addresses, ports, directories (nothing is created yet). ``tls``: the
    APIs speak HTTPS with certificates of a CA made for this cluster."""
    if not 1 <= nodes <= 9:
        raise ValueError(f"--nodes must be between 1 and 9, got {nodes}")
    if not 1024 <= base_port <= 65535 - 300:
        raise ValueError(f"--base-port must be between 1024 and {65535 - 300}, got {base_port}")
    directory = directory.absolute()
    info = ClusterInfo(
        name=name,
        cluster_id=f"{name}-{secrets.token_hex(4)}",
        dir=str(directory),
        store_port=base_port + 299,
        replication_password=secrets.token_urlsafe(18),
        superuser_password=secrets.token_urlsafe(18),
        tls=tls,
    )
    for i in range(1, nodes + 1):
        node_dir = directory / f"node{i}"
        info.members.append(
            MemberInfo(
                name=f"pg{i}",
                node_id=i,
                host=member_host(i),
                pg_port=base_port + i - 1,
                api_port=base_port + 100 + i - 1,
                raft_port=base_port + 200 + i - 1,
                node_dir=str(node_dir),
                pg_data_dir=str(node_dir / "pgdata"),
                config_file=str(node_dir / "node.toml"),
                log_file=str(node_dir / "ram.log"),
                api_scheme="https" if tls else "http",
            )
        )
    return info


def store_server(info: ClusterInfo) -> PostgresServer:
    """The store instance shared by the local nodes (one database each), unix socket only."""
    base = Path(info.dir) / "store"
    return PostgresServer(datadir=base / "data", port=info.store_port, socket_dir=base / "run")


def node_config_toml(info: ClusterInfo, member: MemberInfo, store_dsn: str, ha: dict[str, Any] | None = None) -> str:
    """The TOML configuration of one local node (commented, as an operator would write it)."""
    peers = [
        {
            "id": other.node_id,
            "name": other.name,
            "address": f"{other.host}:{other.raft_port}",
            "api_address": f"{other.host}:{other.api_port}",
            "pg_address": f"{other.host}:{other.pg_port}",
        }
        for other in info.members
        if other.name != member.name
    ]
    lines = [
        f"# RAM node {member.name} of local cluster {info.name!r} (generated by ram cluster up)",
        toml_line("cluster_id", info.cluster_id),
        toml_line("cluster_name", info.name),
        toml_line("node_id", member.node_id),
        toml_line("name", member.name),
        toml_line("data_dir", member.node_dir),
        toml_line("bootstrap", True),
        "",
        "[raft]",
        toml_line("listen", f"{member.host}:{member.raft_port}"),
        toml_line("secret_file", raft_secret_file(info)),
        *_tls_lines(info, member, "tls_ca"),
        "peers = [",
        *[f"  {toml_value(peer)}," for peer in peers],
        "]",
        "",
        "[api]",
        toml_line("listen", f"{member.host}:{member.api_port}"),
        *_api_security_lines(info, member),
        "",
        "[store]",
        toml_line("dsn", store_dsn),
        "",
        "[postgres]",
        toml_line("manage", True),
        toml_line("listen", f"{member.host}:{member.pg_port}"),
        toml_line("data_dir", member.pg_data_dir),
        toml_line("replication_password", info.replication_password),
        toml_line("superuser_password", info.superuser_password),
        *_tls_lines(info, member, "tls_ca"),
    ]
    if ha:
        lines += ["", "[ha]"] + [toml_line(key, value) for key, value in ha.items()]
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # what we write must parse
    return text


def _tls_lines(info: ClusterInfo, member: MemberInfo, ca_key: str) -> list[str]:
    """With ``--tls``, Raft (mutual TLS, besides the secret) and PostgreSQL (ssl, hostssl, verify-full
    replication) use the member's certificate of the cluster CA, as the API does."""
    if not info.tls:
        return []
    return [
        toml_line("tls_cert", info.tls_dir / f"{member.name}.crt"),
        toml_line("tls_key", info.tls_dir / f"{member.name}.key"),
        toml_line(ca_key, info.tls_dir / "ca.crt"),
    ]


def _api_security_lines(info: ClusterInfo, member: MemberInfo) -> list[str]:
    lines = [toml_line("tokens_file", info.tokens_file)]
    if info.tls:
        lines += [
            toml_line("tls_cert", info.tls_dir / f"{member.name}.crt"),
            toml_line("tls_key", info.tls_dir / f"{member.name}.key"),
        ]
    return lines


def write_api_tokens(info: ClusterInfo) -> bool:
    """Create the API tokens once: an ``admin`` and a ``read`` token (files for ramctrl) and the nodes'
    tokens file with their digests, every file 0600 from its creation. Existing tokens are kept (a
    cluster brought up again keeps working with the exported ``RAM_TOKEN_FILE``). True if created."""
    if info.tokens_file.exists() and info.admin_token_file.exists():
        return False
    tokens: dict[str, tuple[Any, str]] = {}
    for name, role, path in (("admin", "admin", info.admin_token_file), ("read", "read", info.read_token_file)):
        if path.exists():
            token = read_token_file(path)
        else:
            token = new_token()
            write_private(path, token + "\n")
        tokens[name] = (role, token)
    write_private(info.tokens_file, tokens_file_text(tokens), overwrite=True)
    return True


def write_api_certificates(info: ClusterInfo) -> None:
    """A CA for the cluster and one certificate per member for its own address (keys 0600); the same
    certificates serve for server and client use, so other TLS (Raft, PostgreSQL) can use them too."""
    from ram.tls import make_ca, make_cert  # cryptography is imported only for TLS clusters

    ca = make_ca(info.tls_dir, name=f"RAM {info.name} cluster CA ({info.cluster_id})")
    for member in info.members:
        make_cert(ca, member.name, [member.host, "localhost"], info.tls_dir)


def upgrade_api_security(info: ClusterInfo) -> bool:
    """A cluster made before the APIs required tokens: create the tokens and add ``tokens_file`` to each
    node's ``[api]`` section (its nodes would otherwise refuse every request). True if changed."""
    if "tokens_file" in Path(info.members[0].config_file).read_text():
        return False
    write_api_tokens(info)
    for member in info.members:
        path = Path(member.config_file)
        text = path.read_text()
        listen = toml_line("listen", f"{member.host}:{member.api_port}") + "\n"
        tokens_line = toml_line("tokens_file", info.tokens_file)
        if listen not in text:
            raise ValueError(f"{path}: no [api] listen line to add tokens_file after; add it by hand: {tokens_line}")
        new = text.replace(listen, listen + tokens_line + "\n", 1)
        tomllib.loads(new)
        write_private(path, new, overwrite=True)
    return True


def raft_secret_file(info: ClusterInfo) -> Path:
    """The cluster secret the nodes' Raft peers prove to each other (``raft.secret_file``)."""
    return Path(info.dir) / "raft.secret"


def write_raft_secret(info: ClusterInfo) -> None:
    """Create the cluster secret once (64 hex characters and a newline), mode 0600 from the moment the
    file exists (never written first and restricted afterwards); an existing one is kept, so the
    nodes of a cluster brought up again still agree."""
    path = raft_secret_file(info)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")


def _write_layout(info: ClusterInfo, dsns: dict[str, str], ha: dict[str, Any] | None) -> None:
    write_raft_secret(info)
    write_api_tokens(info)
    if info.tls:
        write_api_certificates(info)
    for member in info.members:
        node_dir = Path(member.node_dir)
        node_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(node_dir, 0o755)
        # Configs and pgpass hold passwords: 0600 from creation, never written first and chmod-ed after.
        write_private(Path(member.config_file), node_config_toml(info, member, dsns[member.name], ha), overwrite=True)
    lines = [f"{m.host}:{m.pg_port}:*:postgres:{info.superuser_password}" for m in info.members]
    write_private(info.pgpass_file, "\n".join(lines) + "\n", overwrite=True)
    info.save()


def unreachable_ancestor(directory: Path, owner: str) -> Path | None:
    """The first existing ancestor of ``directory`` that ``owner`` can not enter (None: all fine).

    As root, PostgreSQL runs as another user, which must be able to walk down to its data
    directories: a checkout under /root (mode 0700) is the usual trap."""
    if os.geteuid() != 0 or owner == "root":
        return None
    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError:
        return None
    for ancestor in reversed(directory.resolve().parents):
        try:
            st = ancestor.stat()
        except OSError:
            break
        if st.st_uid == uid:
            continue
        if not st.st_mode & 0o001:  # not searchable by others (group membership is not checked)
            return ancestor
    return None


async def prepare(info: ClusterInfo, ha: dict[str, Any] | None = None) -> None:
    """Create directories, the store instance and one migrated database per node, and node configs."""
    owner = default_owner()
    blocked = unreachable_ancestor(Path(info.dir), owner)
    if blocked is not None:
        raise ValueError(
            f"{info.dir}: PostgreSQL runs as {owner!r}, which can not enter {blocked} "
            f"(mode {blocked.stat().st_mode & 0o777:o}); use --dir under a directory it can reach, "
            f"e.g. --dir /var/tmp/ram-cluster"
        )
    await asyncio.to_thread(Path(info.dir).mkdir, parents=True, exist_ok=True)
    os.chmod(info.dir, 0o755)
    server = store_server(info)
    await server.init()
    await server.start()
    dsns = {member.name: server.dsn(f"ram_{member.name}") for member in info.members}
    conn = await asyncpg.connect(server.dsn())
    try:
        for member in info.members:
            db = f"ram_{member.name}"
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db):
                await conn.execute(f'CREATE DATABASE "{db}"')
    finally:
        await conn.close()
    for dsn in dsns.values():
        await asyncio.to_thread(schema.upgrade, dsn)
    await asyncio.to_thread(_write_layout, info, dsns, ha)


def start_node(info: ClusterInfo, member: MemberInfo, env: dict[str, str] | None = None) -> int:
    """Start ``ram node run`` for one member in the background; returns its pid. ``env``: the
    child's whole environment (default: ours) - e.g. a PYTHONPATH running another RAM version."""
    log = open(member.log_file, "ab")  # noqa: SIM115 - handed to the child process
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ram.cli.ram_cmd", "node", "run", "--config", member.config_file],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=member.node_dir,
            env=env,
        )
    finally:
        log.close()
    member.pid = proc.pid
    info.save()
    return proc.pid


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped) is not alive.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if status == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def postmaster_pid(member: MemberInfo) -> int | None:
    """The running postmaster of ``member``'s PostgreSQL, from its ``postmaster.pid``.

    The pid is checked against the process's command line (a postgres process on this data
    directory): after a crash the file stays behind and its pid may belong to anyone by now.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((Path(member.pg_data_dir) / "postmaster.pid").read_text().split()[0])
        if pid_alive(pid) and member.pg_data_dir in _cmdline(pid):
            return pid
    return None


def ram_pid(member: MemberInfo) -> int | None:
    """``member``'s running ``ram node run`` process (checked by its command line, like the postmaster)."""
    if member.pid and pid_alive(member.pid) and member.config_file in _cmdline(member.pid):
        return member.pid
    return None


def kill_member(member: MemberInfo, *, ram: bool = True, postgres: bool = True) -> list[tuple[str, int]]:
    """SIGKILL ``member``'s ram process and/or its postmaster, as a crash would; returns what was killed.

    Both are read before either is killed, and ram goes first: a live ram would restart a killed
    postmaster at once. Waits until the killed processes are gone, so the caller sees the crash.
    """
    targets: list[tuple[str, int]] = []
    pm = postmaster_pid(member) if postgres else None
    node = ram_pid(member) if ram else None
    if node is not None:
        targets.append(("ram process", node))
    if pm is not None:
        targets.append(("postmaster", pm))
    for _, pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for _, pid in targets) and time.monotonic() < deadline:
        time.sleep(0.02)
    return targets


def stop_left_postgres(
    members: list[MemberInfo], *, timeout: float = 30.0, poll: float = 0.05
) -> list[tuple[MemberInfo, int]]:
    """Stop the PostgreSQL of every member whose node is gone but left it running; returns them.

    A node stops its PostgreSQL on the way out. One that did not get there (killed after
    :func:`stop_nodes`' timeout, crashed, killed on purpose) leaves the postmaster running, and a
    cluster that was told to go down must not keep serving. All are asked at once: fast shutdown
    (SIGINT), immediate (SIGQUIT to the tree) after ``timeout``, SIGKILL of what is left last."""
    left = [(m, pid) for m in members if not ram_pid(m) and (pid := postmaster_pid(m)) is not None]
    for _, pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while any(proctree.alive(pid) for _, pid in left) and time.monotonic() < deadline:
        time.sleep(poll)
    for _, pid in left:
        if proctree.alive(pid):
            proctree.reap(proctree.quit_tree(pid), 10.0)
    return left


def stop_node(member: MemberInfo, *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Stop one node process by pid (SIGTERM, then SIGKILL after ``timeout``). True if it was running."""
    return bool(stop_nodes([member], sig=sig, timeout=timeout))


def stop_nodes(members: list[MemberInfo], *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> list[MemberInfo]:
    """Stop several nodes at once; returns those that were running.

    All are signalled together: stopped one after another, the nodes still running would see the
    primary's node go away and commit a failover before their own turn came.
    """
    running = [m for m in members if pid_alive(m.pid)]
    for member in running:
        assert member.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(member.pid, sig)
    deadline = time.monotonic() + timeout
    while any(pid_alive(m.pid) for m in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    for member in running:
        if pid_alive(member.pid):
            assert member.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.pid, signal.SIGKILL)
            while pid_alive(member.pid):
                time.sleep(0.02)
    return running
