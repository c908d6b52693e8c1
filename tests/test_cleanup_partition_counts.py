"""What `cleanup run` reports for the rows of the partitions it drops: exact by default (even
when the planner's statistics are stale), the planner's estimate only when the config asks
for it, and then said to be one; a partition holding a row the policy keeps is not dropped."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import psycopg
import yaml

from aegisctl import output
from aegisctl.config import load_config
from aegisctl.retention.service import CleanupOptions, run_cleanup

NOW = dt.datetime(2026, 3, 20, tzinfo=dt.UTC)  # 13 months: cutoff 2025-02-20
DROPPED = ["2024_09", "2024_10", "2024_11", "2024_12", "2025_01"]


def _usage(conn: psycopg.Connection[Any]) -> None:
    """usage_part: monthly partitions 2024-09 .. 2026-04, one row a day at noon UTC."""
    conn.autocommit = True
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute("CREATE TABLE usage_part (LIKE api_usage_events INCLUDING DEFAULTS)"
                 " PARTITION BY RANGE (created_at)")
    conn.execute("CREATE INDEX ON usage_part (created_at)")
    for month in range(20):
        statement = conn.execute(
            "SELECT format('CREATE TABLE %%I PARTITION OF usage_part FOR VALUES FROM (%%L)"
            " TO (%%L)', 'usage_part_' || to_char(lo, 'YYYY_MM'), lo, lo + interval '1 month')"
            " FROM (SELECT '2024-09-01'::timestamptz + make_interval(months => %s) AS lo) m",
            (month,)).fetchone()
        assert statement is not None
        conn.execute(statement[0])
    conn.execute("INSERT INTO usage_part (customer_id, endpoint, method, status_code, created_at)"
                 " SELECT 'cust', '/v1/x', 'GET', 200, d + interval '12 hours'"
                 "   FROM generate_series('2024-09-01'::timestamptz, '2026-03-31'::timestamptz,"
                 "                        interval '1 day') d")
    conn.execute("ANALYZE usage_part")


def _loaded(tmp: Path, dsn: str, **cleanup: Any) -> Any:
    path = tmp / "aegisctl.yaml"
    policy = cleanup.pop("policy", {})
    path.write_text(yaml.safe_dump({
        "targets": {"primary": {"dsn": dsn}},
        "backup": {"directory": str(tmp / "backups")},
        "cleanup": {"vacuum": False, **cleanup, "policies": {"usage": {
            "table": "usage_part", "column": "created_at", "max_age": "13mo", **policy}}}}))
    return load_config(str(path), env={})


def _stale_statistics(conn: psycopg.Connection[Any]) -> int:
    """Ten rows more in the oldest month than its statistics know (too few for autovacuum to
    analyze it again); the true count of the expired months' rows."""
    conn.execute("INSERT INTO usage_part (customer_id, endpoint, method, status_code, created_at)"
                 " SELECT 'cust', '/v1/x', 'GET', 200, '2024-09-15'::timestamptz"
                 "   FROM generate_series(1, 10)")
    row = conn.execute("SELECT count(*) FROM usage_part WHERE created_at < '2025-02-01'"
                       ).fetchone()
    assert row is not None
    return int(row[0])


def test_dropped_rows_are_counted_exactly_by_default(aegis_db, aegis_dsn, tmp_path,
                                                      capsys) -> None:
    conn = aegis_db
    _usage(conn)
    true_rows = _stale_statistics(conn)
    report = run_cleanup(_loaded(tmp_path, aegis_dsn), "primary", conn,
                         CleanupOptions(now=NOW))
    policy = report.policies[0]
    assert policy.status == "done", policy.error
    assert sorted(policy.partitions_dropped) == [f"public.usage_part_{m}" for m in DROPPED]
    assert policy.partition_rows == true_rows
    assert policy.partition_rows_exact
    data = report.to_json()
    assert data["deleted_rows_exact"] is True
    assert data["policies"][0]["partition_rows_exact"] is True
    output.render(report, "table")
    shown = " ".join(capsys.readouterr().out.split())
    assert f"({true_rows} rows)" in shown and "estimate" not in shown


