"""RAM installed the way hosts get it — the built wheel in a fresh virtual environment, outside the
checkout — creates its store and runs a node (the migrations travel inside the package)."""

from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import free_port, make_tempdir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed() -> Path:
    """A venv outside the checkout with the wheel installed; its dependencies come from this test
    environment's site-packages through a .pth file (no download at test time), RAM itself only
    from the wheel."""
    work = make_tempdir("ram-wheel-")
    # Nothing may point the new environment back at the checkout (a PYTHONPATH would).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        dist = work / "dist"
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        build = subprocess.run(
            [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(ROOT)],
            capture_output=True, text=True, check=False, cwd=work, env=env,
        )
        assert build.returncode == 0, build.stdout + build.stderr
        (wheel,) = dist.glob("ram-*.whl")
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env)
        py = venv / "bin" / "python"
        install = subprocess.run([*pip, "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                                 capture_output=True, text=True, check=False, cwd=work, env=env)
        assert install.returncode == 0, install.stdout + install.stderr
        purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True, env=env).stdout.strip()
        deps = [p for p in site.getsitepackages() if p != purelib]
        Path(purelib, "ram-test-deps.pth").write_text("\n".join(deps) + "\n")
        probe = "import ram, ram.eventstore.schema as s; print(ram.__file__); print(s.MIGRATIONS_DIR)"
        where = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=True, cwd=work, env=env)
        ram_file, migrations = where.stdout.split()
        assert ram_file.startswith(str(venv)) and migrations.startswith(str(venv)), where.stdout
        assert Path(migrations, "versions").is_dir() and not Path(migrations).is_symlink()
        yield venv
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_installed_wheel_upgrades_a_store_and_runs_a_node(installed: Path, store_dsn: str) -> None:
    ram = installed / "bin" / "ram"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    up = subprocess.run([str(ram), "store", "upgrade", "--dsn", store_dsn], capture_output=True, text=True,
                        check=False, cwd=installed, env=env)
    assert up.returncode == 0, up.stdout + up.stderr

    async def tables() -> int:
        conn = await asyncpg.connect(store_dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'pgraft'"))
        finally:
            await conn.close()

    import asyncio

    assert asyncio.run(tables()) >= 5
    node_dir = installed.parent / "node"
    node_dir.mkdir()
    raft_port, api_port = free_port(), free_port()
    config = node_dir / "node.toml"
    config.write_text(
        f'cluster_id = "wheel"\nnode_id = 1\nname = "n1"\ndata_dir = "{node_dir}"\nbootstrap = true\n'
        f'[raft]\nlisten = "127.0.0.1:{raft_port}"\n[store]\ndsn = "{store_dsn}"\n'
        f'[api]\nlisten = "127.0.0.1:{api_port}"\nauth = "none"\n'
    )
    proc = subprocess.Popen([str(ram), "node", "run", "--config", str(config)], cwd=node_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import httpx

        deadline = time.monotonic() + 60
        doc: dict[str, object] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                doc = httpx.get(f"http://127.0.0.1:{api_port}/cluster?stale=ok", timeout=2).json()
                if doc.get("raft_leader") == "n1" and doc.get("cluster_id") == "wheel":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        assert doc.get("raft_leader") == "n1", (doc, proc.poll())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out[-2000:]
