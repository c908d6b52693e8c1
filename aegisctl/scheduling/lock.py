"""One run of a job per target at a time, however it was started (timer, scheduler, cron, a
person): the flock of aegisctl.locks on a file in the state folder, which works with the
database down and is released by the kernel when the holder dies; plus, when the database answers, a session
advisory lock in the target's database, which also keeps two hosts from running the same job.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.errors import LockBusy
from aegisctl.locks import Holder, hold, safe_name
from aegisctl.paths import locks_dir

if TYPE_CHECKING:
    import psycopg

# "AEJB" in ASCII: the first key of the two-key advisory locks (the second is the job's hash).
ADVISORY_CLASS = 0x41454A42


def lock_path(state: Path, target: str, job: str) -> Path:
    return locks_dir(state) / f"{safe_name(target)}.{job}.lock"


def job_file_lock(path: Path, job: str, target: str,
                  holder: Holder) -> contextlib.AbstractContextManager[None]:
    def busy(current: Holder | None) -> LockBusy:
        who = f" ({current.describe()})" if current else ""
        return LockBusy(f"job '{job}' is already running for target '{target}'{who}; this "
                        "start is skipped", hint=f"lock file {path}")

    return hold(path, holder, busy=busy,
                cannot_open_hint="run jobs as the user the units run as (sudo -u aegisctl "
                                 "aegisctl jobs run ...), or point scheduler.state_dir at a "
                                 "folder this user owns")


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
