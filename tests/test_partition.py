"""schema partition: a table becomes range-partitioned by month online, keeping its rows,
indexes (HNSW included), grants, defaults, sequences and comments; what cannot work is refused
with the fix; a writer loses nothing; a kill -9 at any point is finished by a re-run; the
result survives backup and restore; schema init makes a configured table partitioned."""

# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backup_fixtures import backup_config  # noqa: F401  (fixture)
from conftest import dsn_of
from fault_fixtures import start_paused
from partition_fixtures import (
    fill_usage,
    partition_bounds,
    partition_config,
    relkind,
    widen_pk,
)

from aegisctl.schema.partition import convert_table
from aegisctl.schema.partition_tx import LockPolicy

TABLE = "public.api_usage_events"


def _convert(cli: Any, cfg: Path, *args: str) -> Any:
    return cli("--config", str(cfg), "schema", "partition", "api_usage_events", "--by", "month",
               *args)


def test_conversion_keeps_rows_indexes_grants_sequence_and_comment(cli, aegis_db,
                                                                   tmp_path) -> None:
    rows = fill_usage(aegis_db)
    widen_pk(aegis_db)
    aegis_db.execute("CREATE ROLE usage_reader_t1")
    aegis_db.execute("GRANT SELECT, INSERT ON api_usage_events TO usage_reader_t1")
    aegis_db.execute("GRANT UPDATE (tokens_used) ON api_usage_events TO usage_reader_t1")
    aegis_db.execute("COMMENT ON TABLE api_usage_events IS 'billing history'")
    cfg = partition_config(tmp_path / "aegisctl.yaml", dsn_of(aegis_db))
    try:
        dry = _convert(cli, cfg, "--dry-run", "--format", "json")
        assert dry.exit_code == 0, dry.output
        plan = json.loads(dry.stdout)
        assert plan["status"] == "planned" and relkind(aegis_db, TABLE) == "r"
        assert [s["step"] for s in plan["steps"]] == ["bound check", "validate", "build parent",
                                                      "swap"]
        assert all(s["locks"] and s["holds"] for s in plan["steps"])
        assert any("ATTACH PARTITION" in t for t in plan["steps"][3]["statements"])

        no_yes = _convert(cli, cfg)
        assert no_yes.exit_code == 2 and relkind(aegis_db, TABLE) == "r"

        done = _convert(cli, cfg, "--yes", "--premake", "3", "--format", "json")
        assert done.exit_code == 0, done.output
        result = json.loads(done.stdout)
        assert result["status"] == "converted"
        assert all(s["status"] == "done" for s in result["steps"])

        assert relkind(aegis_db, TABLE) == "p"
        assert aegis_db.execute("SELECT count(*) FROM api_usage_events").fetchone() == (rows,)
        bounds = partition_bounds(aegis_db, TABLE)
        assert bounds["api_usage_events_legacy"].startswith("FOR VALUES FROM (MINVALUE) TO (")
        assert bounds["api_usage_events_default"] == "DEFAULT"
        assert len([b for b in bounds if b.startswith("api_usage_events_p")]) >= 3
        parent_indexes = {r[0] for r in aegis_db.execute(
            "SELECT indexrelid::regclass::text FROM pg_index"
            " WHERE indrelid = 'api_usage_events'::regclass").fetchall()}
        assert parent_indexes == {"api_usage_events_pkey", "idx_api_usage_api_key_id",
                                  "idx_api_usage_customer_id", "idx_api_usage_created_at"}
        fks = aegis_db.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE"
                               " conrelid = 'api_usage_events'::regclass AND contype = 'f'"
                               ).fetchall()
        assert fks == [("FOREIGN KEY (api_key_id) REFERENCES api_keys(id) ON DELETE SET NULL",)]
        assert aegis_db.execute("SELECT has_table_privilege('usage_reader_t1',"
                                " 'api_usage_events', 'INSERT')").fetchone() == (True,)
        assert aegis_db.execute("SELECT has_column_privilege('usage_reader_t1',"
                                " 'api_usage_events', 'tokens_used', 'UPDATE')").fetchone() == \
            (True,)
        assert aegis_db.execute("SELECT obj_description('api_usage_events'::regclass,"
                                " 'pg_class')").fetchone() == ("billing history",)
        owner = aegis_db.execute("SELECT pg_get_serial_sequence('api_usage_events', 'id')"
                                 ).fetchone()
        assert owner == ("public.api_usage_events_id_seq",)
        # The default still draws from the same sequence: no id is handed out twice.
        before = aegis_db.execute("SELECT max(id) FROM api_usage_events").fetchone()[0]
        new_id = aegis_db.execute(
            "INSERT INTO api_usage_events (customer_id, endpoint, method, status_code)"
            " VALUES ('c', '/', 'GET', 200) RETURNING id").fetchone()[0]
        assert new_id > before
        assert not aegis_db.execute("SELECT conname FROM pg_constraint"
                                    " WHERE conname LIKE 'aegisctl_partition_bound%%'").fetchall()

        verify = cli("--config", str(cfg), "schema", "verify")
        assert verify.exit_code == 0, verify.output

        again = _convert(cli, cfg, "--yes", "--format", "json")
        assert again.exit_code == 0 and json.loads(again.stdout)["status"] == \
            "already partitioned"
    finally:
        aegis_db.execute("DROP OWNED BY usage_reader_t1")
        aegis_db.execute("DROP ROLE usage_reader_t1")


