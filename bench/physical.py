"""Benchmark: physical backups through Barman against pg_dump, in one run on one database.

Builds a database of at least ~2 GB with the Aegis schema: ROWS episodic memories with 1536-d
embeddings (topics drawn in a 48-d latent space, projected to 1536 with a fixed random matrix,
noise added, normalised: shaped like real text embeddings) and an HNSW index, then measures:

  1. physical full backup (aegisctl backup create --physical, Barman + pg_basebackup)
     vs pg_dump -Fc --compress=gzip:1 of the same database          target: >= 5x faster
  2. incremental backup after changing 1 % of the rows (new embedding + text)
     size relative to the full backup                               target: <= 5 %
     then the next incremental after adding 1 % new memories, against the same full
  3. time to a verified PITR drill (restore to a timestamp, start, promote, pg_amcheck,
     extension and vector index checks) vs pg_restore of the logical dump into a new
     database (which rebuilds the HNSW index)                        target: <= 0.5x

With --offsite (physical backups off the machine, issue 26), instead: the same kind of
database, a moto S3 server as a separate process, and in one run

  4. raw copy of the data directory (cp -a: the physical floor on this disk), the local full
     backup, then its upload (and the WAL so far) to the store, encrypted and checked
  5. time to a verified PITR drill restored from the store alone (a fresh config, only the
     key) vs the same drill from the local copy
  6. the RPO under a steady insert load: WAL shipped beside the streamer every
     archive_interval, the remote lag sampled every second (seconds and bytes behind)

Usage: python bench/physical.py [--rows 150000] [--keep]
       python bench/physical.py --offsite [--rows 50000] [--load-seconds 60]
Starts its own embedded PostgreSQL in a temporary folder (as root, one others can enter).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import yaml

from aegisctl.backup.physical.backups import create_physical
from aegisctl.backup.physical.restore import run_drill
from aegisctl.backup.physical.setup import enable_physical
from aegisctl.backup.physical.wal import stream_wal
from aegisctl.config import SchemaSettings, load_config
from aegisctl.local import EmbeddedServer
from aegisctl.schema import init_schema
from aegisctl.targets import resolve_target

DIM = 1536


def embeddings(rng: np.random.Generator, topics: np.ndarray, projection: np.ndarray,
               rows: int) -> np.ndarray:
    latent = topics[rng.integers(0, len(topics), rows)] + 0.3 * rng.normal(size=(rows, 48))
    vectors = latent @ projection + 0.05 * rng.normal(size=(rows, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def load(conn: psycopg.Connection[Any], rows: int) -> None:
    from pgvector.psycopg import register_vector

    rng = np.random.default_rng(1)
    topics = rng.normal(size=(200, 48))
    projection = rng.normal(size=(48, DIM)) / np.sqrt(48)
    register_vector(conn)
    conn.execute("DROP INDEX IF EXISTS idx_episodic_embedding")
    events = ["task_completed"] * 60 + ["chat"] * 30 + ["deploy"] * 9 + ["error"]
    done = 0
    with conn.cursor() as cur, cur.copy(
            "COPY episodic_memory (event_type, summary, embedding) FROM STDIN "
            "WITH (FORMAT BINARY)") as copy:
        copy.set_types(["varchar", "text", "vector"])
        while done < rows:
            chunk = embeddings(rng, topics, projection, min(10000, rows - done))
            for vector in chunk:
                copy.write_row((events[done % len(events)],
                                f"memory {done} about topic {done % 200}", vector))
                done += 1
    conn.execute("SET maintenance_work_mem = '2GB'")
    conn.execute("SET max_parallel_maintenance_workers = 1")
    conn.execute("CREATE INDEX idx_episodic_embedding ON episodic_memory "
                 "USING hnsw (embedding vector_cosine_ops)")
    # Steady state before the full backup, as a database in service is: with data checksums
    # (PostgreSQL 18's default) the first setting of hint bits on a page is WAL-logged, so a
    # freshly loaded table read for the first time would show up whole in the next
    # incremental. VACUUM sets them (and freezes) once, as autovacuum eventually does.
    conn.execute("VACUUM (FREEZE, ANALYZE)")
    # And checkpointed, as a database in service is: right after a 2.5 GB bulk load the first
    # checkpoint (the one a base backup starts with) must also write back gigabytes of dirty
    # page cache, a cost of the load and not of the backup (one run measured 6.2 s, the next
    # 8.3 s for the same full backup).
    conn.execute("CHECKPOINT")


def one_percent_of_vectors(conn: psycopg.Connection[Any], rows: int,
                           seed: int) -> np.ndarray:
    """Embeddings for 1 % of `rows`, drawn like the loaded ones (and the type registered)."""
    from pgvector.psycopg import register_vector

    register_vector(conn)
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(200, 48))
    projection = rng.normal(size=(48, DIM)) / np.sqrt(48)
    return embeddings(rng, topics, projection, max(1, rows // 100))


def change_one_percent(conn: psycopg.Connection[Any], rows: int) -> int:
    vectors = one_percent_of_vectors(conn, rows, seed=2)
    ids = [int(r[0]) for r in conn.execute(
        "SELECT id FROM episodic_memory ORDER BY random() LIMIT %s", (len(vectors),)).fetchall()]
    with conn.cursor() as cur:
        cur.executemany("UPDATE episodic_memory SET embedding = %s, summary = summary || ' (edited)' "
                        "WHERE id = %s", list(zip(vectors, ids, strict=True)))
    return len(vectors)


def add_one_percent(conn: psycopg.Connection[Any], rows: int) -> int:
    """1 % new memories, the way an agent's memory grows (new rows, nothing rewritten)."""
    vectors = one_percent_of_vectors(conn, rows, seed=3)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO episodic_memory (event_type, summary, embedding) "
                        "VALUES ('task_completed', %s, %s)",
                        [(f"new memory {i} about topic {i % 200}", vector)
                         for i, vector in enumerate(vectors)])
    return len(vectors)


