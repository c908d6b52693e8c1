"""A vector-index rebuild that cannot swap ends consistent: when a session idle in a
transaction holds the table at the moment of the swap, the old index is kept, valid, under its
name (DROP INDEX CONCURRENTLY would have marked it invalid first and left the new one
serving), and the message names the session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from fault_fixtures import start_paused


def _indexes(conn: psycopg.Connection[Any]) -> dict[str, bool]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = 'episodic_memory'::regclass AND c.relname LIKE '%embedding%'")}


def test_a_blocked_swap_keeps_the_old_index_valid(aegis_db, aegis_dsn, write_config,
                                                 tmp_path: Path) -> None:
    conn = aegis_db
    conn.autocommit = True
    conn.execute("INSERT INTO episodic_memory (event_type, summary, embedding)"
                 " SELECT 'task', 'e' || i, array_fill(i::real / 100, ARRAY[1536])::vector"
                 " FROM generate_series(1, 30) i")
    path = write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                         "connection": {"retry": {"attempts": 1}},
                         "maintenance": {"lock_timeout": "0.3s", "lock_attempts": 2,
                                         "lock_max_delay": "0.3s"}})
    paused = start_paused("vector-index.before-drop", "--config", str(path), "maint",
                          "vector-index", "--table", "episodic_memory", "--m", "8", "-f",
                          "json", tmp_path=tmp_path)
    writer = psycopg.connect(aegis_dsn)
    writer.execute("UPDATE episodic_memory SET summary = summary WHERE id = "
                   "(SELECT min(id) FROM episodic_memory)")
    pid = writer.info.backend_pid
    try:
        out, err = paused.resume()
    finally:
        writer.rollback()
        writer.close()
    assert paused.proc.returncode == 1, err
    report = json.loads(out)
    failed = [s for s in report["steps"] if s["status"] == "failed"]
    assert failed and f"pid {pid}" in failed[0]["detail"]
    assert "the old index is kept" in failed[0]["detail"]
    indexes = _indexes(conn)
    assert indexes["idx_episodic_embedding"] is True
    assert all(indexes.values()), indexes  # nothing left invalid
