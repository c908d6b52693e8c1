"""Memory search and import benchmark.

    python bench/search.py [--rows 100000] [--queries 100] [--dim 1536]

Generates N episodic memories shaped like real ones (see DATA below), loads them with `aegisctl
memory import` and, for comparison, `psql \\copy` of the same rows as CSV; builds the HNSW
index; then measures recall@10 against exact search and p50/p95 latency of aegisctl's semantic
search, unfiltered and with filters matching ~10 % and ~1 % of the rows.

It starts its own embedded PostgreSQL in a temporary folder under /tmp, or uses the server in
$AEGISCTL_BENCH_DSN (a database the user may create tables in; it is modified).
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
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg.conninfo import make_conninfo

LATENT_DIM = 48
# The text of the timed searches (hybrid's keyword side matches the ~19 % of rows tagged billing).
HYBRID_QUERY = "what did we decide about billing"
TOPICS = 400
EVENT_TYPES = {"task_complete": 0.42, "interaction": 0.22, "decision": 0.10, "learning": 0.12,
               "milestone": 0.06, "observation": 0.07, "error": 0.01}
IMPORTANCE = {"low": 0.30, "medium": 0.45, "high": 0.20, "critical": 0.05}
TAGS = ["billing", "postgres", "deploy", "ci", "security", "memory", "research", "api"]
DATA = (
    "{rows} episodic memories; embeddings: {topics} topics drawn in a {latent}-dim latent space, "
    "each memory = topic + N(0, 0.35) in latent space, projected to {dim} dims by a fixed "
    "Gaussian matrix, + N(0, 0.02) per dimension, L2-normalised; queries drawn the same way. "
    "event_type: " + ", ".join(f"{k} {v:.0%}" for k, v in EVENT_TYPES.items()) + "; "
    "importance: " + ", ".join(f"{k} {v:.0%}" for k, v in IMPORTANCE.items()) + "; "
    "timestamps: exponential over the past year (mean age 60 days); 1-2 tags of 8."
)


def vectors(rng: np.random.Generator, centers: np.ndarray, projection: np.ndarray,
            count: int) -> np.ndarray:
    topic = rng.integers(0, len(centers), count)
    latent = centers[topic] + rng.normal(0, 0.35, (count, LATENT_DIM))
    full = latent @ projection + rng.normal(0, 0.02, (count, projection.shape[1]))
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    return full.astype(np.float32)


def generate(rows: int, dim: int, folder: Path, seed: int = 1) -> tuple[Path, Path, Any]:
    """JSON lines for `memory import`, CSV for `psql \\copy`, and a query generator."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (TOPICS, LATENT_DIM))
    projection = rng.normal(0, 1 / np.sqrt(LATENT_DIM), (LATENT_DIM, dim))
    now = dt.datetime.now(dt.UTC)
    jsonl, csv = folder / "memories.jsonl", folder / "memories.csv"
    types, type_p = list(EVENT_TYPES), np.array(list(EVENT_TYPES.values()))
    levels, level_p = list(IMPORTANCE), np.array(list(IMPORTANCE.values()))
    with jsonl.open("w") as jf, csv.open("w") as cf:
        for start in range(0, rows, 5000):
            count = min(5000, rows - start)
            vecs = vectors(rng, centers, projection, count)
            event = rng.choice(len(types), count, p=type_p / type_p.sum())
            importance = rng.choice(len(levels), count, p=level_p / level_p.sum())
            ages = rng.exponential(60 * 86400, count).clip(0, 365 * 86400)
            for i in range(count):
                n = start + i
                when = (now - dt.timedelta(seconds=float(ages[i]))).isoformat()
                tags = sorted({TAGS[int(t)] for t in rng.integers(0, len(TAGS), 1 + n % 2)})
                summary = f"memory {n}: {types[event[i]]} about {' and '.join(tags)}"
                emb = [round(float(x), 6) for x in vecs[i]]
                record = {"kind": "episodic", "event_type": types[event[i]], "summary": summary,
                          "importance": levels[importance[i]], "tags": tags,
                          "timestamp": when, "created_at": when, "embedding": emb}
                jf.write(json.dumps(record) + "\n")
                emb_text = "[" + ",".join(map(repr, emb)) + "]"
                cf.write(f'{when},{types[event[i]]},"{summary}",{levels[importance[i]]},'
                         f'"{{{",".join(tags)}}}",{when},"{emb_text}"\n')

    def queries(count: int) -> np.ndarray:
        return vectors(np.random.default_rng(seed + 1), centers, projection, count)

    return jsonl, csv, queries


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--data", type=Path, default=None,
                        help="keep the generated files in this folder and reuse them next time "
                             "(same --rows/--dim)")
    parser.add_argument("--ef-search", type=int, default=None,
                        help="default: aegisctl's search.ef_search default")
    args = parser.parse_args()

    from aegisctl.config import SchemaSettings, Settings
    from aegisctl.local import EmbeddedServer, bundled_bin_dir
    from aegisctl.memory.filters import Filters
    from aegisctl.memory.search import (
        Explain,
        SearchRequest,
        query_vector,
        search,
        semantic_search,
    )
    from aegisctl.schema import init_schema

    work = Path(tempfile.mkdtemp(prefix="aegisctl-bench-", dir="/tmp"))
    work.chmod(0o755)
    server = None
    dsn = os.environ.get("AEGISCTL_BENCH_DSN")
    try:
        if not dsn:
            server = EmbeddedServer(work / "pgdata", database="postgres")
            dsn = server.ensure_running().uri
        assert dsn
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS aegis_bench (FORCE)")
            admin.execute("CREATE DATABASE aegis_bench")
        dsn = make_conninfo(dsn, dbname="aegis_bench")
        print(f"data: {DATA.format(rows=args.rows, topics=TOPICS, latent=LATENT_DIM, dim=args.dim)}")
        started = time.perf_counter()
        if args.data:
            args.data.mkdir(parents=True, exist_ok=True)
            marker = args.data / f"done-{args.rows}-{args.dim}"
            if marker.exists():
                jsonl, csv = args.data / "memories.jsonl", args.data / "memories.csv"
                _, _, queries = generate(0, args.dim, work)
            else:
                jsonl, csv, queries = generate(args.rows, args.dim, args.data)
                marker.touch()
        else:
            jsonl, csv, queries = generate(args.rows, args.dim, work)
        print(f"generated in {time.perf_counter() - started:.0f} s "
              f"({jsonl.stat().st_size / 1e9:.2f} GB JSON lines)")

        conn = psycopg.connect(dsn, autocommit=True)
        init_schema(conn, SchemaSettings(embedding_dim=args.dim))
        # Load first, index after: inserting into a live HNSW index is many times slower.
        conn.execute("DROP INDEX idx_episodic_embedding")
        conn.execute("CREATE TABLE copy_target (LIKE episodic_memory INCLUDING ALL)")

        config = work / "bench.yaml"
        config.write_text(json.dumps({"targets": {"bench": {"dsn": dsn}},
                                      "connection": {"timeouts": {"query": {
                                          "statement_timeout": 0}}},
                                      "embedding": {"provider": "none"}}))
        aegisctl = str(Path(sys.executable).parent / "aegisctl")
        started = time.perf_counter()
        done = subprocess.run([aegisctl, "--config", str(config), "memory", "import",
                               str(jsonl), "-f", "json"], capture_output=True, text=True)
        import_s = time.perf_counter() - started
        if done.returncode:
            raise SystemExit(f"memory import failed: {done.stderr}")
        psql = str(Path(bundled_bin_dir()) / "psql")
        started = time.perf_counter()
        subprocess.run([psql, dsn, "-q", "-c",
                        f"\\copy copy_target (\"timestamp\", event_type, summary, importance, "
                        f"tags, created_at, embedding) FROM '{csv}' WITH (FORMAT csv)"],
                       check=True)
        copy_s = time.perf_counter() - started
        conn.execute("DROP TABLE copy_target")
        ratio = copy_s / import_s
        print(f"load: memory import {args.rows / import_s:,.0f} rows/s ({import_s:.1f} s, JSON "
              f"lines -> binary COPY); psql \\copy CSV {args.rows / copy_s:,.0f} rows/s "
              f"({copy_s:.1f} s); ratio {ratio:.2f}x (target >= 0.8x)")

        from aegisctl.schema.dimension import hnsw_index_key

        conn.execute("SET maintenance_work_mem = '4GB'")
        conn.execute("SET max_parallel_maintenance_workers = 1")
        started = time.perf_counter()
        conn.execute(f"CREATE INDEX idx_episodic_embedding ON episodic_memory USING hnsw "
                     f"({hnsw_index_key(args.dim)})")
        conn.execute("VACUUM ANALYZE episodic_memory")
        print(f"HNSW build: {time.perf_counter() - started:.0f} s")

        settings = Settings()
        if args.ef_search:
            settings.search.ef_search = args.ef_search
        shares = conn.execute("SELECT avg((event_type = 'decision')::int), "
                              "avg((event_type = 'error')::int) FROM episodic_memory").fetchone()
        assert shares is not None
        cases = [("unfiltered", Filters(kind="episodic")),
                 (f"--type decision ({float(shares[0]):.1%})",
                  Filters(kind="episodic", event_types=["decision"])),
                 (f"--type error ({float(shares[1]):.1%})",
                  Filters(kind="episodic", event_types=["error"]))]
        qs = queries(args.queries)
        ok = ratio >= 0.8
        print(f"search: {args.queries} queries per case, limit 10, ef_search "
              f"{settings.search.ef_search}, exact below {settings.search.exact_below} "
              "estimated rows")
        # The bare query, measured on its own connection in the same run: the vector as a
        # binary parameter, the same ef_search / iterative scan set once for the session.
        bare_conn = psycopg.connect(dsn, autocommit=True)
        bare_conn.execute(f"SET hnsw.ef_search = {settings.search.ef_search}")
        bare_conn.execute("SET hnsw.iterative_scan = strict_order")
        query_vector(bare_conn, [0.0] * (args.dim - 1) + [1.0])  # registers the type
        ratios = []
        for label, filters in cases:
            latencies, recalls, short, paths = [], [], 0, set()
            full, hybrid, bare = [], [], []
            where, params = filters.where("episodic")
            from psycopg import sql

            bare_sql = sql.SQL("SELECT id FROM episodic_memory WHERE {} "
                               "ORDER BY embedding <=> %(q)b LIMIT 10").format(where)
            for q in qs:
                literal = "[" + ",".join(map(repr, q.tolist())) + "]"
                values = q.tolist()
                explain = Explain(mode="semantic")
                t0 = time.perf_counter()
                hits = semantic_search(conn, settings, ["episodic"], filters,
                                       query_vector(conn, values), args.dim, 10, explain)
                latencies.append((time.perf_counter() - t0) * 1000)
                # semantic_search above warmed the buffers for this vector; search() and the
                # bare query then take turns going first, so neither gets the warmer cache.
                def timed_search(mode: str, values: list[float] = values,
                                 filters: Any = filters) -> float:
                    t0 = time.perf_counter()
                    search(conn, settings, SearchRequest(query=HYBRID_QUERY, filters=filters,
                                                         limit=10, mode=mode,  # type: ignore
                                                         vector=values, highlight=False),
                           None, args.dim)
                    return (time.perf_counter() - t0) * 1000

                def timed_bare(values: list[float] = values, statement: Any = bare_sql,
                               params: dict[str, Any] = params) -> float:
                    t0 = time.perf_counter()
                    bare_conn.execute(statement, {**params,
                                                  "q": query_vector(bare_conn, values)}
                                      ).fetchall()
                    return (time.perf_counter() - t0) * 1000

                if len(bare) % 2:
                    bare.append(timed_bare())
                    full.append(timed_search("semantic"))
                else:
                    full.append(timed_search("semantic"))
                    bare.append(timed_bare())
                hybrid.append(timed_search("hybrid"))
                paths.add(explain.paths[0].path.split(";")[0].split(":")[0])
                short += len(hits) < 10
                with conn.transaction():
                    conn.execute("SET LOCAL enable_indexscan = off")
                    exact = conn.execute(sql.SQL(
                        "SELECT id FROM episodic_memory WHERE {} "
                        "ORDER BY embedding <=> %(q)s::vector LIMIT 10").format(where),
                        {**params, "q": literal}).fetchall()
                truth = {r[0] for r in exact}
                recalls.append(len(truth & {h.id for h in hits}) / max(1, len(truth)))
            recall, p50, p95 = statistics.mean(recalls), pct(latencies, 50), pct(latencies, 95)
            ratio_full = pct(full, 95) / pct(bare, 95)
            ratios.append(ratio_full)
            ok = ok and recall >= 0.95 and short == 0 and ratio_full <= 1.25
            print(f"  {label:<24} recall@10 {recall:.3f}  queries with < 10 rows: {short}  "
                  f"path: {', '.join(sorted(paths))}")
            print(f"  {'':<24} p50/p95 ms: bare query {pct(bare, 50):5.1f} / {pct(bare, 95):5.1f}"
                  f"  semantic_search {p50:5.1f} / {p95:5.1f}"
                  f"  search() semantic {pct(full, 50):5.1f} / {pct(full, 95):5.1f}"
                  f" ({ratio_full:.2f}x bare p95)"
                  f"  hybrid {pct(hybrid, 50):5.1f} / {pct(hybrid, 95):5.1f}")
        bare_conn.close()
        print("targets (recall@10 >= 0.95 with 10 rows always, semantic search() p95 <= 1.25x "
              "the bare query's at every filter level, import >= 0.8x "
              f"\\copy): {'met' if ok else 'NOT met'}")
        conn.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