def incremental_breakdown(uri: str, data: Path) -> dict[str, int]:
    """Where the incremental's bytes are, adding up to its whole size: each relation of the
    benchmark database (main fork and visibility map: the blocks changed since the parent),
    the free space maps of every database (PostgreSQL sends FSM forks whole: they are not
    WAL-logged), the catalogs, the other databases, and the rest (global/, pg_xact, the
    backup manifest, configuration files)."""
    with psycopg.connect(uri) as conn:
        dboid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()"
                             ).fetchone()[0]  # type: ignore[index]
        names = {str(r[0]): r[1] for r in conn.execute(
            "SELECT pg_relation_filenode(c.oid), c.relname FROM pg_class c "
            "WHERE pg_relation_filenode(c.oid) IS NOT NULL AND c.oid >= 16384").fetchall()}
        toast = {str(r[0]): f"toast of {r[1]}" for r in conn.execute(
            "SELECT pg_relation_filenode(c.reltoastrelid), c.relname FROM pg_class c "
            "WHERE c.reltoastrelid <> 0 AND c.oid >= 16384").fetchall()}
    out: dict[str, int] = {}

    def add(key: str, size: int) -> None:
        out[key] = out.get(key, 0) + size

    for path in data.rglob("*"):
        if not path.is_file():
            continue
        size = path.stat().st_size
        relative = path.relative_to(data).parts
        name = path.name.removeprefix("INCREMENTAL.")
        if relative[0] != "base" or len(relative) != 3:
            add("rest: global, pg_xact, manifest, config", size)
        elif name.endswith("_fsm"):
            add("free space maps (sent whole)", size)
        elif relative[1] != str(dboid):
            add("other databases", size)
        else:
            node = name.split(".")[0].split("_")[0]
            add(toast.get(node) or names.get(node) or "catalogs", size)
    top = dict(sorted(out.items(), key=lambda kv: -kv[1])[:12])
    rest = sum(out.values()) - sum(top.values())
    return {**top, "others": rest} if rest else top


