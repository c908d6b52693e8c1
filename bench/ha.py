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
  - after each promotion: the time until the first job run on the new leader.

Reported: jobs run twice (target 0), writes that reached a non-leader (target 0), writes
refused (exit-5 class) or unreachable during the changes, the promotion-to-first-job times
(target: within one interval + 10 s), and every row written is on the final leader.

Usage: python bench/ha.py [--switchovers 5] [--failovers 3] [--interval 30]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switchovers", type=int, default=5)
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--interval", type=int, default=30)
    args = parser.parse_args()
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
        configs = {m.name: host_config(cluster, m, folder, args.interval)
                   for m in cluster.members}
        ticker, writer = Ticker(configs, args.interval), Writer(next(iter(configs.values())))
        ticker.start()
        writer.start()
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
        ticker.join(600)
        writer.join(60)
        report(cluster, ticker, writer, promotions, args.interval)
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
