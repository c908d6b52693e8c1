"""schema init / status / migrate / verify against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aegisctl.config import SchemaSettings
from aegisctl.errors import ConfigError
from aegisctl.resources import migrations_dir
from aegisctl.schema import (
    check_embedding_dim,
    database_embedding_dim,
    embedding_index_expr,
    migrate,
    schema_status,
)
from aegisctl.schema.files import load_migrations, split_statements
from aegisctl.schema.runner import LOCK_KEY

SHIPPED = [m.version for m in load_migrations(migrations_dir())]
LATEST = SHIPPED[-1]

AEGIS_TABLES = {
    "episodic_memory", "semantic_memory", "decision_outcomes", "api_keys", "api_usage_events",
    "billing_events", "claude_sessions", "container_metrics", "infra_anomaly_alerts",
    "workflows", "workflow_executions", "deep_briefing_jobs", "competitors", "competitor_pages",
    "competitor_changes",
}


def _tables(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def _versions(conn: psycopg.Connection[Any]) -> list[int]:
    if conn.execute("SELECT to_regclass('aegis_schema_migrations')").fetchone() == (None,):
        return []
    return [r[0] for r in conn.execute(
        "SELECT version FROM aegis_schema_migrations ORDER BY version").fetchall()]


def _script() -> str:
    return shutil.which("aegisctl") or str(Path(sys.executable).parent / "aegisctl")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AEGISCTL_", "PG"))}
    env.update(NO_COLOR="1", **extra)
    return env


@pytest.fixture
def sql_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private migrations folder (AEGISCTL_SQL_DIR) for tests that need their own files."""
    root = tmp_path / "sql"
    (root / "migrations").mkdir(parents=True)
    monkeypatch.setenv("AEGISCTL_SQL_DIR", str(root))
    return root / "migrations"


# ---------------------------------------------------------------------------------------------
# init, re-run, verify


def test_fresh_init_creates_everything_and_rerun_is_a_noop(cli, db_config, empty_db) -> None:
    empty_db.autocommit = True
    result = cli("--config", str(db_config), "schema", "init", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["version"] for s in report["migration"]["steps"]] == SHIPPED
    assert report["migration"]["embedding_dim"] == 1536
    actions = {a["name"]: a["action"] for a in report["extensions"]["actions"]}
    assert actions["vector"] == "created"
    assert actions["pgcrypto"] in ("created", "skipped")  # the embedded server lacks it

    assert _tables(empty_db) >= AEGIS_TABLES
    assert database_embedding_dim(empty_db) == 1536
    first = empty_db.execute(
        "SELECT version, sha256, applied_at, applied_by FROM aegis_schema_migrations"
        " ORDER BY version").fetchall()
    assert len(first) == len(SHIPPED) and all(len(r[1]) == 64 for r in first)

    verify = cli("--config", str(db_config), "schema", "verify")
    assert verify.exit_code == 0, verify.output
    assert "no differences" in verify.stdout

    again = cli("--config", str(db_config), "schema", "init", "--format", "json")
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report["migration"]["steps"] == [] and report["migration"]["changed"] is False
    assert all(a["action"] in ("present", "skipped") for a in report["extensions"]["actions"])
    assert empty_db.execute(
        "SELECT version, sha256, applied_at, applied_by FROM aegis_schema_migrations"
        " ORDER BY version").fetchall() == first

    text = cli("--config", str(db_config), "schema", "init")
    assert text.exit_code == 0 and f"up to date at version {LATEST:04d}" in text.stdout


