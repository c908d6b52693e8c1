"""Benchmark: `aegisctl backup create` against bare `pg_dump` in the same run, on the same disk.

Builds a database with the Aegis schema, ROWS episodic memories with 1536-d embeddings (topics
drawn in a 48-d latent space, projected to 1536 with a fixed random matrix, noise added,
normalised: shaped like real text embeddings) plus operational rows (container metrics, API
usage), then times:

  bare pg_dump -Fc --compress=gzip:1    vs  aegisctl backup create (custom, compress 1)
  bare pg_dump -Fd -j2 --compress=gzip:1 vs aegisctl backup create --dump-format directory -j 2
  aegisctl backup restore --target-db (custom archive, one transaction)

aegisctl's create includes its manifest (exact row counts in the dump's snapshot), sha256 of
the archive, fsync and the quick verification (pg_restore --list).

Usage: python bench/backup.py [--rows 50000]      (starts its own embedded PostgreSQL)
       AEGISCTL_BENCH_DSN=postgresql://... python bench/backup.py   (an existing server; the
       user must be able to create databases)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
import yaml
from psycopg import sql

from aegisctl.backup.tools import child_conninfo, choose_pg_dump
from aegisctl.config import SchemaSettings
from aegisctl.local import EmbeddedServer
from aegisctl.schema import init_schema

DIM = 1536
DB = "aegis_bench_backup"


def embeddings(rows: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(200, 48))
    projection = rng.normal(size=(48, DIM)) / np.sqrt(48)
    latent = topics[rng.integers(0, 200, rows)] + 0.3 * rng.normal(size=(rows, 48))
    vectors = latent @ projection + 0.05 * rng.normal(size=(rows, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def load(conn: psycopg.Connection, rows: int) -> None:
    vectors = embeddings(rows)
    conn.execute("DROP INDEX IF EXISTS idx_episodic_embedding")
    events = ["task_completed"] * 60 + ["chat"] * 30 + ["deploy"] * 9 + ["error"]
    from pgvector.psycopg import register_vector

    register_vector(conn)
    with conn.cursor() as cur, cur.copy(
            "COPY episodic_memory (event_type, summary, embedding) FROM STDIN WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["varchar", "text", "vector"])
        for i in range(rows):
            copy.write_row((events[i % len(events)], f"memory {i} about topic {i % 200}",
                            vectors[i]))
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute("CREATE INDEX idx_episodic_embedding ON episodic_memory "
                 "USING hnsw (embedding vector_cosine_ops)")
    conn.execute("INSERT INTO container_metrics (container_name, cpu_percent, mem_usage_mb)"
                 " SELECT 'ctr' || (g %% 20), random() * 100, random() * 4096"
                 " FROM generate_series(1, %s) g", (rows * 4,))
    conn.execute("ANALYZE")


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(argv[:3])}...: {done.stderr.strip()[-400:]}")
    return elapsed


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="aegisctl-bench-backup-", dir="/tmp"))
    base.chmod(0o755)
    server = None
    try:
        admin_dsn = os.environ.get("AEGISCTL_BENCH_DSN")
        if not admin_dsn:
            server = EmbeddedServer(base / "pgdata", database="postgres")
            admin_dsn = server.ensure_running().uri or ""
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(DB)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
            major = int(admin.execute("SHOW server_version_num").fetchone()[0]) // 10000
        dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=DB)
        with psycopg.connect(dsn, autocommit=True) as conn:
            init_schema(conn, SchemaSettings(embedding_dim=DIM, extensions=["vector"]),
                        wait_lock=60)
            start = time.perf_counter()
            load(conn, args.rows)
            db_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            print(f"data: {args.rows} episodic memories x {DIM}-d (48-d latent topics projected,"
                  f" noise, normalised) + {args.rows * 4} container_metrics rows; database "
                  f"{db_size / 1e6:.0f} MB, loaded in {time.perf_counter() - start:.0f} s")
        tools = choose_pg_dump(None, major)
        conninfo, env = child_conninfo(dsn, None, "bench")
        out = base / "out"
        out.mkdir()
        cfg = base / "aegisctl.yaml"
        cfg.write_text(yaml.safe_dump({"targets": {"bench": {"dsn": dsn}},
                                       "backup": {"directory": str(out / "aegisctl"),
                                                  "compress": 1}}))
        aegisctl = [shutil.which("aegisctl") or str(Path(sys.executable).parent / "aegisctl"),
                    "--config", str(cfg)]
        print(f"pg_dump: {tools.pg_dump} ({tools.version}, {tools.source}); {os.cpu_count()} cores")
        results = {}
        for round_ in range(2):
            bare = out / f"bare{round_}.dump"
            results.setdefault("bare -Fc", []).append(timed(
                [tools.pg_dump, "-d", conninfo, "-Fc", "--compress=gzip:1", "-f", str(bare)], env))
            results.setdefault("aegisctl custom", []).append(timed(
                [*aegisctl, "backup", "create", "--label", f"bench{round_}"]))
            bare_dir = out / f"bare{round_}.dir"
            results.setdefault("bare -Fd -j2", []).append(timed(
                [tools.pg_dump, "-d", conninfo, "-Fd", "-j2", "--compress=gzip:1",
                 "-f", str(bare_dir)], env))
            results.setdefault("aegisctl directory -j2", []).append(timed(
                [*aegisctl, "backup", "create", "--dump-format", "directory", "--jobs", "2"]))
        sizes = {"bare -Fc": size_of(out / "bare0.dump"),
                 "bare -Fd -j2": size_of(out / "bare0.dir")}
        manifests = sorted((out / "aegisctl" / "bench").glob("*.manifest.json"))
        ids = [p.name.split(".")[0] for p in manifests]
        # aegisctl's own sizes, as its manifests record them (first round of each format).
        recorded = [json.loads(p.read_text()) for p in manifests]
        sizes["aegisctl custom"] = next(m["size"] for m in recorded if m["format"] == "custom")
        sizes["aegisctl directory -j2"] = next(m["size"] for m in recorded
                                               if m["format"] == "directory")
        restore_db = f"{DB}_restored"
        bare_restore_db = f"{DB}_bare_restored"
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(bare_restore_db)))
        bare_restore_info, _ = child_conninfo(dsn, None, "bench", dbname=bare_restore_db)
        t_bare_restore = timed([tools.sibling("pg_restore"), "-d", bare_restore_info,
                                "--single-transaction", "--exit-on-error", str(out / "bare0.dump")],
                               env)
        t_restore = timed([*aegisctl, "backup", "restore", ids[0], "--target-db", restore_db])
        print()
        print(f"{'run':<26}{'best s':>8}{'all s':>18}{'size MB':>10}")
        for name, times in results.items():
            print(f"{name:<26}{min(times):>8.1f}{', '.join(f'{t:.1f}' for t in times):>18}"
                  f"{sizes.get(name, 0) / 1e6:>10.0f}")
        print(f"{'bare pg_restore (1 txn)':<26}{t_bare_restore:>8.1f}")
        print(f"{'aegisctl backup restore':<26}{t_restore:>8.1f}")
        print()
        custom = min(results["aegisctl custom"]) / min(results["bare -Fc"])
        directory = min(results["aegisctl directory -j2"]) / min(results["bare -Fd -j2"])
        print(f"ratio create custom / bare pg_dump -Fc:       {custom:.3f}  (target <= 1.10)")
        print(f"ratio create directory -j2 / bare -Fd -j2:    {directory:.3f}")
        print(f"ratio restore / bare pg_restore:              {t_restore / t_bare_restore:.3f}")
        print(f"directory -j2 vs custom (aegisctl):           "
              f"{min(results['aegisctl directory -j2']) / min(results['aegisctl custom']):.3f}")
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            for name in (DB, restore_db, bare_restore_db):
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
