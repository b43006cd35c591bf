"""The files RAM owns in (and next to) the managed data directory, rewritten before every start.

Why RAM owns ``postgresql.conf`` instead of using ALTER SYSTEM: ``pg_basebackup`` and ``pg_rewind``
copy every configuration file from the source node, so a clone would inherit the primary's
``listen_addresses``, port and socket directory. Rewriting our files from the spec before each start
(and after each clone or rewind) makes the node's own settings win no matter where the files came
from. ``postgresql.auto.conf`` stays the operator's (ALTER SYSTEM), except that RAM strips the
replication keys that ``pg_basebackup -R`` appends there, because they would override ours.

Layout inside the data directory:

- ``postgresql.base.conf``: what initdb wrote (locale, shared_buffers…), included first;
- ``postgresql.conf``: RAM's settings, then ``include_if_exists`` of ``ram.dynamic.conf`` and
  ``ram.replication.conf``;
- ``ram.dynamic.conf``: the cluster's dynamic ``postgresql.parameters.*``, reloadable;
- ``ram.replication.conf``: primary_conninfo / primary_slot_name / recovery_target_timeline on a
  standby, empty on a primary — reloadable, which is how ``follow`` re-points without a restart;
- ``standby.signal``: present iff the node should start as a standby;
- ``pg_hba.conf`` / ``pg_ident.conf``: local superuser by peer for the owner (and RAM's OS user),
  SCRAM from members only, nothing else.

Outside it: the libpq password file (``spec.passfile``, 0600) holding the replication password
for walreceiver, pg_basebackup and pg_rewind, so it is never on a command line — one line per
member's host:port, so libpq offers it to members only; and with TLS the owner's copies of the
member certificate, key and CA (``spec.tls_dir``, 0700; the key 0600).

TLS (``spec.tls``): ``ssl = on`` with those files, ``hostssl`` instead of ``host`` in pg_hba (plain
TCP is refused), the replication user must also present a member certificate
(``clientcert=verify-ca``), and RAM's connections use ``sslmode=verify-full`` (or ``verify-ca``, see
``spec.tls_verify``) with ``channel_binding=require``. Channel binding is what stands in for libpq
16's ``require_auth=scram-sha-256`` on libpq 15: a client that requires it accepts only
SCRAM-SHA-256-PLUS, so a server that asks for a clear-text or MD5 password gets nothing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
from pathlib import Path

from ram.postgres.commands import chown_to_owner
from ram.postgres.spec import PROTECTED_PARAMETERS, REPLICATION_PARAMETERS, ManagedInstanceSpec, PrimaryEndpoint

BASE_CONF = "postgresql.base.conf"
REPLICATION_CONF = "ram.replication.conf"
#: The cluster's dynamic ``postgresql.parameters.*`` (written by ram.postgres.dynamic_conf).
DYNAMIC_CONF = "ram.dynamic.conf"
STANDBY_SIGNAL = "standby.signal"
RECOVERY_SIGNAL = "recovery.signal"
AUTO_CONF = "postgresql.auto.conf"
#: Keys in postgresql.auto.conf that would silently override ram.replication.conf.
OWNED_AUTO_KEYS = REPLICATION_PARAMETERS
HBA_MAP = "ram"
HEADER = "# Written by RAM before every start: edits here are lost. Change the node's configuration instead.\n"


def base_settings(spec: ManagedInstanceSpec) -> dict[str, str]:
    """RAM's settings for a replicated instance, with the operator's extra parameters applied on top.

    wal_level=replica and the sender/slot limits make streaming possible; hot_standby lets replicas
    answer status queries; wal_log_hints lets pg_rewind work on clusters without checksums;
    a small wal_keep_size covers a replica that briefly loses its slot; a 1 s
    wal_retrieve_retry_interval re-connects a standby soon; hot_standby_feedback avoids
    query cancellations on replicas; scram-sha-256 is the only password method we allow.
    """
    settings = {
        "wal_level": "replica",
        "max_wal_senders": "10",
        "max_replication_slots": "10",
        "hot_standby": "on",
        "hot_standby_feedback": "on",
        "wal_log_hints": "on",
        "wal_keep_size": "128MB",
        # After a crash, flush the data directory with one syncfs() rather than an fsync per file:
        # seconds faster on virtual disks, and it is what a rejoin after a node loss waits for.
        "recovery_init_sync_method": "syncfs",
        # A standby whose upstream is not there yet (a new primary still promoting, its slot not made
        # yet) tries again after 1 s instead of 5 s: rejoins and re-points stream sooner. RAM does
        # not reload the server to hurry it (that stormed it with SIGHUPs).
        "wal_retrieve_retry_interval": "1s",
        "password_encryption": "scram-sha-256",
        "logging_collector": "off",
        "log_line_prefix": "%m [%p] %q%u@%d ",
    }
    for key, value in spec.parameters.items():
        if key in PROTECTED_PARAMETERS:
            raise ValueError(f"parameter {key!r} is set by RAM from the node configuration; it cannot be overridden")
        settings[key] = str(value)
    if spec.tls is not None:
        # After the operator's parameters: with member TLS configured, these are RAM's.
        settings.update(
            {
                "ssl": "on",
                "ssl_cert_file": str(tls_paths(spec)[0]),
                "ssl_key_file": str(tls_paths(spec)[1]),
                "ssl_ca_file": str(tls_paths(spec)[2]),
                "ssl_min_protocol_version": "TLSv1.2",
            }
        )
    settings.update(
        {
            "listen_addresses": spec.listen_addresses,
            "port": str(spec.port),
            "unix_socket_directories": str(spec.sockdir),
            "unix_socket_permissions": "0700",
        }
    )
    return settings


def conf_quote(value: str) -> str:
    """A postgresql.conf string value."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def conninfo_quote(value: str) -> str:
    """A libpq ``key=value`` value, quoted when it needs to be."""
    if value and not any(c in value for c in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_postgresql_conf(spec: ManagedInstanceSpec) -> str:
    lines = [HEADER, f"include_if_exists {conf_quote(BASE_CONF)}\n"]
    lines += [f"{key} = {conf_quote(value)}\n" for key, value in sorted(base_settings(spec).items())]
    # The cluster's dynamic parameters (ram.postgres.dynamic_conf) come after the node's own settings.
    lines.append(f"include_if_exists {conf_quote(DYNAMIC_CONF)}\n")
    lines.append(f"include_if_exists {conf_quote(REPLICATION_CONF)}\n")
    return "".join(lines)


def ram_os_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def render_hba(spec: ManagedInstanceSpec) -> str:
    """Local superuser by peer (mapped), SCRAM from each member's /32 (or /128) and from the
    configured client networks (``postgres.client_cidrs``; never for replication), nothing else.

    With TLS: ``hostssl`` only, and the replication user (streaming, clone, rewind) must also show a
    certificate of the cluster's CA — RAM's clients always have one; operators logging in as other
    roles need only their password (over TLS)."""
    lines = [HEADER, f"local   all           {spec.superuser:<16} peer map={HBA_MAP}\n"]
    kind, member_cert = ("hostssl", " clientcert=verify-ca") if spec.tls is not None else ("host   ", "")
    for cidr in spec.member_cidrs():
        lines.append(f"{kind} replication   {spec.replication_user:<16} {cidr:<20} scram-sha-256{member_cert}\n")
        if spec.tls is not None:
            lines.append(f"{kind} all           {spec.replication_user:<16} {cidr:<20} scram-sha-256{member_cert}\n")
        lines.append(f"{kind} all           {'all':<16} {cidr:<20} scram-sha-256\n")
    for cidr in spec.client_cidrs:  # applications: any role but replication, by password
        lines.append(f"{kind} all           {'all':<16} {cidr:<20} scram-sha-256\n")
    return "".join(lines)


def render_ident(spec: ManagedInstanceSpec) -> str:
    """The OS users allowed to be the superuser locally: the owner and the user RAM runs as."""
    users = [spec.owner]
    if ram_os_user() not in users:
        users.append(ram_os_user())
    return HEADER + "".join(f"{HBA_MAP}   {user:<16} {spec.superuser}\n" for user in users)


def primary_conninfo(spec: ManagedInstanceSpec, primary: PrimaryEndpoint, *, dbname: str | None = None,
                     application_name: str | None = None) -> str:
    """How this node connects to ``primary``: replication user, password from the passfile."""
    parts = {
        "host": primary.host,
        "port": str(primary.port),
        "user": spec.replication_user,
        "passfile": str(spec.pgpass),
        "application_name": application_name or spec.name,
        "connect_timeout": "5",
        "keepalives": "1",
        "keepalives_idle": "5",
        "keepalives_interval": "2",
        "keepalives_count": "3",
        "target_session_attrs": "any",
    }
    if dbname:
        parts["dbname"] = dbname
    if spec.tls is not None:
        cert, key, ca = tls_paths(spec)
        parts.update(
            {
                "sslmode": spec.tls_verify,
                "sslrootcert": str(ca),
                "sslcert": str(cert),
                "sslkey": str(key),
                # libpq 15 has no require_auth; requiring channel binding admits SCRAM-SHA-256-PLUS only.
                "channel_binding": "require",
            }
        )
    return " ".join(f"{key}={conninfo_quote(value)}" for key, value in parts.items())


def render_replication_conf(spec: ManagedInstanceSpec, primary: PrimaryEndpoint | None, slot: str | None) -> str:
    if primary is None:
        # recovery_target_timeline stays written: it can only change at a restart, and a promoted
        # standby that dropped it would log "cannot be changed without restarting" at every reload.
        return HEADER + "# primary: no upstream\nrecovery_target_timeline = 'latest'\n"
    lines = [HEADER, f"primary_conninfo = {conf_quote(primary_conninfo(spec, primary))}\n"]
    if slot:
        lines.append(f"primary_slot_name = {conf_quote(slot)}\n")
    lines.append("recovery_target_timeline = 'latest'\n")
    return "".join(lines)


def write_owned(path: Path, text: str, owner: str, mode: int = 0o600) -> None:
    """Atomically replace ``path`` with ``text``, owned by ``owner`` (a crash leaves old or new)."""
    tmp = path.with_name(f".{path.name}.ram-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    chown_to_owner(tmp, owner)
    os.replace(tmp, path)


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def render_passfile(spec: ManagedInstanceSpec) -> str:
    """One ``host:port:*:replicator:password`` line per member (``*:*`` only without endpoints)."""
    password = _pgpass_field(spec.replication_password)
    user = _pgpass_field(spec.replication_user)
    endpoints = list(dict.fromkeys((str(h), int(p)) for h, p in spec.member_endpoints))
    if not endpoints:
        return f"*:*:*:{user}:{password}\n"
    return "".join(f"{_pgpass_field(host)}:{port}:*:{user}:{password}\n" for host, port in endpoints)


def write_passfile(spec: ManagedInstanceSpec) -> bool:
    """The libpq password file for the replication user (libpq ignores it unless it is 0600).

    Rewritten only when its content changes (a rotated password, a new member); True if it did.
    Created 0600 from the start (:func:`write_owned`), atomically: walreceivers reading it while it
    changes see the old file or the new one."""
    text = render_passfile(spec)
    try:
        if spec.pgpass.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    spec.pgpass.parent.mkdir(parents=True, exist_ok=True)
    write_owned(spec.pgpass, text, spec.owner)
    return True


def tls_paths(spec: ManagedInstanceSpec) -> tuple[Path, Path, Path]:
    """(cert, key, ca): the owner's copies of the member TLS files that the server and clients use."""
    return spec.tls_dir / "member.crt", spec.tls_dir / "member.key", spec.tls_dir / "ca.crt"


def write_tls_files(spec: ManagedInstanceSpec) -> None:
    """Copy the configured certificate, key and CA into ``spec.tls_dir`` for the owner (0600 each, the
    directory 0700): PostgreSQL refuses a key file it does not own or that others can read, and the
    configured files typically belong to root. Rewritten only when they differ, so a renewed
    certificate is picked up by the next reload."""
    if spec.tls is None:
        return
    spec.tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(spec.tls_dir, 0o700)
    chown_to_owner(spec.tls_dir, spec.owner)
    for source, target in zip((spec.tls.cert, spec.tls.key, spec.tls.ca), tls_paths(spec), strict=True):
        data = Path(source).read_bytes()
        try:
            if target.read_bytes() == data:
                continue
        except OSError:
            pass
        write_owned(target, data.decode(), spec.owner)


def remove_tls_files(spec: ManagedInstanceSpec) -> None:
    """Drop the copies when TLS is no longer configured."""
    if spec.tls is None and spec.tls_dir.exists():
        shutil.rmtree(spec.tls_dir, ignore_errors=True)


def write_config(spec: ManagedInstanceSpec) -> None:
    """Write postgresql.conf, pg_hba.conf, pg_ident.conf and the passfile from the spec.

    Also keeps initdb's original postgresql.conf as postgresql.base.conf (first time only) and
    strips replication keys from postgresql.auto.conf (see the module docstring).
    """
    data = spec.data_dir
    base = data / BASE_CONF
    conf = data / "postgresql.conf"
    if not base.exists():
        original = conf.read_text() if conf.exists() and HEADER not in conf.read_text() else ""
        write_owned(base, original, spec.owner)
    write_owned(conf, render_postgresql_conf(spec), spec.owner)
    write_owned(data / "pg_hba.conf", render_hba(spec), spec.owner)
    write_owned(data / "pg_ident.conf", render_ident(spec), spec.owner)
    if not (data / REPLICATION_CONF).exists():
        write_owned(data / REPLICATION_CONF, render_replication_conf(spec, None, None), spec.owner)
    strip_auto_conf(spec)
    write_passfile(spec)
    if spec.tls is not None:
        write_tls_files(spec)
    else:
        remove_tls_files(spec)


def strip_auto_conf(spec: ManagedInstanceSpec) -> None:
    auto = spec.data_dir / AUTO_CONF
    if not auto.exists():
        return
    lines = auto.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if ln.split("=", 1)[0].strip() not in OWNED_AUTO_KEYS]
    if kept != lines:
        write_owned(auto, "".join(kept), spec.owner)


def standby_config_current(spec: ManagedInstanceSpec, primary: PrimaryEndpoint | None, slot: str | None) -> bool:
    """Does ram.replication.conf already say exactly this (so a reload would change nothing)?"""
    try:
        return (spec.data_dir / REPLICATION_CONF).read_text() == render_replication_conf(spec, primary, slot)
    except OSError:
        return False


def write_standby_config(spec: ManagedInstanceSpec, primary: PrimaryEndpoint | None, slot: str | None) -> None:
    """Make the node start as a standby of ``primary`` (or, with ``None``, as a primary)."""
    write_owned(spec.data_dir / REPLICATION_CONF, render_replication_conf(spec, primary, slot), spec.owner)
    signal = spec.data_dir / STANDBY_SIGNAL
    if primary is None:
        with contextlib.suppress(FileNotFoundError):
            signal.unlink()
    else:
        write_owned(signal, "", spec.owner)
    with contextlib.suppress(FileNotFoundError):
        (spec.data_dir / RECOVERY_SIGNAL).unlink()


def remove_signals(spec: ManagedInstanceSpec) -> None:
    for name in (STANDBY_SIGNAL, RECOVERY_SIGNAL):
        with contextlib.suppress(FileNotFoundError):
            (spec.data_dir / name).unlink()
