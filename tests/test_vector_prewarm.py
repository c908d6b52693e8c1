"""Warm indexes (issue 25, section 3): `diag vectors` shows how much of each vector index is in
shared buffers and what that means, `maint prewarm` loads it (pg_buffercache's count rises),
and a restore test prewarms the live database when maintenance.prewarm.after says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from memory_fixtures import DIM

INDEX = "idx_episodic_embedding"
FILL = f"""
INSERT INTO episodic_memory (event_type, summary, tags, embedding)
SELECT 'observation', 'memory ' || g, ARRAY['common'],
       (SELECT array_agg(random() - 0.5)::vector FROM generate_series(1, {DIM}) WHERE g > 0)
FROM generate_series(1, 3000) AS g;
"""


def evict(dsn: str) -> None:
    """Empty shared buffers of the index and its table, as a restart would (PostgreSQL 18's
    pg_buffercache_evict_relation; the server itself is shared by the whole test run)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.info.server_version < 180000:
            pytest.skip("emptying one relation's buffers needs PostgreSQL 18's pg_buffercache")
        conn.execute("CHECKPOINT")
        for name in (INDEX, "episodic_memory"):
            conn.execute("SELECT pg_buffercache_evict_relation(%s::regclass)", (name,))


def cache_row(cli: Any, config: Path) -> tuple[dict[str, Any], list[str]]:
    out = cli("--config", str(config), "diag", "vectors", "-f", "json")
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    rows = {r["index"]: r for r in report["sections"]["cache"]}
    return rows[INDEX], report["notes"]


def test_prewarm_loads_the_vector_index_into_shared_buffers(
        cli: Any, write_config: Any, memory_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(memory_dsn, autocommit=True) as conn:
        conn.execute(FILL)
    config = write_config({"targets": {"primary": {"dsn": memory_dsn}},
                           "connection": {"retry": {"attempts": 1}},
                           "backup": {"directory": str(tmp_path / "backups")},
                           "maintenance": {"prewarm": {"after": ["restore_test"]}}})
    base = ("--config", str(config))
    # Without the extensions: one-line hints, no traceback.
    row, notes = cache_row(cli, config)
    assert row["buffered_bytes"] is None
    assert any("aegisctl ext install pg_buffercache" in n for n in notes)
    missing = cli(*base, "maint", "prewarm")
    assert missing.exit_code == 1 and "aegisctl ext install pg_prewarm" in missing.stderr
    assert cli(*base, "ext", "install", "pg_prewarm", "pg_buffercache").exit_code == 0

    evict(memory_dsn)
    row, notes = cache_row(cli, config)
    assert row["size_bytes"] > 0 and row["buffered_share"] < 0.5, row
    assert "only" in row["consequence"] and "aegisctl maint prewarm" in row["consequence"]
    assert any(n.startswith("shared_buffers ") for n in notes)

    planned = json.loads(cli(*base, "maint", "prewarm", "--dry-run", "-f", "json").stdout)
    assert planned["dry_run"] and all(r["status"] == "planned" for r in planned["relations"])
    assert cache_row(cli, config)[0]["buffered_share"] < 0.5  # a dry run loads nothing

    done = cli(*base, "maint", "prewarm", "-f", "json")
    assert done.exit_code == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    kinds = {r["kind"]: r for r in result["relations"]
             if r["relation"] in (INDEX, "episodic_memory") or r["kind"] == "toast"}
    assert kinds["index"]["status"] == "done" and kinds["index"]["mode"] == "buffer"
    assert kinds["index"]["blocks"] > 0 and "table" in kinds
    # The index comes first: a search walks the graph before it reads any row.
    assert result["relations"][0]["kind"] == "index"
    row, _ = cache_row(cli, config)
    assert row["buffered_share"] >= 0.9, row
    assert "is loaded" in row["consequence"]

    # A restore test reads a whole backup through the server: afterwards the live database's
    # vector indexes are loaded again (maintenance.prewarm.after: [restore_test]).
    assert cli(*base, "backup", "create").exit_code == 0
    evict(memory_dsn)
    verify = cli(*base, "backup", "verify", "--latest", "--restore-test")
    assert verify.exit_code == 0, verify.stdout + verify.stderr
    assert "after restore_test: prewarmed" in verify.stderr
    assert cache_row(cli, config)[0]["buffered_share"] >= 0.9


def test_a_started_server_is_prewarmed_when_configured(cli: Any, write_config: Any) -> None:
    """`local start` with maintenance.prewarm.after: [server_start] loads the vector index of
    the server it started: after a restart the index is in shared buffers again."""
    import shutil
    import tempfile

    from aegisctl.local import EmbeddedServer

    base = Path(tempfile.mkdtemp(prefix="aegisctl-prewarm-"))
    base.chmod(0o755)
    config = write_config({"embedded": {"data_dir": str(base / "pgdata")},
                           "maintenance": {"prewarm": {"after": ["server_start"]}}})
    base_args = ("--config", str(config))
    try:
        first = cli(*base_args, "local", "start")
        assert first.exit_code == 0, first.output
        # A server without pg_prewarm: the start succeeds and says why nothing was loaded.
        assert "after server_start: prewarm skipped" in first.stderr
        assert "aegisctl ext install pg_prewarm" in first.stderr
        assert cli(*base_args, "ext", "install", "vector", "pg_prewarm",
                   "pg_buffercache").exit_code == 0
        uri = cli(*base_args, "local", "uri").stdout.strip()
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id int, embedding vector(8))")
            conn.execute("INSERT INTO notes SELECT g, (SELECT array_agg(random())::vector "
                         "FROM generate_series(1, 8) WHERE g > 0) FROM generate_series(1, 2000) g")
            conn.execute("CREATE INDEX notes_embedding ON notes USING hnsw "
                         "(embedding vector_l2_ops)")
        assert cli(*base_args, "local", "stop").exit_code == 0
        again = cli(*base_args, "local", "start")
        assert again.exit_code == 0, again.output
        # The index, its table and the TOAST table.
        assert "after server_start: prewarmed 3 relation(s)" in again.stderr
        report = json.loads(cli(*base_args, "diag", "vectors", "-f", "json").stdout)
        [row] = [r for r in report["sections"]["cache"] if r["index"] == "notes_embedding"]
        assert row["buffered_share"] >= 0.9, row
    finally:
        EmbeddedServer(base / "pgdata").stop()
        shutil.rmtree(base, ignore_errors=True)