def test_estimated_counts_are_said_to_be_estimates(aegis_db, aegis_dsn, tmp_path,
                                                   capsys) -> None:
    conn = aegis_db
    _usage(conn)
    row = conn.execute("SELECT sum(reltuples)::bigint FROM pg_class WHERE relname = ANY(%s)",
                       ([f"usage_part_{m}" for m in DROPPED],)).fetchone()
    assert row is not None
    estimate = int(row[0])
    true_rows = _stale_statistics(conn)
    assert estimate == true_rows - 10
    loaded = _loaded(tmp_path, aegis_dsn, partition_row_counts="estimate")
    report = run_cleanup(loaded, "primary", conn, CleanupOptions(now=NOW))
    policy = report.policies[0]
    assert policy.status == "done", policy.error
    assert sorted(policy.partitions_dropped) == [f"public.usage_part_{m}" for m in DROPPED]
    assert policy.partition_rows == estimate and not policy.partition_rows_exact
    data = report.to_json()
    assert data["deleted_rows_exact"] is False
    assert data["policies"][0]["partition_rows_exact"] is False
    output.render(report, "table")
    shown = " ".join(capsys.readouterr().out.split())
    assert f"~{policy.total_deleted}" in shown
    assert f"about {estimate} rows, the planner's estimate" in shown
    # Every expired row is gone all the same.
    left = conn.execute("SELECT count(*) FROM usage_part WHERE created_at < '2025-02-20'"
                        ).fetchone()
    assert left == (0,)


def test_a_never_analyzed_partition_is_counted_even_when_estimating(aegis_db, aegis_dsn,
                                                                    tmp_path) -> None:
    """No statistics (reltuples -1): the estimate would be meaningless, so it is counted."""
    conn = aegis_db
    _usage(conn)
    conn.execute("CREATE TABLE usage_part_2024_08 PARTITION OF usage_part"
                 " FOR VALUES FROM ('2024-08-01') TO ('2024-09-01')")
    conn.execute("INSERT INTO usage_part (customer_id, endpoint, method, status_code, created_at)"
                 " SELECT 'cust', '/v1/x', 'GET', 200, '2024-08-10'::timestamptz"
                 "   FROM generate_series(1, 7)")
    row = conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'usage_part_2024_08'"
                       ).fetchone()
    assert row == (-1,)  # 7 rows: far below autovacuum's thresholds
    loaded = _loaded(tmp_path, aegis_dsn, partition_row_counts="estimate")
    report = run_cleanup(loaded, "primary", conn, CleanupOptions(now=NOW))
    policy = report.policies[0]
    assert policy.status == "done", policy.error
    assert "public.usage_part_2024_08" in policy.partitions_dropped
    # -1 would have been reported as a row count; the analyzed months' estimates are exact
    # here (ANALYZE reads every row of a small table).
    assert policy.partition_rows == 7 + _days("2024-09-01", "2025-02-01")


def _days(start: str, end: str) -> int:
    return (dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days


def test_a_month_holding_a_kept_row_is_not_dropped(aegis_db, aegis_dsn, tmp_path) -> None:
    """keep: the oldest month holds one kept row, so it is batch-deleted around that row
    instead of dropped; the other expired months are dropped whole."""
    conn = aegis_db
    _usage(conn)
    conn.execute("UPDATE usage_part SET customer_id = 'vip'"
                 " WHERE created_at = '2024-09-10 12:00+00'")
    loaded = _loaded(tmp_path, aegis_dsn, policy={"keep": {"customer_id": ["vip"]}})
    report = run_cleanup(loaded, "primary", conn, CleanupOptions(now=NOW))
    policy = report.policies[0]
    assert policy.status == "done", policy.error
    assert sorted(policy.partitions_dropped) == [f"public.usage_part_{m}" for m in DROPPED[1:]]
    assert policy.partition_rows == _days("2024-10-01", "2025-02-01")
    assert policy.deleted_rows == 30 - 1 + 19  # September but the kept row; 2025-02-01..19
    left = conn.execute("SELECT customer_id, created_at FROM usage_part"
                        " WHERE created_at < '2025-02-20'").fetchall()
    assert left == [("vip", dt.datetime(2024, 9, 10, 12, tzinfo=dt.UTC))]
