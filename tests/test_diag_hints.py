"""aegisctl diag says what to do (issue 19): a session idle in a transaction is named with its
pid, age and statement, how to end it and the setting that prevents it; bloat comes with the
command to run; a unique index over duplicate keys gets no advice to rebuild it."""
# ruff: noqa: F811  (fixtures imported from diag_fixtures are parameters here)

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest
from diag_fixtures import Background, background  # noqa: F401


def diag(cli: Any, config: Any, topic: str) -> dict[str, Any]:
    result = cli("--config", str(config), "diag", topic, "-f", "json")
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    assert out["errors"] == {}, out["errors"]
    return out


def exec_(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_idle_in_transaction_is_named_with_how_to_end_and_prevent_it(
        cli, db_config, db_dsn, background: Background) -> None:
    idle = background.connect(db_dsn, autocommit=False)
    idle.execute("SELECT 'the forgotten one'")
    time.sleep(1.1)
    out = diag(cli, db_config, "activity")
    pid = idle.info.backend_pid
    [row] = [r for r in out["sections"]["idle_in_transaction"] if r["pid"] == pid]
    assert row["hint"] == f"SELECT pg_terminate_backend({pid})"
    [note] = [n for n in out["notes"] if n.startswith(f"pid {pid} ")]
    assert "has been idle in a transaction for " in note and "the forgotten one" in note
    assert f"SELECT pg_terminate_backend({pid})" in note
    assert any("idle_in_transaction_session_timeout is 0 (off)" in n for n in out["notes"])
    table = cli("--config", str(db_config), "diag", "activity")
    assert "pg_terminate_backend" in table.stdout
    idle.rollback()


def test_vacuum_names_bloat_and_what_to_run(cli, db_config, db_dsn) -> None:
    exec_(db_dsn,
          "CREATE TABLE notes (id bigint, body text) WITH (autovacuum_enabled = false)",
          "INSERT INTO notes SELECT g, repeat('n', 200) FROM generate_series(1, 30000) g",
          "DELETE FROM notes WHERE id % 4 <> 0", "ANALYZE notes",
          "CREATE TABLE unseen (id bigint, body text) WITH (autovacuum_enabled = false)",
          "INSERT INTO unseen SELECT g, repeat('u', 200) FROM generate_series(1, 10000) g")
    out = diag(cli, db_config, "vacuum")
    bloat = {r["table"]: r for r in out["sections"]["bloat"]}
    assert bloat["public.notes"]["wasted_ratio"] > 0.5
    assert "aegisctl maint vacuum --table public.notes" in bloat["public.notes"]["hint"]
    assert "--full" in bloat["public.notes"]["hint"]
    assert bloat["public.unseen"]["how"] == "statistics missing"
    assert "aegisctl maint analyze --table public.unseen" in bloat["public.unseen"]["hint"]
    assert any(n.startswith("public.notes: 22,500 dead rows") and "maint vacuum" in n
               for n in out["notes"]), out["notes"]


@pytest.mark.parametrize("unique", [True, False])
def test_invalid_index_advice(cli, db_config, db_dsn, unique: bool) -> None:
    exec_(db_dsn, "CREATE TABLE u (code int)", "INSERT INTO u VALUES (1), (1), (2)")
    if unique:
        with pytest.raises(psycopg.errors.UniqueViolation):
            exec_(db_dsn, "CREATE UNIQUE INDEX CONCURRENTLY u_code ON u (code)")
    else:  # a failed concurrent build of a plain index (simulated in the catalog)
        exec_(db_dsn, "CREATE INDEX u_code ON u (code)",
              "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'u_code'::regclass")
    out = diag(cli, db_config, "indexes")
    [row] = out["sections"]["invalid"]
    check = json.loads(cli("--config", str(db_config), "check", "--only", "invalid_indexes",
                           "-f", "json").stdout)["targets"][0]["checks"][1]
    for advice in (row["hint"], check["message"]):
        if unique:
            assert "reindex" not in advice.lower(), advice
            assert "1 key value(s) occur more than once" in advice
        else:
            assert "aegisctl maint reindex --index public.u_code" in advice
