"""Diagnostics benchmark: every `aegisctl diag` topic and the whole `aegisctl check` on a database
with a few hundred tables.

    python bench/diag.py [--tables 300] [--runs 5]

Builds the Aegis schema plus N extra tables (id primary key, two more indexes, 100 rows each);
every tenth also has a vector(64) column with 200 embeddings and an HNSW index. Then times each
topic (median and worst of --runs, each on a fresh connection, as the CLI does) through the same
functions the CLI calls. The issue asks for "well under a second" per diagnostic.

It starts its own embedded PostgreSQL in a temporary folder under /tmp, or uses the server in
$AEGISCTL_BENCH_DSN (the user must be allowed to CREATE DATABASE; a database diagbench is
dropped and recreated there).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
    from aegisctl.diagnostics.checks import registered_checks, run_target
    from aegisctl.diagnostics.topics import TOPICS, DiagOptions, run_topic
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

        rows.append((f"check (all {len(specs) + 1} checks, recall sample 10)",
                     *timed(check, args.runs)))
        width = max(len(r[0]) for r in rows)
        for name, median, worst in rows:
            flag = "" if worst < 1000 else "  <-- over 1 s"
            print(f"{name:<{width}}  median {median:7.1f} ms  worst {worst:7.1f} ms{flag}")
        slowest = max(rows, key=lambda r: r[1])
        print(f"slowest median: {slowest[0]} {slowest[1]:.1f} ms")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
