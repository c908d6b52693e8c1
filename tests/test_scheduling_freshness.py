"""Freshness verdicts from job history (the core of `check`'s job checks), without a database:
the local history file is what is read when the database is down."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

from aegisctl.config import validate
from aegisctl.scheduling.freshness import assess, job_freshness
from aegisctl.scheduling.history import JobRun, LocalHistory
from aegisctl.scheduling.jobs import build_job
from aegisctl.scheduling.settings import JobSettings

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


def run(job: str, status: str, hours_ago: float, error: str | None = None) -> JobRun:
    started = NOW - dt.timedelta(hours=hours_ago)
    return JobRun(id=str(uuid.uuid4()), job=job, target="primary", trigger="timer",
                  command="backup create", host="h", pid=1, started_at=started,
                  finished_at=started + dt.timedelta(minutes=1), status=status,
                  exit_code=0 if status == "succeeded" else 1, error=error)


DAILY = build_job("backup", JobSettings(command="backup create", at="02:00"))


def test_verdicts() -> None:
    assert assess(DAILY, "primary", [], NOW).status == "UNKNOWN"
    assert assess(DAILY, "primary", [run("backup", "skipped", 1)], NOW).status == "UNKNOWN"
    ok = assess(DAILY, "primary", [run("backup", "succeeded", 10)], NOW)
    assert (ok.status, ok.interval_s, ok.grace_s) == ("OK", 86400, 3600)
    warn = assess(DAILY, "primary", [run("backup", "succeeded", 20),
                                     run("backup", "failed", 10, "disk full")], NOW)
    assert warn.status == "WARNING" and "disk full" in warn.message
    crit = assess(DAILY, "primary", [run("backup", "succeeded", 25.5),
                                     run("backup", "failed", 1.5, "disk full")], NOW)
    assert crit.status == "CRITICAL"
    assert "older than interval 1d + grace 1h" in crit.message and "disk full" in crit.message
    assert crit.age_s == 25.5 * 3600 and crit.last_run_status == "failed"
    never = assess(DAILY, "primary", [run("backup", "failed", 30)], NOW)
    assert never.status == "CRITICAL" and "never succeeded" in never.message
    running = assess(DAILY, "primary", [run("backup", "succeeded", 24.5),
                                        run("backup", "running", 0.2)], NOW)
    assert running.status == "OK"


def test_monthly_job_gets_a_month(tmp_path: Path) -> None:
    monthly = build_job("reindex", JobSettings(command="maint reindex --all", cron="0 5 1 * *",
                                               grace=86400.0))
    verdict = assess(monthly, "primary", [run("reindex", "succeeded", 24 * 30)], NOW)
    assert verdict.status == "OK" and verdict.interval_s == 31 * 86400


def test_reads_the_local_file_when_the_database_is_down(tmp_path: Path) -> None:
    settings = validate({
        "targets": {"primary": {"dsn": "postgresql://x@h/db"}, "other": {"dsn": "postgresql://y@h/db"}},
        "default_target": "primary",
        "schedule": {"backup": {"command": "backup create", "at": "02:00"},
                     "elsewhere": {"command": "health", "every": "5m", "target": "other"},
                     "off": {"command": "health", "every": "5m", "enabled": False}},
        "scheduler": {"state_dir": str(tmp_path / "state")},
    }, "test")
    local = LocalHistory(tmp_path / "state")
    local.append(run("backup", "succeeded", 30))
    report = job_freshness(settings, None, "primary", now=NOW)
    assert [j.job for j in report.jobs] == ["backup"]  # only this target's enabled jobs
    assert report.jobs[0].status == "CRITICAL"
    assert report.worst == "CRITICAL"
    assert "not reachable" in report.warnings[0]
    assert report.to_json()["jobs"][0]["threshold_s"] == 90000
