"""The fence guard process: protocol, and that it really signals the postmaster of its data directory.

The "postmaster" here is a stand-in process named postgres that records the signal it gets; the
end-to-end tests cover the guard with real PostgreSQL (tests/e2e/test_policies.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ram.ha.fence_guard import GuardState, apply_message, on_end_of_input, postmaster_pid

FAKE_POSTMASTER = r"""
import signal, sys, time, pathlib
out = pathlib.Path(sys.argv[1])
def got(sig, frame):
    out.write_text(signal.Signals(sig).name)
    sys.exit(0)
signal.signal(signal.SIGQUIT, got)
out.write_text("ready")
while True:
    time.sleep(0.05)
"""


def test_protocol() -> None:
    s = apply_message(GuardState(), "ARM 12.5")
    assert s.deadline == 12.5 and not s.done
    assert apply_message(s, "ARM nonsense").deadline == 12.5
    assert apply_message(s, "").deadline == 12.5
    assert apply_message(s, "DISARM").deadline is None
    assert apply_message(s, "EXIT").done and apply_message(s, "EXIT").deadline is None
    assert on_end_of_input(s).fence_now
    assert not on_end_of_input(GuardState()).fence_now


@pytest.fixture
def postmaster(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes], Path]]:
    data = tmp_path / "pgdata"
    data.mkdir()
    mark = tmp_path / "signal"
    proc = subprocess.Popen([sys.executable, "-c", FAKE_POSTMASTER, str(mark), "postgres"])
    deadline = time.monotonic() + 10
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    (data / "postmaster.pid").write_text(f"{proc.pid}\n{data}\n")
    try:
        yield data, proc, mark
    finally:
        proc.kill()
        proc.wait()


def _guard(data: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ram.ha.fence_guard", str(data)], stdin=subprocess.PIPE)


def _send(guard: subprocess.Popen[bytes], line: str) -> None:
    assert guard.stdin is not None
    guard.stdin.write(line.encode() + b"\n")
    guard.stdin.flush()


def test_finds_only_its_own_postmaster(postmaster: tuple[Path, subprocess.Popen[bytes], Path], tmp_path: Path) -> None:
    data, proc, _ = postmaster
    assert postmaster_pid(data) == proc.pid
    other = tmp_path / "other"
    other.mkdir()
    (other / "postmaster.pid").write_text(f"{proc.pid}\n{data}\n")  # a pid file naming another directory
    assert postmaster_pid(other) is None
    sleeper = subprocess.Popen(["sleep", "30"])  # a live process that is not postgres
    try:
        (other / "postmaster.pid").write_text(f"{sleeper.pid}\n{other}\n")
        assert postmaster_pid(other) is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_fences_when_the_lease_is_not_renewed(postmaster: tuple[Path, subprocess.Popen[bytes], Path]) -> None:
    data, proc, mark = postmaster
    guard = _guard(data)
    try:
        armed_at = time.monotonic()
        _send(guard, f"ARM {armed_at + 0.4}")
        assert proc.wait(timeout=10) == 0
        assert mark.read_text() == "SIGQUIT"
        assert time.monotonic() - armed_at >= 0.4
    finally:
        guard.kill()
        guard.wait()


def test_renewals_postpone_and_exit_does_not_fence(postmaster: tuple[Path, subprocess.Popen[bytes], Path]) -> None:
    data, proc, mark = postmaster
    guard = _guard(data)
    for _ in range(6):
        _send(guard, f"ARM {time.monotonic() + 0.3}")
        time.sleep(0.1)
    assert proc.poll() is None and mark.read_text() == "ready"
    _send(guard, "EXIT")
    assert guard.wait(timeout=10) == 0
    time.sleep(0.2)
    assert proc.poll() is None, "a clean EXIT must not fence"


def test_fences_at_once_when_ram_dies_holding_the_lease(
    postmaster: tuple[Path, subprocess.Popen[bytes], Path],
) -> None:
    data, proc, mark = postmaster
    guard = _guard(data)
    _send(guard, f"ARM {time.monotonic() + 60}")
    time.sleep(0.2)
    started = time.monotonic()
    assert guard.stdin is not None
    guard.stdin.close()  # what the kernel does when ram is killed
    assert proc.wait(timeout=10) == 0 and mark.read_text() == "SIGQUIT"
    assert time.monotonic() - started < 5
    assert guard.wait(timeout=10) == 0


def test_disarmed_or_standby_is_left_alone(postmaster: tuple[Path, subprocess.Popen[bytes], Path]) -> None:
    data, proc, _ = postmaster
    guard = _guard(data)
    _send(guard, f"ARM {time.monotonic() + 60}")
    _send(guard, "DISARM")
    assert guard.stdin is not None
    guard.stdin.close()
    assert guard.wait(timeout=10) == 0
    assert proc.poll() is None
    (data / "standby.signal").write_text("")
    guard = _guard(data)
    _send(guard, f"ARM {time.monotonic() + 0.1}")
    time.sleep(0.5)
    assert proc.poll() is None, "a standby accepts no writes: nothing to fence"
    guard.send_signal(signal.SIGKILL)
    guard.wait()


def test_a_standby_promoted_after_ram_died_is_fenced(
    postmaster: tuple[Path, subprocess.Popen[bytes], Path],
) -> None:
    """ram may die in the middle of promoting its server: the guard keeps watching a standby it was
    guarding and fences it the moment it turns writable (promotion removes standby.signal)."""
    data, proc, mark = postmaster
    (data / "standby.signal").write_text("")
    guard = _guard(data)
    _send(guard, f"ARM {time.monotonic() + 60}")
    time.sleep(0.2)
    assert guard.stdin is not None
    guard.stdin.close()
    time.sleep(0.5)
    assert proc.poll() is None, "a standby must not be fenced"
    (data / "standby.signal").unlink()  # the promotion completes
    assert proc.wait(timeout=10) == 0 and mark.read_text() == "SIGQUIT"
    assert guard.wait(timeout=10) == 0