def run(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--offsite", action="store_true", help="measure physical backups "
                        "off the machine (moto S3) instead")
    parser.add_argument("--load-seconds", type=float, default=60.0)
    args = parser.parse_args()
    if args.offsite:
        from physical_offsite import offsite

        offsite(args, load, DIM)
        return

    base = Path(tempfile.mkdtemp(prefix="aegisctl-bench-physical-"))
    base.chmod(0o755)
    config = base / "aegisctl.yaml"
    config.write_text(yaml.safe_dump({
        "embedded": {"data_dir": str(base / "pgdata"), "database": "aegis"},
        "backup": {"directory": str(base / "dumps"),
                   "physical": {"directory": str(base / "barman"), "archive_interval": "5s"}},
    }))
    loaded = load_config(str(config))
    target = resolve_target(loaded, env={})
    server = EmbeddedServer(base / "pgdata", database="aegis")
    server.ensure_running()
    bin_dir = server._runtime_dir()
    uri = server.uri()
    report: dict[str, Any] = {"rows": args.rows, "dim": DIM,
                              "embeddings": "48-d latent topics projected to 1536-d, "
                                            "noise, normalised"}
    stop = threading.Event()
    streamer: threading.Thread | None = None
    try:
        with psycopg.connect(uri, autocommit=True) as conn:
            init_schema(conn, SchemaSettings(embedding_dim=DIM), wait_lock=60)
            t = time.perf_counter()
            load(conn, args.rows)
            report["load_and_index_seconds"] = round(time.perf_counter() - t, 1)
            report["database_bytes"] = conn.execute(
                "SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
        print(f"database: {report['database_bytes'] / 1e9:.2f} GB", flush=True)

        enable_physical(loaded, target)
        streamer = threading.Thread(target=stream_wal, args=(loaded, target),
                                    kwargs={"stop": stop}, daemon=True)
        streamer.start()
        time.sleep(3)

        # 1. physical full vs pg_dump -Fc --compress=gzip:1
        full = create_physical(loaded, target, verify=False)
        report["physical_full"] = {"seconds": round(full.duration_seconds, 1),
                                   "bytes": full.backup.size, "id": full.backup.id}
        dump = base / "dump.custom"
        seconds = run([str(bin_dir / "pg_dump"), "-Fc", "--compress=gzip:1", "-f", str(dump),
                       "-d", uri])
        report["pg_dump_gzip1"] = {"seconds": round(seconds, 1), "bytes": dump.stat().st_size}
        report["full_speedup_vs_pg_dump"] = round(seconds / full.duration_seconds, 2)
        print(json.dumps(report, default=str), flush=True)

        # 2. incremental after a 1 % change
        with psycopg.connect(uri, autocommit=True) as conn:
            report["changed_rows"] = change_one_percent(conn, args.rows)
        incremental = create_physical(loaded, target, incremental=True, verify=False)
        report["physical_incremental"] = {"seconds": round(incremental.duration_seconds, 1),
                                          "bytes": incremental.backup.size,
                                          "parent": incremental.backup.parent}
        report["incremental_size_ratio"] = round(incremental.backup.size / full.backup.size, 4)
        report["incremental_by_relation"] = incremental_breakdown(
            uri, base / "barman" / "data" / "embedded" / "base" / incremental.backup.id / "data")
        print(json.dumps(report, default=str), flush=True)

        # 2b. the next incremental of the chain, after 1 % new memories instead of re-embedded
        # ones (the common change of an agent's memory); its size against the same full
        with psycopg.connect(uri, autocommit=True) as conn:
            report["added_rows"] = add_one_percent(conn, args.rows)
        grown = create_physical(loaded, target, incremental=True, verify=False)
        report["physical_incremental_after_inserts"] = {
            "seconds": round(grown.duration_seconds, 1), "bytes": grown.backup.size,
            "parent": grown.backup.parent}
        report["incremental_after_inserts_size_ratio"] = round(
            grown.backup.size / full.backup.size, 4)
        report["incremental_after_inserts_by_relation"] = incremental_breakdown(
            uri, base / "barman" / "data" / "embedded" / "base" / grown.backup.id / "data")
        print(json.dumps(report, default=str), flush=True)

        # 3. verified PITR drill vs pg_restore
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("INSERT INTO episodic_memory (event_type, summary) "
                         "VALUES ('marker', 'bench marker')")
            time.sleep(1.1)
            moment = dt.datetime.now(dt.UTC)
            time.sleep(1.1)
            conn.execute("DELETE FROM episodic_memory WHERE event_type = 'chat'")
        drill = run_drill(loaded, target, to_time=moment)
        report["pitr_drill"] = {"ok": drill.ok, "total_seconds": round(drill.total_seconds, 1),
                                "restore_seconds": round(drill.restore_seconds, 1),
                                "promote_seconds": round(drill.promote_seconds, 1),
                                "checks": [(c.name, c.ok, c.detail) for c in drill.checks]}
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_restore")
        restore_uri = uri.replace("/aegis?", "/bench_restore?")
        seconds = run([str(bin_dir / "pg_restore"), "-d", restore_uri, "--no-owner",
                       str(dump)])
        report["pg_restore"] = {"seconds": round(seconds, 1), "jobs": 1}
        report["drill_vs_pg_restore"] = round(drill.total_seconds / seconds, 3)
        report["targets"] = {
            "full >= 5x faster than pg_dump": report["full_speedup_vs_pg_dump"] >= 5,
            "incremental <= 5 % of full (1 % re-embedded)":
                report["incremental_size_ratio"] <= 0.05,
            "incremental <= 5 % of full (1 % new memories)":
                report["incremental_after_inserts_size_ratio"] <= 0.05,
            "verified PITR drill <= 0.5x pg_restore": report["drill_vs_pg_restore"] <= 0.5,
        }
        print(json.dumps(report, indent=2, default=str), flush=True)
    finally:
        stop.set()
        if streamer is not None:
            streamer.join(120)
        server.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
