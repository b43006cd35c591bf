"""The Raft runtime stands on its own: importing it must not pull in RAM's application packages.

Each import runs in a fresh interpreter (this test process has imported everything already), which
prints the forbidden modules that ended up in ``sys.modules``; the list must be empty.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Application packages the consensus code must never import (directly or through another module).
FORBIDDEN = ("ram.eventstore", "ram.projections", "ram.ha", "ram.config")

#: Runs in the subprocess: import the module named in argv[1], print the forbidden modules loaded.
_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
forbidden = tuple(sys.argv[2:])
print(json.dumps(sorted(
    name for name in sys.modules
    if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
)))
"""


def forbidden_imports(module: str) -> list[str]:
    """The forbidden modules that importing ``module`` in a fresh interpreter loads."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, module, *FORBIDDEN],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"importing {module} failed:\n{proc.stderr}"
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(loaded, list)
    return [str(name) for name in loaded]


@pytest.mark.parametrize(
    "module",
    [
        "ram.consensus.runtime.node",
        "ram.consensus.runtime.statemachine",
        "ram.consensus.runtime.settings",
        "ram.consensus.core",
    ],
)
def test_runtime_does_not_import_the_application(module: str) -> None:
    assert forbidden_imports(module) == [], f"{module} imports application modules"


def test_probe_sees_a_forbidden_import() -> None:
    """The probe itself works: a module that does import the application is caught."""
    assert "ram.config" in forbidden_imports("ram.config")
