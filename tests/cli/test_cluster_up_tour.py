"""The README's quick start and tour, run as a new user runs them.

``ram cluster up`` and ``ramctrl`` are real executables started as subprocesses; the cluster is a real local
3-node cluster (each node a ``ram node run`` process managing its own PostgreSQL, one shared store instance),
reached over real HTTP and libpq. The tests of this module run in order against one cluster: up, the read
commands, a write, a switchover, (slow) a node loss with its failover and rejoin, the store's events in SQL,
down and up again, and down --purge. Whatever happens, a finalizer runs ``ram cluster down --purge`` and
kills any process of the cluster left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ram import localcluster as lc
from ram.postgres.commands import find_bindir
from tests.conftest import make_tempdir
from tests.e2e.cluster import free_base_port, record_stall

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
NODES = 3
UP_TIMEOUT_S = 150.0  # ram cluster up --timeout; a first start on a busy 2-core machine can be slow
CTL_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 60.0
FAILOVER_BOUND_S = 30.0  # the README promises ~3 s; this only catches "never"
#: ramctrl's credentials from the environment: whoever runs the tests may have some; the tour sets its own.
TOKEN_VARIABLES = ("RAM_TOKEN", "RAM_TOKEN_FILE", "RAM_CACERT", "RAM_CLIENT_CERT", "RAM_CLIENT_KEY")


def _exe(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} executable not found next to {sys.executable} nor on PATH"
    return found


def _psql() -> str:
    return shutil.which("psql") or str(find_bindir() / "psql")


@dataclass
class Tour:
    """One local cluster under ``root/cluster`` and the commands a user types against it."""

    root: Path
    base_port: int
    env: dict[str, str]
    seen_pids: set[int] = field(default_factory=set)
    up: subprocess.CompletedProcess[str] | None = None
    rows: int = 0  # rows written to the demo table so far

    @property
    def dir(self) -> Path:
        return self.root / "cluster"

    # ------------------------------------------------------------------------------------ commands

    def run(self, argv: Sequence[str], timeout: float = CTL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=self.env,
            cwd=self.root,
        )
        self.remember_pids()
        return result

    def ram(self, *args: str, timeout: float = UP_TIMEOUT_S + 30) -> subprocess.CompletedProcess[str]:
        return self.run([_exe("ram"), *args], timeout=timeout)

    def ctl(self, *args: str, apis: Sequence[str] | None = None) -> subprocess.CompletedProcess[str]:
        """``ramctrl ARGS`` with RAM_API set as the README's tour does, or with ``--api`` for each of ``apis``."""
        flags = [a for url in apis for a in ("--api", url)] if apis is not None else []
        return self.run([_exe("ramctrl"), *flags, *args])

    def ctl_json(self, *args: str, apis: Sequence[str] | None = None) -> Any:
        result = self.ctl(*args, "--json", apis=apis)
        assert result.returncode == 0, describe(result)
        return json.loads(result.stdout)

    def ctl_lines(self, *args: str) -> list[dict[str, Any]]:
        """A command whose --json prints one object per line (``ramctrl events``)."""
        result = self.ctl(*args, "--json")
        assert result.returncode == 0, describe(result)
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def psql(self, dsn: str, sql: str) -> str:
        result = self.run([_psql(), dsn, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        assert result.returncode == 0, describe(result)
        return result.stdout.strip()

    def writer_dsn(self) -> str:
        """What ``ramctrl dsn`` gives a client (the postgres user: its password is in the cluster's pgpass)."""
        return str(self.ctl_json("dsn", "--user", "postgres")["writers"])

    # -------------------------------------------------------------------------------------- state

    def info(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.dir / lc.CLUSTER_FILE).read_text())
        return doc

    def member(self, name: str) -> dict[str, Any]:
        return next(m for m in self.info()["members"] if m["name"] == name)

    def api_urls(self) -> list[str]:
        return [m["api_url"] for m in self.info()["members"]]

    def remember_pids(self) -> None:
        """Every process of the cluster ever seen, for the finalizer."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            for m in self.info()["members"]:
                if m.get("pid"):
                    self.seen_pids.add(int(m["pid"]))
        for datadir in self.data_dirs():
            pid = postmaster_pid(datadir)
            if pid:
                self.seen_pids.add(pid)

    def data_dirs(self) -> list[Path]:
        dirs = [self.dir / "store" / "data"]
        with contextlib.suppress(OSError, ValueError, KeyError):
            dirs += [Path(m["pg_data_dir"]) for m in self.info()["members"]]
        return dirs

    def status(self, apis: Sequence[str] | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = self.ctl_json("status", apis=apis)
        return doc

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str,
                    apis: Sequence[str] | None = None) -> dict[str, Any]:
        """Poll ``ramctrl status --json`` (as a user would) until ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            result = self.ctl("status", "--json", apis=apis)
            if result.returncode == 0:
                last = json.loads(result.stdout)
                if predicate(last):
                    return dict(last)
            else:
                last = describe(result)
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {brief(last)}")

    def wait_settled(self, primary: str | None = None, timeout: float = SETTLE_TIMEOUT_S) -> dict[str, Any]:
        return self.wait_status(lambda doc: settled(doc, primary), timeout,
                                f"primary {primary or 'any'} with every replica streaming from it")

    # -------------------------------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        """Stop everything, then remove the data (kept, with the logs, when RAM_E2E_KEEP is set)."""
        keep = bool(os.environ.get("RAM_E2E_KEEP"))
        self.remember_pids()
        if (self.dir / lc.CLUSTER_FILE).exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                purge = [] if keep else ["--purge", "--force"]
                subprocess.run([_exe("ram"), "cluster", "down", "--dir", str(self.dir), *purge],
                               capture_output=True, timeout=90, stdin=subprocess.DEVNULL, env=self.env, cwd=self.root)
        leftovers = {p for p in self.seen_pids if lc.pid_alive(p) and str(self.root) in cmdline(p)}
        for pid in sorted(leftovers | set(cluster_processes(self.root))):  # never a recycled pid of someone else
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if keep:
            print(f"kept {self.root} (RAM_E2E_KEEP)", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def postmaster_pid(datadir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((datadir / "postmaster.pid").read_text().split()[0])
    return None


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def cluster_processes(root: Path) -> list[int]:
    """Live processes started for the cluster under ``root`` (nodes, fence guards, postmasters): their command
    lines name a path under it (a postmaster's backends do not; they exit with it)."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if pid != os.getpid() and f"{root}/" in cmdline(pid) and lc.pid_alive(pid)]


def describe(result: subprocess.CompletedProcess[str]) -> str:
    command = " ".join(map(str, result.args))
    return f"{command} -> exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def brief(doc: Any) -> Any:
    if not isinstance(doc, dict):
        return doc
    return {
        "primary": doc.get("primary"), "timeline": doc.get("timeline"), "raft_leader": doc.get("raft_leader"),
        "members": [
            {k: m.get(k) for k in ("name", "role", "state", "healthy", "following", "timeline", "health_reason")}
            for m in doc.get("members", [])
        ],
    }


def settled(doc: dict[str, Any], primary: str | None = None) -> bool:
    """A primary (``primary`` if given), every member healthy, every replica running and following it, one timeline."""
    members = doc.get("members", [])
    head = doc.get("primary")
    if not head or (primary is not None and head != primary) or len(members) != NODES:
        return False
    for m in members:
        if not m.get("healthy") or m.get("state") != "running" or m.get("timeline") != doc.get("timeline"):
            return False
        if m["name"] == head and m.get("role") != "primary":
            return False
        if m["name"] != head and (m.get("role") != "replica" or m.get("following") != head):
            return False
    return bool(doc.get("raft_leader"))


def status_rows(table: str) -> dict[str, list[str]]:
    """The member rows of ``ramctrl status``: name -> [Member, Host, Role, State, TL, (Lag,) Raft]."""
    lines = table.splitlines()
    assert lines[1].split() == ["Member", "Host", "Role", "State", "TL", "Lag", "in", "MB", "Raft"], table
    assert set(lines[2]) <= {"-", " "}, table
    return {line.split()[0]: line.split() for line in lines[3:] if line.strip() and line.split()[0].startswith("pg")}


def assert_all_dead(pids: Sequence[int], what: str, root: Path | None = None) -> None:
    """``pids`` gone, and (given ``root``) no other process of that cluster either, within a few seconds."""

    def alive() -> list[int]:
        return sorted({p for p in pids if lc.pid_alive(p)} | set(cluster_processes(root) if root else []))

    deadline = time.monotonic() + 15
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(), f"{what}: still running: {[(p, cmdline(p)) for p in alive()]}"


# ------------------------------------------------------------------------------------------ fixture


@pytest.fixture(scope="module")
def tour() -> Iterator[Tour]:
    root = make_tempdir("ram-tour-")  # 0755: PostgreSQL's OS user must traverse it when we are root
    env = {k: v for k, v in os.environ.items() if k not in ("RAM_API", "PGPASSFILE", "PGUSER", "PGHOST", "PGPORT",
                                                            *TOKEN_VARIABLES)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the README's `export PATH=$PWD/.venv/bin:$PATH`
    tour = Tour(root=root, base_port=free_base_port(NODES), env=env)
    try:
        tour.up = tour.ram("cluster", "up", "--nodes", str(NODES), "--dir", str(tour.dir),
                           "--base-port", str(tour.base_port), "--timeout", str(UP_TIMEOUT_S))
        if tour.up.returncode != 0 and "not healthy" in tour.up.stderr:
            # KNOWN OPEN BUG (session notes): a new cluster's start can stall during full-suite runs;
            # down and up again once (data kept), as an operator would.
            first = tour.up
            with contextlib.suppress(Exception):
                record_stall(lc.ClusterInfo.load(tour.dir), first.stderr[-2000:])
            tour.ram("cluster", "down", "--dir", str(tour.dir))
            again = tour.ram("cluster", "up", "--dir", str(tour.dir), "--timeout", str(UP_TIMEOUT_S))
            # What the user saw, both attempts: the first said what it created, the second the result.
            tour.up = subprocess.CompletedProcess(again.args, again.returncode, first.stdout + again.stdout,
                                                  first.stderr + again.stderr)
        assert tour.up.returncode == 0, describe(tour.up)
        # What `ram cluster up` tells the user to export.
        env["RAM_API"] = ",".join(tour.api_urls())
        env["RAM_TOKEN_FILE"] = str(tour.info()["admin_token_file"])
        env["PGPASSFILE"] = str(tour.info()["pgpass_file"])
        yield tour
    finally:
        tour.cleanup()


# -------------------------------------------------------------------------------------------- tests


def test_cluster_up_prints_status_dsns_next_steps_and_writes_cluster_json(tour: Tour) -> None:
    assert tour.up is not None
    out = tour.up.stdout
    info = tour.info()
    base = tour.base_port
    assert f"creating a {NODES}-node cluster in {tour.dir}" in out
    assert "all members healthy" in out
    # The status table: every member, one primary, the others replicas, one Raft leader.
    header = next(line for line in out.splitlines() if line.startswith("Member"))
    assert header.split() == ["Member", "Host", "Role", "Raft", "TL", "Lag"]
    names = [f"pg{i}" for i in range(1, NODES + 1)]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in names}
    assert sorted(rows) == names, out
    assert sorted(r[2] for r in rows.values()) == ["primary"] + ["replica"] * (NODES - 1), out
    assert [r[3] for r in rows.values()].count("leader") == 1, out
    # Connection strings and next steps.
    assert f"writers: {info['writer_dsn']}" in out
    assert f"readers: {info['reader_dsn']}" in out
    assert f"export PGPASSFILE={tour.dir / 'pgpass'}" in out
    assert "Next:" in out
    assert f"export RAM_API={','.join(tour.api_urls())} RAM_TOKEN_FILE={tour.dir / 'admin.token'} " in out
    assert "ramctrl status" in out and "ramctrl switchover --to" in out
    assert f"ram cluster down --dir {tour.dir}" in out
    primary = next(name for name, r in rows.items() if r[2] == "primary")
    assert f"ram cluster kill {primary} --dir {tour.dir}" in out
    # The first lines of "Next:", pasted into a new shell whose PATH lacks the venv, make `ramctrl status` work.
    nxt = out.split("Next:", 1)[1].splitlines()
    exports = [line.strip() for line in nxt if line.strip().startswith("export ")]
    assert exports and exports[0] == f"export PATH={BIN}:$PATH", nxt
    bare = {k: v for k, v in tour.env.items() if k not in ("RAM_API", "PGPASSFILE", *TOKEN_VARIABLES)}
    bare["PATH"] = os.pathsep.join(p for p in bare["PATH"].split(os.pathsep) if Path(p) != BIN) or "/usr/bin:/bin"
    shell = subprocess.run(["bash", "-c", "\n".join([*exports, "ramctrl status"])], capture_output=True, text=True,
                           timeout=CTL_TIMEOUT_S, env=bare, cwd=tour.root, stdin=subprocess.DEVNULL)
    assert shell.returncode == 0 and f"primary: {primary}" in shell.stdout, describe(shell)
    # cluster.json describes the cluster for scripts.
    assert info["dir"] == str(tour.dir) and info["store_port"] == base + 299
    assert Path(info["pgpass_file"]).is_file()
    assert [m["name"] for m in info["members"]] == [f"pg{i}" for i in range(1, NODES + 1)]
    for i, m in enumerate(info["members"], start=1):
        host = lc.member_host(i)
        assert (m["host"], m["pg_port"], m["api_port"], m["raft_port"]) == (
            host, base + i - 1, base + 100 + i - 1, base + 200 + i - 1)
        assert m["api_url"] == f"http://{host}:{base + 100 + i - 1}"
        assert f"{host}:{m['pg_port']}" in info["writer_dsn"]
        assert Path(m["pg_data_dir"]).is_relative_to(tour.dir)
        assert (Path(m["pg_data_dir"]) / "PG_VERSION").is_file()
        assert Path(m["config_file"]).is_file() and Path(m["log_file"]).is_file()
        assert lc.pid_alive(m["pid"]), m
        assert "node run" in cmdline(m["pid"]) and m["config_file"] in cmdline(m["pid"])
        pm = postmaster_pid(Path(m["pg_data_dir"]))
        assert pm is not None and lc.pid_alive(pm), f"{m['name']}: no running postmaster"


def test_cluster_up_made_api_tokens_that_stay_secret(tour: Tour) -> None:
    """Secure by default: the APIs require tokens, which ram cluster up made (0600 files) and never shows."""
    info = tour.info()
    tokens = {}
    for key in ("admin_token_file", "read_token_file", "tokens_file"):
        path = Path(info[key])
        assert path.parent == tour.dir and path.stat().st_mode & 0o777 == 0o600, (path, oct(path.stat().st_mode))
    for role in ("admin", "read"):
        tokens[role] = Path(info[f"{role}_token_file"]).read_text().strip()
        assert len(tokens[role]) >= 32
    assert tour.up is not None
    # Nowhere in what ram cluster up printed, cluster.json, the node configs or logs (the tokens file only
    # holds digests).
    places = {"ram cluster up output": tour.up.stdout + tour.up.stderr,
              "cluster.json": (tour.dir / lc.CLUSTER_FILE).read_text(),
              "tokens file": Path(info["tokens_file"]).read_text()}
    for m in info["members"]:
        places[m["config_file"]] = Path(m["config_file"]).read_text()
        places[m["log_file"]] = Path(m["log_file"]).read_text(errors="replace")
    for role, token in tokens.items():
        for where, text in places.items():
            assert token not in text, f"the {role} token shows in {where}"
    # Without a token, ramctrl says what to set, in one line; with the read token, writes are refused.
    anonymous = {k: v for k, v in tour.env.items() if k not in TOKEN_VARIABLES}
    result = subprocess.run([_exe("ramctrl"), "status"], capture_output=True, text=True, timeout=CTL_TIMEOUT_S,
                            env=anonymous, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "RAM_TOKEN_FILE" in result.stderr, \
        describe(result)
    reader = {**anonymous, "RAM_TOKEN_FILE": info["read_token_file"]}
    result = subprocess.run([_exe("ramctrl"), "pause"], capture_output=True, text=True, timeout=CTL_TIMEOUT_S,
                            env=reader, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "admin role" in result.stderr and "Traceback" not in result.stderr, \
        describe(result)
    assert "Maintenance" not in tour.ctl("status").stdout


def test_status_table_and_json(tour: Tour) -> None:
    result = tour.ctl("status")
    assert result.returncode == 0, describe(result)
    first = result.stdout.splitlines()[0]
    rows = status_rows(result.stdout)
    assert sorted(rows) == ["pg1", "pg2", "pg3"], result.stdout
    roles = {name: row[2] for name, row in rows.items()}
    primary = next(name for name, role in roles.items() if role == "primary")
    assert sorted(roles.values()) == ["primary", "replica", "replica"], result.stdout
    assert all(row[3] == "streaming" for name, row in rows.items() if name != primary), result.stdout
    leaders = [name for name, row in rows.items() if row[-1] == "leader"]
    assert len(leaders) == 1 and all(row[-1] in ("leader", "voter") for row in rows.values()), result.stdout
    assert f"primary: {primary}" in first and f"Raft leader: {leaders[0]}" in first, first
    # --json, here through explicit --api flags instead of RAM_API.
    doc = tour.status(apis=tour.api_urls())
    assert doc["primary"] == primary and doc["raft_leader"] == leaders[0]
    assert settled(doc, primary), brief(doc)
    assert {m["name"]: m["pg_address"] for m in doc["members"]} == {
        m["name"]: f"{m['host']}:{m['pg_port']}" for m in tour.info()["members"]}


def test_health_and_dsn_and_a_write(tour: Tour) -> None:
    result = tour.ctl("health")
    assert result.returncode == 0, describe(result)
    for url in tour.api_urls():
        line = next(line for line in result.stdout.splitlines() if line.startswith(url))
        assert " ok " in line and " yes" in line, result.stdout
    checks = tour.ctl_json("health")
    assert len(checks) == NODES and all(c["ok"] and c["healthy"] and c["ready"] for c in checks), checks
    # ramctrl dsn, then a client writes through the writer URI (libpq finds the primary): each URI as printed,
    # with PostgreSQL 15's psql (Debian 12's libpq, which rejects parameters of later versions).
    plain = tour.ctl("dsn")
    assert plain.returncode == 0, describe(plain)
    printed = dict(line.split(": ", 1) for line in plain.stdout.splitlines())
    assert sorted(printed) == ["readers", "writers"], plain.stdout
    psql15 = str(find_bindir() / "psql")
    assert " 15." in tour.run([psql15, "--version"]).stdout
    for role, uri in printed.items():
        assert uri.startswith("postgresql://postgres@"), uri  # as root, no user would mean role "root"
        result = tour.run([psql15, uri, "-X", "-At", "-w", "-c", "SELECT 1"])
        assert result.returncode == 0 and result.stdout.strip() == "1", f"{role}: {describe(result)}"
    dsns = tour.ctl_json("dsn")
    assert dsns == printed
    assert "target_session_attrs=read-write" in dsns["writers"] and "target_session_attrs=any" in dsns["readers"]
    writers = dsns["writers"]
    tour.psql(writers, "CREATE TABLE demo (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
    tour.psql(writers, "INSERT INTO demo DEFAULT VALUES")
    tour.rows += 1
    assert tour.psql(writers, "SELECT count(*) FROM demo") == "1"
    assert tour.psql(writers, "SELECT pg_is_in_recovery()") == "f"
    assert tour.psql(dsns["readers"], "SELECT 1") == "1"


def test_events_and_history(tour: Tour) -> None:
    table = tour.ctl("events")
    assert table.returncode == 0, describe(table)
    assert table.stdout.splitlines()[0].split() == ["Pos", "Time", "Type", "Summary"]
    assert "member_health_changed" in table.stdout and "replica_following" in table.stdout
    events = tour.ctl_lines("events", "--after", "0", "--limit", "1000")  # from the beginning
    types = [e["type"] for e in events]
    assert types[0] == "cluster_bootstrapped", types
    assert {"raft_leader_elected", "primary_promoted", "member_health_changed", "replica_following"} <= set(types)
    positions = [(e["position"], e["sub"]) for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    promoted = [e for e in events if e["type"] == "primary_promoted"]
    primary = tour.status()["primary"]
    assert promoted and promoted[-1]["payload"]["name"] == primary and promoted[-1]["payload"]["timeline"] == 1
    only = tour.ctl_lines("events", "--after", "0", "--type", "replica_following")
    assert only and all(e["type"] == "replica_following" for e in only)
    # history: no operation yet, timeline 1 started by the bootstrap primary.
    history = tour.ctl("history")
    assert history.returncode == 0 and "No failovers or switchovers recorded." in history.stdout, describe(history)
    doc = tour.ctl_json("history")
    assert doc["operations"] == []
    assert [(t["timeline"], t["primary"]) for t in doc["timelines"]] == [(1, primary)]


def test_switchover_to_a_replica(tour: Tour) -> None:
    before = tour.wait_settled()
    old = before["primary"]
    target = sorted(m["name"] for m in before["members"] if m["name"] != old)[0]
    # `ramctrl events --follow` in a second terminal, as the tour suggests; from the current position, so
    # that nothing committed before it subscribes is missed.
    follow_out = tour.root / "follow.out"
    with follow_out.open("w") as out:
        follower = subprocess.Popen(
            [_exe("ramctrl"), "events", "--follow", "--json", "--after", str(before["applied_index"])],
            stdout=out, stderr=subprocess.PIPE, text=True, env=tour.env, cwd=tour.root, stdin=subprocess.DEVNULL,
        )
    try:
        started = time.monotonic()
        result = tour.ctl("switchover", "--to", target, "--force")
        took = time.monotonic() - started
        assert result.returncode == 0, describe(result)
        assert "Switchover accepted" in result.stdout and f"{old} -> {target}" in result.stdout, result.stdout
        # ramctrl waited for the outcome: the new primary, its timeline and the duration, and it is so at once.
        done = f"Switchover completed: {target} is the primary (was {old}), timeline {before['timeline'] + 1}, took "
        assert done in result.stdout, result.stdout
        assert tour.status()["primary"] == target
        after = tour.wait_settled(target)
        assert after["timeline"] == before["timeline"] + 1, brief(after)
        old_row = next(m for m in after["members"] if m["name"] == old)
        assert old_row["role"] == "replica" and old_row["following"] == target
        # The live stream printed the completion.
        deadline = time.monotonic() + 15
        completed: list[dict[str, Any]] = []
        while not completed and time.monotonic() < deadline:
            lines = [json.loads(line) for line in follow_out.read_text().splitlines() if line.strip()]
            completed = [e for e in lines if e["type"] == "switchover_completed"
                         and e["payload"]["new_primary"] == target]
            time.sleep(0.2)
        assert completed, follow_out.read_text()
        assert completed[0]["payload"]["old_primary"] == old
        assert follower.poll() is None, "ramctrl events --follow exited by itself"
        follower.send_signal(signal.SIGINT)  # Ctrl-C ends it cleanly
        _, err = follower.communicate(timeout=10)
        assert follower.returncode == 0 and "Traceback" not in err, err
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(timeout=10)
    print(f"switchover {old} -> {target}: ramctrl returned after {took:.1f} s")
    ops = tour.ctl_json("history")["operations"]
    done = [op for op in ops if op["kind"] == "switchover" and op["outcome"] == "succeeded"]
    assert done and done[-1]["old_primary"] == old and done[-1]["new_primary"] == target, ops
    # Clients follow: the writer URI now lands on the new primary.
    writers = tour.writer_dsn()
    assert writers.startswith(f"postgresql://postgres@{tour.member(target)['host']}:")
    tour.psql(writers, "INSERT INTO demo DEFAULT VALUES")
    tour.rows += 1
    assert tour.psql(writers, "SELECT count(*) FROM demo") == str(tour.rows)


def test_switchover_without_a_candidate_reports_the_chosen_one_as_json(tour: Tour) -> None:
    before = tour.wait_settled()
    result = tour.ctl("switchover", "--force", "--json")
    assert result.returncode == 0, describe(result)
    outcome = json.loads(result.stdout)
    assert outcome["operation"] == "switchover" and outcome["outcome"] == "succeeded", outcome
    assert outcome["old_primary"] == before["primary"]
    chosen = outcome["new_primary"]
    assert chosen in {m["name"] for m in before["members"]} - {before["primary"]}, outcome
    assert outcome["timeline"] == before["timeline"] + 1 and outcome["duration_ms"] >= 0
    assert outcome["write"]["index"] > before["applied_index"] and outcome["error"] == ""
    assert tour.status()["primary"] == chosen
    tour.wait_settled(chosen)


def test_failover_waits_for_the_outcome(tour: Tour) -> None:
    """Maintenance on (no automatic failover), `ram cluster kill` of the primary, then a manual failover that
    ramctrl follows to its end; resume, and `ram cluster up` brings the killed node back as a replica."""
    before = tour.wait_settled()
    old = before["primary"]
    target = sorted(m["name"] for m in before["members"] if m["name"] != old)[-1]
    refused = tour.ctl("failover", "--to", target, "--force")  # the primary is healthy: use a switchover
    assert refused.returncode == 1 and "switchover" in refused.stderr.splitlines()[-1], describe(refused)
    assert tour.ctl("pause", "--reason", "tour: manual failover").returncode == 0
    try:
        member = tour.member(old)
        pm = postmaster_pid(Path(member["pg_data_dir"]))
        kill = tour.ram("cluster", "kill", old, "--dir", str(tour.dir), timeout=CTL_TIMEOUT_S)
        assert kill.returncode == 0, describe(kill)
        assert f"killed {old}'s ram process (pid {member['pid']})" in kill.stdout, kill.stdout
        assert f"killed {old}'s postmaster (pid {pm})" in kill.stdout, kill.stdout
        assert not lc.pid_alive(member["pid"]) and pm is not None and not lc.pid_alive(pm)
        others = [u for u in tour.api_urls() if u != member["api_url"]]
        tour.wait_status(lambda doc: any(m["name"] == old and not m["healthy"] for m in doc["members"]),
                         FAILOVER_BOUND_S, f"{old} reported unhealthy", apis=others)
        time.sleep(1.0)  # maintenance: nothing happens by itself
        assert tour.status(apis=others)["primary"] == old
        result = tour.ctl("failover", "--to", target, "--force", "--json", apis=others)
        assert result.returncode == 0, describe(result)
        outcome = json.loads(result.stdout)
        assert outcome["outcome"] == "succeeded" and outcome["new_primary"] == target, outcome
        assert outcome["old_primary"] == old and outcome["timeline"] == before["timeline"] + 1, outcome
        assert tour.status(apis=others)["primary"] == target
    finally:
        assert tour.ctl("resume").returncode == 0
    up = tour.ram("cluster", "up", "--dir", str(tour.dir), "--timeout", str(UP_TIMEOUT_S))
    assert up.returncode == 0, describe(up)
    tour.wait_settled(target)
    assert tour.psql(tour.writer_dsn(), "SELECT count(*) FROM demo") == str(tour.rows)


@pytest.mark.slow
def test_node_loss_fails_over_and_cluster_up_rejoins_the_node(tour: Tour) -> None:
    """The tour's kill -9 of the primary's ram and postmaster, then `ram cluster up` restarts the node."""
    old = tour.wait_settled()["primary"]
    member = tour.member(old)
    pm = postmaster_pid(Path(member["pg_data_dir"]))
    assert pm is not None and lc.pid_alive(member["pid"]) and lc.pid_alive(pm)
    kill = tour.ram("cluster", "kill", old, "--dir", str(tour.dir), timeout=CTL_TIMEOUT_S)  # as the README's tour
    killed = time.monotonic()
    assert kill.returncode == 0 and not lc.pid_alive(member["pid"]) and not lc.pid_alive(pm), describe(kill)
    # ramctrl passes over the dead node's API (listed first here) to the next one.
    apis = [member["api_url"]] + [u for u in tour.api_urls() if u != member["api_url"]]
    after = tour.wait_status(
        lambda doc: doc.get("primary") not in (None, old)
        and any(m["name"] == doc["primary"] and m["healthy"] and m["role"] == "primary" for m in doc["members"]),
        FAILOVER_BOUND_S, f"a new primary after the loss of {old}", apis=apis,
    )
    took = time.monotonic() - killed
    new = after["primary"]
    print(f"failover {old} -> {new} seen by ramctrl after {took:.1f} s")
    dead_row = next(m for m in after["members"] if m["name"] == old)
    assert not dead_row["healthy"], brief(after)
    failovers = tour.ctl_lines("events", "--after", "0", "--limit", "1000", "--type", "failover_started",
                               "--type", "failover_completed")
    completed = [e for e in failovers if e["type"] == "failover_completed"]
    last = completed[-1]["payload"] if completed else {}
    assert last.get("old_primary") == old and last.get("new_primary") == new, failovers
    assert any(e["type"] == "failover_started" and e["payload"]["old_primary"] == old for e in failovers)
    ops = tour.ctl_json("history")["operations"]
    assert any(op["kind"] == "failover" and op["outcome"] == "succeeded" and op["new_primary"] == new for op in ops)
    health = tour.ctl("health")
    assert health.returncode == 1 and member["api_url"] in health.stderr, describe(health)
    # No acknowledged row is lost (async mode may lose the last ones in flight; none were in flight).
    assert tour.psql(tour.writer_dsn(), "SELECT count(*) FROM demo") == str(tour.rows)
    # `ram cluster up` restarts the dead node; it rejoins as a replica of the new primary.
    up = tour.ram("cluster", "up", "--dir", str(tour.dir), "--timeout", str(UP_TIMEOUT_S))
    assert up.returncode == 0, describe(up)
    assert f"restarting the cluster in {tour.dir}" in up.stdout
    assert tour.member(old)["pid"] != member["pid"] and lc.pid_alive(tour.member(old)["pid"])
    tour.wait_settled(new)
    rejoined = [e for e in tour.ctl_lines("events", "--after", "0", "--limit", "1000", "--type", "replica_rejoined")
                if e["payload"]["name"] == old]
    assert rejoined and rejoined[-1]["payload"]["primary"] == new, rejoined
    writers = tour.writer_dsn()
    tour.psql(writers, "INSERT INTO demo DEFAULT VALUES")
    tour.rows += 1
    assert tour.psql(writers, "SELECT count(*) FROM demo") == str(tour.rows)


def test_events_in_the_store_with_sql(tour: Tour) -> None:
    """The tour's `psql -h $PWD/ram-cluster/store/run -p <base+299> -U postgres ram_pg1`, as whoever we are."""
    info = tour.info()
    sock = tour.dir / "store" / "run"

    def store_sql(sql: str) -> str:
        argv = [_psql(), "-X", "-At", "-h", str(sock), "-p", str(info["store_port"]), "-U", "postgres", "ram_pg1",
                "-c", sql]
        result = tour.run(argv)
        assert result.returncode == 0, describe(result)
        return result.stdout.strip()

    count = int(store_sql("SELECT count(*) FROM pgraft.events"))
    assert count > 10
    latest = store_sql("SELECT position, type, payload FROM pgraft.events ORDER BY position DESC LIMIT 10")
    assert len(latest.splitlines()) == 10
    assert store_sql("SELECT count(*) FROM pgraft.events WHERE type = 'switchover_completed'") != "0"
    # The same events the API serves: compare the first page.
    api_events = tour.ctl_lines("events", "--after", "0", "--limit", "20")
    rows = store_sql("SELECT position || '.' || sub || ' ' || type FROM pgraft.events ORDER BY position, sub LIMIT 20")
    assert rows.splitlines() == [f"{e['position']}.{e['sub']} {e['type']}" for e in api_events][:20]


def readme_tour_script(tour: Tour) -> str:
    """The README's tour block as a shell script for this cluster: its directory, ports and a table of its own.

    Left out: ``ramctrl events --follow`` (a second terminal; see test_switchover_to_a_replica) and the final
    ``ram cluster down`` (test_cluster_down_then_up_again). After the kill, the script waits as a person
    reading ``ramctrl status`` would, until another member is primary.
    """
    readme = (REPO / "README.md").read_text()
    block = readme.split("A short tour", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    info = tour.info()
    lines: list[str] = []
    for line in block.replace("\\\n", " ").splitlines():
        command = line.split("  #", 1)[0].rstrip()
        if not command or command.startswith("#") or "events --follow" in command or "cluster down" in command:
            continue
        command = (command.replace("$PWD/.venv/bin", str(BIN)).replace("$PWD/ram-cluster", str(tour.dir))
                   .replace(" 15731 ", f" {info['store_port']} ").replace("demo", "readme_demo"))
        if command.startswith("export RAM_API="):
            command = f"export RAM_API={','.join(tour.api_urls())}"
        if command.startswith("ram cluster "):
            command += f" --dir {tour.dir}"
        lines.append(command)
        if command.startswith("ram cluster kill"):
            lines.append('for i in $(seq 100); do [ "$(ramctrl status --json | json primary)" != "$P" ] && break; '
                         "sleep 0.3; done")
    return "set -euo pipefail\n" + "\n".join(lines) + '\necho "tour primary: $P"\n'


def test_the_readme_tour_runs_as_written(tour: Tour) -> None:
    """Every command of the README's tour, in a fresh bash whose PATH lacks the venv until the tour sets it."""
    script = readme_tour_script(tour)
    assert "ram cluster kill $P" in script and "ramctrl switchover --to $P" in script, script
    before = tour.wait_settled()
    env = {k: v for k, v in tour.env.items() if k not in ("RAM_API", "PGPASSFILE", *TOKEN_VARIABLES)}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != BIN)
    # The switchover asks "Switch over? [y/N]" (the README does not pass --force): the person answers y.
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=UP_TIMEOUT_S + 120,
                            env=env, cwd=tour.root, input="y\n")
    tour.remember_pids()
    assert result.returncode == 0, f"{script}\n{describe(result)}"
    old = before["primary"]
    assert f"tour primary: {old}" in result.stdout
    assert f"killed {old}'s ram process" in result.stdout and f"Switchover completed: {old} is the primary" \
        in result.stdout, result.stdout
    after = tour.wait_settled(old)
    assert after["timeline"] >= before["timeline"] + 2, brief(after)  # a failover, then the switchover back
    assert tour.psql(tour.writer_dsn(), "SELECT count(*) FROM readme_demo") == "1"


def test_cluster_down_then_up_again(tour: Tour) -> None:
    """The tour's last steps: `ramctrl switchover --to pg1`, `ram cluster down`; then `ram cluster up` again."""
    if tour.wait_settled()["primary"] != "pg1":
        result = tour.ctl("switchover", "--to", "pg1", "--force")
        assert result.returncode == 0, describe(result)
    before = tour.wait_settled("pg1")
    info = tour.info()
    ram_pids = [m["pid"] for m in info["members"]]
    pg_pids = [p for p in (postmaster_pid(d) for d in tour.data_dirs()) if p]
    assert len(pg_pids) == NODES + 1, tour.data_dirs()  # the nodes' PostgreSQL and the store
    started = time.monotonic()
    down = tour.ram("cluster", "down", "--dir", str(tour.dir), timeout=120)
    assert down.returncode == 0, describe(down)
    took = time.monotonic() - started
    print(f"ram cluster down took {took:.1f} s")
    if took > 25:  # a node had to be killed: what were the nodes doing? (seen once in CI)
        for m in info["members"]:
            tail = Path(m["log_file"]).read_text(errors="replace").splitlines()[-40:]
            print(f"--- {m['name']} log tail\n" + "\n".join(tail))
    for m in info["members"]:
        assert f"stopped {m['name']} (pid {m['pid']})" in down.stdout, down.stdout
    assert_all_dead(ram_pids, "ram nodes after ram cluster down")
    assert_all_dead(pg_pids, "PostgreSQL servers after ram cluster down", tour.root)
    assert all(m["pid"] is None for m in tour.info()["members"])
    assert tour.ctl("status").returncode == 2  # no API reachable
    # The data stays: up again restarts the same cluster.
    started = time.monotonic()
    up = tour.ram("cluster", "up", "--dir", str(tour.dir), "--timeout", str(UP_TIMEOUT_S))
    assert up.returncode == 0, describe(up)
    print(f"ram cluster up (restart) took {time.monotonic() - started:.1f} s")
    assert f"restarting the cluster in {tour.dir}" in up.stdout and "all members healthy" in up.stdout
    assert all(lc.pid_alive(m["pid"]) for m in tour.info()["members"])
    doc = tour.wait_settled()
    assert tour.info()["cluster_id"] == info["cluster_id"] and doc["cluster_id"] == info["cluster_id"]
    assert tour.psql(tour.writer_dsn(), "SELECT count(*) FROM demo") == str(tour.rows)
    health = tour.ctl("health")
    assert health.returncode == 0, describe(health)
    # A clean stop and start should not fail the primary over.
    after = str(before["applied_index"])
    failovers = tour.ctl_lines("events", "--after", after, "--limit", "1000", "--type", "failover_started")
    print(f"after restart: primary {doc['primary']} (was pg1), timeline {doc['timeline']} (was {before['timeline']})")
    if failovers or doc["primary"] != "pg1":
        print(tour.ctl("events", "--after", after, "--limit", "200").stdout)
    assert not failovers and doc["primary"] == "pg1", (
        f"ram cluster down / up failed the primary over: {[e['payload'].get('reason') for e in failovers]}"
    )


def test_cluster_down_stops_postgres_that_a_killed_node_left(tour: Tour) -> None:
    """A node that dies without stopping its PostgreSQL (killed here on purpose; in life one that
    ``ram cluster down`` had to SIGKILL after 30 s, seen once in CI) leaves it running: ``down``
    stops it too, and ``up`` brings the whole cluster back."""
    doc = tour.wait_settled()
    victim = next(m for m in tour.info()["members"] if m["name"] != doc["primary"])
    pg_pids = [p for p in (postmaster_pid(d) for d in tour.data_dirs()) if p]
    killed = tour.ram("cluster", "kill", victim["name"], "--ram-only", "--dir", str(tour.dir), timeout=60)
    assert killed.returncode == 0, describe(killed)
    orphan = postmaster_pid(Path(victim["pg_data_dir"]))
    assert orphan is not None and lc.pid_alive(orphan) and not lc.pid_alive(victim["pid"])
    down = tour.ram("cluster", "down", "--dir", str(tour.dir), timeout=120)
    assert down.returncode == 0, describe(down)
    assert f"stopped {victim['name']}'s PostgreSQL (pid {orphan}), which its node left running" in down.stdout, \
        describe(down)
    assert_all_dead(pg_pids, "PostgreSQL servers after ram cluster down", tour.root)
    up = tour.ram("cluster", "up", "--dir", str(tour.dir), "--timeout", str(UP_TIMEOUT_S))
    assert up.returncode == 0, describe(up)
    tour.wait_settled()


def test_cluster_down_purge_removes_everything(tour: Tour) -> None:
    tour.remember_pids()
    pids = sorted(tour.seen_pids)
    # No terminal to confirm on: refused, nothing stopped or deleted.
    refused = tour.ram("cluster", "down", "--dir", str(tour.dir), "--purge", timeout=120)
    assert refused.returncode == 1 and "--force" in refused.stderr and "Traceback" not in refused.stderr, \
        describe(refused)
    assert tour.dir.is_dir() and tour.ctl("status").returncode == 0
    down = tour.ram("cluster", "down", "--dir", str(tour.dir), "--purge", "--force", timeout=120)
    assert down.returncode == 0, describe(down)
    assert f"removed {tour.dir}" in down.stdout
    assert not tour.dir.exists()
    assert_all_dead(pids, "processes after ram cluster down --purge", tour.root)
