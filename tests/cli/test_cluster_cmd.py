"""``ram cluster`` without a running cluster: the purge confirmation (with and without a terminal),
the --sync options and what they write into the nodes' configs, and ``kill``'s refusals.

Real processes: ``ram`` runs as a subprocess, on a real pseudo-terminal where the test needs one.
The cluster directories are laid out by ``ram.localcluster.plan`` (nothing is started), so purging
one is safe and fast; the tour test does the same against a running cluster.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ram import localcluster as lc
from ram.cli.ram_cmd import cli as ram_cli
from ram.config import load_config
from tests.conftest import make_tempdir

RAM = [sys.executable, "-m", "ram.cli.ram_cmd"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root() -> Iterator[Path]:
    path = make_tempdir("ram-cluster-cmd-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _fake_cluster(root: Path) -> Path:
    """A cluster directory as ``ram cluster up`` leaves it, minus the processes (and a data file)."""
    directory = root / "cluster"
    info = lc.plan(directory, 3, 15432)
    directory.mkdir()
    (directory / "precious").write_text("data\n")
    info.save()
    return directory


def _ram(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAM, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          cwd=cwd, env=_env())


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def _on_a_terminal(argv: list[str], answer: str, cwd: Path, timeout: float = 60) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as stdin/stdout/stderr; type ``answer`` once it prompts."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=_env(), close_fds=True)
    os.close(slave)
    out = b""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if not answered and b"[y/N]" in out:
                os.write(master, answer.encode() + b"\n")
                answered = True
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, out.decode(errors="replace")


# ----------------------------------------------------------------------------------------- purge


def test_purge_without_a_terminal_refuses_and_deletes_nothing(root: Path) -> None:
    directory = _fake_cluster(root)
    result = _ram("cluster", "down", "--dir", str(directory), "--purge", cwd=root)
    message = _one_error(result)
    assert "--force" in message and "not a terminal" in message, message
    assert (directory / "precious").is_file() and (directory / lc.CLUSTER_FILE).is_file()
    forced = _ram("cluster", "down", "--dir", str(directory), "--purge", "--force", cwd=root)
    assert forced.returncode == 0, forced
    assert f"removed {directory}" in forced.stdout and not directory.exists()


def test_purge_on_a_terminal_asks_first(root: Path) -> None:
    directory = _fake_cluster(root)
    code, out = _on_a_terminal([*RAM, "cluster", "down", "--dir", str(directory), "--purge"], "n", cwd=root)
    assert code == 1 and "delete" in out and "nothing was stopped or deleted" in out, out
    assert "Traceback" not in out
    assert (directory / "precious").is_file()
    code, out = _on_a_terminal([*RAM, "cluster", "down", "--dir", str(directory), "--purge"], "y", cwd=root)
    assert code == 0 and f"removed {directory}" in out, out
    assert not directory.exists()


def test_down_without_purge_never_asks(root: Path) -> None:
    directory = _fake_cluster(root)
    result = _ram("cluster", "down", "--dir", str(directory), cwd=root)
    assert result.returncode == 0, result
    assert (directory / "precious").is_file()


# ------------------------------------------------------------------------------------------ sync


@pytest.mark.parametrize(
    ("mode", "strict", "count", "ha"),
    [
        ("off", False, 1, None),
        ("on", False, 1, {"synchronous_mode": "on", "synchronous_node_count": 1, "synchronous_strict": False}),
        ("quorum", True, 2, {"synchronous_mode": "quorum", "synchronous_node_count": 2, "synchronous_strict": True}),
    ],
)
def test_sync_settings_reach_every_node_config(
    root: Path, mode: str, strict: bool, count: int, ha: dict[str, object] | None
) -> None:
    assert lc.sync_settings(mode, strict=strict, count=count, nodes=3) == ha
    info = lc.plan(root / "c", 3, 15432)
    lc.write_raft_secret(info)  # a node config names the cluster secret, which must exist to load it
    for member in info.members:
        text = lc.node_config_toml(info, member, "postgresql://x@127.0.0.1/db", ha)
        path = lc.write_private(root / f"{member.name}.toml", text)  # it holds passwords: 0600, as ram writes it
        settings = load_config(path).ha
        assert settings.synchronous_mode == mode
        assert settings.synchronous_strict is strict and settings.synchronous_node_count == count
        assert ("[ha]" in text) is (ha is not None)


def test_a_cluster_made_before_api_tokens_gets_them(root: Path) -> None:
    """Restarting a cluster whose node configs name no tokens file (made by an older ram) adds one:
    its nodes would otherwise refuse every request."""
    info = lc.plan(root / "old", 3, 15432)
    lc.write_raft_secret(info)
    for member in info.members:
        Path(member.node_dir).mkdir(parents=True)
        text = lc.node_config_toml(info, member, "postgresql://x@127.0.0.1/db")
        legacy = "\n".join(line for line in text.splitlines() if not line.startswith("tokens_file")) + "\n"
        lc.write_private(Path(member.config_file), legacy)
    assert lc.upgrade_api_security(info)
    for member in info.members:
        config = load_config(Path(member.config_file))
        assert config.api.tokens_file == info.tokens_file
        assert Path(member.config_file).stat().st_mode & 0o777 == 0o600
    for path in (info.tokens_file, info.admin_token_file, info.read_token_file):
        assert path.stat().st_mode & 0o777 == 0o600
    assert info.admin_token() not in info.tokens_file.read_text()
    assert not lc.upgrade_api_security(info)  # once


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--strict",), "--sync on"),
        (("--sync-count", "2"), "--sync on"),
        (("--sync", "on", "--sync-count", "3"), "at least 4 nodes"),
        (("--sync", "quorum", "--nodes", "1"), "at least 2 nodes"),
    ],
)
def test_sync_options_that_can_not_work_are_refused(root: Path, args: tuple[str, ...], needle: str) -> None:
    result = _ram("cluster", "up", "--dir", str(root / "new"), *args, cwd=root)
    assert needle in _one_error(result)
    assert not (root / "new").exists()


def test_sync_options_on_an_existing_cluster_are_refused(root: Path) -> None:
    directory = _fake_cluster(root)
    result = _ram("cluster", "up", "--dir", str(directory), "--sync", "on", cwd=root)
    message = _one_error(result)
    assert "already holds a cluster" in message and "--sync" in message, message
    result = _ram("cluster", "up", "--dir", str(directory), "--sync", "off", "--strict", cwd=root)
    assert "--strict" in _one_error(result)


def test_bad_sync_mode_is_a_usage_error(root: Path) -> None:
    result = _ram("cluster", "up", "--dir", str(root / "new"), "--sync", "sometimes", cwd=root)
    assert result.returncode == 2 and "sometimes" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------ kill


def test_kill_refusals(root: Path) -> None:
    directory = _fake_cluster(root)
    unknown = _ram("cluster", "kill", "pg7", "--dir", str(directory), cwd=root)
    assert "no member named 'pg7'" in _one_error(unknown) and "pg1, pg2, pg3" in unknown.stderr
    idle = _ram("cluster", "kill", "pg1", "--dir", str(directory), cwd=root)
    assert "nothing to kill" in _one_error(idle)
    both = _ram("cluster", "kill", "pg1", "--dir", str(directory), "--ram-only", "--postgres-only", cwd=root)
    assert both.returncode == 2 and "exclude each other" in both.stderr
    missing = _ram("cluster", "kill", "pg1", "--dir", str(root / "nowhere"), cwd=root)
    assert "no local cluster" in _one_error(missing)


def test_kill_checks_the_pid_is_still_that_member(root: Path) -> None:
    """A stale pid in cluster.json or postmaster.pid (now someone else's process) is never killed."""
    directory = _fake_cluster(root)
    info = lc.ClusterInfo.load(directory)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        info.members[0].pid = bystander.pid
        info.save()
        data = Path(info.members[0].pg_data_dir)
        data.mkdir(parents=True)
        (data / "postmaster.pid").write_text(f"{bystander.pid}\n{data}\n")
        result = _ram("cluster", "kill", "pg1", "--dir", str(directory), cwd=root)
        assert "nothing to kill" in _one_error(result)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def _ram_commands() -> list[list[str]]:
    out: list[list[str]] = []

    def walk(group: click.Group, prefix: list[str]) -> None:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                walk(command, [*prefix, name])
            else:
                out.append([*prefix, name])

    walk(ram_cli, [])
    return out


@pytest.mark.parametrize("path", _ram_commands(), ids=" ".join)
def test_every_ram_command_has_an_example(path: list[str]) -> None:
    result = CliRunner().invoke(ram_cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and f"ram {' '.join(path)}" in result.output.split("Example", 1)[1]
