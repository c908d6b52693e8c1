"""Job runs: locks, history in aegis_job_runs (and the local fallback), freshness verdicts,
interruption. aegisctl runs as real subprocesses, the way timers and cron start it."""

from __future__ import annotations

import datetime as dt
import json
import signal
from pathlib import Path
from typing import Any

import psycopg
from scheduling_fixtures import LineCollector, aegisctl, schedule_config, start

from aegisctl.config import load_config
from aegisctl.scheduling.freshness import job_freshness
from aegisctl.scheduling.lock import ADVISORY_CLASS, advisory_key


def runs(dsn: str, job: str | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT job, target, trigger, status, exit_code, summary, error, started_at"
            " FROM aegis_job_runs WHERE job = coalesce(%s, job) ORDER BY started_at",
            (job,)).fetchall()
    keys = ("job", "target", "trigger", "status", "exit_code", "summary", "error", "started_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]


# Blocks in a table lock the test holds, without the usual lock_timeout giving up.
NO_LOCK_TIMEOUT = {"connection": {"retry": {"attempts": 1},
                                  "timeouts": {"query": {"lock_timeout": 0}}}}


def blocking_config(path: Path, dsn: str, state: Path, **scheduler: Any) -> Path:
    import yaml

    config = schedule_config(path, dsn, {
        "status": {"command": "schema status", "at": "01:00"},
        "health": {"command": "health", "every": "1s", "randomized_delay": 0},
    }, state, **scheduler)
    data = yaml.safe_load(config.read_text())
    data.update(NO_LOCK_TIMEOUT)
    config.write_text(yaml.safe_dump(data))
    return config


def test_run_records_success_with_summary(aegis_dsn: str, tmp_path: Path) -> None:
    config = schedule_config(tmp_path / "c.yaml", aegis_dsn,
                             {"health": {"command": "health", "every": "5m"}}, tmp_path / "s")
    with psycopg.connect(aegis_dsn) as conn:  # a run whose runner was killed -9 long ago
        conn.execute("INSERT INTO aegis_job_runs (id, job, target, trigger, command, host,"
                     " started_at, status) VALUES (gen_random_uuid(), 'health', 'primary',"
                     " 'timer', 'health', 'h', now() - interval '1 day', 'running')")
    done = aegisctl("--config", str(config), "jobs", "run", "health", "--format", "json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "succeeded" and run["recorded_in"] == "database"
    assert "job health started" in done.stderr and "job health succeeded" in done.stderr
    dead, row = runs(aegis_dsn)
    assert dead["status"] == "abandoned" and "runner died" in dead["error"]
    assert row["status"] == "succeeded" and row["trigger"] == "manual"
    assert row["summary"]["reachable"] is True  # the command's own JSON result
    history = aegisctl("--config", str(config), "jobs", "history", "--format", "json")
    assert next(r["id"] for r in json.loads(history.stdout)["runs"]) == run["id"]


def test_failing_job_is_recorded_and_goes_critical_after_grace(aegis_dsn: str,
                                                               tmp_path: Path) -> None:
    config = schedule_config(tmp_path / "c.yaml", aegis_dsn, {
        "verify": {"command": "backup verify --latest", "every": "1m", "grace": "30s"},
        "health": {"command": "health", "every": "1m", "grace": "30s"},
        "never": {"command": "health", "at": "01:00"},
    }, tmp_path / "state")
    failed = aegisctl("--config", str(config), "jobs", "run", "verify", "--trigger", "cron")
    assert failed.returncode != 0
    assert "job verify failed" in failed.stderr
    (row,) = runs(aegis_dsn, "verify")
    assert row["status"] == "failed" and row["trigger"] == "cron"
    assert row["exit_code"] == failed.returncode and "no complete local backup" in row["error"]
    assert aegisctl("--config", str(config), "jobs", "run", "health").returncode == 0

    status = aegisctl("--config", str(config), "jobs", "status", "--format", "json")
    assert status.returncode == 1, status.stderr  # WARNING outranks "never"'s UNKNOWN
    verdicts = {j["job"]: j for j in json.loads(status.stdout)["jobs"]}
    assert verdicts["verify"]["status"] == "WARNING"
    assert verdicts["health"]["status"] == "OK"
    assert verdicts["never"]["status"] == "UNKNOWN"

    settings = load_config(str(config)).settings
    started = row["started_at"]
    # Measured from health's own run, not verify's: on a loaded machine seconds pass between
    # the two, and health's success must be 95 s old for the verdict asserted below.
    (health_row,) = runs(aegis_dsn, "health")
    later = health_row["started_at"] + dt.timedelta(seconds=95)
    with psycopg.connect(aegis_dsn) as conn:
        within = job_freshness(settings, conn, "primary", now=started + dt.timedelta(seconds=80))
        after = job_freshness(settings, conn, "primary", now=later)
    assert {j.job: j.status for j in within.jobs}["verify"] == "WARNING"
    late = {j.job: j for j in after.jobs}
    assert late["verify"].status == "CRITICAL"
    assert "never succeeded" in late["verify"].message
    assert late["health"].status == "CRITICAL"  # its last success is now 95 s old > 60 + 30
    assert late["health"].threshold_s == 90

    # `aegisctl check` carries the same verdicts: back-date the runs past interval + grace.
    with psycopg.connect(aegis_dsn, autocommit=True) as conn:
        conn.execute("UPDATE aegis_job_runs SET started_at = started_at - interval '10 minutes',"
                     " finished_at = finished_at - interval '10 minutes'")
    checked = aegisctl("--config", str(config), "check", "--only", "scheduled_jobs",
                       "--format", "json")
    assert checked.returncode == 2, checked.stderr
    results = {r["name"]: r for r in json.loads(checked.stdout)["targets"][0]["checks"]}
    assert results["job_verify"]["status"] == "CRITICAL"
    assert results["job_health"]["status"] == "CRITICAL"
    assert results["job_health"]["critical"] == 90


def test_two_simultaneous_starts_run_the_job_once(aegis_dsn: str, tmp_path: Path) -> None:
    config = blocking_config(tmp_path / "c.yaml", aegis_dsn, tmp_path / "state")
    with psycopg.connect(aegis_dsn) as holder:
        holder.execute("LOCK TABLE aegis_schema_migrations IN ACCESS EXCLUSIVE MODE")
        first = start("--config", str(config), "jobs", "run", "status")
        first_log = LineCollector(first)
        first_log.wait_for(lambda c: any("job status started" in ln for ln in c.lines))
        second = aegisctl("--config", str(config), "jobs", "run", "status", "--trigger", "timer")
        assert second.returncode == 4, second.stderr
        assert "job 'status' is already running for target 'primary'" in second.stderr
        assert "this start is skipped" in second.stderr
        assert first.poll() is None  # still blocked behind our lock
    assert first.wait(60) == 0, first_log.lines
    statuses = sorted((r["status"], r["trigger"]) for r in runs(aegis_dsn, "status"))
    assert statuses == [("skipped", "timer"), ("succeeded", "manual")]


def test_advisory_lock_keeps_other_hosts_out(aegis_dsn: str, tmp_path: Path) -> None:
    config = blocking_config(tmp_path / "c.yaml", aegis_dsn, tmp_path / "state")
    with psycopg.connect(aegis_dsn, autocommit=True) as other_host:
        other_host.execute("SELECT pg_advisory_lock(%s, %s)", (ADVISORY_CLASS, advisory_key("status")))
        done = aegisctl("--config", str(config), "jobs", "run", "status")
    assert done.returncode == 4
    assert "on another host" in done.stderr
    assert [r["status"] for r in runs(aegis_dsn, "status")] == ["skipped"]


def test_sigterm_interrupts_the_job_and_records_it(aegis_dsn: str, tmp_path: Path) -> None:
    config = blocking_config(tmp_path / "c.yaml", aegis_dsn, tmp_path / "state")
    with psycopg.connect(aegis_dsn) as holder:
        holder.execute("LOCK TABLE aegis_schema_migrations IN ACCESS EXCLUSIVE MODE")
        proc = start("--config", str(config), "jobs", "run", "status")
        log = LineCollector(proc)
        log.wait_for(lambda c: any("job status started" in ln for ln in c.lines))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130
        holder.rollback()
        waiting = holder.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name"
                                 " = 'aegisctl schema status'").fetchone()
    (row,) = runs(aegis_dsn, "status")
    assert row["status"] == "interrupted", log.lines
    assert waiting == (0,)  # the command itself is gone, not left blocked on the server


def test_history_falls_back_to_a_local_file_and_is_copied_in_later(aegis_dsn: str,
                                                                    tmp_path: Path) -> None:
    state = tmp_path / "state"
    down = schedule_config(tmp_path / "down.yaml", "postgresql://nobody@127.0.0.1:1/none",
                           {"health": {"command": "health", "every": "5m"}}, state)
    done = aegisctl("--config", str(down), "jobs", "run", "health", "-f", "json")
    assert done.returncode == 3
    assert json.loads(done.stdout)["recorded_in"] == "local"
    assert "history goes to the local file" in done.stderr
    local = aegisctl("--config", str(down), "jobs", "history", "--failed", "-f", "json")
    (run,) = json.loads(local.stdout)["runs"]
    assert run["status"] == "failed" and run["recorded_in"] == "local"

    up = schedule_config(tmp_path / "up.yaml", aegis_dsn,
                         {"health": {"command": "health", "every": "5m"}}, state)
    assert aegisctl("--config", str(up), "jobs", "run", "health").returncode == 0
    assert [r["status"] for r in runs(aegis_dsn, "health")] == ["failed", "succeeded"]
    assert (state / "job-history.jsonl").read_text() == ""


def test_unknown_job_and_bad_command(aegis_dsn: str, tmp_path: Path) -> None:
    config = schedule_config(tmp_path / "c.yaml", aegis_dsn,
                             {"typo": {"command": "schema stauts", "at": "01:00"}}, tmp_path)
    done = aegisctl("--config", str(config), "jobs", "run", "nope")
    assert done.returncode == 2 and "no job named 'nope'" in done.stderr
    done = aegisctl("--config", str(config), "jobs", "run", "typo")
    assert done.returncode == 2 and "no command 'stauts'" in done.stderr
    assert "Traceback" not in done.stderr


def test_job_timeout_stops_the_command(aegis_dsn: str, tmp_path: Path) -> None:
    import yaml

    config = blocking_config(tmp_path / "c.yaml", aegis_dsn, tmp_path / "state")
    data = yaml.safe_load(config.read_text())
    data["schedule"]["status"]["timeout"] = "1s"
    config.write_text(yaml.safe_dump(data))
    with psycopg.connect(aegis_dsn) as holder:
        holder.execute("LOCK TABLE aegis_schema_migrations IN ACCESS EXCLUSIVE MODE")
        done = aegisctl("--config", str(config), "jobs", "run", "status", timeout=60)
    assert done.returncode == 1
    (row,) = runs(aegis_dsn, "status")
    assert row["status"] == "timeout"
    assert "timeout of 1s" in row["error"]


def test_database_without_the_history_table_or_read_only(db_dsn: str, tmp_path: Path) -> None:
    """Not migrated yet, or read-only: the job still runs, its record goes to the local file."""
    state = tmp_path / "state"
    config = schedule_config(tmp_path / "c.yaml", db_dsn,
                             {"health": {"command": "health", "every": "5m"}}, state)
    done = aegisctl("--config", str(config), "jobs", "run", "health", "-f", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["recorded_in"] == "local"
    assert "aegis_job_runs is missing" in done.stderr

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute((Path(__file__).parent.parent / "sql" / "migrations"
                      / "0008_job_runs.sql").read_text())
        dbname = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
    try:
        done = aegisctl("--config", str(config), "jobs", "run", "health", "-f", "json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["recorded_in"] == "local"
        assert "cannot write aegis_job_runs" in done.stderr
    finally:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')
    assert aegisctl("--config", str(config), "jobs", "run", "health").returncode == 0
    assert [r["status"] for r in runs(db_dsn, "health")] == ["succeeded"] * 3
