"""One locked row does not stop retention: cleanup skips rows another session holds (SKIP
LOCKED), deletes the rest, reports the skipped count and the holder; `check` flags the backlog
such a row leaves behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

METRICS = {"table": "container_metrics", "column": "timestamp", "max_age": "30d"}


def _config(write_config: Any, dsn: str, tmp_path: Path) -> Path:
    return write_config({
        "targets": {"primary": {"dsn": dsn}},
        "connection": {"retry": {"attempts": 1}},
        "backup": {"directory": str(tmp_path / "backups")},
        "cleanup": {"lock_timeout": "0.2s", "policies": {"metrics": METRICS}},
    })


def _fill(conn: psycopg.Connection[Any], rows: int, expired_share: float) -> None:
    conn.execute(
        "INSERT INTO container_metrics (container_name, cpu_percent, \"timestamp\")"
        " SELECT 'c', 1, CASE WHEN i <= %(expired)s"
        "   THEN now() - interval '40 days' - make_interval(mins => i)"
        "   ELSE now() - make_interval(mins => i) END"
        " FROM generate_series(1, %(rows)s) i",
        {"rows": rows, "expired": int(rows * expired_share)})
    conn.execute("ANALYZE container_metrics")


@pytest.mark.parametrize(("expired_share", "method"), [(0.5, "batches by page range"),
                                                       (0.02, "batches by index")])
def test_a_locked_row_is_skipped_and_reported(cli, aegis_db, aegis_dsn, write_config,
                                              tmp_path, expired_share, method) -> None:
    conn = aegis_db
    conn.autocommit = True
    _fill(conn, 5000, expired_share)
    expired = int(5000 * expired_share)
    holder = psycopg.connect(aegis_dsn)
    locked = holder.execute("SELECT id FROM container_metrics ORDER BY \"timestamp\" LIMIT 1"
                            " FOR UPDATE").fetchone()
    path = _config(write_config, aegis_dsn, tmp_path)
    try:
        result = cli("--config", str(path), "cleanup", "run", "--yes", "-f", "json")
        assert result.exit_code == 0, result.output
        [policy] = json.loads(result.stdout)["policies"]
        assert policy["status"] == "done" and policy["method"] == method
        assert policy["deleted_rows"] == expired - 1
        assert policy["skipped_locked_rows"] == 1
        assert f"pid {holder.info.backend_pid}" in policy["lock_holders"]

        backlog = cli("--config", str(path), "check", "--only", "retention_backlog",
                      "-f", "json")
        assert backlog.exit_code == 2, backlog.output  # 10 days past max_age > 7d
        assert "policy metrics: 1 expired row" in backlog.stdout
    finally:
        holder.close()
    assert conn.execute("SELECT count(*) FROM container_metrics WHERE id = %s",
                        locked).fetchone() == (1,)
    again = cli("--config", str(path), "cleanup", "run", "--yes", "-f", "json")
    assert json.loads(again.stdout)["policies"][0]["deleted_rows"] == 1
    assert cli("--config", str(path), "check", "--only", "retention_backlog").exit_code == 0
