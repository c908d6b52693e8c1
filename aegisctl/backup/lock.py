"""One backup, prune or restore per target at a time: an flock on <folder>/.lock.

The kernel releases the lock when the holder dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from aegisctl.errors import LockBusy, OperationFailed


@contextlib.contextmanager
def target_lock(path: Path, what: str, wait_seconds: float = 0.0,
                poll: float = 0.2) -> Iterator[None]:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise OperationFailed(
            f"cannot open the backup lock {path}: {exc.strerror or exc}",
            hint="the backup folder must belong to the user running aegisctl") from None
    try:
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _holder(fd)
                    raise LockBusy(
                        f"another aegisctl run holds the backup lock {path}{holder}",
                        hint="pass --wait-lock SECONDS to wait for it" if not wait_seconds
                        else f"waited {wait_seconds:g}s",
                    ) from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return f" (pid and command: {text})" if text else ""
