"""aegisctl diag: each topic against a real database where the condition was provoked."""
# ruff: noqa: F811  (fixtures imported from diag_fixtures are parameters here)

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from conftest import dsn_of
from diag_fixtures import Background, background, wait_for  # noqa: F401

from aegisctl.diagnostics.catalog import TOPICS


def diag(cli: Any, config: Any, *args: str) -> dict[str, Any]:
    result = cli("--config", str(config), "diag", *args, "-f", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def exec_(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_every_topic_runs_and_has_one_json_shape(cli, aegis_config) -> None:
    for topic in TOPICS:
        report = diag(cli, aegis_config, topic)
        assert report["topic"] == topic
        assert report["target"] == "primary" and report["role"] == "primary"
        assert set(report) == {"topic", "target", "database", "role", "sections", "errors",
                               "notes", "elapsed_ms"}
        assert report["errors"] == {}, (topic, report["errors"])
        table = cli("--config", str(aegis_config), "diag", topic)
        assert table.exit_code == 0, table.output
        assert f"diag {topic}" in table.stdout


def test_activity_shows_long_running_idle_in_transaction_and_waiting(
        cli, db_config, db_dsn, background: Background) -> None:
    exec_(db_dsn, "CREATE TABLE t (id int)")
    sleeper = background.run(db_dsn, "SELECT pg_sleep(30)")
    idle = background.connect(db_dsn, autocommit=False)
    idle.execute("SELECT 1")  # leaves the session idle in a transaction
    locker = background.connect(db_dsn, autocommit=False)
    locker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    waiter = background.run(db_dsn, "SELECT * FROM t")
    with psycopg.connect(db_dsn, autocommit=True) as watch:
        wait_for(lambda: watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ).fetchone() == (1,), what="a session waiting on the lock")
        wait_for(lambda: watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' "
            "AND now() - query_start > interval '1.2 s'").fetchone() == (1,), what="1 s of sleep")
    report = diag(cli, db_config, "activity", "--min-duration", "1s")
    sections = report["sections"]
    assert sleeper.info.backend_pid in {r["pid"] for r in sections["long_running"]}
    assert idle.info.backend_pid in {r["pid"] for r in sections["idle_in_transaction"]}
    [waiting] = sections["waiting"]
    assert waiting["pid"] == waiter.info.backend_pid
    assert waiting["blocked_by"] == [locker.info.backend_pid]
    assert sections["summary"]["waiting_on_locks"] == 1
    assert sections["summary"]["max_connections"] > 0
    locker.rollback()


def test_locks_shows_the_blocking_chain(cli, db_config, db_dsn, background: Background) -> None:
    exec_(db_dsn, "CREATE TABLE jobs (id int)", "INSERT INTO jobs VALUES (1)")
    holder = background.connect(db_dsn, autocommit=False)
    holder.execute("UPDATE jobs SET id = 2")
    first = background.run(db_dsn, "UPDATE jobs SET id = 3")
    with psycopg.connect(db_dsn, autocommit=True) as watch:
        wait_for(lambda: watch.execute("SELECT count(*) FROM pg_stat_activity "
                                       "WHERE wait_event_type = 'Lock'").fetchone() == (1,))
        second = background.run(db_dsn, "BEGIN", "LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        wait_for(lambda: watch.execute("SELECT count(*) FROM pg_stat_activity "
                                       "WHERE wait_event_type = 'Lock'").fetchone() == (2,))
    rows = diag(cli, db_config, "locks")["sections"]["blocking"]
    pairs = {(r["blocked_pid"], r["blocking_pid"]) for r in rows}
    holder_pid = holder.info.backend_pid
    assert (first.info.backend_pid, holder_pid) in pairs
    assert (second.info.backend_pid, holder_pid) in pairs
    for row in rows:
        if row["blocking_pid"] == holder_pid:
            assert row["root"] is True
            assert row["blocking_query"] == "UPDATE jobs SET id = 2"
            assert row["blocking_state"] == "idle in transaction"
    table = cli("--config", str(db_config), "diag", "locks")
    assert str(holder_pid) in table.stdout
    holder.rollback()


