"""maint on a real database: VACUUM FULL needs confirmation and never queues behind a long
transaction, reindex concurrently leaves no invalid index, vector-index rebuilds with new
parameters, status recommends what a DBA would run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest


def _config(write_config, dsn: str, tmp_path: Path, **maintenance: Any) -> Path:
    return write_config({"targets": {"primary": {"dsn": dsn}},
                         "connection": {"retry": {"attempts": 1}},
                         "backup": {"directory": str(tmp_path / "backups")},
                         "maintenance": maintenance})


def _invalid(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE NOT i.indisvalid ORDER BY 1").fetchall()]


def test_vacuum_full_asks_first_and_dry_run_prints_statements(cli, aegis_db, aegis_dsn,
                                                              write_config, tmp_path) -> None:
    aegis_db.autocommit = True
    aegis_db.execute("INSERT INTO container_metrics (container_name) SELECT 'c'"
                     " FROM generate_series(1, 1000)")
    aegis_db.execute("DELETE FROM container_metrics")
    before = aegis_db.execute("SELECT pg_relation_filenode('container_metrics')").fetchone()[0]
    path = _config(write_config, aegis_dsn, tmp_path)
    result = cli("--config", str(path), "maint", "vacuum", "--full", "--table",
                 "container_metrics")
    assert result.exit_code == 2  # no terminal to ask on, no --yes
    assert "ACCESS EXCLUSIVE" in result.stdout and "public.container_metrics" in result.stdout
    assert aegis_db.execute("SELECT pg_relation_filenode('container_metrics')"
                            ).fetchone()[0] == before
    result = cli("--config", str(path), "maint", "vacuum", "--full", "--analyze", "--dry-run",
                 "--table", "container_metrics")
    assert result.exit_code == 0
    assert 'VACUUM (FULL, ANALYZE) "public"."container_metrics";' in result.stdout
    result = cli("--config", str(path), "maint", "vacuum", "--full", "--yes", "--table",
                 "container_metrics", "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"][0]["status"] == "done"
    assert aegis_db.execute("SELECT pg_relation_filenode('container_metrics')"
                            ).fetchone()[0] != before


def test_vacuum_full_gives_up_instead_of_stalling_the_application(
        cli, aegis_db, aegis_dsn, write_config, tmp_path) -> None:
    """A long transaction holds the table: VACUUM FULL must not queue an ACCESS EXCLUSIVE
    request that every later reader would wait behind."""
    path = _config(write_config, aegis_dsn, tmp_path, lock_timeout="0.2s", lock_attempts=3,
                   lock_max_delay="0.3s")
    holder = psycopg.connect(aegis_dsn)
    holder.execute("SELECT count(*) FROM container_metrics")  # AccessShare, kept open
    stalls: list[float] = []
    done = threading.Event()

    def reader() -> None:
        with psycopg.connect(aegis_dsn, autocommit=True) as conn:
            while not done.is_set():
                started = time.perf_counter()
                conn.execute("SELECT count(*) FROM container_metrics")
                stalls.append(time.perf_counter() - started)
                time.sleep(0.01)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = cli("--config", str(path), "maint", "vacuum", "--full", "--yes", "--table",
                     "container_metrics", "-f", "json")
    finally:
        done.set()
        thread.join()
        holder.close()
    assert result.exit_code == 1
    step = json.loads(result.stdout)["steps"][0]
    assert step["status"] == "failed" and step["attempts"] == 3
    assert "gave up after 3 attempts" in step["detail"]
    assert max(stalls) < 1.0  # the reader waited at most about one lock_timeout


def test_reindex_concurrently_leaves_no_invalid_index(cli, aegis_db, aegis_dsn, write_config,
                                                     tmp_path) -> None:
    conn = aegis_db
    conn.autocommit = True
    conn.execute("INSERT INTO workflows (name, graph) SELECT 'dup', '{}' FROM generate_series(1, 3)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY workflows_name_uniq ON workflows (name)")
    assert _invalid(conn) == ["workflows_name_uniq"]
    path = _config(write_config, aegis_dsn, tmp_path)
    # The data still has duplicates: the rebuild fails, its own leftover is dropped, and the
    # invalid index is reported (exit 1), not left unsaid.
    result = cli("--config", str(path), "maint", "reindex", "--table", "workflows", "-f", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert any(s["target"] == "public.workflows_name_uniq" and s["status"] == "failed"
               for s in report["steps"])
    assert _invalid(conn) == ["workflows_name_uniq"]  # no *_ccnew left behind
    conn.execute("DELETE FROM workflows WHERE ctid <> (SELECT min(ctid) FROM workflows)")
    result = cli("--config", str(path), "maint", "reindex", "--table", "workflows", "-f", "json")
    assert result.exit_code == 0, result.output
    assert _invalid(conn) == []
    # A leftover of an interrupted REINDEX CONCURRENTLY is dropped by --all.
    conn.execute("INSERT INTO workflows (name, graph, status) VALUES ('a', '{}', 'active'),"
                 " ('b', '{}', 'active')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY wf_status_uniq ON workflows (status)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("REINDEX INDEX CONCURRENTLY wf_status_uniq")
    assert _invalid(conn) == ["wf_status_uniq", "wf_status_uniq_ccnew"]
    conn.execute("DELETE FROM workflows WHERE ctid <> (SELECT min(ctid) FROM workflows)")
    result = cli("--config", str(path), "maint", "reindex", "--all")
    assert result.exit_code == 0, result.output
    assert _invalid(conn) == []
    assert cli("--config", str(path), "maint", "reindex").exit_code == 2


def test_vector_index_rebuilds_with_new_parameters(cli, aegis_db, aegis_dsn, write_config,
                                                   tmp_path) -> None:
    aegis_db.autocommit = True
    aegis_db.execute("INSERT INTO episodic_memory (event_type, summary, embedding)"
                     " SELECT 'task', 'e' || i, array_fill(i::real / 100, ARRAY[1536])::vector"
                     " FROM generate_series(1, 50) i")
    path = _config(write_config, aegis_dsn, tmp_path)
    result = cli("--config", str(path), "maint", "vector-index", "--table", "episodic_memory",
                 "--m", "8", "--ef-construction", "40", "--dry-run")
    assert result.exit_code == 0
    assert "WITH (m = 8, ef_construction = 40)" in result.stdout
    result = cli("--config", str(path), "maint", "vector-index", "--table", "episodic_memory",
                 "--m", "8", "--ef-construction", "40", "--maintenance-work-mem", "256MB",
                 "-f", "json")
    assert result.exit_code == 0, result.output
    build = [s for s in json.loads(result.stdout)["steps"] if "CREATE INDEX" in s["statement"]]
    assert "built in" in build[0]["detail"] and "maintenance_work_mem=256.0 MB" in build[0]["detail"]
    row = aegis_db.execute("SELECT c.reloptions, pg_get_indexdef(c.oid) FROM pg_class c"
                           " WHERE relname = 'idx_episodic_embedding'").fetchone()
    assert row[0] == ["m=8", "ef_construction=40"]
    assert "vector_cosine_ops" in row[1]
    assert _invalid(aegis_db) == []
    assert cli("--config", str(path), "maint", "vector-index", "--m", "1").exit_code == 2
    assert cli("--config", str(path), "maint", "vector-index", "--table",
               "container_metrics").exit_code == 2


def test_status_recommends_vacuum_for_dead_rows(cli, aegis_db, aegis_dsn, write_config,
                                                tmp_path) -> None:
    aegis_db.autocommit = True
    aegis_db.execute("ALTER TABLE container_metrics SET (autovacuum_enabled = false)")
    aegis_db.execute("INSERT INTO container_metrics (container_name) SELECT 'c'"
                     " FROM generate_series(1, 5000)")
    aegis_db.execute("ANALYZE container_metrics")
    aegis_db.execute("DELETE FROM container_metrics WHERE id % 2 = 0")
    path = _config(write_config, aegis_dsn, tmp_path)
    deadline = time.monotonic() + 10
    while True:  # the statistics collector reports with a small delay
        result = cli("--config", str(path), "maint", "status", "-f", "json")
        assert result.exit_code == 0
        tables = {t["table"]: t for t in json.loads(result.stdout)["tables"]}
        cm = tables["public.container_metrics"]
        if cm["dead_rows"] >= 2500 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert cm["dead_rows"] >= 2500
    assert "maint vacuum --analyze --table public.container_metrics" in cm["recommendation"]
    result = cli("--config", str(path), "maint", "vacuum", "--analyze", "--table",
                 "container_metrics")
    assert result.exit_code == 0
    result = cli("--config", str(path), "maint", "status")
    assert "container_metrics" in result.stdout


def test_sigint_cancels_a_long_rebuild_and_leaves_no_invalid_index(aegis_db, aegis_dsn,
                                                                  write_config, tmp_path,
                                                                  clean_env) -> None:
    import os
    import signal
    import subprocess
    import sys

    conn = aegis_db
    conn.autocommit = True
    # An index whose build takes ~4 s: its expression sleeps 10 ms a row.
    conn.execute("CREATE TABLE slow (id int)")
    conn.execute("INSERT INTO slow SELECT generate_series(1, 400)")
    conn.execute("CREATE FUNCTION slow_key(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS"
                 " $$BEGIN PERFORM pg_sleep(0.01); RETURN $1; END$$")
    conn.execute("CREATE INDEX slow_idx ON slow (slow_key(id))")
    path = _config(write_config, aegis_dsn, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "aegisctl", "--config", str(path), "maint",
                             "reindex", "--table", "slow", "-f", "json"],
                            env={**os.environ, "NO_COLOR": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the rebuild is running
        if conn.execute("SELECT count(*) FROM pg_stat_progress_create_index").fetchone()[0]:
            break
        time.sleep(0.05)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 3  # cancelled, not waited for
    report = json.loads(out)
    assert report["interrupted"] is True
    assert any(s["status"] == "cancelled" for s in report["steps"])
    assert _invalid(conn) == []  # the cancelled rebuild's *_ccnew was dropped on the way out