def test_refusals_name_the_fix(cli, aegis_db, tmp_path) -> None:
    fill_usage(aegis_db, months=1)
    cfg = partition_config(tmp_path / "aegisctl.yaml", dsn_of(aegis_db))
    pk = _convert(cli, cfg, "--yes")
    assert pk.exit_code == 1
    assert "primary key api_usage_events_pkey (id) does not include created_at" in pk.output
    assert "CREATE UNIQUE INDEX CONCURRENTLY" in pk.output and "PRIMARY KEY USING INDEX" in \
        pk.output
    assert relkind(aegis_db, TABLE) == "r"

    referenced = cli("--config", str(cfg), "schema", "partition", "api_keys", "--yes")
    assert referenced.exit_code == 1
    assert "foreign keys point at it (api_usage_events_api_key_id_fkey" in referenced.output

    aegis_db.execute("CREATE TABLE loose (id bigserial, at timestamptz)")
    aegis_db.execute("INSERT INTO loose (at) VALUES (now()), (NULL)")
    nulls = cli("--config", str(cfg), "schema", "partition", "loose", "--column", "at", "--yes")
    assert nulls.exit_code == 1 and "at is NULL in some rows" in nulls.output

    wrong = cli("--config", str(cfg), "schema", "partition", "loose", "--column", "id", "--yes")
    assert wrong.exit_code == 2 and "need a timestamptz, timestamp or date" in wrong.output
    assert not aegis_db.execute("SELECT conname FROM pg_constraint"
                                " WHERE conname LIKE 'aegisctl%%'").fetchall()