def test_indexes_unused_duplicate_and_invalid(cli, db_config, db_dsn) -> None:
    exec_(db_dsn,
          "CREATE TABLE orders (id int PRIMARY KEY, customer int, placed date, code int)",
          "INSERT INTO orders SELECT g, g % 100, date '2026-01-01' + g % 300, g % 7 "
          "FROM generate_series(1, 5000) g",
          "CREATE INDEX orders_customer ON orders (customer)",
          "CREATE INDEX orders_customer_placed ON orders (customer, placed)",
          "CREATE INDEX orders_placed ON orders (placed)",
          "CREATE INDEX orders_placed_again ON orders (placed)",
          "ANALYZE orders")
    with pytest.raises(psycopg.errors.UniqueViolation):
        exec_(db_dsn, "CREATE UNIQUE INDEX CONCURRENTLY orders_code_unique ON orders (code)")
    # Use one index so it is not "unused" (a new session flushes its statistics on exit).
    exec_(db_dsn, "SET enable_seqscan = off",
          "SELECT count(*) FROM orders WHERE customer = 5 AND placed = '2026-02-01'")
    report = diag(cli, db_config, "indexes")
    sections = report["sections"]
    duplicates = {(r["index"], r["covered_by"]) for r in sections["duplicate"]}
    assert ("orders_customer", "orders_customer_placed") in duplicates
    assert ("orders_placed_again", "orders_placed") in duplicates
    assert ("orders_placed", "orders_placed_again") not in duplicates
    assert not any(r["index"] == "orders_pkey" for r in sections["duplicate"])
    unused = {r["index"] for r in sections["unused"]}
    assert {"orders_customer", "orders_placed", "orders_placed_again"} <= unused
    assert "orders_pkey" not in unused  # a constraint's index is never "unused"
    [invalid] = sections["invalid"]
    assert invalid["index"] == "orders_code_unique" and invalid["valid"] is False
    assert "orders_code_unique" not in unused  # listed once, as invalid
    assert all(isinstance(r["size_bytes"], int) for r in sections["usage"])


def test_slow_without_pg_stat_statements_says_how_to_enable_it(cli, db_config) -> None:
    report = diag(cli, db_config, "slow")
    assert report["sections"] == {}
    [note] = report["notes"]
    assert "pg_stat_statements is not installed" in note
    assert "shared_preload_libraries" in note and "CREATE EXTENSION pg_stat_statements" in note
    table = cli("--config", str(db_config), "diag", "slow")
    assert table.exit_code == 0 and "CREATE EXTENSION pg_stat_statements" in table.stdout


def test_slow_lists_statements_by_mean_and_total(cli, aegis_config, aegis_dsn) -> None:
    exec_(aegis_dsn, "SELECT pg_sleep(0.3)")
    report = diag(cli, aegis_config, "slow", "--limit", "50")
    by_mean = report["sections"]["by_mean"]
    assert any("pg_sleep" in r["query"] and r["mean_ms"] >= 290 for r in by_mean)
    assert by_mean == sorted(by_mean, key=lambda r: -r["mean_ms"])
    by_total = report["sections"]["by_total"]
    assert by_total and {"calls", "total_ms", "total_pct", "query"} <= set(by_total[0])


def test_unprivileged_user_is_told_in_one_line(cli, write_config, empty_db, background) -> None:
    exec_(dsn_of(empty_db), "DROP ROLE IF EXISTS diag_nobody", "CREATE ROLE diag_nobody LOGIN")
    try:
        background.run(dsn_of(empty_db), "SELECT pg_sleep(20)")
        config = write_config({"targets": {"primary": {"dsn": dsn_of(empty_db, user="diag_nobody")}}})
        with psycopg.connect(dsn_of(empty_db), autocommit=True) as watch:
            wait_for(lambda: watch.execute("SELECT count(*) FROM pg_stat_activity WHERE query = "
                                           "'SELECT pg_sleep(20)'").fetchone() == (1,))
        report = diag(cli, config, "activity", "--min-duration", "0s")
        assert any("pg_read_all_stats" in n for n in report["notes"])
        assert report["errors"] == {}
        replication = diag(cli, config, "replication")
        assert replication["role"] == "primary"
    finally:
        background.close()
        exec_(dsn_of(empty_db), "DROP ROLE IF EXISTS diag_nobody")


