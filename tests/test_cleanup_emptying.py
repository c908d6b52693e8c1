"""A policy that would delete every row of its table is refused unless --allow-emptying (more
often a wrong max_age or column than an intent); the dry run warns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_a_policy_that_would_empty_its_table_needs_allow_emptying(
        cli, aegis_db, aegis_dsn, write_config, tmp_path: Path) -> None:
    conn = aegis_db
    conn.autocommit = True
    conn.execute("INSERT INTO container_metrics (container_name, \"timestamp\")"
                 " SELECT 'c', now() - interval '40 days' FROM generate_series(1, 300)")
    path = write_config({
        "targets": {"primary": {"dsn": aegis_dsn}},
        "connection": {"retry": {"attempts": 1}},
        "cleanup": {"policies": {"metrics": {"table": "container_metrics",
                                             "column": "timestamp", "max_age": "1d"}}},
    })

    def count() -> Any:
        return conn.execute("SELECT count(*) FROM container_metrics").fetchone()[0]

    dry = cli("--config", str(path), "cleanup", "run", "--dry-run", "-f", "json")
    assert dry.exit_code == 0, dry.output
    [policy] = json.loads(dry.stdout)["policies"]
    assert any("would delete every row" in n and "--allow-emptying" in n
               for n in policy["notes"])

    refused = cli("--config", str(path), "cleanup", "run", "--yes", "-f", "json")
    assert refused.exit_code == 1, refused.output
    [policy] = json.loads(refused.stdout)["policies"]
    assert policy["status"] == "refused" and "--allow-emptying" in policy["error"]
    assert count() == 300

    conn.execute("INSERT INTO container_metrics (container_name) VALUES ('fresh')")
    kept = cli("--config", str(path), "cleanup", "run", "--yes", "-f", "json")
    assert kept.exit_code == 0, kept.output  # one row stays: an ordinary run
    assert count() == 1
    conn.execute("UPDATE container_metrics SET \"timestamp\" = now() - interval '40 days'")
    done = cli("--config", str(path), "cleanup", "run", "--yes", "--allow-emptying")
    assert done.exit_code == 0, done.output
    assert count() == 0
