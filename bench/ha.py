"""Benchmark: leader-only jobs and writes through switchovers and failovers of a real Patroni
cluster (two members on 127.0.0.1, etcd, the embedded PostgreSQL binaries: the test fixture
of tests/patroni_fixtures.py).

While the cluster goes through SWITCHOVERS planned switchovers (`patronictl switchover`) and
FAILOVERS failovers (kill -9 of the leader's Patroni and postmaster, then the old member
rejoins):
  - each member's "host" runs `aegisctl jobs run probe` every INTERVAL seconds, as a systemd
    timer would, with its own `patroni.local_url`: a tick where more than one host ran the job
    is a job run twice;
  - a writer inserts a row every 0.2 s through aegisctl's connection to the cluster target
    (leader need, role proven on the connection) and records what the server was;
  - after each promotion: the time until the first job run on the new leader;
  - a cleaner runs `aegisctl cleanup run` on the cluster target again and again (a run a
    change stops exits 5; the next one continues), deleting CLEANUP_ROWS expired rows in small
    archived batches paced to span the changes: every seeded row must end up deleted exactly
    once and archived exactly once.

Reported: jobs run twice (target 0), writes that reached a non-leader (target 0), writes
refused (exit-5 class) or unreachable during the changes, the promotion-to-first-job times
(target: within one interval + 10 s), every row written is on the final leader, and cleanup
rows (batches) lost (deleted, in no archive: target 0) or repeated (archived twice, or archived
but back in the table after a failover: target 0).

Usage: python bench/ha.py [--switchovers 5] [--failovers 3] [--interval 30] [--cleanup-rows N]
Runs under `nice`; a full run takes about (switchovers + failovers) * (2 * interval + 30) s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from patroni_fixtures import PatroniCluster, start_cluster

DB = "aegis"


def host_config(cluster: PatroniCluster, member: Any, folder: Path, interval: int) -> Path:
    config = {
        "targets": {"cluster": {"dsn": "postgresql://postgres@{host}:{port}/" + DB,
                                "patroni": {"urls": cluster.urls, "local_url": member.api_url}}},
        "connection": {"retry": {"attempts": 1}},
        "scheduler": {"state_dir": str(folder / f"state-{member.name}")},
        "schedule": {"probe": {"command": "health", "every": f"{interval}s"}},
    }
    path = folder / f"{member.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Ticker(threading.Thread):
    """Every host's timer fires at the same tick; records (tick, member, status, when)."""

    def __init__(self, configs: dict[str, Path], interval: int) -> None:
        super().__init__(daemon=True)
        self.configs, self.interval = configs, interval
        self.runs: list[tuple[int, str, str, float]] = []
        self.stop = threading.Event()

    def _one(self, tick: int, member: str, config: Path) -> None:
        exe = Path(sys.executable).with_name("aegisctl")
        done = subprocess.run([str(exe), "--config", str(config), "jobs", "run", "probe",
                               "--format", "json"], capture_output=True, text=True, timeout=300)
        try:
            status = json.loads(done.stdout)["status"]
        except (ValueError, KeyError):
            status = f"exit {done.returncode}"
        self.runs.append((tick, member, status, time.monotonic()))

    def run(self) -> None:
        tick = 0
        while not self.stop.is_set():
            started = time.monotonic()
            threads = [threading.Thread(target=self._one, args=(tick, m, c))
                       for m, c in self.configs.items()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            tick += 1
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


class Writer(threading.Thread):
    def __init__(self, config: Path) -> None:
        super().__init__(daemon=True)
        self.config = config
        self.outcomes: dict[str, int] = {}
        self.on_non_leader = 0
        self.written = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        from aegisctl.config import load_config
        from aegisctl.db import connect
        from aegisctl.errors import ConnectionFailed, RoleChanged
        from aegisctl.targets import resolve_target

        loaded = load_config(str(self.config), env={})
        while not self.stop.is_set():
            outcome = "ok"
            try:
                target = resolve_target(loaded, "cluster", env={})
                with connect(loaded, target, "bench write") as conn:
                    row = conn.execute("INSERT INTO ha_writes (in_recovery) "
                                       "SELECT pg_is_in_recovery() RETURNING in_recovery"
                                       ).fetchone()
                    self.on_non_leader += bool(row and row[0])
                    self.written += 1
            except RoleChanged:
                outcome = "refused (not the leader)"
            except ConnectionFailed:
                outcome = "unreachable"
            except psycopg.OperationalError:
                outcome = "connection lost mid-write (rolled back)"
            except Exception as exc:
                outcome = type(exc).__name__
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            self.stop.wait(0.2)


CLEANUP_BATCH = 200


def cleaner_config(cluster: PatroniCluster, folder: Path) -> Path:
    config = {
        "targets": {"cluster": {"dsn": "postgresql://postgres@{host}:{port}/" + DB,
                                "patroni": {"urls": cluster.urls}}},
        "connection": {"retry": {"attempts": 1}},
        "scheduler": {"state_dir": str(folder / "state-cleaner")},
        "cleanup": {"batch_size": CLEANUP_BATCH, "min_batch_size": CLEANUP_BATCH,
                    "pause": "2s", "vacuum": False,  # ~100 rows/s: spans the changes
                    "archive_dir": str(folder / "cleanup-archive"), "upload_archives": False,
                    "policies": {"ha_events": {"table": "ha_events", "column": "ts",
                                               "max_age": "7d", "archive": True}}},
    }
    path = folder / "cleaner.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Cleaner(threading.Thread):
    """`cleanup run` again and again until nothing expired is left (or stopped)."""

    def __init__(self, config: Path) -> None:
        super().__init__(daemon=True)
        self.config = config
        self.exits: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        exe = Path(sys.executable).with_name("aegisctl")
        while not self.stop.is_set():
            done = subprocess.run([str(exe), "--config", str(self.config), "cleanup", "run",
                                   "--yes", "--format", "json"], capture_output=True, text=True,
                                  timeout=900)
            self.exits[done.returncode] = self.exits.get(done.returncode, 0) + 1
            self.stop.wait(1.0)


def seed_cleanup(cluster: PatroniCluster, rows: int) -> None:
    """Expired rows, replicated to every member before the first change (a kill -9 failover
    loses what the replica had not received: that is not the cleaner's doing)."""
    with cluster.leader().connect(DB) as conn:
        conn.execute("CREATE TABLE ha_events (id bigint PRIMARY KEY, ts timestamptz NOT NULL)")
        conn.execute("INSERT INTO ha_events SELECT g, now() - interval '30 days' "
                     "FROM generate_series(1, %s) g", (rows,))
        # Fresh rows too: a policy that would empty its table is refused (--allow-emptying).
        conn.execute("INSERT INTO ha_events SELECT g, now() + interval '1 day' "
                     "FROM generate_series(%s::bigint, %s::bigint) g", (rows + 1, rows + 100))
        conn.execute("CREATE INDEX ON ha_events (ts)")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with cluster.replica().connect(DB) as conn:
            row = conn.execute("SELECT count(*) FROM ha_events").fetchone()
        if row and row[0] == rows + 100:
            return
        time.sleep(1)
    raise SystemExit("the replica did not receive the seeded cleanup rows")


def cleanup_figures(cluster: PatroniCluster, archive_dir: Path, rows: int,
                    cleaner: Cleaner) -> None:
    import gzip
    from collections import Counter

    archived: Counter[int] = Counter()
    for path in archive_dir.rglob("*.jsonl.gz"):
        with gzip.open(path, "rt") as handle:
            for line in handle:
                if line.strip():
                    archived[int(json.loads(line)["id"])] += 1
    with cluster.leader().connect(DB) as conn:
        left = {int(r[0]) for r in conn.execute("SELECT id FROM ha_events WHERE id <= %s",
                                                (rows,)).fetchall()}
        fresh = conn.execute("SELECT count(*) FROM ha_events WHERE id > %s", (rows,)).fetchone()
    deleted = rows - len(left)
    lost = sum(1 for i in range(1, rows + 1) if i not in left and i not in archived)
    twice = sum(1 for n in archived.values() if n > 1)
    back = len(left & set(archived))
    print(f"cleanup: {deleted} of {rows} expired rows deleted ({len(left)} left), in batches of "
          f"{CLEANUP_BATCH}; fresh rows kept: {fresh[0] if fresh else '?'} of 100; runs by exit "
          f"code: {cleaner.exits} (5: stopped by a change, 3: no leader yet)")
    print(f"  rows deleted but in no archive (lost): {lost} (~{lost / CLEANUP_BATCH:.1f} "
          f"batches; target 0); archived twice: {twice}; archived but back in the table: {back}"
          f" (~{(twice + back) / CLEANUP_BATCH:.1f} batches repeated; target 0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switchovers", type=int, default=5)
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--interval", type=int, default=30)
    parser.add_argument("--cleanup-rows", type=int, default=None,
                        help="expired rows to clean (default: about the bench's length at "
                        "~80 rows/s)")
    args = parser.parse_args()
    if args.cleanup_rows is None:
        changes = args.switchovers + args.failovers
        args.cleanup_rows = 80 * (2 * args.interval + changes * (args.interval + 25))
    os.nice(10)
    for name in [n for n in os.environ if n.startswith(("AEGISCTL_", "PG"))]:
        del os.environ[name]
    cluster = start_cluster()
    folder = cluster.base / "bench"
    folder.mkdir()
    try:
        with cluster.leader().connect() as conn:
            conn.execute(f"CREATE DATABASE {DB}")
        from aegisctl.config import SchemaSettings
        from aegisctl.schema import init_schema

        with cluster.leader().connect(DB) as conn:
            init_schema(conn, SchemaSettings(embedding_dim=8), wait_lock=60)
            conn.execute("CREATE TABLE ha_writes (id bigserial PRIMARY KEY, "
                         "at timestamptz DEFAULT clock_timestamp(), in_recovery bool)")
        seed_cleanup(cluster, args.cleanup_rows)
        configs = {m.name: host_config(cluster, m, folder, args.interval)
                   for m in cluster.members}
        ticker, writer = Ticker(configs, args.interval), Writer(next(iter(configs.values())))
        cleaner = Cleaner(cleaner_config(cluster, folder))
        ticker.start()
        writer.start()
        cleaner.start()
        promotions: list[tuple[str, str, float, float]] = []  # kind, new leader, at, took
        events = ["switchover"] * args.switchovers + ["failover"] * args.failovers
        time.sleep(args.interval)
        for kind in events:
            started = time.monotonic()
            _old, new = cluster.switchover() if kind == "switchover" else cluster.kill_leader()
            took = cluster.promoted_at - started
            promotions.append((kind, new.name, cluster.promoted_at, took))
            print(f"{kind}: {new.name} takes writes {took:.1f}s after the change began",
                  flush=True)
            time.sleep(args.interval + 15)
        time.sleep(args.interval)
        ticker.stop.set()
        writer.stop.set()
        cleaner.stop.set()
        ticker.join(600)
        writer.join(60)
        cleaner.join(900)
        report(cluster, ticker, writer, promotions, args.interval)
        cleanup_figures(cluster, folder / "cleanup-archive", args.cleanup_rows, cleaner)
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)