def test_vectors_every_schema_expression_index_and_recall(cli, db_config, db_dsn) -> None:
    exec_(db_dsn,
          "CREATE EXTENSION vector",
          "CREATE SCHEMA agent2",
          'CREATE TABLE agent2."Notes[red]" (id serial PRIMARY KEY, emb vector(4), '
          "sparse sparsevec(5))",
          'INSERT INTO agent2."Notes[red]" (emb) SELECT ARRAY[random(), random(), random(), '
          "random()]::vector FROM generate_series(1, 300)",
          'INSERT INTO agent2."Notes[red]" (emb) VALUES (\'[0,0,0,0]\'), (\'[1,2,3,4]\'), '
          "('[1,2,3,4]'), (NULL)",
          'CREATE INDEX notes_half ON agent2."Notes[red]" USING hnsw '
          "((emb::halfvec(4)) halfvec_l2_ops) WITH (m = 8, ef_construction = 32)",
          "CREATE TABLE public.plain (v halfvec(3))")
    report = diag(cli, db_config, "vectors", "--recall-sample", "5")
    columns = {(c["schema"], c["table"], c["column"]): c for c in report["sections"]["columns"]}
    emb = columns[("agent2", "Notes[red]", "emb")]
    assert (emb["type"], emb["dimensions"], emb["rows"]) == ("vector", 4, 304)
    assert (emb["missing"], emb["zero"], emb["duplicates"]) == (1, 1, 1)
    assert emb["indexes"] == ["notes_half"]
    assert columns[("agent2", "Notes[red]", "sparse")]["missing"] == 304
    assert columns[("public", "plain", "v")]["type"] == "halfvec"
    [index] = report["sections"]["indexes"]
    assert index["column"] == "emb" and index["expression"] is True
    assert (index["method"], index["opclass"], index["m"], index["ef_construction"]) == \
        ("hnsw", "halfvec_l2_ops", "8", "32")
    assert index["valid"] is True and index["exceeds_maintenance_work_mem"] is False
    assert 0.5 <= index["recall"] <= 1.0 and index["recall_queries"] == 5
    # Names are data: shown literally in the table, never as markup.
    table = cli("--config", str(db_config), "diag", "vectors")
    assert "Notes[red]" in table.stdout


def test_vectors_without_pgvector_says_so(cli, db_config) -> None:
    report = diag(cli, db_config, "vectors")
    assert any("vector extension is not installed" in n for n in report["notes"])


def test_explain_search_reports_whether_the_index_is_used(cli, db_config, db_dsn) -> None:
    exec_(db_dsn, "CREATE EXTENSION vector",
          "CREATE TABLE mem (id serial PRIMARY KEY, embedding vector(8))",
          "INSERT INTO mem (embedding) SELECT array_fill(random()::real, ARRAY[8])::vector "
          "FROM generate_series(1, 2000)",
          "ANALYZE mem")
    before = diag(cli, db_config, "explain-search", "--table", "mem")
    assert before["sections"]["summary"]["used_ann_index"] is False
    assert any("NOT used" in n for n in before["notes"])
    exec_(db_dsn, "CREATE INDEX mem_hnsw ON mem USING hnsw (embedding vector_cosine_ops)")
    after = diag(cli, db_config, "explain-search", "--table", "public.mem")
    summary = after["sections"]["summary"]
    assert summary["index_used"] == "mem_hnsw" and summary["used_ann_index"] is True
    assert summary["operator"] == "<=>" and summary["execution_ms"] > 0
    plan = "\n".join(r["plan"] for r in after["sections"]["plan"])
    assert "Index Scan using mem_hnsw" in plan, plan
    missing = cli("--config", str(db_config), "diag", "explain-search", "--table", "nope")
    assert missing.exit_code == 2 and "no vector column nope" in missing.stderr


