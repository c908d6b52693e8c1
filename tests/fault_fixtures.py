"""Real faults for the fault suite (tests/test_faults_*.py): a small filesystem that fills up
for real, aegisctl run as a child that a test pauses at a named step and kills.

The small filesystem is, in order of preference: a tmpfs mount (root, where mounts are
permitted), a loop-mounted ext4 file, else RLIMIT_FSIZE applied to the aegisctl child (then
only files written by that child are bounded, and `preexec` must be passed to the child).
FAULTS_SMALLFS=tmpfs|loop|rlimit forces one kind (to check the fallbacks); a test skips with
the reason only when none works.

The pause hook is aegisctl's test-only AEGISCTL_TEST_PAUSE_AT (aegisctl/testhooks.py): the
child writes its pid and the step's name to a file and waits there until the test removes the
file (`Paused.resume`) or kills it (`Paused.kill`).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class SmallFs:
    """A folder on a filesystem of `size` bytes (see the module's docstring)."""

    path: Path
    kind: str  # tmpfs | loop | rlimit
    size: int
    _filler: Path | None = field(default=None, repr=False)

    @property
    def preexec(self) -> Callable[[], None] | None:
        """For a child process: bound its file size when no real small filesystem exists."""
        if self.kind != "rlimit":
            return None
        limit = self.size

        def bound() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write then fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return bound

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def fill(self, leave: int) -> None:
        """Fill the filesystem until about `leave` bytes are free (for rlimit: bound each file
        the child writes to `leave` bytes)."""
        if self.kind == "rlimit":
            self.size = leave
            return
        self._filler = self.path / f".filler-{uuid.uuid4().hex}"
        with open(self._filler, "wb") as handle:
            block = os.urandom(4096)
            while self.free() > leave:
                try:
                    handle.write(block)
                    handle.flush()
                except OSError:
                    break

    def make_room(self) -> None:
        """Free what `fill` took: the user clearing the disk."""
        if self.kind == "rlimit":
            self.size = resource.RLIM_INFINITY
        if self._filler is not None:
            self._filler.unlink(missing_ok=True)
            self._filler = None


def _run(*args: str) -> bool:
    return subprocess.run(args, capture_output=True).returncode == 0


def _mount_tmpfs(where: Path, size: int) -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None and \
        _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where))


def _mount_loop(where: Path, image: Path, size: int) -> bool:
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("mount"):
        return False
    with open(image, "wb") as handle:
        handle.truncate(max(size, 1024 * 1024))
    return _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image)) and \
        _run("mount", "-o", "loop", str(image), str(where))


@contextlib.contextmanager
def small_filesystem(base: Path, size: int = 4 * 1024 * 1024) -> Iterator[SmallFs]:
    """A folder under `base` on a filesystem of about `size` bytes, unmounted afterwards."""
    where = base / "smallfs"
    where.mkdir()
    forced = os.environ.get("FAULTS_SMALLFS")
    tried = []
    for kind in (forced,) if forced else ("tmpfs", "loop", "rlimit"):
        mounted = False
        if kind == "tmpfs":
            mounted = _mount_tmpfs(where, size)
        elif kind == "loop":
            mounted = _mount_loop(where, base / "smallfs.img", size)
        elif kind == "rlimit":
            yield SmallFs(where, "rlimit", size)
            return
        if mounted:
            where.chmod(0o755)
            try:
                yield SmallFs(where, kind, size)
            finally:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)
            return
        tried.append(kind or "?")
    pytest.skip(f"no small filesystem could be made here (tried {', '.join(tried)}: mounts "
                "need root and permission to mount)")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFs]:
    with small_filesystem(tmp_path) as fs:
        yield fs


# ---------------------------------------------------------------------------------------------
# aegisctl as a child, paused at a named step


def aegisctl_env(**extra: str) -> dict[str, str]:
    # The test's own state folder stays (conftest sets it per test): without it the child
    # would take its locks in the machine's /var/lib/aegisctl, shared with every other run.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AEGISCTL_") or k == "AEGISCTL_STATE_DIR"}
    env.update({"NO_COLOR": "1", **extra})
    return env


def run_aegisctl(*args: str, env: dict[str, str] | None = None,
                 preexec: Callable[[], None] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aegisctl", *args], capture_output=True,
                          text=True, env=env or aegisctl_env(), preexec_fn=preexec,
                          timeout=timeout)


@dataclass
class Paused:
    proc: subprocess.Popen[str]
    step: str
    marker: Path

    def resume(self, timeout: float = 240) -> tuple[str, str]:
        """Let the run go on from the step; its output once it has ended."""
        self.marker.unlink(missing_ok=True)
        return self.proc.communicate(timeout=timeout)

    def kill(self, signum: int = signal.SIGKILL,
             while_stopped: Callable[[list[tuple[int, str]]], None] | None = None
             ) -> tuple[str, str]:
        """Send aegisctl itself a signal; its output once it has ended. A child the pause
        hook stopped is continued (the stop is the hook's, not part of the fault), after
        `while_stopped(children)` has looked at them."""
        children = children_of(self.proc.pid)
        self.proc.send_signal(signum)
        self.proc.wait(timeout=120)
        if while_stopped is not None:
            while_stopped(children)
        for pid, _name in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        out, err = self.proc.communicate(timeout=120)
        self.marker.unlink(missing_ok=True)
        return out, err


def start_paused(step: str, *args: str, tmp_path: Path,
                 env: dict[str, str] | None = None, timeout: float = 240) -> Paused:
    """Start aegisctl with AEGISCTL_TEST_PAUSE_AT=step and return once it waits there (the
    test then kills it, or something it started); fails when it ends without reaching it."""
    marker = tmp_path / f"paused-{uuid.uuid4().hex}"
    child_env = {**(env or aegisctl_env()), "AEGISCTL_TEST_PAUSE_AT": step,
                 "AEGISCTL_TEST_PAUSE_FILE": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "aegisctl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"aegisctl ended (exit {proc.returncode}) before reaching "
                                 f"{step!r}: {err or out}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"aegisctl did not reach {step!r} in {timeout}s")
        time.sleep(0.05)
    return Paused(proc, step, marker)


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of every descendant of `pid`, from /proc."""
    found: list[tuple[int, str]] = []
    parents = {pid}
    changed = True
    while changed:
        changed = False
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in {p for p, _ in found}:
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid in parents:
                found.append((int(entry.name), name))
                parents.add(int(entry.name))
                changed = True
    return found


def pending_signals(pid: int) -> set[int]:
    """The signals waiting for `pid` (a stopped process keeps them until it is continued)."""
    found: set[int] = set()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            mask = int(line.split()[1], 16)
            found |= {n + 1 for n in range(64) if mask >> n & 1}
    return found


def wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                return True
        time.sleep(0.05)
    return False
