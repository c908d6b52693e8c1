"""Semantic search through PgBouncer in transaction mode against the same search over a direct
connection, in the same run, and what carrying the settings into every transaction costs.

    nice python bench/pooler.py [--rows 20000] [--queries 200] [--dim 1536]

Starts its own embedded PostgreSQL and a PgBouncer (Debian's `pgbouncer`; transaction pooling,
pool of 2) on 127.0.0.1 in front of it, loads N episodic memories shaped like real ones (the
data of bench/search.py: topics in a 48-dim latent space projected to --dim), builds the HNSW
index, then times aegisctl's `semantic_search` (the core of `memory search --mode semantic`)
on two connections made by aegisctl's own `connect`: one direct, one through PgBouncer (where
the timeouts travel as set_config(..., true) in the same pipeline as the query). The two take
turns going first for each query vector.

The round-trip part times a trivial statement three ways through PgBouncer: alone; with the
settings pipelined in front of it (what aegisctl does); with the settings as a separate round
trip first (a plain `SET LOCAL` before the statement, in one transaction).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from search import LATENT_DIM, TOPICS, vectors

DATA = ("{rows} episodic memories; embeddings: {topics} topics drawn in a {latent}-dim latent "
        "space, each memory = topic + N(0, 0.35) in latent space, projected to {dim} dims by a "
        "fixed Gaussian matrix, + N(0, 0.02) per dimension, L2-normalised (bench/search.py's "
        "generator); queries drawn the same way; event_type cycles through 5 types (20 % each)")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def load(conn: psycopg.Connection[Any], rows: int, dim: int, seed: int = 1) -> Any:
    from aegisctl.memory.vectors import register, to_vector

    register(conn)
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (TOPICS, LATENT_DIM))
    projection = rng.normal(0, 1 / np.sqrt(LATENT_DIM), (LATENT_DIM, dim))
    kinds = ["task_complete", "interaction", "decision", "learning", "observation"]
    with conn.cursor() as cur, cur.copy(
            "COPY episodic_memory (event_type, summary, importance, embedding) "
            "FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["text", "text", "text", "vector"])
        for start in range(0, rows, 5000):
            count = min(5000, rows - start)
            vecs = vectors(rng, centers, projection, count)
            for i in range(count):
                copy.write_row([kinds[(start + i) % 10 % 5], f"memory {start + i}", "medium",
                                to_vector(vecs[i].tolist())])

    def queries(count: int) -> np.ndarray:
        return vectors(np.random.default_rng(seed + 1), centers, projection, count)

    return queries


def round_trips(dsn: str, runs: int) -> dict[str, float]:
    """p50 (ms) of a trivial statement through PgBouncer: alone, with the settings pipelined,
    with the settings as their own round trip first."""
    settings = b"SELECT set_config('statement_timeout', '60000', true), " \
               b"set_config('lock_timeout', '5000', true)"
    conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)

    def alone() -> None:
        conn.execute("SELECT 1").fetchall()

    def pipelined() -> None:
        with conn.pipeline():
            psycopg.Cursor(conn).execute(settings)
            cur = conn.cursor()
            cur.execute("SELECT 1")
        cur.fetchall()

    def separate() -> None:
        with conn.transaction():
            conn.execute(settings)
            conn.execute("SELECT 1").fetchall()

    timings: dict[str, list[float]] = {"alone": [], "pipelined": [], "separate": []}
    actions = {"alone": alone, "pipelined": pipelined, "separate": separate}
    for _ in range(runs):
        for name, action in actions.items():
            t0 = time.perf_counter()
            action()
            timings[name].append((time.perf_counter() - t0) * 1000)
    conn.close()
    return {name: statistics.median(values) for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dim", type=int, default=1536)
    args = parser.parse_args()

    from pooler_fixtures import start_pgbouncer

    from aegisctl.config import LoadedConfig, SchemaSettings, Settings, TargetSettings
    from aegisctl.db import connect
    from aegisctl.local import EmbeddedServer
    from aegisctl.memory.filters import Filters
    from aegisctl.memory.search import Explain, query_vector, semantic_search
    from aegisctl.pooler import per_transaction
    from aegisctl.schema import init_schema
    from aegisctl.schema.dimension import hnsw_index_key
    from aegisctl.targets import resolve_target

    work = Path(tempfile.mkdtemp(prefix="aegisctl-bench-pooler-", dir="/tmp"))
    work.chmod(0o755)
    server = EmbeddedServer(work / "pgdata", database="postgres")
    bouncer = None
    try:
        status = server.ensure_running()
        assert status.uri and status.socket_dir
        with psycopg.connect(status.uri, autocommit=True) as admin:
            admin.execute("CREATE DATABASE aegis_bench")
        direct = make_conninfo(status.uri, dbname="aegis_bench")
        print(f"data: {DATA.format(rows=args.rows, topics=TOPICS, latent=LATENT_DIM, dim=args.dim)}")
        with psycopg.connect(direct, autocommit=True) as conn:
            init_schema(conn, SchemaSettings(embedding_dim=args.dim), wait_lock=60)
            conn.execute("DROP INDEX IF EXISTS idx_episodic_embedding")
            started = time.perf_counter()
            queries = load(conn, args.rows, args.dim)
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute(f"CREATE INDEX idx_episodic_embedding ON episodic_memory USING hnsw "
                         f"({hnsw_index_key(args.dim)})")
            conn.execute("VACUUM ANALYZE episodic_memory")
            print(f"loaded and indexed in {time.perf_counter() - started:.0f} s")
        bouncer = start_pgbouncer(str(status.socket_dir), status.port or 5432, "postgres", None,
                                  "aegis_bench", tx_pool_size=2)
        settings = Settings()
        settings.targets = {"direct": TargetSettings(dsn=direct, pooler="auto"),
                            "pooled": TargetSettings(dsn=bouncer.dsn("tx"), pooler="auto")}
        loaded = LoadedConfig(settings=settings, path=None, sources={})
        conns = {name: connect(loaded, resolve_target(loaded, name, env={}), "memory search")
                 for name in ("direct", "pooled")}
        assert per_transaction(conns["pooled"]) and not per_transaction(conns["direct"])
        print(f"PgBouncer {bouncer.port}: transaction pooling, pool of 2; aegisctl found "
              "'transaction pooler' on it and 'no pooler' on the direct dsn")
        cases = [("unfiltered", Filters(kind="episodic")),
                 ("--type decision (20 %)", Filters(kind="episodic", event_types=["decision"]))]
        qs = queries(args.queries)
        for conn in conns.values():  # warm-up: caches, types, the composed statements
            for q in qs[:20]:
                semantic_search(conn, settings, ["episodic"], Filters(kind="episodic"),
                                query_vector(conn, q.tolist()), args.dim, 10,
                                Explain(mode="semantic"))
        print(f"semantic_search, {args.queries} queries per case, limit 10, ef_search "
              f"{settings.search.ef_search}; p50 / p95 ms")
        for label, filters in cases:
            times: dict[str, list[float]] = {"direct": [], "pooled": []}
            for n, q in enumerate(qs):
                order = ["direct", "pooled"] if n % 2 else ["pooled", "direct"]
                for name in order:
                    conn = conns[name]
                    t0 = time.perf_counter()
                    semantic_search(conn, settings, ["episodic"], filters,
                                    query_vector(conn, q.tolist()), args.dim, 10,
                                    Explain(mode="semantic"))
                    times[name].append((time.perf_counter() - t0) * 1000)
            d50, d95 = pct(times["direct"], 50), pct(times["direct"], 95)
            p50, p95 = pct(times["pooled"], 50), pct(times["pooled"], 95)
            verdict = "ok" if p95 <= 1.3 * d95 else "ABOVE TARGET"
            print(f"  {label:24} direct {d50:6.2f} / {d95:6.2f}   through PgBouncer "
                  f"{p50:6.2f} / {p95:6.2f}   p95 ratio {p95 / d95:.2f}x (target <= 1.3x: "
                  f"{verdict})")
        for conn in conns.values():
            conn.close()
        rt = round_trips(bouncer.dsn("tx"), max(200, args.queries * 2))
        print(f"round trips through PgBouncer, p50 of a trivial statement: alone "
              f"{rt['alone']:.3f} ms; settings pipelined with it (aegisctl) "
              f"{rt['pipelined']:.3f} ms (+{rt['pipelined'] - rt['alone']:.3f}); settings as "
              f"their own round trip first {rt['separate']:.3f} ms "
              f"(+{rt['separate'] - rt['alone']:.3f})")
    finally:
        if bouncer is not None:
            bouncer.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
