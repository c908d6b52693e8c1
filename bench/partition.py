"""Benchmark: `aegisctl schema partition` on a large api_usage_events while a writer inserts
500 rows/s, then retention by the month (`cleanup run`, 13 months) against one plain DELETE
of the same rows.

Data: api_usage_events with ROWS rows (default 1,000,000), created_at uniform over the 16
months before the current month's start plus this month so far, 7 customers, a few endpoints
holding most rows; its primary key widened to (id, created_at) first, online, as the refusal
tells a user to (unique index CONCURRENTLY, validated IS NOT NULL check, PRIMARY KEY USING
INDEX).

Phase 1, conversion: writers (4 connections sharing 500 rows/s, each on a fixed schedule,
autocommit, like the API's usage logger) record each insert's latency and id; the
conversion runs as `aegisctl schema partition api_usage_events --by month --yes` (a
subprocess, default --lock-timeout 0.1s). Reported: the writer's worst and p99 insert latency
during the conversion (target <= 200 ms), the longest strong lock held (the bound check and
swap transactions take ACCESS EXCLUSIVE on the table: from the first lock to COMMIT; target
<= 1 s; the build transaction only reads the table), each step's time, and
rows lost (ids the writer got back that are not in the table afterwards; target 0).

Phase 2, retention: the same rows in three tables partitioned by month from the start (16
monthly partitions made by aegisctl's create_month) and in a plain table with an index on
created_at. `cleanup run` with the seed's policy (13mo, archive off, VACUUM off) at the
current month's start drops the 3 expired months as whole partitions, once with exact row
counts (the default) and once with `partition_row_counts: estimate`; the third table gets only
the bare DETACH ... CONCURRENTLY and DROP statements (the floor); the plain table gets one
`DELETE ... WHERE created_at < cutoff` of the same rows. Reported: the times and ratios
(target >= 50x the DELETE; or, where the machine keeps even the floor below that, within 20 %
of the floor), every statement of each run by kind, and whether anything was rewritten (the
surviving partitions keep their relfilenode; the plain table keeps its size and carries the
deleted rows as dead tuples until VACUUM).

Phase 1b (--split): `maint partitions --split-legacy` on the converted table, the writers
going: their worst insert during it, its batches and swap, rows lost.

Usage: nice python bench/partition.py [--rows 1000000] [--rate 500] [--writers 4]
                                      [--split] [--skip-retention | --skip-conversion] [--keep]
(starts its own embedded server in a temporary folder)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

from aegisctl.config import SchemaSettings, load_config
from aegisctl.local import EmbeddedServer
from aegisctl.maintenance.catalog import find_relation
from aegisctl.maintenance.partitions import create_month
from aegisctl.retention.service import CleanupOptions, run_cleanup
from aegisctl.schema import init_schema
from aegisctl.schema.partition_bounds import PartitionKey, add_months, month_start
from aegisctl.schema.partition_tx import LockPolicy

MONTHS = 16
WIDEN = [
    "CREATE UNIQUE INDEX CONCURRENTLY api_usage_events_id_created_at_key"
    " ON api_usage_events (id, created_at)",
    "ALTER TABLE api_usage_events ADD CONSTRAINT created_at_not_null"
    " CHECK (created_at IS NOT NULL) NOT VALID",
    "ALTER TABLE api_usage_events VALIDATE CONSTRAINT created_at_not_null",
    "ALTER TABLE api_usage_events ALTER COLUMN created_at SET NOT NULL",
    "ALTER TABLE api_usage_events DROP CONSTRAINT created_at_not_null",
    "ALTER TABLE api_usage_events DROP CONSTRAINT api_usage_events_pkey,"
    " ADD CONSTRAINT api_usage_events_pkey PRIMARY KEY USING INDEX"
    " api_usage_events_id_created_at_key",
]
FILL = """
INSERT INTO {table} (api_key_id, customer_id, endpoint, method, status_code, response_time_ms,
                     tokens_used, cost_usd, created_at)
SELECT NULL, 'cust-' || (i %% 7),
       CASE WHEN i %% 10 < 6 THEN '/v1/chat' WHEN i %% 10 < 9 THEN '/v1/embeddings'
            ELSE '/v1/search' END,
       'POST', CASE WHEN i %% 100 = 0 THEN 500 ELSE 200 END, 20 + i %% 300, i %% 2000,
       (i %% 2000) * 0.000002,
       %(start)s::timestamptz + (%(now)s::timestamptz - %(start)s::timestamptz) * random()
  FROM generate_series(1, %(rows)s) i
