"""ramctrl against a real in-process 3-node cluster serving its APIs (the API tests' fixture, reused)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from ram.cli.ramctrl import cli
from tests.api.conftest import ADMIN_TOKEN, ApiCluster, api_cluster  # noqa: F401  (the fixture, shared)

REPO = Path(__file__).resolve().parents[2]


#: What every ramctrl run of these tests gets, unless a test says otherwise: the admin token of the
#: fixture's nodes in $RAM_TOKEN, and nothing else from the environment of whoever runs the tests.
CREDENTIALS: dict[str, str | None] = {
    "RAM_TOKEN": ADMIN_TOKEN, "RAM_TOKEN_FILE": None, "RAM_CACERT": None, "RAM_CLIENT_CERT": None,
    "RAM_CLIENT_KEY": None,
}


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str


async def ctl(cluster: ApiCluster | None, *args: str, input: str | None = None, apis: Sequence[str] | None = None,
              env: dict[str, str | None] | None = None) -> Run:
    """``ramctrl --api <every node> ARGS`` in a worker thread: the servers run on this test's event loop."""
    urls = list(apis) if apis is not None else [cluster.url(i) for i in range(3)] if cluster else []
    argv = [a for url in urls for a in ("--api", url)] + list(args)
    runner = CliRunner()
    base: dict[str, str | None] = {"RAM_API": None, **CREDENTIALS}
    result = await asyncio.to_thread(runner.invoke, cli, argv, input=input, env={**base, **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr)


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAM_API" and k not in CREDENTIALS}
    env["RAM_TOKEN"] = ADMIN_TOKEN
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def ctl_process(*args: str) -> asyncio.subprocess.Process:
    """``python -m ram.cli.ramctrl ARGS`` as a real process (for streams, signals, exit codes)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ram.cli.ramctrl", *args, cwd=REPO, env=subprocess_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


def one_error_line(run: Run, *, only: bool = True) -> str:
    """A failure ends with one ``Error: ...`` line on stderr (the only line unless a prompt came
    first) and never shows a traceback."""
    assert run.exit_code != 0, run
    lines = run.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: "), run
    assert not only or len(lines) == 1, run
    assert "Traceback" not in run.stderr + run.stdout
    return lines[-1]


@pytest.fixture
def editor(tmp_path: Path) -> Path:
    """A fake $EDITOR: replaces the file it is given with the content of ``<tmp>/edited``."""
    script = tmp_path / "editor.sh"
    script.write_text(f'#!/bin/sh\ncp "{tmp_path / "edited"}" "$1"\n')
    script.chmod(0o755)
    return script
