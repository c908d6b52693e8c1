"""Is each scheduled job still succeeding? The core of `check`'s job checks and `jobs status`.

A job is CRITICAL when its last successful run started longer ago than its interval (the
longest gap between two scheduled runs) plus its grace; WARNING when its last run failed but
the last success is still within that window; UNKNOWN when no run has been recorded.
Only the jobs whose target is the checked target are reported: their history lives there.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl import paths
from aegisctl.scheduling import history
from aegisctl.scheduling.history import JobRun, LocalHistory
from aegisctl.scheduling.jobs import Job, scheduled_jobs

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import Settings
    from aegisctl.output import Block

log = logging.getLogger(__name__)

OK, WARNING, CRITICAL, UNKNOWN = "OK", "WARNING", "CRITICAL", "UNKNOWN"
# Worst first: CRITICAL, WARNING, UNKNOWN, OK (the order `check` ranks them in).
_SEVERITY = {OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3}
_FAILED = ("failed", "interrupted", "timeout", "abandoned")


@dataclass
class JobFreshness:
    job: str
    target: str
    command: str
    interval_s: float
    grace_s: float
    status: str
    message: str
    last_success: dt.datetime | None = None
    last_run: dt.datetime | None = None
    last_run_status: str | None = None
    age_s: float | None = None  # of the last success

    @property
    def threshold_s(self) -> float:
        return self.interval_s + self.grace_s

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job, "target": self.target, "command": self.command,
            "status": self.status, "message": self.message,
            "interval_s": self.interval_s, "grace_s": self.grace_s,
            "threshold_s": self.threshold_s, "age_s": self.age_s,
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "last_run": self.last_run.isoformat() if self.last_run else None,
            "last_run_status": self.last_run_status,
        }


@dataclass
class FreshnessReport:
    target: str
    jobs: list[JobFreshness]
    warnings: list[str] = field(default_factory=list)

    @property
    def worst(self) -> str:
        if not self.jobs:
            return OK
        return max((j.status for j in self.jobs), key=lambda s: _SEVERITY[s])

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.worst,
                "jobs": [j.to_json() for j in self.jobs], "warnings": self.warnings}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        rows: list[Sequence[Any]] = [(j.job, j.status, _when(j.last_success), j.last_run_status or "-",
                 f"{_ago(j.interval_s)} + {_ago(j.grace_s)}", j.message)
                for j in self.jobs]
        blocks: list[Block] = [Table(
            [Column("job", "id"), Column("status"), Column("last success (UTC)"),
             Column("last run"), Column("interval + grace"), Column("message", "text")],
            rows, title=f"scheduled jobs on target {self.target}",
            empty=f"no scheduled jobs run against target {self.target}")]
        blocks += [Note(f"warning: {w}") for w in self.warnings]
        return blocks


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M") if value else "never"


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}" if seconds % size == 0 \
                else f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def assess(job: Job, target: str, runs: list[JobRun], now: dt.datetime) -> JobFreshness:
    """The verdict for one job from its runs (any order; skipped starts are ignored)."""
    interval = job.calendar.interval(now)
    grace = job.grace(interval)
    result = JobFreshness(job.name, target, job.settings.command, interval, grace, UNKNOWN, "")
    real = sorted((r for r in runs if r.status != "skipped"), key=lambda r: r.started_at)
    successes = [r for r in real if r.status == "succeeded"]
    if real:
        result.last_run, result.last_run_status = real[-1].started_at, real[-1].status
    if successes:
        result.last_success = successes[-1].started_at
        result.age_s = round((now - result.last_success).total_seconds(), 1)
    limit = interval + grace
    if not real:
        result.message = "no run recorded yet"
        return result
    last = real[-1]
    why = f" ({last.error})" if last.error else ""
    if result.age_s is None:
        first_age = (now - real[0].started_at).total_seconds()
        if first_age > limit:
            result.status = CRITICAL
            result.message = (f"never succeeded in {_ago(first_age)}; last run {last.status}"
                              f"{why}")
        else:
            result.status = WARNING
            result.message = f"no success yet; last run {last.status}{why}"
        return result
    if result.age_s > limit:
        result.status = CRITICAL
        result.message = (f"last success {_ago(result.age_s)} ago, older than interval "
                          f"{_ago(interval)} + grace {_ago(grace)}; "
                          f"last run {last.status}{why}")
    elif last.status in _FAILED:
        result.status = WARNING
        result.message = f"last run {last.status}{why}; last success {_ago(result.age_s)} ago"
    else:
        result.status = OK
        result.message = f"last success {_ago(result.age_s)} ago"
    return result


def job_freshness(settings: Settings, conn: psycopg.Connection[Any] | None, target: str,
                  now: dt.datetime | None = None,
                  job_target: dict[str, str] | None = None) -> FreshnessReport:
    """One verdict per enabled job that runs against `target`.

    `conn` is that target's database (None when it cannot be reached: the local fallback file
    is still read). `job_target` maps job name -> resolved target name; by default a job without
    `target:` is taken to run against `settings.default_target`, else against `target`.
    """
    now = now or dt.datetime.now(dt.UTC)
    report = FreshnessReport(target, [])
    mine = [j for j in scheduled_jobs(settings)
            if (job_target or {}).get(j.name, j.settings.target or settings.default_target
                                       or target) == target]
    runs: dict[str, list[JobRun]] = {j.name: [] for j in mine}
    names = list(runs)
    if conn is not None and names:
        if history.table_exists(conn):
            rows = conn.execute(
                "SELECT id, job, target, trigger, command, host, pid, started_at, finished_at,"
                " status, exit_code, summary, error FROM ("
                "  SELECT *, row_number() OVER (PARTITION BY job, status = 'succeeded'"
                "                               ORDER BY started_at DESC) AS n,"
                "         min(started_at) OVER (PARTITION BY job) AS first_started"
                "  FROM aegis_job_runs WHERE target = %s AND job = ANY(%s)"
                "    AND status <> 'skipped') r"
                " WHERE n = 1 OR started_at = first_started", (target, names)).fetchall()
            for row in rows:
                run = history.row_to_run(row)
                runs[run.job].append(run)
        else:
            report.warnings.append(f"table {history.TABLE} is missing: run `aegisctl schema "
                                   "migrate`")
    elif conn is None:
        report.warnings.append("the database was not reachable: only the local history file "
                               "was read")
    try:
        directory = paths.state_dir(settings)
        for run in LocalHistory(directory).read():
            if run.target == target and run.job in runs:
                runs[run.job].append(run)
    except OSError as exc:
        report.warnings.append(f"cannot read the local job history: {exc.strerror}")
    report.jobs = [assess(j, target, runs[j.name], now) for j in mine]
    return report


def job_targets(loaded: Any) -> dict[str, str]:
    """Job name -> the name of the target it runs against (as `jobs run` resolves it)."""
    from aegisctl.errors import ConfigError
    from aegisctl.targets import resolve_target

    def name_of(requested: str | None) -> str:
        try:
            return resolve_target(loaded, requested).name
        except ConfigError:  # e.g. its password variable is not set here: the name is enough
            targets = loaded.settings.targets
            return (requested or loaded.settings.default_target
                    or (next(iter(targets)) if len(targets) == 1 else "primary"))

    return {name: name_of(job.target) for name, job in loaded.settings.schedule.items()}
