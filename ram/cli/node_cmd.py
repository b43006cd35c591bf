"""``ram node …``: run a node from its configuration file."""

from __future__ import annotations

import asyncio
import secrets
import tomllib
from pathlib import Path

import click

from ram.cli.errors import UserError
from ram.config import ConfigError, load_config
from ram.consensus.runtime.node import StoreInconsistent
from ram.consensus.runtime.storage import StoreIdentityMismatch, StoreUnavailable
from ram.logs import configure
from ram.postgres.commands import PostgresCommandError
from ram.security import ApiSecurity, SecurityConfigError


@click.group("node")
def node_group() -> None:
    """Run a RAM node."""


@node_group.command("run")
@click.option(
    "--config", "config_path", required=True, type=click.Path(path_type=Path), help="Node config (.toml or .yaml)."
)
def node_run(config_path: Path) -> None:
    """Run a node: store, Raft consensus and (later) the PostgreSQL it manages.

    Stops cleanly on SIGTERM (a leader hands over leadership first).

    \b
    Example:
      ram node run --config /etc/ram/node1.toml
    """
    from ram.node_process import NodeFailed, run_node

    try:
        config = load_config(config_path)
        # The API's tokens and TLS files are checked now, before Raft or PostgreSQL start: a node that
        # would refuse every request (or serve a secret file others can read) must not start at all.
        ApiSecurity.from_settings(config.api)
    except (ConfigError, SecurityConfigError) as exc:
        raise UserError(str(exc)) from None
    configure(config.log_format, config.log_level)
    try:
        asyncio.run(run_node(config))
    except (StoreUnavailable, StoreIdentityMismatch, StoreInconsistent, PostgresCommandError, OSError, NodeFailed,
            SecurityConfigError) as exc:
        raise UserError(" ".join(str(exc).split())) from None
    except KeyboardInterrupt:
        pass


def _peer(value: str) -> dict[str, object]:
    """``ID=NAME@HOST:PORT`` → a peer entry (a clear error for anything else)."""
    try:
        ident, rest = value.split("=", 1)
        name, address = rest.split("@", 1)
        return {"id": int(ident), "name": name, "address": address}
    except ValueError:
        raise click.BadParameter(f"expected ID=NAME@HOST:PORT, got {value!r}") from None


@node_group.command("init")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Config file to write.")
@click.option("--cluster-id", required=True, help="Cluster identity (the same on every member).")
@click.option("--node-id", type=int, required=True, help="This node's Raft id (unique, positive).")
@click.option("--name", required=True, help="This node's member name.")
@click.option("--listen", required=True, help="Raft listen address HOST:PORT.")
@click.option("--peer", "peers", multiple=True, help="Another member as ID=NAME@HOST:PORT (repeatable).")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True, help="Directory for this node's files.")
@click.option("--bootstrap", is_flag=True, help="This node starts a NEW cluster with the listed peers.")
@click.option("--manage", is_flag=True, help="Manage a PostgreSQL instance on this node (postgres.manage).")
@click.option("--pg-listen", metavar="HOST:PORT", help="Where PostgreSQL listens (default: Raft host:5432).")
@click.option("--api-listen", metavar="HOST:PORT", help="HTTP API address (default: Raft host, 8008).")
@click.option("--secret-file", type=click.Path(path_type=Path),
              help="Raft cluster secret file (raft.secret_file); created 0600 with a new secret when missing. "
                   "Copy the same file to every member.")
@click.option("--replication-password-file", type=click.Path(path_type=Path),
              help="Replication password file (created 0600 when missing; the same on every member).")
@click.option("--superuser-password-file", type=click.Path(path_type=Path),
              help="Password file of the postgres superuser for TCP logins (created 0600 when missing).")
@click.option("--api-tokens-file", type=click.Path(path_type=Path),
              help="API tokens file (api.tokens_file, digests only); created when missing, with the admin and "
                   "read tokens themselves written next to it (NAME.admin.token, NAME.read.token, 0600).")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