def test_schema_content_generated_columns_triggers_constraints(aegis_db) -> None:
    conn = aegis_db
    conn.autocommit = True
    row = conn.execute(
        "INSERT INTO episodic_memory (event_type, summary, embedding) VALUES"
        " ('learning', 'Backups must be verified nightly', %s) RETURNING id, content_hash,"
        " summary_tsv @@ to_tsquery('english', 'backup & verify'), importance::text",
        ("[" + ",".join(["0.1"] * 1536) + "]",),
    ).fetchone()
    assert row is not None
    md5 = conn.execute("SELECT md5('Backups must be verified nightly')").fetchone()
    assert md5 is not None and row[1] == md5[0]
    assert row[2] is True and row[3] == "medium"

    sem = conn.execute(
        "INSERT INTO semantic_memory (concept, content, updated_at)"
        " VALUES ('pgvector', 'HNSW indexes need maintenance_work_mem', now() - interval '1 day')"
        " RETURNING id, content_tsv @@ to_tsquery('english', 'pgvector & hnsw'), content_hash,"
        " updated_at").fetchone()
    assert sem is not None and sem[1] is True and sem[2] is not None
    conn.execute("UPDATE semantic_memory SET category = 'db' WHERE id = %s", (sem[0],))
    updated = conn.execute("SELECT updated_at FROM semantic_memory WHERE id = %s",
                           (sem[0],)).fetchone()
    assert updated is not None and updated[0] > sem[3]

    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO api_keys (customer_id, key_hash, key_prefix, tier)"
                     " VALUES ('c', 'h', 'p', 'platinum')")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO decision_outcomes (task_context, alternatives, chosen_option,"
                     " reasoning, user_feedback) VALUES ('t', '[]', 'a', 'r', 'meh')")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("INSERT INTO competitor_pages (competitor_id, url) VALUES (999, 'x')")
    key = conn.execute("INSERT INTO api_keys (customer_id, key_hash, key_prefix)"
                       " VALUES ('c', 'h', 'p') RETURNING id, tier").fetchone()
    assert key is not None and key[1] == "free"  # gen_random_uuid() default, no uuid-ossp

    indexes = {r[0] for r in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'").fetchall()}
    assert {"idx_episodic_embedding", "idx_semantic_embedding", "idx_episodic_tags",
            "idx_episodic_summary_tsv", "idx_semantic_content_tsv", "idx_episodic_content_hash",
            "idx_semantic_content_hash", "idx_container_metrics_name_timestamp",
            "idx_api_usage_created_at", "api_keys_key_hash_key"} <= indexes
    hnsw = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = "
                        "'idx_episodic_embedding'").fetchone()
    assert hnsw is not None and "hnsw (embedding vector_cosine_ops)" in hnsw[0]


def test_large_dimension_uses_halfvec_index(cli, db_config, empty_db) -> None:
    empty_db.autocommit = True
    result = cli("--config", str(db_config), "schema", "init", "--embedding-dim", "3072")
    assert result.exit_code == 0, result.output
    assert database_embedding_dim(empty_db) == 3072
    assert embedding_index_expr(3072) == "embedding::halfvec(3072)"
    assert embedding_index_expr(1536) == "embedding"
    for table, index in (("episodic_memory", "idx_episodic_embedding"),
                         ("semantic_memory", "idx_semantic_embedding")):
        row = empty_db.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                               (index,)).fetchone()
        assert row is not None and "halfvec(3072)" in row[0] and "halfvec_cosine_ops" in row[0]
        coltype = empty_db.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attname = 'embedding'", (table,)).fetchone()
        assert coltype == ("vector(3072)",)
    # A search written with embedding_index_expr uses the index.
    vec = "[" + ",".join(["0.5"] * 3072) + "]"
    with empty_db.transaction(force_rollback=True):
        empty_db.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in empty_db.execute(
            f"EXPLAIN SELECT id FROM episodic_memory ORDER BY {embedding_index_expr(3072)}"
            f" <=> %s::halfvec(3072) LIMIT 5", (vec,)).fetchall())
    assert "idx_episodic_embedding" in plan
    verify = cli("--config", str(db_config), "schema", "verify")
    assert verify.exit_code == 0, verify.output


def test_dimension_out_of_range_is_a_usage_error(cli, db_config, empty_db) -> None:
    result = cli("--config", str(db_config), "schema", "init", "--embedding-dim", "5000")
    assert result.exit_code == 2
    assert "out of range" in result.stderr
    empty_db.autocommit = True
    assert _versions(empty_db) == []


def test_dimension_mismatch_refused(cli, aegis_db, aegis_dsn, write_config) -> None:
    aegis_db.autocommit = True
    assert database_embedding_dim(aegis_db) == 1536
    check_embedding_dim(aegis_db, 1536)
    with pytest.raises(ConfigError, match="mismatch"):
        check_embedding_dim(aegis_db, 768)
    path = write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                         "schema": {"embedding_dim": 768}})
    for args in (("schema", "migrate"), ("schema", "init"), ("schema", "migrate", "--dry-run")):
        result = cli("--config", str(path), *args)
        assert result.exit_code == 2, args
        assert "stores 1536-dimension embeddings" in result.stderr
        assert "schema.embedding_dim: 1536" in result.stderr
    ok = cli("--config", str(path), "schema", "init", "--embedding-dim", "1536")
    assert ok.exit_code == 0, ok.output
    bad = cli("--config", str(path), "schema", "init", "--embedding-dim", "384")
    assert bad.exit_code == 2 and "--embedding-dim" in bad.stderr


