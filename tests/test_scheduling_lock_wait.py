"""Unattended jobs sharing the target's lock: a scheduled run waits for it within
scheduler.lock_wait, and when it still cannot start it is recorded `skipped` with the holder,
not `failed`; `config validate` warns about jobs that fire together."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg
from scheduling_fixtures import aegisctl, schedule_config

from aegisctl.locks import lock_file_at

JOBS = {"analyze": {"command": "maint analyze", "at": "03:00"},
        "cleanup": {"command": "cleanup run --yes", "at": "03:00"},
        "verify": {"command": "backup verify --latest", "cron": "30 4 * * 6"}}


def _rows(dsn: str, job: str) -> list[tuple[str, int, str]]:
    with psycopg.connect(dsn) as conn:
        return [(r[0], r[1], r[2] or "") for r in conn.execute(
            "SELECT status, exit_code, error FROM aegis_job_runs WHERE job = %s"
            " ORDER BY started_at", (job,))]


def test_a_busy_lock_is_waited_for_then_the_run_is_skipped_naming_the_holder(
        aegis_dsn: str, tmp_path: Path) -> None:
    config = schedule_config(tmp_path / "c.yaml", aegis_dsn, JOBS, tmp_path / "state",
                             lock_wait="1s")
    lock = tmp_path / "state" / "locks" / "primary.lock"
    with lock_file_at(lock, "backup create"):
        busy = aegisctl("--config", str(config), "jobs", "run", "analyze")
    assert busy.returncode == 4, busy.stderr
    [(status, code, error)] = _rows(aegis_dsn, "analyze")
    assert (status, code) == ("skipped", 4)
    assert "backup create, pid" in error

    # Released within lock_wait: the run waits and succeeds.
    config = schedule_config(tmp_path / "c.yaml", aegis_dsn, JOBS, tmp_path / "state",
                             lock_wait="60s")
    release = threading.Event()

    def hold() -> None:
        with lock_file_at(lock, "backup create"):
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.3)
    threading.Timer(1.5, release.set).start()
    waited = aegisctl("--config", str(config), "jobs", "run", "analyze")
    holder.join()
    assert waited.returncode == 0, waited.stderr
    assert [r[0] for r in _rows(aegis_dsn, "analyze")] == ["skipped", "succeeded"]


def test_validate_warns_about_jobs_sharing_the_lock_that_fire_together(
        aegis_dsn: str, tmp_path: Path) -> None:
    config = schedule_config(tmp_path / "c.yaml", aegis_dsn, JOBS, tmp_path / "state")
    result = aegisctl("--config", str(config), "config", "validate", "--format", "json")
    assert result.returncode == 0, result.stderr
    [warning] = json.loads(result.stdout)["warnings"]
    assert "analyze" in warning and "cleanup" in warning and "fire together" in warning

    example = Path(__file__).parent.parent / "config.example.yaml"
    clean = aegisctl("config", "validate", str(example), "--format", "json")
    assert clean.returncode == 0, clean.stderr
    assert "warnings" not in json.loads(clean.stdout)