def test_hnsw_index_carries_over_and_answers(aegis_db) -> None:
    aegis_db.autocommit = True
    aegis_db.execute("CREATE TABLE notes (id bigserial, at timestamptz NOT NULL, e vector(3),"
                     " PRIMARY KEY (id, at))")
    aegis_db.execute("CREATE INDEX notes_e_hnsw ON notes USING hnsw (e vector_cosine_ops)"
                     " WITH (m = 8, ef_construction = 32)")
    aegis_db.execute("INSERT INTO notes (at, e) SELECT now() - i * interval '3 days',"
                     " ARRAY[1, i, 2]::real[]::vector FROM generate_series(1, 200) i")
    result = convert_table(aegis_db, "notes", "at", premake=2)
    assert result.status == "converted"
    definition = aegis_db.execute("SELECT pg_get_indexdef('notes_e_hnsw'::regclass)").fetchone()
    assert "USING hnsw (e vector_cosine_ops) WITH (m='8', ef_construction='32')" in \
        definition[0]
    per_partition = aegis_db.execute(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_am am ON am.oid = c.relam WHERE i.inhparent = 'notes_e_hnsw'::regclass"
        " AND am.amname = 'hnsw'").fetchone()
    assert per_partition[0] == len(partition_bounds(aegis_db, "notes"))
    aegis_db.execute("INSERT INTO notes (at, e) VALUES (now() + interval '40 days', '[1,1,1]')")
    with aegis_db.transaction():
        aegis_db.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in aegis_db.execute(
            "EXPLAIN SELECT id FROM notes ORDER BY e <=> '[1,1,1]' LIMIT 3").fetchall())
        assert "notes_e_hnsw" in plan or "_e_idx" in plan
        assert len(aegis_db.execute(
            "SELECT id FROM notes ORDER BY e <=> '[1,1,1]' LIMIT 3").fetchall()) == 3


def test_a_writer_loses_nothing_during_the_conversion(aegis_db) -> None:
    fill_usage(aegis_db, months=14, per_day=24)
    widen_pk(aegis_db)
    start = aegis_db.execute("SELECT count(*) FROM api_usage_events").fetchone()[0]
    stop = threading.Event()
    written: list[int] = []
    errors: list[str] = []

    def writer() -> None:
        with psycopg.connect(dsn_of(aegis_db), autocommit=True) as conn:
            while not stop.is_set():
                try:
                    row = conn.execute(
                        "INSERT INTO api_usage_events (customer_id, endpoint, method,"
                        " status_code) VALUES ('w', '/w', 'POST', 201) RETURNING id").fetchone()
                    written.append(row[0])
                except psycopg.Error as exc:
                    errors.append(str(exc))
                time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 20:
            time.sleep(0.01)
        result = convert_table(aegis_db, TABLE, "created_at", premake=2,
                               policy=LockPolicy(lock_timeout=0.05))
        during = len(written)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert result.status == "converted" and errors == []
    assert len(written) > during  # the writer kept writing into the partitioned table
    total, writer_rows, distinct = aegis_db.execute(
        "SELECT count(*), count(*) FILTER (WHERE customer_id = 'w'), count(DISTINCT id)"
        "  FROM api_usage_events").fetchone()
    assert writer_rows == len(written) and total == start + len(written) == distinct


@pytest.mark.parametrize("point", ["validated", "built", "swap"])
def test_kill_9_mid_conversion_then_a_rerun_finishes(cli, aegis_db, tmp_path, point) -> None:
    rows = fill_usage(aegis_db, months=3)
    widen_pk(aegis_db)
    cfg = partition_config(tmp_path / "aegisctl.yaml", dsn_of(aegis_db))
    paused = start_paused(f"partition:{point}", "--config", str(cfg), "schema", "partition",
                          "api_usage_events", "--by", "month", "--yes", tmp_path=tmp_path)
    paused.kill(signal.SIGKILL)
    assert paused.proc.returncode == -signal.SIGKILL
    # Killed: the transaction in flight rolled back; the table is whole and takes writes.
    assert relkind(aegis_db, TABLE) == "r"
    aegis_db.execute("SET lock_timeout = '30s'")  # the server notices the dead client
    aegis_db.execute("INSERT INTO api_usage_events (customer_id, endpoint, method, status_code)"
                     " VALUES ('k', '/k', 'GET', 200)")
    leftover = relkind(aegis_db, "public.api_usage_events_aegisctl_new")
    assert leftover == (None if point == "validated" else "p")

    rerun = cli("--config", str(cfg), "schema", "partition", "api_usage_events", "--by",
                "month", "--yes", "--format", "json")
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["status"] == "converted"
    assert relkind(aegis_db, TABLE) == "p"
    assert relkind(aegis_db, "public.api_usage_events_aegisctl_new") is None
    assert aegis_db.execute("SELECT count(*) FROM api_usage_events").fetchone() == (rows + 1,)
    assert not aegis_db.execute("SELECT conname FROM pg_constraint"
                                " WHERE conname LIKE 'aegisctl_partition_bound%%'").fetchall()


