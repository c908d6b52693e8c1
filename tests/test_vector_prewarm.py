"""Warm indexes (issue 25, section 3): `diag vectors` shows how much of each vector index is in
shared buffers and what that means, `maint prewarm` loads it (pg_buffercache's count rises),
and a restore test prewarms the live database when maintenance.prewarm.after says so."""
# ruff: noqa: F811  (fixtures imported from memory_fixtures are parameters here)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from memory_fixtures import DIM, memory_db, memory_dsn, memory_template  # noqa: F401

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
