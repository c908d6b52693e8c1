"""Restore does exactly what it says: system databases refused, a failed restore leaves no
database behind, the server's reason is shown, selective restore of a referenced table works,
a restored database verifies clean, and the restore test covers halfvec indexes."""

# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from backup_fixtures import backup_config, fill, vector  # noqa: F401  (fixtures)
from backup_trust_fixtures import create
from conftest import dsn_of


def _db_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                        (name,)).fetchone() is not None


@pytest.mark.parametrize("database", ["template1", "postgres"])
def test_restore_into_a_system_database_is_refused(cli, aegis_db, backup_config,
                                                   database) -> None:
    fill(aegis_db, rows=3)
    cfg = backup_config()
    create(cli, cfg)
    result = cli("--config", str(cfg), "backup", "restore", "--latest", "--target-db",
                 database, "--yes")
    assert result.exit_code == 2, result.output
    assert "refusing" in result.stderr and "--into-system-database" in result.stderr
    with psycopg.connect(dsn_of(aegis_db, database)) as conn:
        assert conn.execute("SELECT to_regclass('public.episodic_memory')").fetchone() == (None,)


def _unrestorable(conn: psycopg.Connection[Any]) -> None:
    """A CHECK constraint calling a function that reads a table by an unqualified name: it
    works live, and fails on restore (pg_restore empties search_path), a classic."""
    conn.autocommit = True
    conn.execute("CREATE TABLE lookup (v int)")
    conn.execute("INSERT INTO lookup VALUES (1)")
    conn.execute("CREATE FUNCTION in_lookup(i int) RETURNS boolean LANGUAGE sql IMMUTABLE"
                 " AS 'SELECT EXISTS (SELECT 1 FROM lookup WHERE v = i)'")
    conn.execute("CREATE TABLE guarded (i int CHECK (in_lookup(i)))")
    conn.execute("INSERT INTO guarded VALUES (1)")


def test_failed_restore_drops_the_database_it_created(cli, aegis_db, backup_config) -> None:
    _unrestorable(aegis_db)
    cfg = backup_config(verify_after_create="none")
    m = create(cli, cfg)
    new_db = f"never_left_{os.getpid()}"
    result = cli("--config", str(cfg), "backup", "restore", m["id"], "--target-db", new_db)
    assert result.exit_code == 1, result.output
    assert 'relation "lookup" does not exist' in result.stderr
    assert "guarded" in result.stderr  # the object it failed on
    assert "dropped again" in result.stderr
    assert not _db_exists(aegis_db, new_db)

    test = cli("--config", str(cfg), "backup", "verify", m["id"], "--restore-test")
    assert test.exit_code == 1
    assert "restored into scratch" not in test.stdout
    assert 'relation "lookup" does not exist' in test.stdout


def test_restore_errors_show_the_servers_reason(cli, aegis_db, backup_config) -> None:
    fill(aegis_db, rows=3)
    cfg = backup_config()
    m = create(cli, cfg)
    exists = cli("--config", str(cfg), "backup", "restore", m["id"], "--force", "--yes")
    assert exists.exit_code == 1
    assert "already exists" in exists.stderr and "nothing was changed" in exists.stderr
    aegis_db.autocommit = True
    aegis_db.execute("CREATE SCHEMA elsewhere")
    aegis_db.execute("CREATE VIEW elsewhere.recent AS SELECT id FROM public.episodic_memory")
    depends = cli("--config", str(cfg), "backup", "restore", m["id"], "--clean", "--force",
                  "--yes")
    assert depends.exit_code == 1
    assert "depend" in depends.stderr and "nothing was changed" in depends.stderr
    assert "Command was" not in depends.stderr


def _decisions(conn: psycopg.Connection[Any], ids: list[int]) -> None:
    for n, memory_id in enumerate(ids):
        conn.execute("INSERT INTO decision_outcomes (decision_id, task_context, alternatives,"
                     " chosen_option, reasoning) VALUES (%s, %s, '[]', 'a', 'b')",
                     (memory_id, f"task {n}"))