def node_init(
    output: Path, cluster_id: str, node_id: int, name: str, listen: str, peers: tuple[str, ...],
    data_dir: Path, bootstrap: bool, manage: bool, pg_listen: str | None, api_listen: str | None,
    secret_file: Path | None, replication_password_file: Path | None, superuser_password_file: Path | None,
    api_tokens_file: Path | None, force: bool,
) -> None:
    """Write a commented node configuration (validated before it is written) that references its
    secrets by file, never inline: the Raft cluster secret, the PostgreSQL passwords and the API tokens.
    Missing secret files are created (mode 0600 from the start); existing ones are kept, so the same
    files can be copied to every member first.

    \b
    Example (first host; copy the secret, password and tokens files to the others, then run
    the same command there with their own id, name and addresses):
      ram node init -o /etc/ram/node.toml --cluster-id prod --node-id 1 --name pg1 \\
        --listen 10.0.0.1:7400 --peer 2=pg2@10.0.0.2:7400 --peer 3=pg3@10.0.0.3:7400 \\
        --data-dir /var/lib/ram --manage --bootstrap \\
        --secret-file /etc/ram/raft.secret --replication-password-file /etc/ram/replication.password \\
        --superuser-password-file /etc/ram/superuser.password --api-tokens-file /etc/ram/api-tokens.toml
    """
    from ram.config import config_template, parse_config

    if output.exists() and not force:
        raise UserError(f"{output} exists; use --force to overwrite it")
    if peers and secret_file is None:
        raise UserError("a node with peers needs --secret-file (Raft peers authenticate with a shared secret), "
                        "or certificates set in the file afterwards (raft.tls_cert/tls_key/tls_ca)")
    if manage and replication_password_file is None:
        raise UserError("--manage needs --replication-password-file (the replication user's password)")
    raft: dict[str, object] = {"listen": listen, "peers": [_peer(p) for p in peers]}
    doc: dict[str, object] = {
        "cluster_id": cluster_id, "node_id": node_id, "name": name, "data_dir": str(data_dir.absolute()),
        "bootstrap": bootstrap, "raft": raft,
    }
    created: list[str] = []
    if secret_file is not None:
        _ensure_secret(secret_file, secrets.token_hex(32), created)
        raft["secret_file"] = str(secret_file.absolute())
    postgres: dict[str, object] = {}
    if manage:
        postgres["manage"] = True
    if pg_listen:
        postgres["listen"] = pg_listen
    if replication_password_file is not None:
        _ensure_secret(replication_password_file, secrets.token_urlsafe(24), created)
        postgres["replication_password_file"] = str(replication_password_file.absolute())
    if superuser_password_file is not None:
        _ensure_secret(superuser_password_file, secrets.token_urlsafe(24), created)
        postgres["superuser_password_file"] = str(superuser_password_file.absolute())
    if postgres:
        doc["postgres"] = postgres
    api: dict[str, object] = {}
    if api_listen:
        api["listen"] = api_listen
    if api_tokens_file is not None:
        _ensure_tokens(api_tokens_file, created)
        api["tokens_file"] = str(api_tokens_file.absolute())
    if api:
        doc["api"] = api
    try:
        parse_config(doc, "the new config")
        text = config_template(doc)
        parse_config(tomllib.loads(text), str(output))
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    for line in created:
        click.echo(line)
    click.echo(f"wrote {output}; edit it, then: ram node run --config {output}")


def _ensure_secret(path: Path, value: str, created: list[str]) -> None:
    """Create a secret file (0600 from the start) unless it exists; an existing one is kept as is."""
    from ram.security import write_private

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, value + "\n")
    created.append(f"created {path} (mode 0600): copy the same file to every member")


def _ensure_tokens(path: Path, created: list[str]) -> None:
    """An API tokens file with a new admin and a new read token (digests only), and the two tokens
    in private files next to it for ramctrl (``RAM_TOKEN_FILE``) and monitoring."""
    from ram.security import new_token, tokens_file_text, write_private

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    admin, read = new_token(), new_token()
    stem = path.with_suffix("")
    admin_file, read_file = Path(f"{stem}.admin.token"), Path(f"{stem}.read.token")
    write_private(admin_file, admin + "\n")
    write_private(read_file, read + "\n")
    write_private(path, tokens_file_text({"admin": ("admin", admin), "read": ("read", read)}))
    created.append(f"created {path} (token digests; copy it to every member), {admin_file} and {read_file} "
                   "(the tokens: export RAM_TOKEN_FILE=" + str(admin_file) + ")")
