"""maint status says why a table is not being vacuumed (autovacuum disabled for it, or off on
the server) instead of "autovacuum is behind", and recommends ANALYZE for a never-analyzed
table even before the activity statistics count its rows."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def _status(cli: Any, path: Path) -> dict[str, Any]:
    result = cli("--config", str(path), "maint", "status", "-f", "json")
    assert result.exit_code == 0, result.output
    return {t["table"]: t for t in json.loads(result.stdout)["tables"]}


def test_status_names_disabled_autovacuum_and_never_analyzed_tables(
        cli, aegis_db, aegis_dsn, write_config, tmp_path) -> None:
    conn = aegis_db
    conn.autocommit = True
    conn.execute("ALTER TABLE container_metrics SET (autovacuum_enabled = false)")
    conn.execute("INSERT INTO container_metrics (container_name) SELECT 'c'"
                 " FROM generate_series(1, 5000)")
    conn.execute("ANALYZE container_metrics")
    conn.execute("DELETE FROM container_metrics WHERE id % 2 = 0")
    conn.execute("CREATE TABLE loaded (id int, note text)")
    conn.execute("INSERT INTO loaded SELECT i, 'n' FROM generate_series(1, 2000) i")
    path = write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                         "connection": {"retry": {"attempts": 1}}})
    deadline = time.monotonic() + 15
    while True:  # the statistics collector reports with a small delay
        tables = _status(cli, path)
        if tables["public.container_metrics"]["dead_rows"] >= 2500 \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    metrics = tables["public.container_metrics"]
    assert metrics["autovacuum_disabled"] == "table"
    reasons = " ".join(metrics["reasons"])
    assert "autovacuum is disabled for this table" in reasons
    assert "autovacuum is behind" not in reasons
    loaded = tables["public.loaded"]
    assert loaded["last_analyze"] is None
    assert "maint analyze --table public.loaded" in loaded["recommendation"]
    assert any("never analyzed" in r for r in loaded["reasons"])