def test_size_against_allocation_and_vacuum(cli, write_config, db_dsn) -> None:
    exec_(db_dsn, "CREATE TABLE big (id int, body text)",
          "INSERT INTO big SELECT g, repeat('x', 3000) FROM generate_series(1, 300) g",
          "DELETE FROM big WHERE id <= 100")
    config = write_config({"targets": {"primary": {"dsn": db_dsn}},
                           "checks": {"database_size_pct": {"allocated": "100MB"}}})
    size = diag(cli, config, "size")["sections"]
    assert size["summary"]["allocated_bytes"] == 100_000_000
    assert 0 < size["summary"]["allocated_pct"] < 100
    [big] = [t for t in size["tables"] if t["table"] == "big"]
    assert big["total_bytes"] == big["heap_bytes"] + big["index_bytes"] + big["toast_bytes"]
    assert big["toast_bytes"] >= 0
    vacuum = diag(cli, config, "vacuum")["sections"]
    wait = vacuum["tables"][0]
    assert wait["table"] == "big" and wait["dead_tuples"] == 100
    assert any(r["xid_age"] >= 0 for r in vacuum["wraparound"])


def test_settings_gives_advice(cli, aegis_config) -> None:
    rows = {r["name"]: r for r in diag(cli, aegis_config, "settings")["sections"]["settings"]}
    assert {"shared_buffers", "work_mem", "maintenance_work_mem",
            "max_parallel_maintenance_workers", "hnsw.ef_search", "autovacuum"} <= set(rows)
    assert rows["hnsw.ef_search"]["setting"] == "40"
    assert "search.ef_search" in rows["hnsw.ef_search"]["note"]
    assert rows["shared_buffers"]["value"].endswith("B")


def test_unknown_topic_is_a_usage_error(cli, db_config) -> None:
    result = cli("--config", str(db_config), "diag", "nonsense")
    assert result.exit_code == 2


def test_vectors_samples_big_tables(cli, db_config, db_dsn, monkeypatch) -> None:
    from aegisctl.diagnostics import vectors

    monkeypatch.setattr(vectors, "EXACT_BYTES", 0)
    monkeypatch.setattr(vectors, "SAMPLE_ROWS", 500)
    exec_(db_dsn, "CREATE EXTENSION vector", "CREATE TABLE big (e vector(2))",
          "INSERT INTO big SELECT CASE WHEN g % 4 = 0 THEN NULL ELSE ARRAY[g, 1]::vector END "
          "FROM generate_series(1, 20000) g", "ANALYZE big")
    report = diag(cli, db_config, "vectors")
    [column] = report["sections"]["columns"]
    assert column["sampled"] is True and column["rows"] == 20000
    assert 0 < column["sample_rows"] < 20000
    assert 3000 < column["missing"] < 7000  # a quarter, estimated
    assert any("sampled" in n for n in report["notes"])


def test_ids_and_numbers_are_not_clipped_on_a_narrow_terminal(monkeypatch) -> None:
    import io

    from rich.console import Console

    from aegisctl import output

    buffer = io.StringIO()
    monkeypatch.setattr(output, "_console", lambda stderr=False: Console(
        file=buffer, width=60, no_color=True, highlight=False, markup=False, soft_wrap=False))
    long_id = "aegis_schema_migrations_pkey_with_a_long_name"
    output.render(output.Message("x"), "table")
    output._print_block(output.Table(
        [output.Column("index", "id"), output.Column("size", "number"),
         output.Column("definition", "text")],
        [(long_id, "483.3 kB", "CREATE INDEX " + "x" * 80)]))
    text = buffer.getvalue()
    assert long_id in text and "483.3 kB" in text


def test_a_locked_table_fails_one_section_not_the_topic(cli, write_config, db_dsn,
                                                        background: Background) -> None:
    exec_(db_dsn, "CREATE TABLE busy (id int)")
    holder = background.connect(db_dsn, autocommit=False)
    holder.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
    config = write_config({"targets": {"primary": {"dsn": db_dsn}},
                           "connection": {"timeouts": {"query": {"lock_timeout": "0.3s"}}}})
    report = diag(cli, config, "size")
    assert report["sections"]["summary"]["size_bytes"] > 0
    assert "diag locks" in report["errors"]["tables"]
    holder.rollback()
