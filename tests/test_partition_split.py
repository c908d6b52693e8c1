"""maint partitions --split-legacy: the legacy partition a conversion left becomes one partition
per month, online (rows copied while a trigger mirrors changes, verified, swapped in), so that
retention drops its oldest month by partition; killed with -9 mid-copy (while rows are being
inserted, updated and deleted), a re-run finishes without a row lost or doubled."""

from __future__ import annotations

import datetime as dt
import json
import signal
from typing import Any

import psycopg
import pytest
from conftest import dsn_of
from fault_fixtures import start_paused
from partition_fixtures import fill_usage, partition_bounds, partition_config, relkind, widen_pk

from aegisctl.config import load_config
from aegisctl.maintenance.catalog import find_relation
from aegisctl.maintenance.legacy_split import split_legacy
from aegisctl.maintenance.partitions import partitioned_tables
from aegisctl.retention.service import CleanupOptions, run_cleanup
from aegisctl.schema.partition import convert_table
from aegisctl.schema.partition_bounds import (
    add_months,
    month_partition_name,
    month_start,
    partition_key,
)
from aegisctl.schema.partition_tx import LockPolicy

TABLE = "public.api_usage_events"
LEGACY = "public.api_usage_events_legacy"


def _rows(conn: psycopg.Connection[Any]) -> dict[int, tuple[Any, ...]]:
    return {r[0]: tuple(r[1:]) for r in conn.execute(
        "SELECT id, created_at, tokens_used, customer_id FROM api_usage_events").fetchall()}


def _converted(conn: psycopg.Connection[Any]) -> dt.datetime:
    """api_usage_events with 4 months and more of rows (4 a day), converted: every row in
    the legacy partition. Returns the oldest row's month."""
    fill_usage(conn, months=4, per_day=4)
    widen_pk(conn)
    assert convert_table(conn, TABLE, "created_at", premake=2).status == "converted"
    oldest = conn.execute("SELECT min(created_at) FROM api_usage_events").fetchone()[0]
    return month_start(oldest.astimezone(dt.UTC))


def _months_of(conn: psycopg.Connection[Any]) -> set[str]:
    return {n for n in partition_bounds(conn, TABLE) if n.startswith("api_usage_events_p")}


def test_split_then_retention_drops_the_oldest_month_by_partition(cli, aegis_db,
                                                                   tmp_path) -> None:
    conn = aegis_db
    first = _converted(conn)
    before = _rows(conn)
    parent = find_relation(conn, TABLE, kinds="p")
    key = partition_key(conn, parent.oid)
    assert key is not None
    planned = split_legacy(conn, parent, key, LockPolicy(), dry_run=True)
    assert planned.status == "planned" and planned.legacy == LEGACY
    assert relkind(conn, LEGACY) == "r"  # a dry run changes nothing

    report = split_legacy(conn, parent, key, LockPolicy(), batch_rows=100)
    assert report.status == "split", report
    assert report.batches > 3 and report.copied_rows == len(before)
    assert relkind(conn, LEGACY) is None
    assert relkind(conn, "public.api_usage_events_split") is None
    assert month_partition_name("api_usage_events", first) in _months_of(conn)
    assert len(report.months) >= 5  # the 4 months back, this month (and maybe the next)
    assert _rows(conn) == before
    # Writes go on into the new months; nothing of the split is left behind.
    conn.execute("INSERT INTO api_usage_events (customer_id, endpoint, method, status_code,"
                 " created_at) VALUES ('n', '/n', 'GET', 200, %s)",
                 (first + dt.timedelta(days=3),))
    assert not conn.execute("SELECT 1 FROM pg_trigger WHERE tgname = 'aegisctl_split_mirror'"
                            ).fetchall()
    assert not conn.execute("SELECT conname FROM pg_constraint WHERE conname ="
                            " 'aegisctl_split_bound'").fetchall()
    # Each month carries the table's foreign key, attached to the table's own.
    fks = conn.execute(
        "SELECT c.conparentid <> 0 FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid"
        " WHERE r.relname = %s AND c.contype = 'f'",
        (month_partition_name("api_usage_events", first),)).fetchall()
    assert fks == [(True,)]
    oldest_rows = conn.execute("SELECT count(*) FROM api_usage_events WHERE created_at < %s",
                               (add_months(first, 1),)).fetchone()[0]

    path = partition_config(tmp_path / "aegisctl.yaml", dsn_of(conn), cleanup={
        "vacuum": False, "policies": {"usage": {"table": "api_usage_events",
                                                "column": "created_at", "max_age": "1mo"}}})
    loaded = load_config(str(path), env={})
    cleanup = run_cleanup(loaded, "primary", conn,
                          CleanupOptions(now=add_months(first, 2)))  # cutoff: month 2
    policy = cleanup.policies[0]
    assert policy.status == "done", policy.error
    assert policy.partitions_dropped == [
        f"public.{month_partition_name('api_usage_events', first)}"]
    assert policy.partition_rows == oldest_rows and policy.deleted_rows == 0
    # No table configured, none named: says so rather than doing nothing silently.
    idle = cli("--config", str(path), "maint", "partitions", "--split-legacy", "--yes")
    assert idle.exit_code == 0 and "--split-legacy: no table to split" in idle.output