def test_selective_restore_of_a_referenced_table(cli, aegis_db, backup_config) -> None:
    """The README's example: --table episodic_memory, referenced by decision_outcomes."""
    fill(aegis_db, rows=8)
    ids = [r[0] for r in aegis_db.execute("SELECT id FROM episodic_memory ORDER BY id")]
    aegis_db.autocommit = True
    _decisions(aegis_db, ids[:3])
    cfg = backup_config()
    m = create(cli, cfg)
    before = aegis_db.execute("SELECT id, summary FROM episodic_memory ORDER BY id").fetchall()
    aegis_db.execute("UPDATE episodic_memory SET summary = 'damaged ' || id")
    aegis_db.execute("DELETE FROM episodic_memory WHERE id = %s AND id NOT IN"
                     " (SELECT decision_id FROM decision_outcomes WHERE decision_id IS NOT NULL)",
                     (ids[-1],))
    dry = cli("--config", str(cfg), "backup", "restore", "--latest", "--table",
              "episodic_memory", "--force", "--dry-run", "--format", "json")
    assert dry.exit_code == 0, dry.output
    assert "decision_outcomes references public.episodic_memory" in dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["referencing"][0]["table"] == "public.decision_outcomes"
    done = cli("--config", str(cfg), "backup", "restore", "--latest", "--table",
               "episodic_memory", "--force", "--yes")
    assert done.exit_code == 0, done.output
    assert aegis_db.execute("SELECT id, summary FROM episodic_memory ORDER BY id"
                            ).fetchall() == before
    assert aegis_db.execute("SELECT count(*) FROM decision_outcomes WHERE decision_id IS NOT"
                            " NULL").fetchone() == (3,)
    fks = aegis_db.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND"
                           " confrelid = 'episodic_memory'::regclass").fetchone()
    assert fks == (1,)
    # New rows do not collide with restored ids.
    aegis_db.execute("INSERT INTO episodic_memory (event_type, summary) VALUES ('t', 'new')")
    # A decision that points at a memory the backup does not have: nothing changes.
    aegis_db.execute("INSERT INTO episodic_memory (id, event_type, summary)"
                     " VALUES (99999, 't', 'after the backup')")
    _decisions(aegis_db, [99999])
    aegis_db.execute("UPDATE episodic_memory SET summary = 'kept ' || id")
    refused = cli("--config", str(cfg), "backup", "restore", m["id"], "--table",
                  "episodic_memory", "--force", "--yes")
    assert refused.exit_code == 1
    assert "nothing was changed" in refused.stderr and "decision_outcomes" in refused.stderr
    assert aegis_db.execute("SELECT count(*) FROM episodic_memory WHERE summary <> 'kept ' || id"
                            ).fetchone() == (0,)


def test_restored_database_verifies_clean(cli, aegis_db, backup_config, write_config) -> None:
    fill(aegis_db, rows=3)
    cfg = backup_config()
    create(cli, cfg)
    new_db = f"verified_{os.getpid()}"
    restored = cli("--config", str(cfg), "backup", "restore", "--latest", "--target-db", new_db)
    assert restored.exit_code == 0, restored.output
    try:
        other = write_config({"targets": {"primary": {"dsn": dsn_of(aegis_db, new_db)}}},
                             name="restored.yaml")
        result = cli("--config", str(other), "schema", "verify", "--format", "json")
        assert result.exit_code == 0, result.stdout
        assert json.loads(result.stdout)["differences"] == []
    finally:
        aegis_db.execute(f'DROP DATABASE IF EXISTS "{new_db}" WITH (FORCE)')


def test_restore_test_queries_halfvec_indexes(cli, aegis_db, backup_config) -> None:
    fill(aegis_db, rows=3)
    rng = random.Random(3)
    aegis_db.autocommit = True
    aegis_db.execute("CREATE TABLE wide_memory (id serial PRIMARY KEY, embedding vector(2500))")
    for _ in range(5):
        aegis_db.execute("INSERT INTO wide_memory (embedding) VALUES (%s::vector)",
                         (vector(rng, 2500),))
    aegis_db.execute("CREATE INDEX wide_memory_hnsw ON wide_memory USING hnsw"
                     " ((embedding::halfvec(2500)) halfvec_cosine_ops)")
    cfg = backup_config()
    m = create(cli, cfg)
    result = cli("--config", str(cfg), "backup", "verify", m["id"], "--restore-test",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout)["checks"]
    assert any("wide_memory_hnsw" in c and "halfvec" in c for c in checks), checks
    assert any("idx_episodic_embedding" in c or "episodic" in c for c in checks), checks


def test_readme_restore_examples_are_real() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "--table episodic_memory --force --yes" in readme
    assert yaml is not None
