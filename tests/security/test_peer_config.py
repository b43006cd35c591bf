"""Secrets in the node configuration (issue #11): never in repr, dumps or logs; files holding them
must be private; a multi-node cluster needs peer authentication unless explicitly insecure."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from ram.config import (
    ConfigError,
    check_secrets,
    load_config,
    parse_config,
    raft_secret,
    replication_password,
    superuser_password,
)
from tests.runtime.helpers import write_secret

PEERS = [{"id": 2, "name": "n2", "address": "127.0.0.1:7401"}]


def write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)  # the test wants exactly this mode, whatever the umask
    return path


def config_toml(tmp_path: Path, raft_extra: str = "", postgres: str = "") -> str:
    return (
        f'cluster_id = "c1"\nnode_id = 1\nname = "n1"\ndata_dir = "{tmp_path}"\n'
        f'[raft]\nlisten = "127.0.0.1:7400"\npeers = [{{ id = 2, name = "n2", address = "127.0.0.1:7401" }}]\n'
        f"{raft_extra}\n[postgres]\n{postgres}\n"
    )


def test_secret_file_readable_by_others_stops_startup(tmp_path: Path) -> None:
    secret = write_private(tmp_path / "raft.secret", "x" * 64 + "\n", 0o644)
    cfg = write_private(tmp_path / "n.toml", config_toml(tmp_path, f'secret_file = "{secret}"'))
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    message = str(exc.value)
    assert message == (
        f"{secret} holds a secret (raft.secret_file) but group or others may access it (mode 0644); "
        f"fix: chmod 600 {secret}"
    )
    assert "\n" not in message and "x" * 16 not in message
    os.chmod(secret, 0o600)
    assert raft_secret(load_config(cfg)) == b"x" * 64


def test_config_file_with_an_inline_password_must_be_private(tmp_path: Path) -> None:
    secret = write_secret(tmp_path / "raft.secret")
    text = config_toml(tmp_path, f'secret_file = "{secret}"', 'manage = true\nreplication_password = "hunter2-pw"')
    cfg = write_private(tmp_path / "n.toml", text, 0o640)
    with pytest.raises(ConfigError, match=rf"{cfg} holds a secret \(config file with postgres.replication_password\)"):
        load_config(cfg)
    os.chmod(cfg, 0o600)
    assert replication_password(load_config(cfg)) == "hunter2-pw"
    # Without an inline secret, the config file's mode is its owner's business.
    plain = write_private(tmp_path / "plain.toml", config_toml(tmp_path, f'secret_file = "{secret}"'), 0o644)
    load_config(plain)


def test_password_files_key_files_short_and_missing_secrets(tmp_path: Path) -> None:
    secret = write_secret(tmp_path / "raft.secret")
    pw = write_private(tmp_path / "repl.pw", "from-a-file\n", 0o604)
    text = config_toml(tmp_path, f'secret_file = "{secret}"', f'manage = true\nreplication_password_file = "{pw}"')
    cfg = write_private(tmp_path / "n.toml", text)
    with pytest.raises(ConfigError, match=rf"fix: chmod 600 {pw}$"):
        load_config(cfg)
    os.chmod(pw, 0o600)
    config = load_config(cfg)
    assert replication_password(config) == "from-a-file" and superuser_password(config) is None
    write_private(pw, "rotated\n")  # re-read on every call: rotation needs no restart
    assert replication_password(config) == "rotated"
    short = write_private(tmp_path / "short.secret", "tooshort\n")
    with pytest.raises(ConfigError, match="at least 16 are needed"):
        check_secrets(parse_config({**base(tmp_path), "raft": {**base(tmp_path)["raft"], "secret_file": str(short)}}))
    with pytest.raises(ConfigError, match="does not exist"):
        check_secrets(parse_config({**base(tmp_path), "raft": {**base(tmp_path)["raft"], "secret_file": "/nope"}}))
    with pytest.raises(ConfigError, match="not both"):
        parse_config({**base(tmp_path), "postgres": {"replication_password": "a", "replication_password_file": "/x"}})
    with pytest.raises(ConfigError, match=r"raft\.tls_key, raft\.tls_ca must be set too"):
        parse_config({**base(tmp_path), "raft": {**base(tmp_path)["raft"], "tls_cert": "/c.pem"}})


def base(tmp_path: Path) -> dict[str, object]:
    return {"cluster_id": "c1", "node_id": 1, "name": "n1", "data_dir": str(tmp_path),
            "raft": {"listen": "127.0.0.1:7400", "peers": PEERS}}


def test_multi_node_needs_peer_authentication_unless_insecure(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"raft: peers must authenticate: set raft.secret_file"):
        check_secrets(parse_config(base(tmp_path)))
    check_secrets(parse_config({**base(tmp_path), "raft": {**base(tmp_path)["raft"], "insecure": True}}))
    single = {**base(tmp_path), "raft": {"listen": "127.0.0.1:7400"}}
    check_secrets(parse_config(single))  # one node alone has no peers to authenticate


def test_secrets_never_in_repr_dumps_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = parse_config(
        {**base(tmp_path), "postgres": {"manage": True, "replication_password": "repl-Secret-1",
                                        "superuser_password": "super-Secret-2"}}
    )
    texts = [repr(config), str(config), repr(config.postgres), config.model_dump_json(),
             str(config.model_dump()), str(config.model_dump(mode="json"))]
    logging.getLogger("ram.test").info("config %s %r", config, config.postgres)
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        assert "repl-Secret-1" not in text and "super-Secret-2" not in text
    assert replication_password(config) == "repl-Secret-1" and superuser_password(config) == "super-Secret-2"