def test_a_converted_table_survives_backup_and_restore(cli, aegis_db, backup_config) -> None:
    rows = fill_usage(aegis_db, months=4)
    widen_pk(aegis_db)
    convert_table(aegis_db, TABLE, "created_at", premake=2)
    cfg = backup_config()
    made = cli("--config", str(cfg), "backup", "create", "--format", "json")
    assert made.exit_code == 0, made.output
    backup_id = json.loads(made.stdout)["id"]
    new_db = f"restored_part_{os.getpid()}"
    restore = cli("--config", str(cfg), "backup", "restore", backup_id, "--target-db", new_db)
    assert restore.exit_code == 0, restore.output
    try:
        with psycopg.connect(dsn_of(aegis_db, new_db), autocommit=True) as restored:
            assert relkind(restored, TABLE) == "p"
            assert partition_bounds(restored, TABLE) == partition_bounds(aegis_db, TABLE)
            assert restored.execute("SELECT count(*) FROM api_usage_events").fetchone() == \
                (rows,)
            restored.execute("INSERT INTO api_usage_events (customer_id, endpoint, method,"
                             " status_code) VALUES ('r', '/r', 'GET', 200)")
    finally:
        aegis_db.execute(f'DROP DATABASE IF EXISTS "{new_db}" WITH (FORCE)')


def test_schema_init_creates_a_configured_table_partitioned(cli, empty_db, tmp_path) -> None:
    cfg = partition_config(tmp_path / "aegisctl.yaml", dsn_of(empty_db), partitions={
        "api_usage_events": {"column": "created_at", "premake": 2}})
    first = cli("--config", str(cfg), "schema", "init")
    assert first.exit_code == 0, first.output
    assert "public.api_usage_events: partitioned by month on created_at" in first.output
    assert relkind(empty_db, TABLE) == "p"
    pk = empty_db.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                          " WHERE conname = 'api_usage_events_pkey'").fetchone()
    assert pk == ("PRIMARY KEY (id, created_at)",)
    again = cli("--config", str(cfg), "schema", "init")
    assert again.exit_code == 0, again.output
    verify = cli("--config", str(cfg), "schema", "verify")
    assert verify.exit_code == 0, verify.output


def test_a_busy_table_is_waited_for_briefly_and_retried(aegis_db) -> None:
    from aegisctl.errors import OperationFailed

    rows = fill_usage(aegis_db, months=2)
    widen_pk(aegis_db)
    with psycopg.connect(dsn_of(aegis_db)) as blocker:
        # An open transaction that wrote to the table: ACCESS EXCLUSIVE must wait for it.
        blocker.execute("INSERT INTO api_usage_events (customer_id, endpoint, method,"
                        " status_code) VALUES ('b', '/b', 'GET', 200)")
        with pytest.raises(OperationFailed, match="gave up after 3 attempts, the lock stayed "
                                                  "busy"):
            convert_table(aegis_db, TABLE, "created_at",
                          policy=LockPolicy(lock_timeout=0.05, attempts=3, max_delay=0.1))
        assert relkind(aegis_db, TABLE) == "r"
        assert not aegis_db.execute("SELECT 1 FROM pg_constraint WHERE conname LIKE"
                                    " 'aegisctl%%'").fetchall()
        release = threading.Timer(0.5, blocker.commit)
        release.start()
        try:
            result = convert_table(aegis_db, TABLE, "created_at",
                                   policy=LockPolicy(lock_timeout=0.05, attempts=100,
                                                     max_delay=0.1))
        finally:
            release.join()
    assert result.status == "converted" and result.steps[0].attempts > 1
    assert aegis_db.execute("SELECT count(*) FROM api_usage_events").fetchone() == (rows + 1,)
