"""maint partitions (months ahead, DEFAULT rows moved, the report), the partition checks,
retention by the month on a converted table with the seed's 13-month policy, and the
`partitions:` configuration."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from conftest import dsn_of
from partition_fixtures import (
    fill_usage,
    partition_bounds,
    partition_config,
    widen_pk,
)

from aegisctl.config import load_config
from aegisctl.retention.service import CleanupOptions, run_cleanup
from aegisctl.schema.partition import convert_table
from aegisctl.schema.partition_bounds import add_months, month_start

TABLE = "public.api_usage_events"
SPEC = {"api_usage_events": {"column": "created_at", "premake": 4}}


def _usage(conn: Any, at: str) -> None:
    conn.execute("INSERT INTO api_usage_events (customer_id, endpoint, method, status_code,"
                 " created_at) VALUES ('d', '/d', 'GET', 200, %s::timestamptz)", (at,))


def _months_ahead(conn: Any, n: int) -> str:
    now = conn.execute("SELECT now()").fetchone()[0]
    return add_months(month_start(now), n).strftime("%Y-%m-15 12:00:00+00")


def test_maint_partitions_moves_default_rows_and_creates_months_ahead(cli, aegis_db,
                                                                      tmp_path) -> None:
    rows = fill_usage(aegis_db, months=2)
    widen_pk(aegis_db)
    convert_table(aegis_db, TABLE, "created_at", premake=1)
    far = _months_ahead(aegis_db, 9)
    for _ in range(3):
        _usage(aegis_db, far)  # no partition for that month: they land in DEFAULT
    aegis_db.execute("CREATE TABLE other (at date NOT NULL) PARTITION BY RANGE (at)")
    aegis_db.execute("CREATE TABLE other_a PARTITION OF other FOR VALUES FROM ('2020-01-01')"
                     " TO ('2020-02-01')")
    aegis_db.execute("CREATE TABLE other_b PARTITION OF other FOR VALUES FROM ('2020-03-01')"
                     " TO ('2020-04-01')")
    cfg = partition_config(tmp_path / "aegisctl.yaml", dsn_of(aegis_db), partitions=SPEC)
    before = partition_bounds(aegis_db, TABLE)

    dry = cli("--config", str(cfg), "maint", "partitions", "--dry-run", "--format", "json")
    assert dry.exit_code == 0, dry.output
    planned = {t["table"]: t for t in json.loads(dry.stdout)["tables"]}
    assert planned[TABLE]["default_rows"] == 3 and planned[TABLE]["moved_rows"] == 3
    assert partition_bounds(aegis_db, TABLE) == before

    run = cli("--config", str(cfg), "maint", "partitions", "--format", "json")
    assert run.exit_code == 0, run.output
    report = {t["table"]: t for t in json.loads(run.stdout)["tables"]}
    usage = report[TABLE]
    assert usage["configured"] and usage["default_rows"] == 0 and usage["moved_rows"] == 3
    assert usage["future_partitions"] >= 4
    far_month = far[:7].replace("-", "_")
    assert f"{TABLE}_p{far_month}" in usage["created"]
    assert usage["gaps"], "the months between the premade ones and the moved month"
    assert aegis_db.execute(f"SELECT count(*) FROM api_usage_events_p{far_month}"
                            ).fetchone() == (3,)
    assert aegis_db.execute("SELECT count(*) FROM api_usage_events").fetchone() == (rows + 3,)
    other = report["public.other"]
    assert not other["configured"] and other["created"] == []
    assert other["gaps"] == [{"from": "2020-02-01T00:00:00+00:00",
                              "to": "2020-03-01T00:00:00+00:00"}]

    again = cli("--config", str(cfg), "maint", "partitions", "--format", "json")
    assert again.exit_code == 0
    assert {t["table"]: t for t in json.loads(again.stdout)["tables"]}[TABLE]["created"] == []

    text = cli("--config", str(cfg), "maint", "partitions")
    assert text.exit_code == 0 and "public.api_usage_events" in text.output


def test_maint_partitions_says_when_a_configured_table_is_not_partitioned(cli, aegis_db,
                                                                          tmp_path) -> None:
    cfg = partition_config(tmp_path / "aegisctl.yaml", dsn_of(aegis_db), partitions=SPEC)
    run = cli("--config", str(cfg), "maint", "partitions")
    assert run.exit_code == 1
    assert "not partitioned yet: run `aegisctl schema partition public.api_usage_events" in \
        run.output


def test_check_warns_of_missing_months_and_default_rows(cli, aegis_db, tmp_path) -> None:
    rows = fill_usage(aegis_db, months=1)
    widen_pk(aegis_db)
    convert_table(aegis_db, TABLE, "created_at", premake=1)
    _usage(aegis_db, _months_ahead(aegis_db, 10))
    cfg = partition_config(tmp_path / "aegisctl.yaml", dsn_of(aegis_db), partitions=SPEC)
    # Only the legacy partition and next months exist: drop the months ahead to make it bare.
    for name in partition_bounds(aegis_db, TABLE):
        if name.startswith("api_usage_events_p"):
            aegis_db.execute(f"DROP TABLE {name}")
    check = cli("--config", str(cfg), "check", "--only", "partitions_ahead", "--only",
                "default_partition_rows", "--format", "json")
    results = {r["name"]: r for r in json.loads(check.stdout)["targets"][0]["checks"]}
    assert check.exit_code == 2, check.output
    assert results[f"partitions_ahead:{TABLE}"]["status"] == "CRITICAL"
    assert results[f"default_partition_rows:{TABLE}"]["status"] == "WARNING"
    assert results[f"default_partition_rows:{TABLE}"]["value"] == 1

    fixed = cli("--config", str(cfg), "maint", "partitions")
    assert fixed.exit_code == 0, fixed.output
    check = cli("--config", str(cfg), "check", "--only", "partitions_ahead", "--only",
                "default_partition_rows", "--format", "json")
    assert check.exit_code == 0, check.output
    assert aegis_db.execute("SELECT count(*) FROM api_usage_events").fetchone() == (rows + 1,)


def test_the_13_month_policy_retires_whole_months_of_a_converted_table(aegis_db,
                                                                       tmp_path) -> None:
    rows = fill_usage(aegis_db, months=16, per_day=1)
    widen_pk(aegis_db)
    result = convert_table(aegis_db, TABLE, "created_at", premake=6)
    legacy_upper = result.legacy_upper
    assert legacy_upper is not None
    # Three months after the legacy partition, each with rows.
    for n in range(3):
        for day in (3, 20):
            _usage(aegis_db, add_months(legacy_upper, n).replace(day=day).isoformat())
    # One row that outlives both runs: a policy that would empty its table is refused.
    live_at = add_months(legacy_upper, 3).replace(day=20)
    _usage(aegis_db, live_at.isoformat())
    cfg = partition_config(tmp_path / "aegisctl.yaml", dsn_of(aegis_db), cleanup={
        "policies": {"api_usage_events": {"table": "api_usage_events", "column": "created_at",
                                          "max_age": "13mo"}}})
    loaded = load_config(str(cfg), env={})

    # Today: the legacy partition straddles the cutoff: its expired rows go in batches.
    today = run_cleanup(loaded, "primary", aegis_db, CleanupOptions())
    policy = today.policies[0]
    assert policy.status == "done" and policy.partitions_dropped == []
    now = aegis_db.execute("SELECT now()").fetchone()[0]
    cutoff = aegis_db.execute("SELECT %s::timestamptz - interval '13 months'", (now,)
                              ).fetchone()[0]
    expired = rows - aegis_db.execute("SELECT count(*) FROM api_usage_events WHERE"
                                      " created_at < %s", (legacy_upper,)).fetchone()[0]
    assert policy.deleted_rows == expired > 0
    assert aegis_db.execute("SELECT count(*) FROM api_usage_events WHERE created_at < %s",
                            (cutoff,)).fetchone() == (0,)

    # 13 months after the third month: legacy and the three months are dropped whole.
    later = add_months(legacy_upper, 16) + dt.timedelta(days=1)
    report = run_cleanup(loaded, "primary", aegis_db, CleanupOptions(now=later))
    policy = report.policies[0]
    assert policy.status == "done", policy.error
    dropped = sorted(name.split(".")[1] for name in policy.partitions_dropped)
    months = [f"api_usage_events_p{add_months(legacy_upper, n):%Y_%m}" for n in range(3)]
    assert dropped == sorted(["api_usage_events_legacy", *months])
    assert policy.deleted_rows == 0 and policy.partition_rows > 0
    assert aegis_db.execute("SELECT created_at FROM api_usage_events").fetchall() == [
        (live_at,)]
    # The parent lives on, its sequence too (owned by the parent, not the legacy partition).
    new_id = aegis_db.execute("INSERT INTO api_usage_events (customer_id, endpoint, method,"
                              " status_code) VALUES ('n', '/n', 'GET', 200) RETURNING id"
                              ).fetchone()[0]
    assert new_id > rows


def test_partitions_retention_becomes_a_cleanup_policy(aegis_db, tmp_path) -> None:
    fill_usage(aegis_db, months=15, per_day=1)
    widen_pk(aegis_db)
    convert_table(aegis_db, TABLE, "created_at", premake=2)
    cfg = partition_config(tmp_path / "aegisctl.yaml", dsn_of(aegis_db), partitions={
        "api_usage_events": {"column": "created_at", "retention": "13mo"}})
    report = run_cleanup(load_config(str(cfg), env={}), "primary", aegis_db,
                         CleanupOptions(dry_run=True))
    assert [(p.name, p.max_age) for p in report.policies] == [("api_usage_events", "13mo")]
    assert (report.policies[0].expired_rows or 0) > 0


@pytest.mark.parametrize("entry,message", [
    ({"column": "created_at", "interval": "week"}, "interval: 'week' is not supported"),
    ({"column": "created_at", "premake": 0}, "premake: between 1 and 120"),
    ({"column": "created_at", "retention": "30d"}, "retired by the month"),
    ({"column": "created_at", "retention": "12mo"}, "disagree about api_usage_events"),
])
def test_partitions_config_is_validated(cli, write_config, entry, message) -> None:
    cfg = write_config({"partitions": {"api_usage_events": entry}, "cleanup": {"policies": {
        "usage": {"table": "api_usage_events", "column": "created_at", "max_age": "13mo"}}}})
    result = cli("--config", str(cfg), "config", "show")
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("column_type", ["date", "timestamp"])
def test_date_and_timestamp_columns_get_utc_month_bounds(cli, aegis_db, tmp_path,
                                                         column_type) -> None:
    aegis_db.autocommit = True
    aegis_db.execute(f"CREATE TABLE daily (id bigserial, day {column_type} NOT NULL,"
                     " PRIMARY KEY (id, day))")
    aegis_db.execute("INSERT INTO daily (day) SELECT (now() - i * interval '1 day')::"
                     f"{column_type} FROM generate_series(0, 90) i")
    result = convert_table(aegis_db, "daily", "day", premake=2, default_partition=False)
    assert result.status == "converted" and result.default_partition is None
    bounds = partition_bounds(aegis_db, "daily")
    upper = result.legacy_upper
    assert upper is not None
    literal = f"{upper:%Y-%m-%d}" if column_type == "date" else f"{upper:%Y-%m-%d} 00:00:00"
    assert bounds["daily_legacy"] == f"FOR VALUES FROM (MINVALUE) TO ('{literal}')"
    cfg = partition_config(tmp_path / "aegisctl.yaml", dsn_of(aegis_db), partitions={
        "daily": {"column": "day", "premake": 5, "default_partition": False}})
    run = cli("--config", str(cfg), "maint", "partitions", "--table", "daily", "--format",
              "json")
    assert run.exit_code == 0, run.output
    (daily,) = json.loads(run.stdout)["tables"]
    assert daily["future_partitions"] >= 5 and daily["gaps"] == []
    aegis_db.execute(f"INSERT INTO daily (day) VALUES ((now() + interval '100 days')::"
                     f"{column_type})")
    assert aegis_db.execute("SELECT count(*) FROM daily").fetchone() == (92,)
