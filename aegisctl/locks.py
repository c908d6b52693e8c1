"""The one lock implementation: an flock on a file in the state folder, holding a description
of its holder.

Two locks are built on it:
- the **target lock** (`<state>/locks/<target>.lock`): one command that changes the database
  or its backups per target at a time (backup create/verify/prune/restore/upload/download/
  keep, physical backups, maintenance, cleanup, memory reembed). `--wait-lock SECONDS` waits.
- the **job lock** (`<state>/locks/<target>.<job>.lock`, scheduling.lock): one run of a
  scheduled job at a time, however it was started.

The kernel releases an flock when its holder dies, so a killed run never leaves a stale lock.
The file lives in the state folder (not in the backup folder) because maintenance and cleanup
take it too, and because a systemd unit can always write there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.errors import AegisError, LockBusy, OperationFailed
from aegisctl.paths import locks_dir, state_dir

if TYPE_CHECKING:
    from aegisctl.config import Settings

POLL_SECONDS = 0.2
_HOLDER_BYTES = 4000


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: written into the lock file, read back for messages and history."""

    pid: int
    host: str
    command: str
    started_at: str
    trigger: str | None = None
    run_id: str | None = None

    @classmethod
    def me(cls, command: str, *, trigger: str | None = None,
           run_id: str | None = None) -> Holder:
        return cls(pid=os.getpid(), host=socket.gethostname(), command=command,
                   started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                   trigger=trigger, run_id=run_id)

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        try:
            return cls(pid=int(data["pid"]), host=str(data.get("host") or "?"),
                       command=str(data.get("command") or "?"),
                       started_at=str(data.get("started_at") or "?"),
                       trigger=_opt(data.get("trigger")), run_id=_opt(data.get("run_id")))
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        """'backup create, pid 123 on db1 since 2026-01-02T03:04:05+00:00 (trigger timer)'"""
        text = f"{self.command}, pid {self.pid} on {self.host} since {self.started_at}"
        extra = [f"{k} {v}" for k, v in (("trigger", self.trigger), ("run", self.run_id)) if v]
        return text + (f" ({', '.join(extra)})" if extra else "")

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def safe_name(name: str) -> str:
    """A file-name part from a target or job name; a changed name gets a hash suffix so two
    names never share a file."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "_"
    if safe != name:
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return safe


def target_lock_path(state: Path, target: str) -> Path:
    return locks_dir(state) / f"{safe_name(target)}.lock"


def _read_fd_holder(fd: int, settle_seconds: float = 0.2) -> Holder | None:
    """The holder described in the lock file. A holder writes its description just after it
    takes the lock (and a leaving one clears it), so an empty or half-written file is read
    again for a moment rather than naming nobody, or the previous holder."""
    deadline = time.monotonic() + settle_seconds
    while True:
        try:
            found = Holder.parse(os.pread(fd, _HOLDER_BYTES, 0).decode(errors="replace"))
        except OSError:
            return None
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(0.01)


@contextlib.contextmanager
def hold(path: Path, holder: Holder, *, wait_seconds: float = 0.0,
         busy: Callable[[Holder | None], AegisError],
         cannot_open_hint: str = "the state folder must belong to the user running aegisctl "
                                 "(set scheduler.state_dir or AEGISCTL_STATE_DIR)"
         ) -> Iterator[None]:
    """Hold the lock file at `path` for the block, waiting up to `wait_seconds` for it; when it
    stays busy, raise `busy(current holder)`."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise OperationFailed(f"cannot open the lock file {path}: {exc.strerror or exc}",
                              hint=cannot_open_hint) from None
    try:
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise busy(_read_fd_holder(fd)) from None
                time.sleep(POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder.to_json()) + "\n").encode(), 0)
        try:
            yield
        finally:
            # Leave no description behind: the next holder's moment between taking the lock
            # and writing its own would otherwise name this run (a killed run's stays, and
            # is overwritten by the next holder).
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def lock_file_at(path: Path, command: str, wait_seconds: float = 0.0,
                 target: str | None = None) -> contextlib.AbstractContextManager[None]:
    """The target lock at an explicit path (tests, and callers that computed it)."""

    def busy(current: Holder | None) -> LockBusy:
        who = current.describe() if current else "holder unknown"
        whose = f" of target '{target}'" if target else ""
        return LockBusy(
            f"another aegisctl run holds the job lock{whose} ({who}); lock file {path}",
            hint="pass --wait-lock SECONDS to wait for it" if not wait_seconds
            else f"waited {wait_seconds:g}s")

    return hold(path, Holder.me(command), wait_seconds=wait_seconds, busy=busy)


# Set by the job runner for its child: the scheduled run's bound (scheduler.lock_wait).
LOCK_WAIT_ENV = "AEGISCTL_LOCK_WAIT"


def scheduled_wait() -> float:
    try:
        return max(0.0, float(os.environ.get(LOCK_WAIT_ENV, "0")))
    except ValueError:
        return 0.0


def target_lock(settings: Settings, target: str, command: str,
                wait_seconds: float = 0.0) -> contextlib.AbstractContextManager[None]:
    """The per-target lock every command that changes the database or its backups takes. A
    scheduled run waits at least scheduler.lock_wait for it."""
    wait_seconds = max(wait_seconds, scheduled_wait())
    return lock_file_at(target_lock_path(state_dir(settings), target), command, wait_seconds,
                        target)
