"""Benchmark: `aegisctl cleanup run` against one plain DELETE of the same rows, in the same run,
on the same server, with a concurrent writer and a streaming standby attached.

Data: container_metrics with ROWS rows (default 2,000,000), timestamps uniform over the last 60
days across 7 containers, so half the rows are older than the 30-day policy. A writer thread
inserts one metrics row every 5 ms (autocommit, like the agent's collector) during both
deletes and records each insert's latency; a sampler reads the standby's replay lag from
pg_stat_replication on the primary every 50 ms.

Phases (each on the same table, the expired half refilled to the same shape between them):
  1. plain:     DELETE FROM container_metrics WHERE "timestamp" < now() - interval '30 days'
  2. cleanup:   aegisctl cleanup run --yes (a subprocess; default settings but cleanup.vacuum
                off so every phase measures the delete alone; VACUUM is timed after each)
  3. throttled: the same with cleanup.max_replica_lag = --max-lag (default 2MB), a bound the
                standby's lag does pass, to show the batches throttling

Reported: rows/s of each and the cleanup/plain ratio (target >= 0.5), the longest single batch
transaction (target <= 1 s), the writer's worst insert latency during each (target <= 200 ms
during cleanup), and the standby's worst replay lag during each.

Usage: python bench/cleanup.py [--rows 2000000] [--max-lag 2MB] [--batch-size 5000] [--keep]
(starts its own embedded primary and a streaming standby cloned with pg_basebackup)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
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

from aegisctl.config import SchemaSettings
from aegisctl.local import EmbeddedServer
from aegisctl.schema import init_schema

EXPIRED = "\"timestamp\" < now() - interval '30 days'"


class Writer(threading.Thread):
    """Inserts a row every 5 ms; latencies are tagged with the phase running at the time."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.phase = "idle"
        self.latencies: dict[str, list[float]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.perf_counter()
                conn.execute("INSERT INTO container_metrics (container_name, cpu_percent)"
                             " VALUES ('writer', 1.0)")
                self.latencies.setdefault(self.phase, []).append(time.perf_counter() - started)
                time.sleep(0.005)


class LagSampler(threading.Thread):
    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.phase = "idle"
        self.samples: dict[str, list[tuple[int, float]]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                row = conn.execute(
                    "SELECT COALESCE(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0),"
                    " COALESCE(max(extract(epoch FROM replay_lag)), 0)::float8"
                    " FROM pg_stat_replication").fetchone()
                assert row is not None
                self.samples.setdefault(self.phase, []).append((int(row[0]), float(row[1])))
                time.sleep(0.05)


def fill(conn: psycopg.Connection[Any], rows: int, only_expired: bool = False) -> None:
    """Rows uniform over 60 days (or just the older 30 days' share)."""
    first = rows // 2 + 1 if only_expired else 1
    conn.execute(
        "INSERT INTO container_metrics (container_name, cpu_percent, mem_usage_mb, mem_percent,"
        " net_io_mb, block_io_mb, \"timestamp\")"
        " SELECT 'container-' || (i %% 7), random() * 100, random() * 4096, random() * 100,"
        "        random() * 10, random() * 10,"
        "        now() - make_interval(secs => i::float8 * 60 * 86400 / %(rows)s)"
        "   FROM generate_series(%(first)s, %(rows)s) i", {"rows": rows, "first": first})


def expired_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(f"SELECT count(*) FROM container_metrics WHERE {EXPIRED}").fetchone()
    assert row is not None
    return int(row[0])


def summarize(name: str, writer: Writer, sampler: LagSampler) -> dict[str, Any]:
    lat = writer.latencies.get(name, [0.0])
    lag = sampler.samples.get(name, [(0, 0.0)])
    return {"writer_inserts": len(lat), "writer_max_ms": round(1000 * max(lat), 1),
            "writer_p99_ms": round(1000 * sorted(lat)[int(0.99 * (len(lat) - 1))], 1),
            "writer_median_ms": round(1000 * statistics.median(lat), 2),
            "standby_max_lag_bytes": max(b for b, _ in lag),
            "standby_max_lag_seconds": round(max(s for _, s in lag), 3)}


def start_standby(primary: EmbeddedServer, base: Path) -> EmbeddedServer:
    status = primary.status()
    parent = base / "standby"
    parent.mkdir(mode=0o755, exist_ok=True)
    ids = primary._service_uid()
    if ids:
        os.chown(parent, *ids)
    primary._run([primary._bin("pg_basebackup"), "-D", str(parent / "pgdata"), "-R", "-X",
                  "stream", "-c", "fast", "-h", str(status.socket_dir), "-U", "postgres"],
                 "clone a standby")
    standby = EmbeddedServer(parent / "pgdata", database="postgres")
    standby.ensure_running()
    return standby


def cleanup_phase(phase: str, base: Path, dsn: str, args: argparse.Namespace, max_lag: str,
                  writer: Writer, sampler: LagSampler) -> dict[str, Any]:
    """Refill the expired half, then time `aegisctl cleanup run --yes` as a subprocess."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        fill(conn, args.rows, only_expired=True)
        conn.execute("VACUUM ANALYZE container_metrics")
        n = expired_count(conn)
    config = base / f"{phase}.yaml"
    config.write_text(yaml.safe_dump({
        "targets": {"primary": {"dsn": dsn}},
        "backup": {"directory": str(base / "backups")},
        "cleanup": {"batch_size": args.batch_size, "vacuum": False,
                    "max_replica_lag": max_lag, "max_replica_lag_time": args.max_lag_time,
                    "policies": {"container_metrics": {
                        "table": "container_metrics", "column": "timestamp",
                        "max_age": "30d"}}}}))
    time.sleep(2)
    writer.phase = sampler.phase = phase
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "aegisctl", "--config", str(config),
                           "cleanup", "run", "--yes", "--format", "json"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    time.sleep(1)
    writer.phase = sampler.phase = "idle"
    if proc.returncode != 0:
        raise SystemExit(f"cleanup failed ({proc.returncode}): {proc.stderr}")
    report = json.loads(proc.stdout)
    policy = report["policies"][0]
    # The command's own time (check the policy, delete), like the plain DELETE's timing, which
    # leaves out psql's start too; the wall time with interpreter start is reported beside it.
    own = (dt.datetime.fromisoformat(report["finished_at"])
           - dt.datetime.fromisoformat(report["started_at"])).total_seconds()
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE container_metrics")
        vacuum_seconds = time.perf_counter() - started
        left = expired_count(conn)
    return {
        "max_replica_lag": max_lag, "rows": policy["deleted_rows"], "expected": n,
        "left_expired": left, "seconds": round(own, 2),
        "wall_seconds_with_process_start": round(wall, 2),
        "rows_per_s": round(policy["deleted_rows"] / own),
        "rows_per_s_with_process_start": round(policy["deleted_rows"] / wall),
        "batches": policy["batches"], "longest_batch_seconds": policy["longest_batch_seconds"],
        "throttled": policy["throttled"], "throttle_seconds": policy["throttle_seconds"],
        "vacuum_seconds": round(vacuum_seconds, 2), **summarize(phase, writer, sampler)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--max-lag", default="2MB", help="cleanup.max_replica_lag")
    parser.add_argument("--max-lag-time", default="1s", help="cleanup.max_replica_lag_time")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--keep", action="store_true", help="keep the servers' folder")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="aegisctl-bench-cleanup-"))
    base.chmod(0o755)
    primary = EmbeddedServer(base / "pgdata", database="aegis")
    standby = None
    try:
        primary.ensure_running()
        dsn = primary.uri()
        with psycopg.connect(dsn, autocommit=True) as conn:
            init_schema(conn, SchemaSettings(embedding_dim=1536), wait_lock=60)
            conn.execute("ALTER TABLE container_metrics SET (autovacuum_enabled = false)")
        standby = start_standby(primary, base)
        print(f"data: container_metrics, {args.rows} rows uniform over 60 days, 7 containers; "
              "half older than the 30-day policy", file=sys.stderr)

        writer, sampler = Writer(dsn), LagSampler(dsn)
        writer.start()
        sampler.start()
        results: dict[str, Any] = {"rows": args.rows}
        with psycopg.connect(dsn, autocommit=True) as conn:
            started = time.perf_counter()
            fill(conn, args.rows)
            conn.execute("VACUUM ANALYZE container_metrics")
            print(f"loaded in {time.perf_counter() - started:.1f}s", file=sys.stderr)

            # Phase 1: one plain DELETE.
            n = expired_count(conn)
            time.sleep(2)
            writer.phase = sampler.phase = "plain"
            started = time.perf_counter()
            deleted = conn.execute(f"DELETE FROM container_metrics WHERE {EXPIRED}").rowcount
            plain_seconds = time.perf_counter() - started
            time.sleep(1)  # let the standby's lag after the commit show
            writer.phase = sampler.phase = "idle"
            started = time.perf_counter()
            conn.execute("VACUUM ANALYZE container_metrics")
            results["plain"] = {"rows": deleted, "expected": n, "seconds": round(plain_seconds, 2),
                                "rows_per_s": round(deleted / plain_seconds),
                                "vacuum_seconds": round(time.perf_counter() - started, 2),
                                **summarize("plain", writer, sampler)}
            print(f"plain DELETE: {results['plain']}", file=sys.stderr)

        for phase, max_lag in (("cleanup", "16MB"), ("throttled", args.max_lag)):
            results[phase] = cleanup_phase(phase, base, dsn, args, max_lag, writer, sampler)
            print(f"{phase}: {results[phase]}", file=sys.stderr)
        writer.stop.set()
        sampler.stop.set()
        results["ratio_rows_per_s"] = round(results["cleanup"]["rows_per_s"]
                                            / results["plain"]["rows_per_s"], 3)
        results["settings"] = {"batch_size": args.batch_size,
                               "max_replica_lag_time": args.max_lag_time}
        print(json.dumps(results, indent=2))
        c, t, p = results["cleanup"], results["throttled"], results["plain"]
        print(f"\ncleanup {c['rows_per_s']} rows/s vs plain DELETE {p['rows_per_s']} rows/s: "
              f"{results['ratio_rows_per_s']}x (target >= 0.5); with process start "
              f"{c['rows_per_s_with_process_start']} rows/s\n"
              f"longest batch {max(c['longest_batch_seconds'], t['longest_batch_seconds'])}s "
              f"(target <= 1)\n"
              f"writer worst insert: cleanup {c['writer_max_ms']} / {t['writer_max_ms']} ms "
              f"(target <= 200), plain DELETE {p['writer_max_ms']} ms\n"
              f"standby worst replay lag: plain DELETE {p['standby_max_lag_bytes']} bytes / "
              f"{p['standby_max_lag_seconds']}s; cleanup (bound 16MB) "
              f"{c['standby_max_lag_bytes']} bytes / {c['standby_max_lag_seconds']}s, "
              f"{c['throttled']} throttles; cleanup (bound {t['max_replica_lag']}) "
              f"{t['standby_max_lag_bytes']} bytes / {t['standby_max_lag_seconds']}s, "
              f"{t['throttled']} throttles, {t['rows_per_s']} rows/s", file=sys.stderr)
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
