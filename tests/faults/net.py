"""Network cuts between the members of a local cluster, with iptables.

Why not simply ``-s A -d B``: every member has its own loopback address (127.0.0.11, .12, …) and every
server of a member listens on it (Raft, API, PostgreSQL), but a *client* socket that does not bind
takes the route's source address, 127.0.0.1. ``ss -tnp`` on a running cluster shows:

* Raft peer connections: ``127.0.0.11:<eph> -> 127.0.0.12:<raft>`` (the transport binds its own address),
* PostgreSQL replication (walreceiver), pg_rewind, pg_basebackup: ``127.0.0.1:<eph> -> primary:<pg>``
  (libpq can not bind a source address),
* API forwarding from a follower to the leader: ``127.0.0.1:<eph> -> leader:<api>``.

So address rules cut Raft but neither replication nor forwarded API calls (only their replies).
A cut therefore matches the *process* that sends:
every node runs in its own cgroup v2 (:class:`tests.faults.cluster.ChaosCluster`), and "A can not
send to B" is two rules in the cluster's own OUTPUT chain:

1. ``-m cgroup --path <A's cgroup> -d <B's address> -j DROP`` — anything A sends to one of B's servers
   (requests of connections A opened, and replies to connections B opened from B's own address);
2. ``-m cgroup --path <A's cgroup> -m connmark --mark <B> -j DROP`` — A's replies on connections that
   *B* opened (whatever source address B used): a rule in the mangle table marks every new
   connection with the node that opened it (installed before the nodes start, so every
   connection is marked).

A cut in both directions is both pairs of rules; a partition cuts every pair across its sides; a
one-way cut only one direction (TCP then stalls as well, but the two sides see it differently). Client
traffic from the harness (not in any node's cgroup) is never cut: clients see every member, like the
pinned clients of a real partition that happen to sit on the isolated side.

Everything lives in two dedicated chains (``RC-<id>`` in filter, ``RCM-<id>`` in mangle), jumped to
from OUTPUT; :meth:`NetFilter.close` flushes and deletes them (also at interpreter exit), and
:func:`cleanup_stale` removes leftovers of earlier crashed runs.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import subprocess
from collections.abc import Iterable

IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"
MARK_BASE = 0x7A5000


class NetFilterError(RuntimeError):
    pass


def _ipt(*args: str, table: str = "filter", check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([IPTABLES, "-w", "5", "-t", table, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetFilterError(f"iptables -t {table} {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def usable() -> str | None:
    """None when cuts work here, else why not."""
    import os

    if os.geteuid() != 0:
        return "network cuts need root (iptables)"
    if not shutil.which("iptables") and not __import__("pathlib").Path(IPTABLES).exists():
        return "iptables is not installed"
    return None


def cleanup_stale() -> None:
    """Remove chains left by a harness that was killed before it could clean up (RC-*, RCM-*)."""
    for table, prefix in (("filter", "RC-"), ("mangle", "RCM-")):
        listing = _ipt("-S", table=table, check=False).stdout.splitlines()
        for line in listing:
            if line.startswith("-A OUTPUT -j " + prefix):
                chain = line.split()[-1]
                _ipt("-D", "OUTPUT", "-j", chain, table=table, check=False)
        for line in _ipt("-S", table=table, check=False).stdout.splitlines():
            if line.startswith("-N " + prefix):
                chain = line.split()[1]
                _ipt("-F", chain, table=table, check=False)
                _ipt("-X", chain, table=table, check=False)


class NetFilter:
    """The iptables state of one cluster: connection marking, and the cuts now in force."""

    def __init__(self, tag: str, nodes: dict[str, tuple[str, str]]) -> None:
        """``nodes``: member name -> (its address, its cgroup path relative to the cgroup2 root)."""
        self.nodes = nodes
        suffix = tag.rsplit("-", 1)[-1][:20]
        self.chain, self.mark_chain = f"RC-{suffix}", f"RCM-{suffix}"
        self.marks = {name: MARK_BASE + i for i, name in enumerate(sorted(nodes), start=1)}
        self.cuts: set[tuple[str, str]] = set()
        self._open = False

    def open(self) -> None:
        _ipt("-N", self.chain)
        _ipt("-N", self.mark_chain, table="mangle")
        self._open = True
        atexit.register(self.close)
        for name, (_, group) in self.nodes.items():
            _ipt("-A", self.mark_chain, "-m", "cgroup", "--path", group, "-m", "conntrack", "--ctstate", "NEW",
                 "-j", "CONNMARK", "--set-mark", str(self.marks[name]), table="mangle")
        _ipt("-I", "OUTPUT", "-j", self.mark_chain, table="mangle")
        _ipt("-I", "OUTPUT", "-j", self.chain)

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        _ipt("-D", "OUTPUT", "-j", self.chain, check=False)
        _ipt("-D", "OUTPUT", "-j", self.mark_chain, table="mangle", check=False)
        for chain, table in ((self.chain, "filter"), (self.mark_chain, "mangle")):
            _ipt("-F", chain, table=table, check=False)
            _ipt("-X", chain, table=table, check=False)
        self.cuts.clear()

    # ------------------------------------------------------------------------------------ cuts

    def _rules(self, src: str, dst: str) -> list[list[str]]:
        _, group = self.nodes[src]
        address, _ = self.nodes[dst]
        return [
            ["-m", "cgroup", "--path", group, "-d", address, "-j", "DROP"],
            ["-m", "cgroup", "--path", group, "-m", "connmark", "--mark", str(self.marks[dst]), "-j", "DROP"],
        ]

    def drop(self, src: str, dst: str) -> None:
        """From now on nothing ``src`` sends reaches ``dst``."""
        if (src, dst) in self.cuts or src == dst:
            return
        for rule in self._rules(src, dst):
            _ipt("-A", self.chain, *rule)
        self.cuts.add((src, dst))

    def allow(self, src: str, dst: str) -> None:
        if (src, dst) not in self.cuts:
            return
        for rule in self._rules(src, dst):
            _ipt("-D", self.chain, *rule, check=False)
        self.cuts.discard((src, dst))

    def cut(self, a: str, b: str, both: bool = True) -> None:
        self.drop(a, b)
        if both:
            self.drop(b, a)

    def partition(self, *sides: Iterable[str]) -> None:
        """Cut every pair of members on different sides, in both directions."""
        groups = [list(s) for s in sides]
        for i, left in enumerate(groups):
            for right in groups[i + 1:]:
                for a in left:
                    for b in right:
                        self.cut(a, b)

    def heal(self) -> None:
        _ipt("-F", self.chain, check=False)
        self.cuts.clear()

    def counters(self) -> str:
        with contextlib.suppress(NetFilterError):
            return _ipt("-L", self.chain, "-v", "-n").stdout
        return ""