def report(cluster: PatroniCluster, ticker: Ticker, writer: Writer,
           promotions: list[tuple[str, str, float, float]], interval: int) -> None:
    by_tick: dict[int, list[str]] = {}
    for tick, member, status, _ in ticker.runs:
        if status == "succeeded":
            by_tick.setdefault(tick, []).append(member)
    twice = sum(1 for members in by_tick.values() if len(members) > 1)
    missed = sum(1 for tick in {t for t, *_ in ticker.runs} if tick not in by_tick)
    statuses: dict[str, int] = {}
    for _, _, status, _ in ticker.runs:
        statuses[status] = statuses.get(status, 0) + 1
    print(f"\nticks: {len({t for t, *_ in ticker.runs})} (every {interval}s, "
          f"{len(cluster.members)} hosts); runs by status: {statuses}")
    print(f"jobs run twice in one tick: {twice} (target 0); ticks with no successful run: "
          f"{missed}")
    for kind, leader, at, took in promotions:
        first = min((when for _, member, status, when in ticker.runs
                     if member == leader and status == "succeeded" and when >= at), default=None)
        delay = f"{first - at:.1f}s" if first is not None else "none"
        print(f"  {kind}: {leader} writable {took:.1f}s after the change began; its first job "
              f"{delay} after that (target <= {interval + 10}s)")
    with cluster.leader().connect(DB) as conn:
        row = conn.execute("SELECT count(*), count(*) FILTER (WHERE in_recovery) "
                           "FROM ha_writes").fetchone()
    print(f"writes: {writer.outcomes}; reached a non-leader: {writer.on_non_leader} (target 0); "
          f"rows on the final leader: {row[0] if row else '?'} of {writer.written} committed")


if __name__ == "__main__":
    main()
