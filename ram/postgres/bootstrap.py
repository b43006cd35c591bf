"""Creating the managed cluster: initdb with replication-ready settings, the replication user.

Only the first primary of a cluster is created this way; every other member is a clone of it
(:mod:`ram.postgres.clone`), so the settings, the replication user and its grants travel with the
data.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
from typing import TYPE_CHECKING

from pydantic import SecretStr

from ram.postgres import conffiles
from ram.postgres.commands import chown_to_owner, run_command
from ram.postgres.durability import sync_data_directory
from ram.postgres.errors import InstanceStateError
from ram.postgres.spec import ManagedInstanceSpec
from ram.postgres.sql import local_connection, quote_literal

if TYPE_CHECKING:
    from ram.postgres.instance import ManagedInstance

SCRAM_ITERATIONS = 4096

#: What pg_rewind calls on its source server (PostgreSQL docs, "pg_rewind": a non-superuser source
#: role needs EXECUTE on exactly these). Granting them to the replication user lets one credential
#: serve streaming, cloning and rewinding.
REWIND_FUNCTIONS = (
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
)


def scram_verifier(
    password: str | SecretStr, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    Computing it here, as ``psql``'s ``\\password`` does, means the clear-text password never reaches
    the server, so it can not appear in its log (log_statement, a failed statement's text).
    PostgreSQL SASLprep-normalises passwords first; for ASCII that is the identity, so non-ASCII
    passwords are refused here rather than risk a verifier that never matches.
    """
    if isinstance(password, SecretStr):
        password = password.get_secret_value()
    if not password.isascii():
        raise ValueError("the replication password must be ASCII")
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def verifier_matches(verifier: str | None, password: str) -> bool:
    """Whether a stored SCRAM-SHA-256 verifier was made from ``password`` (same salt and iterations).

    Lets a primary check a role's password without changing anything: rotation writes a new
    verifier only when the configured password really changed."""
    if not verifier or not verifier.startswith("SCRAM-SHA-256$"):
        return False
    try:
        iterations_text, rest = verifier[len("SCRAM-SHA-256$"):].split(":", 1)
        salt_b64 = rest.split("$", 1)[0]
        salt = base64.b64decode(salt_b64, validate=True)
        iterations = int(iterations_text)
    except (ValueError, IndexError):
        return False
    if not 0 < iterations <= 1_000_000:
        return False
    return hmac.compare_digest(scram_verifier(password, salt=salt, iterations=iterations), verifier)


async def ensure_role_password(spec: ManagedInstanceSpec, role: str, password: str | SecretStr) -> bool:
    """Make ``role``'s password ``password`` on this (primary) server; True if it had to change.

    Idempotent and cheap when nothing changed (one catalog read, one PBKDF2), so the HA loop can call
    it on every pass: that is how a changed password file reaches PostgreSQL without a restart. The
    new password travels as a SCRAM verifier computed here (never in clear text, so not in the
    server log), under ``synchronous_commit = local``: a primary still waiting for a synchronous
    standby that is gone must not hang its bookkeeping. Replicas get the change through WAL.
    Streaming connections already open stay up (authentication happens at connect time only).
    """
    secret = password.get_secret_value() if isinstance(password, SecretStr) else password
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
        raise ValueError(f"role {role!r} must match [a-z_][a-z0-9_]*")
    async with local_connection(spec) as conn:
        stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
        if stored is not None and verifier_matches(stored, secret):
            return False
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        if not exists:
            raise InstanceStateError(f"role {role!r} does not exist on this server")
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = local")
            await conn.execute(f"ALTER ROLE {role} PASSWORD {quote_literal(scram_verifier(secret))}")
    return True


async def ensure_replication_user(spec: ManagedInstanceSpec) -> None:
    """Create (or update the password of) the replication user, with the pg_rewind grants.

    Runs on the primary; replicas get the role through WAL.
    """
    verifier = quote_literal(scram_verifier(spec.replication_password))
    user = spec.replication_user  # validated [a-z_][a-z0-9_]*: safe unquoted
    async with local_connection(spec) as conn, conn.transaction():
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user)
        verb = "ALTER" if exists else "CREATE"
        await conn.execute(f"{verb} ROLE {user} WITH LOGIN REPLICATION NOSUPERUSER PASSWORD {verifier}")
        for function in REWIND_FUNCTIONS:
            await conn.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {user}")


def _prepare_dir(path: os.PathLike[str], mode: int, owner: str) -> None:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    chown_to_owner(path, owner)  # type: ignore[arg-type]


def prepare_dirs(spec: ManagedInstanceSpec) -> None:
    """Data directory 0700 and socket directory 0700, both the owner's (parents are created 0755)."""
    for parent in {spec.data_dir.parent, spec.sockdir.parent, spec.logfile.parent, spec.pgpass.parent}:
        if not parent.exists():
            _prepare_dir(parent, 0o755, spec.owner)
    if not spec.data_dir.exists():
        _prepare_dir(spec.data_dir, 0o700, spec.owner)
    _prepare_dir(spec.sockdir, 0o700, spec.owner)
    if not spec.logfile.exists():
        spec.logfile.touch(0o600)
        chown_to_owner(spec.logfile, spec.owner)


async def initdb_primary(instance: ManagedInstance, *, start: bool = True) -> None:
    """initdb a new cluster, write RAM's configuration, start it and create the replication user.

    The data directory must be absent or empty. Without ``start`` the server is stopped again
    afterwards (cleanly), ready to be started as a primary.
    """
    spec = instance.spec
    if spec.data_dir.exists() and any(spec.data_dir.iterdir()):
        raise InstanceStateError(f"{spec.data_dir} is not empty; refusing to initdb over it")
    await asyncio.to_thread(prepare_dirs, spec)
    argv = [
        str(instance.bindir / "initdb"),
        "-D", str(spec.data_dir),
        "-U", spec.superuser,
        "--auth-local=peer",
        "--auth-host=reject",
        "--encoding=UTF8",
        "--no-instructions",
    ]
    if spec.data_checksums:
        argv.append("--data-checksums")
    argv.append("--no-sync")  # one syncfs below instead of an fsync per file (see ram.postgres.durability)
    await run_command(argv, owner=spec.owner, timeout=spec.timeouts.start)
    await asyncio.to_thread(conffiles.write_config, spec)
    await asyncio.to_thread(conffiles.write_standby_config, spec, None, None)
    if spec.sync_data:
        await asyncio.to_thread(sync_data_directory, spec.data_dir)
    await instance.start()
    await ensure_replication_user(spec)
    if not start:
        await instance.stop()
