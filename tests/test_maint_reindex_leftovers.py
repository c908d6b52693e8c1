"""maint reindex never leaves more invalid indexes than it found: a REINDEX CONCURRENTLY that
runs out of lock_timeout (waiting for a lock holder or for an old snapshot) drops the
`_ccnew` indexes it created, TOAST ones included, on every attempt; later runs clean any left
by others; the message names what it waited for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg


def _config(write_config: Any, dsn: str, tmp_path: Path) -> Path:
    return write_config({"targets": {"primary": {"dsn": dsn}},
                         "connection": {"retry": {"attempts": 1}},
                         "maintenance": {"lock_timeout": "0.3s", "lock_attempts": 3,
                                         "lock_max_delay": "0.3s"}})


def _invalid(conn: psycopg.Connection[Any]) -> list[str]:
    return [f"{r[0]}.{r[1]}" for r in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid ORDER BY 1, 2")]


def _reindex(cli: Any, path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("--config", str(path), "maint", "reindex", *args, "-f", "json")
    return result.exit_code, json.loads(result.stdout)


def test_reindex_that_gives_up_leaves_no_leftovers_and_names_what_it_waited_for(
        cli, aegis_db, aegis_dsn, write_config, tmp_path) -> None:
    conn = aegis_db
    conn.autocommit = True
    conn.execute("INSERT INTO workflows (name, graph) SELECT 'w' || i,"
                 " jsonb_build_object('blob', repeat(md5(i::text), 200))"
                 " FROM generate_series(1, 200) i")
    path = _config(write_config, aegis_dsn, tmp_path)

    # An old snapshot, no lock on the table at all.
    snapshot = psycopg.connect(aegis_dsn)
    snapshot.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    snapshot.execute("SELECT count(*) FROM container_metrics").fetchone()
    try:
        code, report = _reindex(cli, path, "--table", "workflows")
    finally:
        snapshot.rollback()
        snapshot.close()
    assert code == 1
    [failed] = [s for s in report["steps"] if s["status"] == "failed"]
    assert failed["attempts"] == 3
    assert "older snapshots" in failed["detail"] and "the table stayed locked" not in \
        failed["detail"]
    assert "SELECT count(*) FROM container_metrics" in failed["detail"]
    assert _invalid(conn) == []  # every attempt's _ccnew dropped, TOAST included
    assert any(s["target"].startswith("pg_toast.") and s["status"] == "done"
               for s in report["steps"])

    # A writer holding the table: the message names its pid and statement.
    writer = psycopg.connect(aegis_dsn)
    writer.execute("UPDATE workflows SET status = 'busy' WHERE name = 'w1'")
    pid = writer.info.backend_pid
    try:
        code, report = _reindex(cli, path, "--table", "workflows")
    finally:
        writer.rollback()
        writer.close()
    assert code == 1
    detail = next(s["detail"] for s in report["steps"] if s["status"] == "failed")
    assert f"pid {pid}" in detail and "UPDATE workflows" in detail
    assert _invalid(conn) == []


def test_later_runs_clean_toast_leftovers_of_others(cli, aegis_db, aegis_dsn, write_config,
                                                   tmp_path) -> None:
    conn = aegis_db
    conn.autocommit = True
    conn.execute("INSERT INTO workflows (name, graph) VALUES ('a', '{}')")
    holder = psycopg.connect(aegis_dsn)
    holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    holder.execute("SELECT 1").fetchone()
    conn.execute("SET lock_timeout = '300ms'")
    try:
        conn.execute("REINDEX TABLE CONCURRENTLY workflows")  # as another tool would
    except psycopg.errors.LockNotAvailable:
        pass
    finally:
        holder.rollback()
        holder.close()
    conn.execute("RESET lock_timeout")
    leftovers = _invalid(conn)
    toast = [name for name in leftovers if name.startswith("pg_toast.")]
    assert toast and len(leftovers) > len(toast)
    path = _config(write_config, aegis_dsn, tmp_path)
    code, _ = _reindex(cli, path, "--index", toast[0])  # naming a TOAST leftover drops it
    assert code == 0
    assert toast[0] not in _invalid(conn)
    code, _ = _reindex(cli, path, "--table", "workflows")
    assert code == 0
    assert _invalid(conn) == []
