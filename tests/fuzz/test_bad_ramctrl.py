"""``ramctrl`` with wrong arguments or an API nobody answers: a short error ending in one ``Error:``
line, a non-zero exit, never a traceback — run as real processes, the way a user meets them."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]

#: An API address where nothing listens (connection refused at once), and one that never answers
#: (a TEST-NET-1 address: the connection attempt times out).
DEAD = f"http://127.0.0.1:{free_port()}"
BLACKHOLE = "http://192.0.2.1:8008"

UNREACHABLE = [
    ["status"], ["status", "--json"], ["health"], ["events"], ["events", "--last", "5"], ["history"], ["dsn"],
    ["switchover", "--force"], ["switchover", "--to", "pg2", "--force"], ["failover", "--to", "pg2", "--force"],
    ["pause"], ["resume"], ["config", "show"], ["config", "set", "ha.lease_s=3"],
    ["add-node", "pg9", "--node-id", "9", "--raft", "127.0.0.9:1", "--api", "127.0.0.9:2", "--pg", "127.0.0.9:3"],
    ["remove-node", "pg3", "--force"], ["restart", "pg1"], ["reinit", "pg2"],
]

WRONG_ARGS = [
    ["no-such-command"], ["status", "--bogus"], ["events", "--last", "abc"], ["events", "--last", "-5"],
    ["events", "--after", "x"], ["switchover", "--wait", "soon"], ["failover"], ["config", "set", "noequals"],
    ["config", "set"], ["add-node"], ["add-node", "pg9", "--node-id", "zero", "--raft", "a", "--api", "b", "--pg", "c"],
    ["--connect-timeout", "0", "status"], ["--connect-timeout", "abc", "status"],
    ["--token-file", "/nonexistent/token", "status"], ["--cacert", "/nonexistent/ca.pem", "status"],
    ["--api", "::::", "status"], ["--api", "ftp://127.0.0.1:1", "status"], ["restart"], ["dsn", "--user"],
]


def _run(args: list[str], api: str | None = DEAD) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAM_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["RAM_TOKEN"] = "fuzz-token-0123456789abcdef"
    if api is not None:
        env["RAM_API"] = api
    return subprocess.run([sys.executable, "-m", "ram.cli.ramctrl", *args], capture_output=True, text=True,
                          timeout=120, env=env, stdin=subprocess.DEVNULL, cwd=REPO)


def _check(args: list[str], proc: subprocess.CompletedProcess[str], *, only_line: bool) -> str | None:
    text = proc.stdout + proc.stderr
    if "Traceback" in text:
        return f"{args}: traceback\n{text[-1500:]}"
    if proc.returncode == 0:
        return f"{args}: exit 0\n{text[-500:]}"
    lines = proc.stderr.strip().splitlines()
    if not lines or not lines[-1].startswith("Error: "):
        return f"{args}: no 'Error:' line at the end of stderr: {proc.stderr[-500:]!r}"
    if only_line and len(lines) != 1:
        return f"{args}: {len(lines)} lines on stderr: {proc.stderr[-800:]!r}"
    return None


def _many(cases: list[list[str]], *, api: str | None, only_line: bool) -> list[str]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = list(pool.map(lambda a: _run(a, api), cases))
    return [p for p in (_check(a, proc, only_line=only_line) for a, proc in zip(cases, procs, strict=True)) if p]


def test_unreachable_api_one_line_nonzero() -> None:
    problems = _many(UNREACHABLE, api=DEAD, only_line=True)
    assert not problems, "\n".join(problems)


def test_api_that_never_answers_one_line() -> None:
    """A black-holed address: the connect timeout ends it with one line (no hang, no traceback)."""
    problems = _many([["--connect-timeout", "0.5", "status"], ["--connect-timeout", "0.5", "pause"]],
                     api=BLACKHOLE, only_line=True)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("chunk", [0, 1])
def test_wrong_arguments_error_line_nonzero(chunk: int) -> None:
    """Usage errors print click's usage hint, then one ``Error:`` line; exit 2 (or 1), no traceback."""
    cases = WRONG_ARGS[chunk::2]
    problems = _many(cases, api=DEAD, only_line=False)
    assert not problems, "\n".join(problems)
