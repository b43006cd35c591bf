"""Node configuration: validation errors name the key; the README reference can not drift."""

from pathlib import Path

import pytest

from ram.config import ConfigError, load_config, parse_config, reference_markdown

BASE = {
    "cluster_id": "c1",
    "node_id": 1,
    "name": "n1",
    "data_dir": "/tmp/x",
    "raft": {"listen": "127.0.0.1:7400", "peers": [{"id": 2, "name": "n2", "address": "127.0.0.1:7401"}]},
}


def test_valid_config_has_sane_defaults() -> None:
    cfg = parse_config(BASE)
    assert cfg.raft.election_ticks > cfg.raft.heartbeat_ticks >= 1
    assert cfg.store.dsn is None


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"raft": {**BASE["raft"], "listen": "nohost"}}, "raft.listen"),  # type: ignore[dict-item]
        ({"raft": {**BASE["raft"], "election_ms": 100}}, "election_ms (100) must be >= 3 x heartbeat_ms"),  # type: ignore[dict-item]
        ({"node_id": 0}, "node_id"),
        ({"raft": {**BASE["raft"], "peers": [{"id": 1, "name": "x", "address": "h:1"}]}}, "own id"),  # type: ignore[dict-item]
        ({"bootstrap": True, "join": ["127.0.0.1:7400"]}, "exclusive"),
    ],
)
def test_bad_values_name_the_key(patch: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config({**BASE, **patch})


def test_toml_and_yaml_files(tmp_path: Path) -> None:
    toml = tmp_path / "n.toml"
    toml.write_text(
        'cluster_id = "c1"\nnode_id = 1\nname = "n1"\ndata_dir = "/tmp/x"\n[raft]\nlisten = "127.0.0.1:1"\n'
    )
    assert load_config(toml).name == "n1"
    yml = tmp_path / "n.yaml"
    yml.write_text("cluster_id: c1\nnode_id: 1\nname: n1\ndata_dir: /tmp/x\nraft: {listen: '127.0.0.1:1', typo: 2}\n")
    with pytest.raises(ConfigError, match=r"raft.typo: unknown key"):
        load_config(yml)
    ini = tmp_path / "n.ini"
    ini.write_text("[x]\n")
    with pytest.raises(ConfigError, match="unknown config format"):
        load_config(ini)
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "missing.toml")


def test_readme_reference_is_generated() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert reference_markdown() in readme, "README config reference is stale: run python -m ram.config"


def test_node_init_writes_a_valid_commented_config(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ram.cli.ram_cmd import cli

    out = tmp_path / "pg1.toml"
    args = ["node", "init", "-o", str(out), "--cluster-id", "prod", "--node-id", "1", "--name", "pg1",
            "--listen", "10.0.0.1:7400", "--peer", "2=pg2@10.0.0.2:7400", "--data-dir", str(tmp_path),
            "--secret-file", str(tmp_path / "raft.secret"), "--bootstrap"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    cfg = load_config(out)  # secrets referenced by file and private: it passes the start-up checks
    assert cfg.bootstrap and cfg.raft.peers[0].name == "pg2" and cfg.raft.election_ms == 600
    assert (tmp_path / "raft.secret").stat().st_mode & 0o777 == 0o600
    assert "# heartbeat_ms = 100" in out.read_text()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "exists" in again.output
    bad = CliRunner().invoke(cli, [*args[:-1], "--force", "--peer", "nonsense"])
    assert bad.exit_code != 0 and "ID=NAME@HOST:PORT" in bad.output
    without = [a for a in args if a not in ("--secret-file", str(tmp_path / "raft.secret"))]
    no_secret = CliRunner().invoke(cli, [*without, "--force"])
    assert no_secret.exit_code != 0 and "--secret-file" in no_secret.output


def test_node_init_for_a_managed_node_references_every_secret_by_file(tmp_path: Path) -> None:
    """What docs/deploy.md does on each host: secrets in 0600 files created once and then copied;
    nothing secret inline in the config; an existing secret file is kept."""
    from click.testing import CliRunner

    from ram.cli.ram_cmd import cli

    secret = tmp_path / "raft.secret"
    secret.touch(mode=0o600)
    secret.write_text("kept-" + "x" * 40 + "\n")
    files = {"--secret-file": secret, "--replication-password-file": tmp_path / "repl.pw",
             "--superuser-password-file": tmp_path / "su.pw", "--api-tokens-file": tmp_path / "tokens.toml"}
    args = ["node", "init", "-o", str(tmp_path / "n.toml"), "--cluster-id", "prod", "--node-id", "1", "--name", "pg1",
            "--listen", "10.0.0.1:7400", "--peer", "2=pg2@10.0.0.2:7400", "--data-dir", str(tmp_path / "d"),
            "--manage", "--bootstrap", *[x for k, v in files.items() for x in (k, str(v))]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    cfg = load_config(tmp_path / "n.toml")
    assert cfg.postgres.manage and cfg.api.tokens_file == files["--api-tokens-file"]
    assert secret.read_text().startswith("kept-")
    text = (tmp_path / "n.toml").read_text()
    for path in [*files.values(), tmp_path / "tokens.admin.token", tmp_path / "tokens.read.token"]:
        assert path.stat().st_mode & 0o777 == 0o600, path
    for path in (tmp_path / "repl.pw", tmp_path / "su.pw", tmp_path / "tokens.admin.token"):
        assert path.read_text().strip() not in text
    assert "RAM_TOKEN_FILE=" in result.output


def test_client_networks_reach_pg_hba(tmp_path: Path) -> None:
    """postgres.client_cidrs: applications' networks log in by password (never as replication);
    a value that is not a network is one line naming the key."""
    from ram.ha.pgspec import instance_spec
    from ram.postgres.conffiles import render_hba
    from ram.projections.state import ClusterState

    base = {"cluster_id": "c", "node_id": 1, "name": "n1", "data_dir": str(tmp_path),
            "raft": {"listen": "10.0.0.1:7400"},
            "postgres": {"manage": True, "replication_password": "r-Secret-1", "client_cidrs": ["10.0.1.7/24"]}}
    cfg = parse_config(base)
    assert cfg.postgres.client_cidrs == ["10.0.1.0/24"]
    hba = render_hba(instance_spec(cfg, ClusterState()))
    client_lines = [ln for ln in hba.splitlines() if "10.0.1.0/24" in ln]
    assert client_lines and all(ln.split()[:3] == ["host", "all", "all"] for ln in client_lines), hba
    bad = {**base, "postgres": {**base["postgres"], "client_cidrs": ["everyone"]}}  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=r"postgres\.client_cidrs.*'everyone' is not a network"):
        parse_config(bad)
