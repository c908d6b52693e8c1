"""kill -9 of the scheduler: its running job dies with it (PR_SET_PDEATHSIG) instead of running
on unsupervised, and the run is recorded (abandoned, with why) by the next run on the target;
`jobs history` shows why a failed job failed, not only its exit code."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psycopg
import pytest
import yaml
from scheduling_fixtures import LineCollector, aegisctl, schedule_config, start
from test_scheduling_jobs import NO_LOCK_TIMEOUT, runs


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_of_the_scheduler_stops_its_job_and_the_run_is_recorded(
        aegis_dsn: str, tmp_path: Path) -> None:
    config = schedule_config(tmp_path / "c.yaml", aegis_dsn, {
        "slow": {"command": "schema status", "every": "1s", "randomized_delay": 0},
        "health": {"command": "health", "at": "01:00"},
    }, tmp_path / "state")
    data = yaml.safe_load(config.read_text())
    data.update(NO_LOCK_TIMEOUT)
    config.write_text(yaml.safe_dump(data))
    with psycopg.connect(aegis_dsn) as holder:
        holder.execute("LOCK TABLE aegis_schema_migrations IN ACCESS EXCLUSIVE MODE")
        proc = start("--config", str(config), "--log-format", "json", "schedule", "run")
        log = LineCollector(proc)
        log.wait_for(lambda c: c.count("job.started", job="slow") == 1)
        deadline = time.monotonic() + 30
        while not (children := _children(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert children, "the job's command was not started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 20
        while any(_running(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(c) for c in children), "the job outlived its scheduler"
        holder.rollback()
    assert [r["status"] for r in runs(aegis_dsn, "slow")] == ["running"]
    assert aegisctl("--config", str(config), "jobs", "run", "health").returncode == 0
    [slow] = runs(aegis_dsn, "slow")
    assert slow["status"] == "abandoned"
    assert f"runner (pid {proc.pid}) died" in slow["error"]


@pytest.mark.usefixtures("clean_env")
def test_jobs_history_shows_why_a_maint_job_failed(aegis_db, aegis_dsn: str,
                                                   tmp_path: Path) -> None:
    aegis_db.autocommit = True
    aegis_db.execute("INSERT INTO workflows (name, graph) SELECT 'dup', '{}'"
                     " FROM generate_series(1, 3)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        aegis_db.execute("CREATE UNIQUE INDEX CONCURRENTLY wf_uniq ON workflows (name)")
    config = schedule_config(tmp_path / "c.yaml", aegis_dsn, {
        "reindex": {"command": "maint reindex --table workflows", "at": "05:00"},
    }, tmp_path / "state")
    assert aegisctl("--config", str(config), "jobs", "run", "reindex").returncode == 1
    history = aegisctl("--config", str(config), "jobs", "history", "--failed", "-f", "json")
    [run] = json.loads(history.stdout)["runs"]
    assert "public.wf_uniq: could not create unique index" in run["error"]
