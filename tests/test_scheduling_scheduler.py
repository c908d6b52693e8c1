"""The built-in scheduler in a subprocess: a fast schedule runs and records jobs, missed runs
are caught up, SIGTERM stops it cleanly (interrupting a job that will not finish)."""

from __future__ import annotations

import datetime as dt
import json
import signal
from pathlib import Path

import psycopg
from scheduling_fixtures import LineCollector, aegisctl, schedule_config, start
from test_scheduling_jobs import NO_LOCK_TIMEOUT, runs


def test_scheduler_runs_jobs_catches_up_and_stops_on_sigterm(aegis_dsn: str,
                                                              tmp_path: Path) -> None:
    missed = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)).strftime("%H:%M")
    config = schedule_config(tmp_path / "c.yaml", aegis_dsn, {
        "health": {"command": "health", "every": "1s", "randomized_delay": 0},
        "daily": {"command": "schema status", "at": missed, "randomized_delay": 0},
        "nocatch": {"command": "schema status", "at": missed, "misfire_grace": 0},
    }, tmp_path / "state")
    proc = start("--config", str(config), "--log-format", "json", "schedule", "run")
    log = LineCollector(proc)
    log.wait_for(lambda c: c.count("job.finished", job="health", status="succeeded") >= 2
                 and c.count("job.finished", job="daily") == 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.lines
    log.wait_for(lambda c: c.count("scheduler.stopped") == 1, timeout=5)
    assert log.count("job.catch_up", job="daily") == 1
    assert log.count("job.started", job="nocatch") == 0
    assert all(json.loads(line) for line in log.lines)  # every stderr line is one JSON event
    health = runs(aegis_dsn, "health")
    assert len(health) >= 2
    assert {r["trigger"] for r in health} == {"scheduler"}
    assert {r["status"] for r in health} <= {"succeeded", "skipped"}
    assert [r["status"] for r in runs(aegis_dsn, "daily")] == ["succeeded"]

    listing = aegisctl("--config", str(config), "schedule", "list", "--next", "3", "-f", "json")
    assert listing.returncode == 0, listing.stderr
    jobs = {j["job"]: j for j in json.loads(listing.stdout)["jobs"]}
    assert len(jobs["health"]["next_runs"]) == 3
    assert jobs["daily"]["on_calendar"] == [f"*-*-* {missed}:00 UTC"]


def test_sigterm_interrupts_a_job_that_does_not_finish(aegis_dsn: str, tmp_path: Path) -> None:
    import yaml

    config = schedule_config(tmp_path / "c.yaml", aegis_dsn, {
        "slow": {"command": "schema status", "every": "1s", "randomized_delay": 0},
    }, tmp_path / "state", stop_timeout="1s", kill_timeout="5s")
    data = yaml.safe_load(config.read_text())
    data.update(NO_LOCK_TIMEOUT)
    config.write_text(yaml.safe_dump(data))
    with psycopg.connect(aegis_dsn) as holder:
        holder.execute("LOCK TABLE aegis_schema_migrations IN ACCESS EXCLUSIVE MODE")
        proc = start("--config", str(config), "--log-format", "json", "schedule", "run")
        log = LineCollector(proc)
        log.wait_for(lambda c: c.count("job.started", job="slow") == 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.lines
    assert log.count("job.interrupting", job="slow") == 1
    assert log.count("job.finished", job="slow", status="interrupted") == 1
    assert log.count("scheduler.stopped") == 1
    assert [r["status"] for r in runs(aegis_dsn, "slow")] == ["interrupted"]