def test_database_embedding_dim_of_an_empty_database(empty_db) -> None:
    assert database_embedding_dim(empty_db) is None
    check_embedding_dim(empty_db, 768)  # nothing to compare with: fine


# ---------------------------------------------------------------------------------------------
# status, dry run, --to


def test_status_and_dry_run_change_nothing(cli, db_config, empty_db) -> None:
    empty_db.autocommit = True
    status = cli("--config", str(db_config), "schema", "status", "--format", "json")
    assert status.exit_code == 0, status.output
    data = json.loads(status.stdout)
    assert [m["state"] for m in data["migrations"]] == ["pending"] * len(SHIPPED)
    assert data["current_version"] is None and data["initialised"] is False

    dry = cli("--config", str(db_config), "schema", "migrate", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"would apply {len(SHIPPED)} migration(s)" in dry.stdout and "0002_memory.sql" in dry.stdout
    assert "nothing was changed" in dry.stdout
    assert _tables(empty_db) == set()

    table = cli("--config", str(db_config), "schema", "status")
    assert table.exit_code == 0 and "pending" in table.stdout


def test_migrate_to_version_then_the_rest(cli, db_config, empty_db) -> None:
    empty_db.autocommit = True
    assert cli("--config", str(db_config), "ext", "install", "vector").exit_code == 0
    result = cli("--config", str(db_config), "schema", "migrate", "--to", "2", "-f", "json")
    assert result.exit_code == 0, result.output
    assert _versions(empty_db) == [1, 2]
    assert "episodic_memory" in _tables(empty_db) and "api_keys" not in _tables(empty_db)

    status = json.loads(cli("--config", str(db_config), "schema", "status", "-f",
                            "json").stdout)
    assert [m["state"] for m in status["migrations"]] == ["applied"] * 2 + ["pending"] * (len(SHIPPED) - 2)
    assert status["embedding_dim"] == 1536

    back = cli("--config", str(db_config), "schema", "migrate", "--to", "1")
    assert back.exit_code == 2 and "never migrates down" in back.stderr
    unknown = cli("--config", str(db_config), "schema", "migrate", "--to", "42")
    assert unknown.exit_code == 2 and "no migration with version 42" in unknown.stderr

    rest = cli("--config", str(db_config), "schema", "migrate")
    assert rest.exit_code == 0, rest.output
    assert _versions(empty_db) == SHIPPED


def test_migrate_without_pgvector_says_what_to_do(cli, db_config, empty_db) -> None:
    empty_db.autocommit = True
    result = cli("--config", str(db_config), "schema", "migrate")
    assert result.exit_code == 1
    assert "pgvector extension (vector) is not installed" in result.stderr
    assert "aegisctl ext install vector" in result.stderr
    assert "episodic_memory" not in _tables(empty_db)


# ---------------------------------------------------------------------------------------------
# failures: broken migration, changed file


def test_broken_migration_rolls_back_completely(cli, db_config, empty_db, sql_dir) -> None:
    empty_db.autocommit = True
    (sql_dir / "0001_first.sql").write_text("CREATE TABLE first_table (id int);\n")
    (sql_dir / "0002_broken.sql").write_text(
        "-- creates a table, fills it, then fails\n"
        "CREATE TABLE half_done (id int);\n"
        "INSERT INTO half_done VALUES (1);\n"
        "\n"
        "INSERT INTO half_done\n"
        "    SELECT id FROM no_such_table;\n"
        "CREATE TABLE never_reached (id int);\n")
    (sql_dir / "0003_after.sql").write_text("CREATE TABLE after_table (id int);\n")

    result = cli("--config", str(db_config), "schema", "migrate")
    assert result.exit_code == 1
    error = result.stderr.strip().splitlines()[-1]
    assert "0002_broken.sql" in error
    assert "statement 3 at line 6" in error  # the failing line inside the statement
    assert 'relation "no_such_table" does not exist' in error and "[42P01]" in error
    assert "rolled back" in error
    assert "SELECT id FROM no_such_table" in result.stderr  # the full statement is shown
    assert _versions(empty_db) == [1]
    tables = _tables(empty_db)
    assert "first_table" in tables
    assert not {"half_done", "never_reached", "after_table"} & tables

    as_json = cli("--config", str(db_config), "schema", "migrate", "--format", "json")
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)["error"]
    assert report["file"].endswith("0002_broken.sql") and report["line"] == 6
    assert report["sqlstate"] == "42P01" and report["rolled_back"] is True
    assert report["statement"].startswith("INSERT INTO half_done")