"""


class Writer(threading.Thread):
    """Inserts on a fixed schedule (`rate` rows/s, its own connection, autocommit); latency
    and id of each. Several of them make the 500 rows/s: one connection cannot commit (and
    flush WAL) every 2 ms on a busy shared machine, an API's pool would not try."""

    def __init__(self, dsn: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.interval = 1.0 / rate
        self.phase = "idle"
        self.latencies: dict[str, list[float]] = {}
        self.ids: list[int] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            due = time.perf_counter()
            while not self.stop.is_set():
                due += self.interval
                started = time.perf_counter()
                try:
                    row = conn.execute(
                        "INSERT INTO api_usage_events (customer_id, endpoint, method,"
                        " status_code, tokens_used) VALUES ('writer', '/v1/chat', 'POST', 200,"
                        " 1) RETURNING id").fetchone()
                    self.ids.append(int(row[0]) if row else -1)
                except psycopg.Error as exc:
                    self.errors.append(str(exc).splitlines()[0])
                self.latencies.setdefault(self.phase, []).append(time.perf_counter() - started)
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                else:
                    due = time.perf_counter()  # fell behind: do not burst to catch up


def _ms(values: list[float], q: float | None = None) -> float:
    if not values:
        return 0.0
    if q is None:
        return round(max(values) * 1000, 1)
    return round(statistics.quantiles(values, n=100)[int(q) - 1] * 1000, 1)


def load(conn: psycopg.Connection[Any], table: str, rows: int, start: dt.datetime,
         now: dt.datetime) -> None:
    from psycopg import sql

    step = 250_000
    for done in range(0, rows, step):
        conn.execute(sql.SQL(FILL).format(table=sql.Identifier(table)),
                     {"start": start, "now": now, "rows": min(step, rows - done)})


class LockWaits(threading.Thread):
    """Samples pg_stat_activity every 10 ms: the longest a writer's INSERT has been waiting
    for a lock (so a slow insert can be told apart from one slowed by the busy machine)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.longest = 0.0
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                row = conn.execute(
                    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)),"
                    " 0) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'INSERT INTO api_usage_events%%'").fetchone()
                self.longest = max(self.longest, float(row[0]) if row else 0.0)
                self.samples += 1
                time.sleep(0.01)


class Writers:
    """`count` writers sharing `rate` rows/s, seen as one."""

    def __init__(self, dsn: str, rate: float, count: int) -> None:
        self.all = [Writer(dsn, rate / count) for _ in range(count)]

    def start(self) -> None:
        for writer in self.all:
            writer.start()

    def set_phase(self, phase: str) -> None:
        for writer in self.all:
            writer.phase = phase

    def stop(self) -> None:
        for writer in self.all:
            writer.stop.set()
        for writer in self.all:
            writer.join()

    def latencies(self, phase: str) -> list[float]:
        return [x for w in self.all for x in w.latencies.get(phase, [])]

    @property
    def ids(self) -> list[int]:
        return [i for w in self.all for i in w.ids]

    @property
    def errors(self) -> list[str]:
        return [e for w in self.all for e in w.errors]


def convert_phase(base: Path, dsn: str, conn: psycopg.Connection[Any],
                  writer: Writers) -> dict[str, Any]:
    config = base / "aegisctl.yaml"
    config.write_text(yaml.safe_dump({"targets": {"primary": {"dsn": dsn}},
                                      "backup": {"directory": str(base / "backups")}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEGISCTL_")}
    env["AEGISCTL_STATE_DIR"] = str(base / "state")
    count_before = conn.execute("SELECT count(*) FROM api_usage_events").fetchone()
    writer.set_phase("baseline")
    time.sleep(5)  # the writer's baseline
    writer.set_phase("conversion")
    waits = LockWaits(dsn)
    waits.start()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "aegisctl", "--config", str(config), "schema",
                           "partition", "api_usage_events", "--by", "month", "--yes",
                           "--format", "json"], capture_output=True, text=True, env=env,
                          check=False)
    seconds = time.perf_counter() - started
    waits.stop.set()
    waits.join()
    writer.set_phase("after")
    time.sleep(2)
    if done.returncode != 0:
        raise SystemExit(f"conversion failed: {done.stderr or done.stdout}")
    report = json.loads(done.stdout)
    writer.stop()
    ids = writer.ids
    present = conn.execute("SELECT count(*) FROM api_usage_events WHERE id = ANY(%s)",
                           (ids,)).fetchone()
    kind = conn.execute("SELECT relkind::text FROM pg_class WHERE oid ="
                        " 'api_usage_events'::regclass").fetchone()
    steps = {s["step"]: s["held_seconds"] for s in report["steps"]}
    # The bound check and the swap take ACCESS EXCLUSIVE on the table; the build only reads
    # it (ACCESS SHARE) and locks the referenced api_keys against writes to api_keys.
    strong = [steps[name] for name in ("bound check", "swap")]
    during = writer.latencies("conversion")
    baseline = writer.latencies("baseline")
    return {
        "rows_before": count_before[0] if count_before else None,
        "seconds": round(seconds, 2),
        "relkind_after": kind[0] if kind else None,
        "steps_seconds": steps,
        "longest_strong_lock_seconds": max(strong),
        "writer_inserts_during": len(during),
        "writer_rows_per_s_during": round(len(during) / seconds, 1),
        "writer_max_ms": _ms(during),
        "writer_p99_ms": _ms(during, 99),
        "writer_longest_lock_wait_ms_sampled": round(waits.longest * 1000, 1),
        "writer_rows_per_s_baseline": round(len(baseline) / 5, 1),
        "writer_baseline_max_ms": _ms(baseline),
        "writer_baseline_p99_ms": _ms(baseline, 99),
        "writer_errors": writer.errors[:5],
        "rows_written_by_writer": len(ids),
        "rows_lost": len(ids) - (present[0] if present else 0),
    }


def _kind(text: str) -> str:
    for word, kind in (("DETACH PARTITION", "detach"), ("DROP TABLE", "drop"),
                       ("COMMENT ON", "comment"), ("count(", "count"),
                       ("set_config", "settings"), ("DELETE", "delete")):
        if word in text:
            return kind
    return "catalog and other"


def detach_and_drop_floor(conn: psycopg.Connection[Any], table: str,
                          cutoff: dt.datetime) -> tuple[float, list[str]]:
    """The physical floor: only the DETACH ... CONCURRENTLY and DROP statements for the
    expired months of `table` (the same data), no checks, no bookkeeping."""
    from psycopg import sql

    names = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass"
        "   AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''(.*)''\\)'))[1]"
        "       ::timestamptz <= %s ORDER BY 1", (table, cutoff)).fetchall()]
    started = time.perf_counter()
    for name in names:
        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY")
                     .format(sql.Identifier(table), sql.Identifier(name)))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    seconds = time.perf_counter() - started
    print(f"floor: detached and dropped {len(names)} partitions in {seconds:.3f}s",
          file=sys.stderr)
    return seconds, names


def _monthly(conn: psycopg.Connection[Any], table: str, start: dt.datetime) -> None:
    """`table`: api_usage_events' columns, one partition per month (aegisctl's create_month)
    over the MONTHS months from `start` and the current one, an index on created_at."""
    from psycopg import sql

    conn.execute(sql.SQL("CREATE TABLE {} (LIKE api_usage_events INCLUDING DEFAULTS)"
                         " PARTITION BY RANGE (created_at)").format(sql.Identifier(table)))
    conn.execute(sql.SQL("CREATE INDEX ON {} (created_at)").format(sql.Identifier(table)))
    parent = find_relation(conn, f"public.{table}", kinds="p")
    key = PartitionKey("created_at", "timestamp with time zone")
    for n in range(MONTHS + 1):
        lower = add_months(start, n)
        create_month(conn, parent, key, lower, add_months(lower, 1), None, LockPolicy())


def _relfilenodes(conn: psycopg.Connection[Any], table: str) -> dict[str, int]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT c.relname, c.relfilenode FROM pg_inherits i JOIN pg_class c"
        " ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass", (table,)).fetchall()}


def timed_cleanup(base: Path, dsn: str, conn: psycopg.Connection[Any], table: str,
                  counts: str, clock: dt.datetime) -> dict[str, Any]:
    """`cleanup run` with the seed's policy (13mo, archive off, VACUUM off) on `table`,
    every statement it sends on `conn` timed."""
    survivors = _relfilenodes(conn, table)
    config = base / f"retention-{counts}.yaml"
    config.write_text(yaml.safe_dump({
        "targets": {"primary": {"dsn": dsn}},
        "backup": {"directory": str(base / "backups")},
        "cleanup": {"vacuum": False, "partition_row_counts": counts, "policies": {
            "api_usage_events": {"table": table, "column": "created_at",
                                 "max_age": "13mo"}}}}))
    loaded = load_config(str(config), env={})
    statements: list[tuple[float, str]] = []
    original = psycopg.Connection.execute

    def timed(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, query, *args, **kwargs)
        finally:
            text = query.as_string(self) if hasattr(query, "as_string") else str(query)
            statements.append((time.perf_counter() - started, text))

    psycopg.Connection.execute = timed  # type: ignore[method-assign]
    started = time.perf_counter()
    try:
        report = run_cleanup(loaded, "primary", conn, CleanupOptions(now=clock))
    finally:
        psycopg.Connection.execute = original  # type: ignore[method-assign]
    seconds = time.perf_counter() - started
    by_kind: dict[str, list[float]] = {}
    for took, text in statements:
        by_kind.setdefault(_kind(text), []).append(took)
    result = report.policies[0]
    after = _relfilenodes(conn, table)
    return {
        "partition_row_counts": counts,
        "status": result.status,
        "error": result.error,
        "partitions_dropped": result.partitions_dropped,
        "partition_rows": result.partition_rows,
        "partition_rows_exact": result.partition_rows_exact,
        "batch_deleted_rows": result.deleted_rows,
        "seconds": round(seconds, 4),
        "statements": len(statements),
        "statements_by_kind": {k: [len(v), round(sum(v), 4)]
                               for k, v in sorted(by_kind.items())},
        "detach_and_drop_seconds": round(sum(
            d for d, text in statements
            if "DETACH PARTITION" in text or text.startswith("DROP TABLE")), 4),
        "slowest_statements": [[round(d, 4), t[:90]]
                               for d, t in sorted(statements, reverse=True)[:5]],
        "surviving_partitions_rewritten": [name for name, node in after.items()
                                           if survivors.get(name) != node],
    }


def retention_phase(base: Path, dsn: str, conn: psycopg.Connection[Any], rows: int,
                    start: dt.datetime, now: dt.datetime) -> dict[str, Any]:
    """The same rows four times (and an empty monthly table for a first, unmeasured run): two
    monthly tables for `cleanup run` (exact row counts, the
    default, and estimated ones), one for the bare DETACH + DROP floor, one plain table for
    the DELETE."""
    for table in ("usage_months", "usage_estimate", "usage_floor", "usage_warmup"):
        _monthly(conn, table, start)
    conn.execute("CREATE TABLE usage_plain (LIKE api_usage_events INCLUDING DEFAULTS)")
    conn.execute("CREATE INDEX ON usage_plain (created_at)")
    started = time.perf_counter()
    load(conn, "usage_months", rows, start, now)
    for table in ("usage_estimate", "usage_floor", "usage_plain"):
        conn.execute(f"INSERT INTO {table} SELECT * FROM usage_months")
    for table in ("usage_months", "usage_estimate", "usage_floor", "usage_plain"):
        conn.execute(f"VACUUM ANALYZE {table}")
    conn.execute("CHECKPOINT")
    print(f"retention tables loaded in {time.perf_counter() - started:.1f}s", file=sys.stderr)

    clock = month_start(now)  # the policy's "now": the cutoff falls on a month start
    cutoff = add_months(clock, -13)
    expired = conn.execute("SELECT count(*) FROM usage_months WHERE created_at < %s",
                           (cutoff,)).fetchone()
    # The first run in a process imports what it needs: not what is measured here.
    timed_cleanup(base, dsn, conn, "usage_warmup", "exact", clock)
    floor_s, floor_names = detach_and_drop_floor(conn, "usage_floor", cutoff)
    exact = timed_cleanup(base, dsn, conn, "usage_months", "exact", clock)
    estimate = timed_cleanup(base, dsn, conn, "usage_estimate", "estimate", clock)

    size_before = conn.execute("SELECT pg_table_size('usage_plain')").fetchone()
    started = time.perf_counter()
    deleted = conn.execute("DELETE FROM usage_plain WHERE created_at < %s", (cutoff,)).rowcount
    delete_s = time.perf_counter() - started
    conn.execute("ANALYZE usage_plain")
    size_after = conn.execute("SELECT pg_table_size('usage_plain')").fetchone()
    dead = conn.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname ="
                        " 'usage_plain'").fetchone()
    started = time.perf_counter()
    conn.execute("VACUUM usage_plain")  # what the DELETE still owes before space is reusable
    vacuum_s = time.perf_counter() - started
    for run in (exact, estimate):
        run["speedup"] = round(delete_s / run["seconds"], 1)
        run["speedup_with_vacuum"] = round((delete_s + vacuum_s) / run["seconds"], 1)
        run["over_floor"] = round(run["seconds"] / floor_s, 2) if floor_s else None
    return {
        "cutoff": cutoff.isoformat(),
        "expired_rows": expired[0] if expired else None,
        "cleanup_exact": exact,
        "cleanup_estimate": estimate,
        "floor_partitions": floor_names,
        "floor_detach_and_drop_seconds": round(floor_s, 4),
        "speedup_floor": round(delete_s / floor_s, 1) if floor_s else None,
        "delete_rows": deleted,
        "delete_seconds": round(delete_s, 3),
        "delete_vacuum_seconds": round(vacuum_s, 3),
        "plain_table_bytes_before_after": [size_before[0] if size_before else None,
                                           size_after[0] if size_after else None],
        "plain_dead_tuples_after_delete": dead[0] if dead else None,
    }


def split_phase(base: Path, dsn: str, conn: psycopg.Connection[Any],
                args: argparse.Namespace) -> dict[str, Any]:
    """`maint partitions --split-legacy` on the converted table (every row in its legacy
    partition, which also takes the writers' rows: the current month is in its range) while
    the writers go on: their worst insert during the split against before it, the batches,
    the swap, rows lost."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEGISCTL_")}
    env["AEGISCTL_STATE_DIR"] = str(base / "state")
    writer = Writers(dsn, args.rate, args.writers)
    writer.start()
    writer.set_phase("baseline")
    time.sleep(5)
    writer.set_phase("split")
    waits = LockWaits(dsn)
    waits.start()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "aegisctl", "--config",
                           str(base / "aegisctl.yaml"), "maint", "partitions", "--split-legacy",
                           "--table", "api_usage_events", "--yes", "--format", "json"],
                          capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    waits.stop.set()
    waits.join()
    writer.set_phase("after")
    time.sleep(2)
    writer.stop()
    if done.returncode != 0:
        raise SystemExit(f"split failed: {done.stderr or done.stdout}")
    (split,) = json.loads(done.stdout)["splits"]
    ids = writer.ids
    present = conn.execute("SELECT count(*) FROM api_usage_events WHERE id = ANY(%s)",
                           (ids,)).fetchone()
    during, baseline = writer.latencies("split"), writer.latencies("baseline")
    return {
        "seconds": round(seconds, 2), "status": split["status"], "months": len(split["months"]),
        "copied_rows": split["copied_rows"], "batches": split["batches"],
        "longest_batch_seconds": split["longest_batch_seconds"],
        "swap_seconds": split["swap_seconds"],
        "writer_rows_per_s_during": round(len(during) / seconds, 1),
        "writer_max_ms": _ms(during), "writer_p99_ms": _ms(during, 99),
        "writer_baseline_max_ms": _ms(baseline), "writer_baseline_p99_ms": _ms(baseline, 99),
        "writer_longest_lock_wait_ms_sampled": round(waits.longest * 1000, 1),
        "writer_errors": writer.errors[:5],
        "rows_lost": len(ids) - (present[0] if present else 0),
    }


