"""Cold-server semantic search with and without `maint prewarm`, in the same run.

    python bench/prewarm.py [--rows 20000] [--dim 768] [--queries 50] [--rounds 3]

Starts its own embedded PostgreSQL in a temporary folder, loads N memories (embeddings shaped
like real ones: topics in a 48-dim latent space projected to --dim, see bench/search.py),
builds the HNSW index, then for each round and each variant (without prewarm, with prewarm,
alternating) makes the server cold and times the agent's search
(`ORDER BY embedding <=> q LIMIT 10` at hnsw.ef_search 40): the first query after the cold
start, and the p50/p95 of the following ones.

Cold means: the server stopped (shared buffers gone) and the OS page cache of the database's
files dropped. The cache is dropped per file with posix_fadvise(POSIX_FADV_DONTNEED) after a
sync (no root needed, other processes' caches untouched); --drop-caches also writes
`3 > /proc/sys/vm/drop_caches` (root only, system-wide; refused in some sandboxes, which the
output then says). Whether the file cache really went is checked, not assumed: the bench
times reading the index file cold and warm and prints both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import LATENT_DIM, TOPICS, pct, vectors

EF_SEARCH = 40


def load(dsn: str, rows: int, dim: int, seed: int = 1) -> Any:
    from pgvector.psycopg import register_vector

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (TOPICS, LATENT_DIM))
    projection = rng.normal(0, 1 / np.sqrt(LATENT_DIM), (LATENT_DIM, dim))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        register_vector(conn)
        conn.execute(f"CREATE TABLE memories (id bigserial PRIMARY KEY, summary text NOT NULL, "
                     f"embedding vector({dim}) NOT NULL)")
        with conn.cursor().copy("COPY memories (summary, embedding) FROM STDIN "
                                "(FORMAT BINARY)") as copy:
            copy.set_types(["text", "vector"])
            for start in range(0, rows, 5000):
                for i, vec in enumerate(vectors(rng, centers, projection,
                                                min(5000, rows - start))):
                    copy.write_row((f"memory {start + i}", vec))
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("CREATE INDEX memories_embedding ON memories USING hnsw "
                     "(embedding vector_cosine_ops)")
        conn.execute("VACUUM ANALYZE memories")
        files = [row[0] for row in conn.execute(
            "SELECT pg_relation_filepath(oid) FROM pg_class WHERE relname IN "
            "('memories', 'memories_embedding') OR oid = (SELECT reltoastrelid FROM pg_class "
            "WHERE relname = 'memories')")]
        sizes = conn.execute("SELECT pg_relation_size('memories_embedding'), "
                             "pg_table_size('memories'), current_setting('shared_buffers')"
                             ).fetchone()

    def queries(count: int) -> np.ndarray:
        return vectors(np.random.default_rng(seed + 1), centers, projection, count)

    return files, sizes, queries


def drop_file_cache(data_dir: Path, files: list[str], system_wide: bool) -> str:
    os.sync()
    said = []
    if system_wide:
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            said.append("drop_caches written")
        except OSError as exc:
            said.append(f"drop_caches refused ({exc.strerror})")
    dropped = 0
    for relative in files:
        for path in [data_dir / relative, *sorted(data_dir.glob(relative + ".*"))]:
            if not path.exists():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                dropped += 1
            finally:
                os.close(fd)
    said.append(f"fadvise DONTNEED on {dropped} file(s)")
    return ", ".join(said)


def read_seconds(path: Path) -> float:
    started = time.perf_counter()
    with path.open("rb") as handle:
        while handle.read(1 << 20):
            pass
    return time.perf_counter() - started


def run_round(server: Any, dsn: str, files: list[str], qs: np.ndarray, prewarm: bool,
              system_wide: bool) -> dict[str, Any]:
    from pgvector.psycopg import register_vector

    from aegisctl.maintenance.prewarm import prewarm_vectors

    server.stop()
    how = drop_file_cache(server.data_dir, files, system_wide)
    server.ensure_running()
    out: dict[str, Any] = {"cold": how, "prewarm_s": None}
    with psycopg.connect(dsn, autocommit=True) as conn:
        if prewarm:
            result = prewarm_vectors(conn, tables=True)
            out["prewarm_s"] = result.seconds
        register_vector(conn)
        conn.execute(f"SET hnsw.ef_search = {EF_SEARCH}")
        times = []
        for q in qs:
            started = time.perf_counter()
            conn.execute("SELECT id FROM memories ORDER BY embedding <=> %s LIMIT 10",
                         (q,)).fetchall()
            times.append((time.perf_counter() - started) * 1000)
    out.update(first_ms=times[0], p50_ms=statistics.median(times[1:]),
               p95_ms=pct(times[1:], 95))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drop-caches", action="store_true",
                        help="also drop the whole OS page cache (root; affects every process)")
    args = parser.parse_args()

    from aegisctl.local import EmbeddedServer

    work = Path(tempfile.mkdtemp(prefix="aegisctl-bench-", dir="/tmp"))
    work.chmod(0o755)
    server = EmbeddedServer(work / "pgdata", database="postgres")
    try:
        status = server.ensure_running()
        assert status.uri
        with psycopg.connect(status.uri, autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench")
        dsn = server.uri("bench")
        print(f"data: {args.rows} memories, embeddings from {TOPICS} topics in a {LATENT_DIM}-dim "
              f"latent space projected to {args.dim} dims, normalised (bench/search.py's "
              f"generator); HNSW m 16, ef_construction 64; searches at ef_search {EF_SEARCH}")
        started = time.perf_counter()
        files, sizes, queries = load(dsn, args.rows, args.dim)
        print(f"loaded and indexed in {time.perf_counter() - started:.1f}s: index "
              f"{sizes[0] / 1e6:.1f} MB, table {sizes[1] / 1e6:.1f} MB, shared_buffers "
              f"{sizes[2]}")
        index_file = server.data_dir / next(f for f in files if f)
        server.stop()
        drop_file_cache(server.data_dir, files, args.drop_caches)
        cold, warm = read_seconds(index_file), read_seconds(index_file)
        verdict = ("the drop works here" if cold > 2 * warm else
                   "similar figures: the drop had no effect here, rounds are warmer than cold")
        print(f"index file read after dropping its cache: {cold * 1000:.1f} ms; again (cached): "
              f"{warm * 1000:.1f} ms ({verdict})")
        server.ensure_running()
        qs = queries(args.queries + 1)
        results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for round_no in range(args.rounds):
            for prewarm in (False, True) if round_no % 2 == 0 else (True, False):
                r = run_round(server, dsn, files, qs, prewarm, args.drop_caches)
                results[prewarm].append(r)
                print(f"round {round_no + 1} {'with' if prewarm else 'without'} prewarm: "
                      f"first {r['first_ms']:.1f} ms, p50 {r['p50_ms']:.2f} ms, p95 "
                      f"{r['p95_ms']:.2f} ms" + (f", prewarm {r['prewarm_s']:.2f}s"
                                                  if prewarm else "") + f" [{r['cold']}]")
        print("\nmedian over rounds:")
        for prewarm in (False, True):
            rs = results[prewarm]
            line = (f"  {'with' if prewarm else 'without'} prewarm: first query "
                    f"{statistics.median(r['first_ms'] for r in rs):.1f} ms, p50 "
                    f"{statistics.median(r['p50_ms'] for r in rs):.2f} ms, p95 "
                    f"{statistics.median(r['p95_ms'] for r in rs):.2f} ms")
            if prewarm:
                line += f", prewarm itself {statistics.median(r['prewarm_s'] for r in rs):.2f}s"
            print(line)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
