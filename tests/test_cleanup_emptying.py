"""A policy that would delete every row of its table (usually a wrong max_age or column) is
refused before anything is deleted, exit 2, unless --allow-emptying; the dry run warns, and a
scheduled run is recorded failed with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from scheduling_fixtures import aegisctl

POLICIES = {
    "metrics": {"table": "container_metrics", "column": "timestamp", "max_age": "1d"},
    # Only old rows, but the important ones are exempt: never "every row".
    "memories": {"table": "episodic_memory", "column": "timestamp", "max_age": "1d",
                 "keep": {"importance": ["high"]}},
}


def _config(write_config: Any, dsn: str, tmp_path: Path, **extra: Any) -> Path:
    return write_config({
        "targets": {"primary": {"dsn": dsn}},
        "connection": {"retry": {"attempts": 1}},
        "cleanup": {"archive_dir": str(tmp_path / "archive"), "policies": POLICIES},
        **extra,
    })


def _fill(conn: psycopg.Connection[Any]) -> None:
    conn.autocommit = True
    conn.execute("INSERT INTO container_metrics (container_name, \"timestamp\")"
                 " SELECT 'c', now() - interval '40 days' FROM generate_series(1, 300)")
    conn.execute("INSERT INTO episodic_memory (event_type, summary, importance, \"timestamp\")"
                 " SELECT 'task', 'm' || i,"
                 "        (CASE WHEN i = 1 THEN 'high' ELSE 'low' END)::memory_importance,"
                 "        now() - interval '40 days' FROM generate_series(1, 20) i")


def _counts(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    row = conn.execute("SELECT (SELECT count(*) FROM container_metrics),"
                       " (SELECT count(*) FROM episodic_memory)").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_a_policy_that_would_empty_its_table_needs_allow_emptying(
        cli, aegis_db, aegis_dsn, write_config, tmp_path: Path) -> None:
    conn = aegis_db
    _fill(conn)
    path = _config(write_config, aegis_dsn, tmp_path)

    dry = cli("--config", str(path), "cleanup", "run", "--dry-run", "-f", "json")
    assert dry.exit_code == 0, dry.output
    metrics, memories = json.loads(dry.stdout)["policies"]
    assert metrics["empties_table"] is True and not memories["empties_table"]
    assert any("would delete every row of public.container_metrics" in n
               and "--allow-emptying" in n for n in metrics["notes"])
    table = cli("--config", str(path), "cleanup", "run", "--dry-run")
    assert "metrics: warning: policy metrics would delete every row" in table.output

    # Refused before anything is deleted: not even the other policy's rows go.
    for args in (("--yes",), ()):  # with --yes, and before asking without it
        refused = cli("--config", str(path), "cleanup", "run", *args)
        assert refused.exit_code == 2, refused.output
        [line] = [ln for ln in refused.stderr.splitlines() if ln.strip()]
        assert line.startswith("aegisctl: error: policy metrics would delete every row of "
                               "public.container_metrics"), line
        assert "--allow-emptying" in line and "memories" not in line
        assert "Delete " not in refused.output  # never asked
        assert _counts(conn) == (300, 20)

    # One row newer than the cutoff: an ordinary run.
    conn.execute("INSERT INTO container_metrics (container_name) VALUES ('fresh')")
    kept = cli("--config", str(path), "cleanup", "run", "--yes", "-f", "json")
    assert kept.exit_code == 0, kept.output
    assert _counts(conn) == (1, 1)
    assert not any(p["empties_table"] for p in json.loads(kept.stdout)["policies"])

    # Meant: the flag lets it empty the table, and the report still says so.
    conn.execute("UPDATE container_metrics SET \"timestamp\" = now() - interval '40 days'")
    done = cli("--config", str(path), "cleanup", "run", "--yes", "--allow-emptying",
               "--policy", "metrics", "-f", "json")
    assert done.exit_code == 0, done.output
    [policy] = json.loads(done.stdout)["policies"]
    assert policy["status"] == "done" and policy["deleted_rows"] == 1
    assert policy["empties_table"] is True
    assert _counts(conn) == (0, 1)

    # An empty table is not "emptied" again.
    again = cli("--config", str(path), "cleanup", "run", "--yes", "--policy", "metrics")
    assert again.exit_code == 0, again.output


def test_a_scheduled_run_that_would_empty_a_table_is_recorded_failed_with_the_reason(
        aegis_db, aegis_dsn, write_config, tmp_path: Path) -> None:
    conn = aegis_db
    _fill(conn)
    path = _config(write_config, aegis_dsn, tmp_path, schedule={
        "cleanup": {"command": "cleanup run --yes", "at": "03:00"},
        "cleanup_scratch": {"command": "cleanup run --yes --allow-emptying --policy metrics",
                            "at": "04:00"}},
        scheduler={"state_dir": str(tmp_path / "state")})
    refused = aegisctl("--config", str(path), "jobs", "run", "cleanup")
    assert refused.returncode == 2, refused.stderr
    assert _counts(conn) == (300, 20)
    row = conn.execute("SELECT status, exit_code, error FROM aegis_job_runs"
                       " WHERE job = 'cleanup'").fetchone()
    assert row is not None and row[:2] == ("failed", 2)
    assert "would delete every row of public.container_metrics" in row[2]
    assert "--allow-emptying" in row[2]
    history = aegisctl("--config", str(path), "jobs", "history", "--job", "cleanup", "-f",
                       "json")
    assert history.returncode == 0, history.stderr
    assert "would delete every row" in json.dumps(json.loads(history.stdout)), history.stdout

    # A job that means it says so in its command.
    meant = aegisctl("--config", str(path), "jobs", "run", "cleanup_scratch")
    assert meant.returncode == 0, meant.stderr
    assert _counts(conn) == (0, 20)