@pytest.mark.parametrize("point", ["split-batch", "split-swap", "split-drop"])
def test_kill_9_mid_split_then_a_rerun_finishes_without_loss_or_duplicates(
        cli, aegis_db, tmp_path, point) -> None:
    """Killed after a batch (the application changing rows meanwhile), inside the swap's
    transaction (rolled back), or after the swap before the legacy partition is dropped."""
    conn = aegis_db
    first = _converted(conn)
    cfg = partition_config(tmp_path / "aegisctl.yaml", dsn_of(conn))
    args = ("--config", str(cfg), "maint", "partitions", "--split-legacy", "--table",
            "api_usage_events", "--batch-rows", "100", "--yes", "--format", "json")
    if point == "split-batch":
        dry = cli(*args[:-3], "--dry-run")
        assert dry.exit_code == 0, dry.output
        assert f"would copy {LEGACY}" in " ".join(dry.output.split())
        unconfirmed = cli(*[a for a in args if a != "--yes"])
        assert unconfirmed.exit_code == 2 and relkind(conn, LEGACY) == "r"
    paused = start_paused(f"partition:{point}", *args, tmp_path=tmp_path)
    # Paused after its first batch: the application changes the legacy rows meanwhile (a
    # row copied already, one not yet, one new), then the run is killed.
    copied_id, late_id = conn.execute("SELECT min(id), max(id) FROM api_usage_events"
                                      ).fetchone()
    conn.execute("DELETE FROM api_usage_events WHERE id = %s", (copied_id,))
    conn.execute("UPDATE api_usage_events SET tokens_used = 4242 WHERE id = %s", (late_id,))
    conn.execute("UPDATE api_usage_events SET created_at = created_at + interval '1 second'"
                 " WHERE id = %s", (copied_id + 1,))
    new_id = conn.execute(
        "INSERT INTO api_usage_events (customer_id, endpoint, method, status_code,"
        " created_at) VALUES ('late', '/l', 'GET', 200, %s) RETURNING id",
        (first + dt.timedelta(days=5),)).fetchone()[0]
    expected = _rows(conn)
    # The staging table is no partitioned table of the user's to report or check.
    assert "api_usage_events_split" not in {p.name for p, _ in partitioned_tables(conn)}
    paused.kill(signal.SIGKILL)
    assert paused.proc.returncode == -signal.SIGKILL
    conn.execute("SET lock_timeout = '30s'")  # the server notices the dead client
    swapped = point == "split-drop"
    assert relkind(conn, "public.api_usage_events_split") == (None if swapped else "p")
    assert relkind(conn, LEGACY) == "r"  # attached before the swap; detached, kept, after it
    conn.execute("UPDATE api_usage_events SET customer_id = 'after' WHERE id = %s", (new_id,))
    expected[new_id] = (*expected[new_id][:2], "after")

    rerun = cli(*args)
    assert rerun.exit_code == 0, rerun.output
    (split,) = json.loads(rerun.stdout)["splits"]
    if swapped:
        assert split["status"] == "nothing to split", split
        assert any("swapped out by an earlier run" in n for n in split["notes"]), split
    else:
        assert split["status"] == "split" and split["resumed_at_page"] > 0, split
    assert relkind(conn, LEGACY) is None
    assert relkind(conn, "public.api_usage_events_split") is None
    assert _rows(conn) == expected
    total, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM api_usage_events"
                                   ).fetchone()
    assert total == distinct == len(expected)
    assert conn.execute("SELECT count(*) FROM ONLY api_usage_events_default").fetchone() == (0,)
    assert month_partition_name("api_usage_events", first) in _months_of(conn)
