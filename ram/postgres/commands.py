"""Running PostgreSQL's programs as the OS user that owns the cluster.

PostgreSQL refuses to run as root, and its files must belong to one unprivileged user. When RAM runs
as root (CI, a packaged service) every PostgreSQL program is started through ``runuser -u OWNER --``;
as an ordinary user it runs them directly. Every command has a timeout, and a failure carries the
program's own message (PostgreSQL explains itself well; we do not paraphrase it away).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT_OWNER = "postgres"


class PostgresCommandError(RuntimeError):
    """An external PostgreSQL program failed or timed out."""

    def __init__(self, argv: Sequence[str], message: str, returncode: int | None) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.message = message
        super().__init__(f"{Path(argv[0]).name} failed: {message}")


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


def find_bindir() -> Path:
    """Locate the PostgreSQL server binaries (``RAM_PG_BINDIR``, Debian's layout, then ``PATH``).

    Debian keeps server programs out of ``PATH`` in ``/usr/lib/postgresql/N/bin``; the newest major
    version installed wins.
    """
    env = os.environ.get("RAM_PG_BINDIR")
    if env:
        path = Path(env)
        if not (path / "pg_ctl").exists():
            raise FileNotFoundError(f"RAM_PG_BINDIR={env} does not contain pg_ctl")
        return path
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise FileNotFoundError(
        "PostgreSQL server binaries not found (looked in RAM_PG_BINDIR, /usr/lib/postgresql/*/bin, PATH); "
        "install them with: apt-get install -y postgresql"
    )


def default_owner() -> str:
    """The OS user PostgreSQL runs as: ``postgres`` when we are root, otherwise ourselves."""
    if os.geteuid() == 0:
        return os.environ.get("RAM_PG_OWNER", DEFAULT_ROOT_OWNER)
    return pwd.getpwuid(os.geteuid()).pw_name


def as_owner(argv: Sequence[str], owner: str) -> list[str]:
    """Prefix ``argv`` so that it runs as ``owner`` (a no-op when we already are that user)."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    if owner == me:
        return list(argv)
    if os.geteuid() != 0:
        raise PermissionError(f"cannot run PostgreSQL as {owner!r}: only root may switch users (we are {me!r})")
    return ["runuser", "-u", owner, "--", *argv]


def chown_to_owner(path: Path, owner: str) -> None:
    """Give ``path`` to ``owner`` (only meaningful, and only attempted, when we are root)."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(owner)
    os.chown(path, entry.pw_uid, entry.pw_gid)


_PR_SET_PDEATHSIG = 1
#: Resolved here, in the parent: loading a library between fork and exec could deadlock.
_PRCTL = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def _terminate_with_parent() -> None:
    """In the child, before exec: get SIGTERM when `ram` dies (Linux ``PR_SET_PDEATHSIG``).

    Otherwise a pg_rewind or pg_basebackup started by a `ram` that was killed keeps writing into the
    data directory while the restarted `ram` works on it. runuser passes the SIGTERM on to the
    program; a server started by ``pg_ctl start`` is a grandchild and is not affected."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


async def run_command(
    argv: Sequence[str],
    *,
    owner: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    cwd: Path | None = None,
    on_stderr: Callable[[str], None] | None = None,
) -> CommandResult:
    """Run a PostgreSQL program as ``owner`` without blocking the event loop.

    On timeout the process (and, through its session, its children) is killed, and the error says
    how long we waited. With ``check`` a non-zero exit raises :class:`PostgresCommandError` whose
    message is the program's own last stderr lines.

    ``on_stderr`` receives each stderr line as it arrives (lines end at ``\n`` or ``\r``), for
    programs that report progress there (``pg_basebackup --progress``); the full stderr is still
    collected for the result and the error message. If it raises, the program is killed and the
    exception propagates.
    """
    full_env = dict(os.environ)
    full_env.setdefault("LC_ALL", "C.UTF-8")
    if env:
        full_env.update(env)
    proc = await asyncio.create_subprocess_exec(
        *as_owner(argv, owner),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
        cwd=str(cwd) if cwd else "/",
        start_new_session=True,
        preexec_fn=_terminate_with_parent,
    )
    try:
        if on_stderr is None:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        else:
            out, err = await asyncio.wait_for(_communicate_streaming(proc, on_stderr), timeout)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise
        raise PostgresCommandError(argv, f"timed out after {timeout:g} s", None) from None
    except Exception:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    result = CommandResult(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
    if check and result.returncode != 0:
        lines = [ln for ln in (result.stderr or result.stdout).strip().splitlines() if ln.strip()]
        message = " / ".join(lines[-3:]) if lines else f"exit code {result.returncode}"
        raise PostgresCommandError(argv, message, result.returncode)
    return result


async def _communicate_streaming(
    proc: asyncio.subprocess.Process, on_stderr: Callable[[str], None]
) -> tuple[bytes, bytes]:
    """Like ``proc.communicate()``, but hands stderr to ``on_stderr`` line by line as it arrives."""
    assert proc.stdout is not None and proc.stderr is not None
    stderr = proc.stderr
    collected = bytearray()

    async def pump() -> None:
        pending = b""
        while True:
            chunk = await stderr.read(4096)
            if not chunk:
                break
            collected.extend(chunk)
            pending += chunk.replace(b"\r", b"\n")
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    on_stderr(line.decode(errors="replace"))
        if pending.strip():
            on_stderr(pending.decode(errors="replace"))

    out, _ = await asyncio.gather(proc.stdout.read(), pump())
    await proc.wait()
    return out, bytes(collected)