def summarise_split(s: dict[str, Any]) -> None:
    print(f"\nsplit of the legacy partition into {s['months']} months: {s['copied_rows']} rows "
          f"copied in {s['batches']} batches (longest {s['longest_batch_seconds']}s), swap "
          f"{s['swap_seconds']}s, {s['seconds']}s in all; writers at "
          f"{s['writer_rows_per_s_during']} rows/s: worst insert {s['writer_max_ms']} ms (p99 "
          f"{s['writer_p99_ms']}; before: {s['writer_baseline_max_ms']} ms, p99 "
          f"{s['writer_baseline_p99_ms']}; longest lock wait seen "
          f"{s['writer_longest_lock_wait_ms_sampled']} ms), rows lost {s['rows_lost']}",
          file=sys.stderr)


def conversion(base: Path, dsn: str, conn: psycopg.Connection[Any], args: argparse.Namespace,
               start: dt.datetime, now: dt.datetime) -> dict[str, Any]:
    started = time.perf_counter()
    load(conn, "api_usage_events", args.rows, start, now)
    for statement in WIDEN:
        conn.execute(statement)
    conn.execute("VACUUM ANALYZE api_usage_events")
    size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size("
                        "'api_usage_events'))").fetchone()
    print(f"data: api_usage_events, {args.rows} rows uniform from {start:%Y-%m-%d} to "
          f"now ({size[0] if size else '?'} with indexes), primary key widened; "
          f"loaded in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    writer = Writers(dsn, args.rate, args.writers)
    writer.start()
    return convert_phase(base, dsn, conn, writer)


def summarise_conversion(rows: int, c: dict[str, Any]) -> None:
    print(f"\nconversion of {rows} rows in {c['seconds']}s with a writer at "
          f"{c['writer_rows_per_s_during']} rows/s: worst insert {c['writer_max_ms']} ms "
          f"(p99 {c['writer_p99_ms']} ms; target <= 200; before the conversion "
          f"{c['writer_baseline_max_ms']} ms, p99 {c['writer_baseline_p99_ms']} ms; "
          f"longest wait for a lock seen {c['writer_longest_lock_wait_ms_sampled']} ms), "
          f"longest strong lock "
          f"{c['longest_strong_lock_seconds']}s (target <= 1), rows lost {c['rows_lost']} "
          f"(target 0)", file=sys.stderr)


def summarise_retention(r: dict[str, Any]) -> None:
    floor = r["floor_detach_and_drop_seconds"]
    print(f"\nretention: DELETE of {r['delete_rows']} rows {r['delete_seconds']}s (+ the VACUUM "
          f"it owes {r['delete_vacuum_seconds']}s); floor, bare DETACH CONCURRENTLY + DROP of "
          f"the same {len(r['floor_partitions'])} months and nothing else: {floor}s "
          f"({r['speedup_floor']}x the DELETE)", file=sys.stderr)
    for run in (r["cleanup_exact"], r["cleanup_estimate"]):
        print(f"cleanup run, partition_row_counts {run['partition_row_counts']}: dropped "
              f"{len(run['partitions_dropped'])} partitions ({run['partition_rows']} rows, "
              f"{'exact' if run['partition_rows_exact'] else 'estimated'}) in {run['seconds']}s"
              f", {run['statements']} statements: {run['speedup']}x the DELETE (target >= 50; "
              f"{run['speedup_with_vacuum']}x with its VACUUM), {run['over_floor']}x the floor;"
              f" surviving partitions rewritten: "
              f"{run['surviving_partitions_rewritten'] or 'none'}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=500, help="writer rows/s in all")
    parser.add_argument("--writers", type=int, default=4, help="writer connections")
    parser.add_argument("--keep", action="store_true", help="keep the server's folder")
    parser.add_argument("--skip-retention", action="store_true",
                        help="only the conversion phase")
    parser.add_argument("--skip-conversion", action="store_true",
                        help="only the retention phase")
    parser.add_argument("--split", action="store_true",
                        help="after the conversion, split its legacy partition into months "
                             "(maint partitions --split-legacy) with the writers going")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="aegisctl-bench-partition-"))
    base.chmod(0o755)
    server = EmbeddedServer(base / "pgdata", database="aegis")
    try:
        server.ensure_running()
        dsn = server.uri()
        with psycopg.connect(dsn, autocommit=True) as conn:
            init_schema(conn, SchemaSettings(embedding_dim=1536), wait_lock=60)
            row = conn.execute("SELECT now()").fetchone()
            assert row is not None
            now = row[0].astimezone(dt.UTC)
            start = add_months(month_start(now), -MONTHS)
            results: dict[str, Any] = {"rows": args.rows}
            if not args.skip_conversion:
                results["conversion"] = conversion(base, dsn, conn, args, start, now)
                print(f"conversion: {results['conversion']}", file=sys.stderr)
                if args.split:
                    results["split"] = split_phase(base, dsn, conn, args)
                    print(f"split: {results['split']}", file=sys.stderr)
            if not args.skip_retention:
                results["retention"] = retention_phase(base, dsn, conn, args.rows, start, now)
                print(f"retention: {results['retention']}", file=sys.stderr)
        print(json.dumps(results, indent=2))
        if "conversion" in results:
            summarise_conversion(args.rows, results["conversion"])
        if "split" in results:
            summarise_split(results["split"])
        if "retention" in results:
            summarise_retention(results["retention"])
    finally:
        server.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
