"""Job history: aegis_job_runs in the target's database, and a local JSON-lines file when the
database cannot be reached (copied into the table by the next run that reaches it).

The local file is appended to with one write per record under an flock, and rewritten through a
temporary file and a rename, so a reader never sees half a record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from aegisctl.output import Block

log = logging.getLogger(__name__)

TABLE = "aegis_job_runs"
STATUSES = ("running", "succeeded", "failed", "interrupted", "timeout", "skipped", "abandoned")
TRIGGERS = ("timer", "scheduler", "cron", "manual")
_COLUMNS = ("id", "job", "target", "trigger", "command", "host", "pid", "started_at",
            "finished_at", "status", "exit_code", "summary", "error")


@dataclass
class JobRun:
    id: str
    job: str
    target: str
    trigger: str
    command: str
    host: str
    pid: int | None
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    status: str = "running"
    exit_code: int | None = None
    summary: Any = None
    error: str | None = None
    recorded_in: str = "database"  # database | local (not stored)

    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds(), 3)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "job": self.job, "target": self.target, "trigger": self.trigger,
            "command": self.command, "host": self.host, "pid": self.pid,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_s": self.duration_s, "status": self.status, "exit_code": self.exit_code,
            "summary": self.summary, "error": self.error, "recorded_in": self.recorded_in,
        }

    def to_view(self) -> list[Block]:
        from aegisctl.output import Fields

        return [Fields([
            ("job", self.job), ("target", self.target), ("status", self.status),
            ("exit code", self.exit_code), ("took", _duration(self.duration_s)),
            ("trigger", self.trigger), ("command", self.command), ("run id", self.id),
            ("recorded in", self.recorded_in), ("error", self.error or "-"),
        ], title=f"job {self.job}")]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRun:
        def when(value: Any) -> dt.datetime | None:
            return dt.datetime.fromisoformat(value) if value else None

        started = when(data["started_at"])
        if started is None or data.get("status") not in STATUSES:
            raise ValueError("not a job run record")
        return cls(id=str(data["id"]), job=str(data["job"]), target=str(data["target"]),
                   trigger=str(data["trigger"]), command=str(data["command"]),
                   host=str(data["host"]), pid=data.get("pid"), started_at=started,
                   finished_at=when(data.get("finished_at")), status=data["status"],
                   exit_code=data.get("exit_code"), summary=data.get("summary"),
                   error=data.get("error"), recorded_in="local")


@dataclass
class JobHistory:
    runs: list[JobRun]
    sources: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"runs": [r.to_json() for r in self.runs], "sources": self.sources,
                "warnings": self.warnings}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        rows: list[Sequence[Any]] = [
                (r.started_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"), r.job, r.target,
                 r.trigger, r.status, r.exit_code, _duration(r.duration_s),
                 r.error or "", r.id) for r in self.runs]
        blocks: list[Block] = [Table(
            [Column("started (UTC)"), Column("job", "id"), Column("target", "id"),
             Column("trigger"), Column("status"), Column("exit", "number"),
             Column("took", "number"), Column("error", "text"), Column("run id", "id")],
            rows, empty="no job runs recorded")]
        blocks += [Note(f"warning: {w}") for w in self.warnings]
        return blocks


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"



# ---------------------------------------------------------------------------------------------
# The database


def table_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
    return bool(row and row[0])


def writer_denied(conn: psycopg.Connection[Any]) -> str | None:
    """Why the connected role cannot record runs (e.g. the read-only role of `roles apply`,
    which may only read the history), or None."""
    row = conn.execute(
        "SELECT current_user, has_table_privilege(%s, 'INSERT')"
        " AND has_table_privilege(%s, 'UPDATE') AND has_table_privilege(%s, 'DELETE')",
        (TABLE, TABLE, TABLE)).fetchone()
    if row is None or row[1]:
        return None
    return f"role {row[0]} may not write {TABLE} (run jobs as the database owner)"


def save(conn: psycopg.Connection[Any], run: JobRun) -> None:
    """Insert or update one run (idempotent by id)."""
    from psycopg.types.json import Jsonb

    conn.execute(
        "INSERT INTO aegis_job_runs (id, job, target, trigger, command, host, pid, started_at,"
        " finished_at, status, exit_code, summary, error)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET finished_at = EXCLUDED.finished_at,"
        " status = EXCLUDED.status, exit_code = EXCLUDED.exit_code,"
        " summary = EXCLUDED.summary, error = EXCLUDED.error",
        (run.id, run.job, run.target, run.trigger, run.command, run.host, run.pid,
         run.started_at, run.finished_at, run.status, run.exit_code,
         Jsonb(run.summary) if run.summary is not None else None, run.error),
    )


def mark_abandoned(conn: psycopg.Connection[Any], job: str, target: str, current: str) -> int:
    """Runs of this job still 'running' while we hold its lock died without a word."""
    cur = conn.execute(
        "UPDATE aegis_job_runs SET status = 'abandoned', error = coalesce(error, "
        "'the runner died before recording an outcome') WHERE job = %s AND target = %s"
        " AND status = 'running' AND id <> %s", (job, target, current))
    return cur.rowcount or 0


def mark_dead_runners(conn: psycopg.Connection[Any], target: str, host: str) -> int:
    """Runs of any job of this target started on this host whose runner process is gone (a
    scheduler killed with kill -9; its command died with it): recorded as abandoned now, by
    whichever run comes next, instead of 'running' until the same job runs again."""
    from aegisctl.children import pid_alive

    rows = conn.execute("SELECT id, pid FROM aegis_job_runs WHERE target = %s AND host = %s"
                        " AND status = 'running' AND pid IS NOT NULL", (target, host)).fetchall()
    dead = [(run_id, pid) for run_id, pid in rows if not pid_alive(int(pid))]
    for run_id, pid in dead:
        conn.execute(
            "UPDATE aegis_job_runs SET status = 'abandoned', finished_at = now(), error = "
            "coalesce(error, %s) WHERE id = %s AND status = 'running'",
            (f"its runner (pid {pid}) died without recording an outcome (killed?); the "
             "command was stopped with it", run_id))
    return len(dead)


def prune(conn: psycopg.Connection[Any], job: str, target: str, keep_seconds: float) -> int:
    if keep_seconds <= 0:
        return 0
    cur = conn.execute(
        "DELETE FROM aegis_job_runs WHERE job = %s AND target = %s"
        " AND started_at < now() - make_interval(secs => %s)", (job, target, keep_seconds))
    return cur.rowcount or 0


def row_to_run(row: tuple[Any, ...]) -> JobRun:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["id"] = str(data["id"])
    return JobRun(**data)


def query(conn: psycopg.Connection[Any], *, job: str | None = None, target: str | None = None,
          failed: bool = False, since: dt.datetime | None = None, limit: int = 50) -> list[JobRun]:
    from psycopg import sql

    where: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    if job:
        where.append(sql.SQL("job = %s"))
        params.append(job)
    if target:
        where.append(sql.SQL("target = %s"))
        params.append(target)
    if failed:
        where.append(sql.SQL("status IN ('failed', 'interrupted', 'timeout', 'abandoned')"))
    if since:
        where.append(sql.SQL("started_at >= %s"))
        params.append(since)
    statement = sql.SQL("SELECT {} FROM aegis_job_runs WHERE {} ORDER BY started_at DESC"
                        " LIMIT %s").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMNS), sql.SQL(" AND ").join(where))
    return [row_to_run(r) for r in conn.execute(statement, [*params, limit]).fetchall()]


# ---------------------------------------------------------------------------------------------
# The local fallback file


class LocalHistory:
    """JSON lines, one per record; a later line with the same id supersedes an earlier one."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "job-history.jsonl"
        self._lock_path = directory / ".job-history.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def append(self, run: JobRun) -> None:
        line = (json.dumps({**run.to_json(), "recorded_in": "local"}, default=str) + "\n").encode()
        with self._locked():
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self) -> list[JobRun]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        runs: dict[str, JobRun] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                run = JobRun.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                log.warning("%s:%d: not a job run record; ignored", self.path, number)
                continue
            runs[run.id] = run
        return list(runs.values())

    def flush_to(self, conn: psycopg.Connection[Any], target: str) -> int:
        """Copy this target's local records into the table, then drop them from the file."""
        with self._locked():
            runs = [r for r in self.read() if r.target == target]
            if not runs:
                return 0
            with conn.transaction():
                for run in runs:
                    save(conn, run)
            keep = [r for r in self.read() if r.target != target]
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                for run in keep:
                    handle.write(json.dumps({**run.to_json(), "recorded_in": "local"},
                                            default=str) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
            return len(runs)
