"""`schedule run` reloads its config on SIGHUP: a valid config replaces the jobs (a running job
finishes undisturbed), an invalid one is refused with one error line and the old schedule keeps
running. A real scheduler subprocess, real signals."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml
from scheduling_fixtures import LineCollector, schedule_config, start
from test_scheduling_jobs import NO_LOCK_TIMEOUT, runs


def _write(config: Path, jobs: dict[str, Any]) -> None:
    data = yaml.safe_load(config.read_text())
    data["schedule"] = jobs
    tmp = config.with_name(config.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data))
    tmp.replace(config)


def test_sighup_replaces_the_jobs_and_refuses_a_bad_config(aegis_dsn: str,
                                                           tmp_path: Path) -> None:
    config = schedule_config(tmp_path / "c.yaml", aegis_dsn, {
        "slow": {"command": "schema status", "every": "1s", "randomized_delay": 0},
        "health": {"command": "health", "every": "1s", "randomized_delay": 0},
    }, tmp_path / "state")
    data = yaml.safe_load(config.read_text())
    data.update(NO_LOCK_TIMEOUT)
    config.write_text(yaml.safe_dump(data))

    with psycopg.connect(aegis_dsn) as holder:
        # `slow` blocks on this lock until the test lets it go: a job running across the reload.
        holder.execute("LOCK TABLE aegis_schema_migrations IN ACCESS EXCLUSIVE MODE")
        proc = start("--config", str(config), "--log-format", "json", "schedule", "run")
        try:
            log = LineCollector(proc)
            log.wait_for(lambda c: c.count("job.started", job="slow") == 1
                         and c.count("job.finished", job="health") >= 1)

            _write(config, {
                "health": {"command": "health", "every": "2s", "randomized_delay": 0},
                "health2": {"command": "health", "every": "1s", "randomized_delay": 0},
            })
            proc.send_signal(signal.SIGHUP)
            log.wait_for(lambda c: c.count("scheduler.reloaded") == 1)
            (reloaded,) = [e for e in log.events() if e["event"] == "scheduler.reloaded"]
            assert reloaded["added"] == ["health2"]
            assert reloaded["changed"] == ["health"]
            assert reloaded["removed"] == ["slow"]
            assert reloaded["unchanged"] == 0
            # health (every 1 s) may be running at that instant too: slow must be among them.
            _, _, still = reloaded["message"].partition("still running under the old settings: ")
            assert "slow" in still.split(", "), reloaded["message"]
            assert proc.poll() is None
            holder.commit()  # the running job of the removed `slow` can finish now
            log.wait_for(lambda c: c.count("job.finished", job="slow") == 1
                         and c.count("job.finished", job="health2") >= 1)
            assert log.count("job.finished", job="slow", status="succeeded") == 1

            # An invalid config: one error line, the scheduler keeps the schedule it has.
            _write(config, {"health": {"command": "no-such-command", "every": "1s"}})
            proc.send_signal(signal.SIGHUP)
            log.wait_for(lambda c: c.count("scheduler.reload_failed") == 1)
            (failed,) = [e for e in log.events() if e["event"] == "scheduler.reload_failed"]
            assert failed["level"] == "error"
            assert "the current schedule stays" in failed["message"]
            assert "no-such-command" in failed["message"]
            before = log.count("job.finished", job="health2")
            log.wait_for(lambda c: c.count("job.finished", job="health2") >= before + 2)
            assert proc.poll() is None

            # Broken YAML is refused the same way.
            config.write_text("schedule: [unclosed\n")
            proc.send_signal(signal.SIGHUP)
            log.wait_for(lambda c: c.count("scheduler.reload_failed") == 2)
            time.sleep(1.5)
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
    assert code == 0, log.lines
    assert log.count("job.started", job="slow") == 1  # never started again after the reload
    assert log.count("job.finished", job="health2") >= 3
    assert log.count("scheduler.reloaded") == 1
    assert {r["status"] for r in runs(aegis_dsn, "slow")} == {"succeeded"}