def test_changed_released_file_is_refused(cli, db_config, empty_db, sql_dir) -> None:
    empty_db.autocommit = True
    first = sql_dir / "0001_first.sql"
    first.write_text("CREATE TABLE first_table (id int);\n")
    assert cli("--config", str(db_config), "schema", "migrate").exit_code == 0
    first.write_text("CREATE TABLE first_table (id bigint);\n")
    (sql_dir / "0002_second.sql").write_text("CREATE TABLE second_table (id int);\n")

    result = cli("--config", str(db_config), "schema", "migrate")
    assert result.exit_code == 1
    assert "0001_first.sql" in result.stderr and "changed after they were applied" in result.stderr
    assert "new NNNN_name.sql" in result.stderr
    assert "second_table" not in _tables(empty_db)

    status = json.loads(cli("--config", str(db_config), "schema", "status", "-f",
                            "json").stdout)
    assert [m["state"] for m in status["migrations"]] == ["changed", "pending"]
    verify = cli("--config", str(db_config), "schema", "verify", "-f", "json")
    assert verify.exit_code == 1
    problems = {(d["name"], d["problem"]) for d in json.loads(verify.stdout)["differences"]}
    assert ("0001_first.sql", "changed") in problems
    assert ("first_table.id", "different") in problems


def test_no_transaction_marker_runs_outside_a_transaction(cli, db_config, empty_db,
                                                          sql_dir) -> None:
    empty_db.autocommit = True
    (sql_dir / "0001_table.sql").write_text("CREATE TABLE things (id int, name text);\n")
    (sql_dir / "0002_index.sql").write_text(
        "-- aegisctl: no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_things_name ON things (name);\n")
    result = cli("--config", str(db_config), "schema", "migrate", "-f", "json")
    assert result.exit_code == 0, result.output
    steps = json.loads(result.stdout)["steps"]
    assert [s["transactional"] for s in steps] == [True, False]
    assert empty_db.execute("SELECT to_regclass('idx_things_name')").fetchone() != (None,)
    assert cli("--config", str(db_config), "ext", "install").exit_code == 0
    verify = cli("--config", str(db_config), "schema", "verify")
    assert verify.exit_code == 0, verify.output


def test_verify_lists_differences(cli, aegis_config, aegis_db) -> None:
    aegis_db.autocommit = True
    aegis_db.execute("DROP INDEX idx_episodic_tags")
    aegis_db.execute("ALTER TABLE semantic_memory ADD COLUMN extra int")
    aegis_db.execute("ALTER TABLE semantic_memory ALTER COLUMN category TYPE text")
    result = cli("--config", str(aegis_config), "schema", "verify", "-f", "json")
    assert result.exit_code == 1
    found = {(d["kind"], d["name"], d["problem"])
             for d in json.loads(result.stdout)["differences"]}
    assert found == {("index", "idx_episodic_tags", "missing"),
                     ("column", "semantic_memory.extra", "unexpected"),
                     ("column", "semantic_memory.category", "different")}
    table = cli("--config", str(aegis_config), "schema", "verify")
    assert table.exit_code == 1 and "3 difference(s)" in table.stderr


# ---------------------------------------------------------------------------------------------
# the lock


def test_lock_busy_exits_4_and_applies_nothing(cli, db_config, empty_db, sql_dir) -> None:
    empty_db.autocommit = True
    (sql_dir / "0001_first.sql").write_text("CREATE TABLE first_table (id int);\n")
    with psycopg.connect(empty_db.info.dsn, autocommit=True,
                         password=empty_db.info.password) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        result = cli("--config", str(db_config), "schema", "migrate", "--wait-lock", "0")
        assert result.exit_code == 4
        assert "holds the schema migration lock" in result.stderr
        assert "--wait-lock" in result.stderr
    assert _tables(empty_db) == set()


