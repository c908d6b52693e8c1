"""One run of a job per target at a time, however it was started (timer, scheduler, cron, a
person): an flock on a file in the state folder, which works with the database down and is
released by the kernel when the holder dies; plus, when the database answers, a session
advisory lock in the target's database, which also keeps two hosts from running the same job.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.errors import LockBusy, OperationFailed

if TYPE_CHECKING:
    import psycopg

# "AEJB" in ASCII: the first key of the two-key advisory locks (the second is the job's hash).
ADVISORY_CLASS = 0x41454A42


def lock_path(state: Path, target: str, job: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", target)
    if safe != target:
        safe += "-" + hashlib.sha256(target.encode()).hexdigest()[:8]
    return state / "locks" / f"{safe}.{job}.lock"


@contextlib.contextmanager
def job_file_lock(path: Path, job: str, target: str, holder: dict[str, Any]) -> Iterator[None]:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise OperationFailed(
            f"cannot open the job lock {path}: {exc.strerror}",
            hint="run jobs as the user the units run as (sudo -u aegisctl aegisctl jobs run "
                 "...), or point scheduler.state_dir at a folder this user owns") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(f"job '{job}' is already running for target '{target}'"
                           f"{_describe(_read_holder(fd))}; this start is skipped",
                           hint=f"lock file {path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 2000, 0).decode(errors="replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    parts = [f"{key} {holder[key]}" for key in ("pid", "host", "trigger", "started_at", "run_id")
             if holder.get(key) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def advisory_key(job: str) -> int:
    """The job's half of the advisory key: a signed 32-bit hash of its name."""
    value = int.from_bytes(hashlib.sha256(job.encode()).digest()[:4], "big")
    return value - 2**32 if value >= 2**31 else value


def try_advisory_lock(conn: psycopg.Connection[Any], job: str) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                       (ADVISORY_CLASS, advisory_key(job))).fetchone()
    return bool(row and row[0])


def advisory_holder(conn: psycopg.Connection[Any], job: str) -> str:
    row = conn.execute(
        "SELECT a.pid, a.client_addr, a.application_name, a.backend_start FROM pg_locks l"
        " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
        " AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 2"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (ADVISORY_CLASS, advisory_key(job) % 2**32)).fetchone()
    if not row:
        return ""
    return f" (server backend pid {row[0]}, client {row[1] or 'local'}, '{row[2]}')"
