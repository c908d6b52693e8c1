"""Shared by the partitioning tests: api_usage_events filled over many months, its primary key
widened to include created_at (what the refusal tells a user to do), and a config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import yaml

WIDEN_PK = [
    "CREATE UNIQUE INDEX api_usage_events_id_created_at_key ON api_usage_events (id, created_at)",
    "ALTER TABLE api_usage_events ALTER COLUMN created_at SET NOT NULL",
    "ALTER TABLE api_usage_events DROP CONSTRAINT api_usage_events_pkey,"
    " ADD CONSTRAINT api_usage_events_pkey PRIMARY KEY USING INDEX"
    " api_usage_events_id_created_at_key",
]


def fill_usage(conn: psycopg.Connection[Any], months: int = 16, per_day: int = 2) -> int:
    """Rows from `months` months ago until now, `per_day` a day; returns how many."""
    conn.autocommit = True
    conn.execute("INSERT INTO api_keys (id, customer_id, key_hash, key_prefix) VALUES"
                 " ('00000000-0000-0000-0000-000000000001', 'c1', 'h1', 'ak_1')"
                 " ON CONFLICT DO NOTHING")
    cur = conn.execute(
        "INSERT INTO api_usage_events (api_key_id, customer_id, endpoint, method, status_code,"
        " tokens_used, created_at)"
        " SELECT '00000000-0000-0000-0000-000000000001', 'c' || (i %% 7), '/v1/chat', 'POST',"
        "        200, i %% 100, t"
        "   FROM generate_series(now() - make_interval(months => %s), now(),"
        "                        make_interval(hours => %s)) WITH ORDINALITY AS g(t, i)",
        (months, 24 // per_day))
    return cur.rowcount


def widen_pk(conn: psycopg.Connection[Any]) -> None:
    conn.autocommit = True
    for statement in WIDEN_PK:
        conn.execute(statement)


def partition_config(path: Path, dsn: str, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({
        "targets": {"primary": {"dsn": dsn}},
        "connection": {"retry": {"attempts": 1}},
        "backup": {"directory": str(path.parent / "backups")},
        **extra}))
    return path


def relkind(conn: psycopg.Connection[Any], name: str) -> str | None:
    row = conn.execute("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(%s)",
                       (name,)).fetchone()
    return None if row is None else str(row[0])


def partition_bounds(conn: psycopg.Connection[Any], parent: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        "  JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
        (parent,)).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}