def test_second_run_waits_for_the_lock(db_config, empty_db, sql_dir, clean_env) -> None:
    empty_db.autocommit = True
    (sql_dir / "0001_first.sql").write_text("CREATE TABLE first_table (id int);\n")
    env = _env(AEGISCTL_SQL_DIR=str(sql_dir.parent))
    with psycopg.connect(empty_db.info.dsn, autocommit=True,
                         password=empty_db.info.password) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        proc = subprocess.Popen([_script(), "--config", str(db_config), "schema", "migrate",
                                 "--wait-lock", "120", "-f", "json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        # Release only once the second run is connected and polling for the lock.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            row = holder.execute("SELECT count(*) FROM pg_stat_activity"
                                 " WHERE application_name = 'aegisctl schema migrate'").fetchone()
            if row and row[0]:
                break
            time.sleep(0.05)
        assert _tables(empty_db) == set()
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert [s["version"] for s in json.loads(out)["steps"]] == [1]
    assert _versions(empty_db) == [1]


def test_concurrent_migrate_processes_never_apply_twice(db_config, empty_db, sql_dir,
                                                        clean_env) -> None:
    empty_db.autocommit = True
    (sql_dir / "0001_slow.sql").write_text(
        "SELECT pg_sleep(1);\nCREATE TABLE slow_table (id int);\n")
    (sql_dir / "0002_more.sql").write_text("CREATE TABLE more_table (id int);\n")
    env = _env(AEGISCTL_SQL_DIR=str(sql_dir.parent))
    outcomes: list[subprocess.CompletedProcess[str]] = []

    def run(wait: str) -> None:
        outcomes.append(subprocess.run(
            [_script(), "--config", str(db_config), "schema", "migrate", "--wait-lock", wait,
             "-f", "json"], capture_output=True, text=True, env=env, timeout=120))

    threads = [threading.Thread(target=run, args=(w,)) for w in ("60", "60", "0")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(p.returncode for p in outcomes)
    assert set(codes) <= {0, 4}, [p.stderr for p in outcomes]
    assert codes.count(0) >= 2  # the two that may wait both succeed
    applied = [s["version"] for p in outcomes if p.returncode == 0
               for s in json.loads(p.stdout)["steps"]]
    assert sorted(applied) == [1, 2]  # each migration applied by exactly one process
    for p in outcomes:
        if p.returncode == 4:
            assert "lock" in p.stderr
    rows = empty_db.execute("SELECT version, count(*) FROM aegis_schema_migrations"
                            " GROUP BY version ORDER BY version").fetchall()
    assert rows == [(1, 1), (2, 1)]


# ---------------------------------------------------------------------------------------------
# the core API and the statement splitter


def test_core_migrate_api(aegis_db) -> None:
    aegis_db.autocommit = True
    result = migrate(aegis_db, SchemaSettings())
    assert result.steps == [] and result.to_version == LATEST and not result.changed
    status = schema_status(aegis_db)
    assert status.up_to_date and status.current_version == LATEST and status.embedding_dim == 1536


def test_split_statements_respects_quotes_comments_and_dollar_bodies() -> None:
    text = (
        "-- a comment; with a semicolon\n"
        "CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $body$\n"
        "BEGIN RETURN 'a;b'; END;\n"
        "$body$;\n"
        "/* block ; /* nested ; */ */ SELECT 'it''s; fine', E'x\\';y', \"odd;name\" FROM t;\n"
        "SELECT $$;$$;  SELECT 1\n"
    )
    statements = split_statements(text)
    assert [s.line for s in statements] == [2, 5, 6, 6]
    assert statements[0].text.endswith("$body$")
    assert statements[1].text.startswith("SELECT 'it''s") and "odd;name" in statements[1].text
    assert [s.text for s in statements[2:]] == ["SELECT $$;$$", "SELECT 1"]


def test_concurrent_init_on_a_fresh_database(db_config, empty_db, clean_env) -> None:
    """Two `schema init` at once: extensions and migrations are installed once, both succeed."""
    empty_db.autocommit = True
    outcomes: list[subprocess.CompletedProcess[str]] = []

    def run() -> None:
        outcomes.append(subprocess.run(
            [_script(), "--config", str(db_config), "schema", "init", "--wait-lock", "120",
             "-f", "json"], capture_output=True, text=True, env=_env(), timeout=180))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [p.returncode for p in outcomes] == [0, 0], [p.stderr for p in outcomes]
    applied = sorted(s["version"] for p in outcomes
                     for s in json.loads(p.stdout)["migration"]["steps"])
    assert applied == SHIPPED
    created = [a["name"] for p in outcomes for a in json.loads(p.stdout)["extensions"]["actions"]
               if a["action"] == "created"]
    assert created.count("vector") == 1


def test_init_lock_busy_exits_4_before_touching_anything(cli, db_config, empty_db) -> None:
    empty_db.autocommit = True
    with psycopg.connect(empty_db.info.dsn, autocommit=True,
                         password=empty_db.info.password) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        result = cli("--config", str(db_config), "schema", "init", "--wait-lock", "0")
    assert result.exit_code == 4
    assert empty_db.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'"
                            ).fetchone() == (0,)
