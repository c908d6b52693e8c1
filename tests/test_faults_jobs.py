"""Fault suite, scheduled jobs (issue 18, defect 10): a job's command killed from outside
(kill -9, the OOM killer) is recorded as interrupted, naming the signal the one way; the
command dies with the runner that started it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
from fault_fixtures import children_of, wait_gone
from scheduling_fixtures import LineCollector, start
from test_scheduling_jobs import blocking_config, runs


def _command_pid(runner: int) -> int:
    """The job's command (the runner logs "started" just before it starts it)."""
    deadline = time.monotonic() + 30
    while True:
        found = [pid for pid, name in children_of(runner) if name.startswith("python")]
        if len(found) == 1 or time.monotonic() > deadline:
            (pid,) = found
            return pid
        time.sleep(0.05)


def test_a_killed_command_is_recorded_as_interrupted(aegis_dsn: str, tmp_path: Path) -> None:
    config = blocking_config(tmp_path / "c.yaml", aegis_dsn, tmp_path / "state")
    with psycopg.connect(aegis_dsn) as holder:
        holder.execute("LOCK TABLE aegis_schema_migrations IN ACCESS EXCLUSIVE MODE")
        proc = start("--config", str(config), "jobs", "run", "status")
        log = LineCollector(proc)
        log.wait_for(lambda c: any("job status started" in ln for ln in c.lines))
        os.kill(_command_pid(proc.pid), signal.SIGKILL)
        proc.wait(60)
        holder.rollback()
    (row,) = runs(aegis_dsn, "status")
    assert row["status"] == "interrupted", log.lines
    assert row["error"] == "the command was killed by signal SIGKILL"


def test_the_command_dies_with_its_runner(aegis_dsn: str, tmp_path: Path) -> None:
    config = blocking_config(tmp_path / "c.yaml", aegis_dsn, tmp_path / "state")
    with psycopg.connect(aegis_dsn) as holder:
        holder.execute("LOCK TABLE aegis_schema_migrations IN ACCESS EXCLUSIVE MODE")
        proc = start("--config", str(config), "jobs", "run", "status")
        log = LineCollector(proc)
        log.wait_for(lambda c: any("job status started" in ln for ln in c.lines))
        command = _command_pid(proc.pid)
        proc.kill()
        proc.wait(60)
        assert wait_gone(command), "the job's command outlived its runner"
        holder.rollback()