def test_prewarm_is_schedulable_and_its_settings_validated(cli: Any, write_config: Any) -> None:
    good = write_config({"schedule": {"prewarm": {"command": "maint prewarm --indexes-only",
                                                  "at": "06:00"}},
                         "maintenance": {"prewarm": {"after": ["drill", "restore_test"]}}})
    result = cli("--config", str(good), "config", "validate")
    assert result.exit_code == 0, result.output
    bad = write_config({"maintenance": {"prewarm": {"after": ["reboot"]}}}, name="bad.yaml")
    refused = cli("--config", str(bad), "config", "validate")
    assert refused.exit_code == 2 and "maintenance.prewarm.after[0]" in refused.stderr


def test_hostile_relation_names_are_printed_inert(cli: Any, write_config: Any,
                                                  memory_dsn: str) -> None:
    """A table or index name holding escape sequences or Rich markup reaches the terminal as
    visible text (diag vectors' section titles included), and JSON keeps it exactly."""
    table, index = "t\x1b[31mred [bold]x[/bold]", "i\x1b]0;pwned\x07"
    with psycopg.connect(memory_dsn, autocommit=True) as conn:
        quoted = conn.execute("SELECT quote_ident(%s), quote_ident(%s)",
                              (table, index)).fetchone()
        conn.execute(f"CREATE TABLE {quoted[0]} (e vector(3))")
        conn.execute(f"INSERT INTO {quoted[0]} VALUES ('[1,2,3]')")
        conn.execute(f"CREATE INDEX {quoted[1]} ON {quoted[0]} USING hnsw (e vector_l2_ops)")
    config = write_config({"targets": {"primary": {"dsn": memory_dsn}},
                           "connection": {"retry": {"attempts": 1}}})
    for args in (["diag", "vectors"], ["maint", "prewarm", "--dry-run"]):
        result = cli("--config", str(config), *args, "-f", "table")
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout, result.stdout
        assert "\\x1b" in result.stdout
    assert "[bold]x[/bold]" in cli("--config", str(config), "diag", "vectors", "-f",
                                   "table").stdout
    report = json.loads(cli("--config", str(config), "diag", "vectors", "-f", "json").stdout)
    assert index in {r["index"] for r in report["sections"]["cache"]}


def test_diag_vectors_without_the_right_to_read_pg_buffercache(
        cli: Any, write_config: Any, memory_dsn: str) -> None:
    """pg_buffercache is for pg_monitor: a role without it still gets diag vectors (exit 0),
    the cache section without residency and a note saying which grant shows it."""
    from psycopg.conninfo import make_conninfo

    role = "cache_reader"
    with psycopg.connect(memory_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        config = write_config({"targets": {"primary": {
            "dsn": make_conninfo(memory_dsn, user=role)}},
            "connection": {"retry": {"attempts": 1}}})
        out = cli("--config", str(config), "diag", "vectors", "-f", "json")
        assert out.exit_code == 0, out.output
        report = json.loads(out.stdout)
        rows = {r["index"]: r for r in report["sections"]["cache"]}
        assert rows[INDEX]["buffered_bytes"] is None and rows[INDEX]["size_bytes"] > 0
        assert any("pg_monitor" in n for n in report["notes"]), report["notes"]
    finally:
        with psycopg.connect(memory_dsn, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
            conn.execute(f"DROP ROLE {role}")


def test_prewarm_as_a_role_that_reads_the_tables_but_owns_nothing(
        cli: Any, write_config: Any, memory_dsn: str) -> None:
    """TOAST tables grant nothing to anyone but their owner: a reader's prewarm loads what it
    may read and says what it skipped, instead of failing every time (exit 1)."""
    from psycopg.conninfo import make_conninfo

    role = "prewarm_reader"
    with psycopg.connect(memory_dsn, autocommit=True) as conn:
        conn.execute(FILL)
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        config = write_config({"targets": {"primary": {
            "dsn": make_conninfo(memory_dsn, user=role)}},
            "connection": {"retry": {"attempts": 1}}})
        out = cli("--config", str(config), "maint", "prewarm", "-f", "json")
        assert out.exit_code == 0, out.output
        report = json.loads(out.stdout)
        by_kind = {r["relation"]: r for r in report["relations"]}
        assert by_kind[INDEX]["status"] == "done"
        toast = [r for r in report["relations"] if r["kind"] == "toast"]
        assert toast and all(r["status"] == "skipped" for r in toast), toast
        assert any("owner" in n for n in report["notes"]), report["notes"]
    finally:
        with psycopg.connect(memory_dsn, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
            conn.execute(f"DROP ROLE {role}")
