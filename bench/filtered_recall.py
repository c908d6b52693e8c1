"""HNSW recall under filters, on data shaped like real memories: `check`'s
vector_recall_filtered and `maint vector-index --tune`, as a user runs them.

    python bench/filtered_recall.py [--rows 20000] [--dim 768] [--sample 20]

Starts its own embedded PostgreSQL in a temporary folder, generates memories with
bench/search.py's generator (topics in a 48-dim latent space projected to --dim; event types
skewed as life does: error ~1 %, decision ~10 %; timestamps exponential over a year), imports
them with `aegisctl memory import`, builds the HNSW index, then runs `aegisctl check --only
vector_recall,vector_recall_filtered` at pgvector's defaults (ef_search 40, no iterative scan)
and `aegisctl maint vector-index --tune`, and prints both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import DATA, LATENT_DIM, TOPICS, generate

SHAPES = [{"name": "errors", "event_type": "error"},
          {"name": "decisions", "event_type": "decision"},
          {"name": "security", "tag": "security", "kind": "episodic"},
          {"name": "last-week", "since": "7d", "kind": "episodic"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--target-recall", default="0.95")
    args = parser.parse_args()

    from aegisctl.config import SchemaSettings
    from aegisctl.local import EmbeddedServer
    from aegisctl.schema import init_schema
    from aegisctl.schema.dimension import hnsw_index_key

    work = Path(tempfile.mkdtemp(prefix="aegisctl-bench-", dir="/tmp"))
    work.chmod(0o755)
    server = EmbeddedServer(work / "pgdata", database="postgres")
    try:
        status = server.ensure_running()
        assert status.uri
        with psycopg.connect(status.uri, autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench")
        dsn = server.uri("bench")
        print("data: " + DATA.format(rows=args.rows, topics=TOPICS, latent=LATENT_DIM,
                                     dim=args.dim))
        jsonl, _, _ = generate(args.rows, args.dim, work)
        with psycopg.connect(dsn, autocommit=True) as conn:
            init_schema(conn, SchemaSettings(embedding_dim=args.dim))
            conn.execute("DROP INDEX idx_episodic_embedding")
        config = work / "bench.yaml"
        config.write_text(json.dumps({
            "targets": {"bench": {"dsn": dsn}}, "embedding": {"provider": "none"},
            "connection": {"timeouts": {"query": {"statement_timeout": 0}}},
            "checks": {"vector_recall": {"sample": args.sample, "max_rows": 10 * args.rows,
                                         "filters": SHAPES}}}))
        aegisctl = [str(Path(sys.executable).parent / "aegisctl"), "--config", str(config)]
        subprocess.run([*aegisctl, "memory", "import", str(jsonl), "-f", "json"], check=True,
                       capture_output=True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET maintenance_work_mem = '2GB'")
            started = time.perf_counter()
            conn.execute(f"CREATE INDEX idx_episodic_embedding ON episodic_memory USING hnsw "
                         f"({hnsw_index_key(args.dim)})")
            conn.execute("VACUUM ANALYZE episodic_memory")
            print(f"HNSW build {time.perf_counter() - started:.0f} s")
            shares = conn.execute(
                "SELECT avg((event_type = 'error')::int), avg((event_type = 'decision')::int), "
                "avg((tags @> ARRAY['security'])::int), "
                "avg((\"timestamp\" >= now() - interval '7 days')::int) FROM episodic_memory"
            ).fetchone()
        assert shares is not None
        print("shapes: " + ", ".join(f"{s['name']} {float(v):.1%}"
                                     for s, v in zip(SHAPES, shares, strict=True)))
        for argv in (["check", "--only", "vector_recall,vector_recall_filtered"],
                     ["maint", "vector-index", "--tune", "--table", "episodic_memory",
                      "--target-recall", args.target_recall, "--sample", str(args.sample)]):
            started = time.perf_counter()
            done = subprocess.run([*aegisctl, *argv], capture_output=True, text=True,
                                  env={"COLUMNS": "160", "NO_COLOR": "1", "PATH": "/usr/bin"})
            print(f"\n$ aegisctl {' '.join(argv)}   ({time.perf_counter() - started:.1f} s, "
                  f"exit {done.returncode})")
            print(done.stdout + done.stderr)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
