"""Benchmark: `memory forget` against one plain DELETE of as many rows, and the cost of the
erasure ledger's replay in a restore, in the same run on the same server.

Data: episodic_memory with ROWS rows (default 50,000) at DIM dimensions (default 384), each with
an agent in its context: ten agents, so one agent is 10 % of the rows. The embeddings are drawn
as DESIGN.md says real ones look (topics in a 48-dimension latent space, projected by a fixed
random matrix, a little noise, normalised); a delete does not read them, but they give the rows
and the HNSW index their real size.

Phases:
  1. plain:   DELETE FROM episodic_memory WHERE context->>'agent' = 'a2' (one statement)
  2. forget:  aegisctl's forget() on agent a1 (batched like cleanup, each batch with its
              ledger rows, then the ledger copied beside the backups)
  3. replay:  a backup taken before both deletes, restored into a new database with pg_restore,
              then the ledger replayed into it (timed alone): rows removed and seconds

Reported: rows/s of plain and forget and their ratio, the replay's seconds and rows removed,
and the restore's pg_restore seconds for scale.

Usage: python bench/forget.py [--rows 50000] [--dim 384] [--keep]
(starts its own embedded server in a temporary folder)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import yaml

from aegisctl.config import SchemaSettings
from aegisctl.local import EmbeddedServer
from aegisctl.schema import init_schema


def vectors(rows: int, dim: int, seed: int = 11) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    latent, topics = 48, 200
    centres = rng.normal(size=(topics, latent))
    points = centres[rng.integers(0, topics, rows)] + 0.3 * rng.normal(size=(rows, latent))
    projected = points @ rng.normal(size=(latent, dim)) + 0.05 * rng.normal(size=(rows, dim))
    return projected / np.linalg.norm(projected, axis=1, keepdims=True)


def fill(conn: psycopg.Connection[Any], rows: int, dim: int) -> None:
    data = vectors(rows, dim)
    with conn.cursor().copy("COPY episodic_memory (event_type, summary, context, embedding) "
                            "FROM STDIN") as copy:
        for i in range(rows):
            vec = "[" + ",".join(f"{x:.6f}" for x in data[i]) + "]"
            copy.write_row(("chat", f"memory {i}: what agent a{i % 10} saw and decided",
                            json.dumps({"agent": f"a{i % 10}", "turn": i}), vec))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--keep", action="store_true", help="keep the server's folder")
    args = parser.parse_args()

    from aegisctl.backup.dump import CreateOptions, create_backup
    from aegisctl.backup.restore import _restore, plan_restore
    from aegisctl.config import load_config
    from aegisctl.memory.filters import Filters
    from aegisctl.memory.forget import Selection, forget, select
    from aegisctl.memory.ledger import current_ledger
    from aegisctl.memory.replay import replay
    from aegisctl.targets import resolve_target

    base = Path(tempfile.mkdtemp(prefix="aegisctl-bench-forget-"))
    base.chmod(0o755)
    server = EmbeddedServer(base / "pgdata", database="aegis")
    results: dict[str, Any] = {"rows": args.rows, "dim": args.dim,
                               "data": "48-d latent topics projected, noise, normalised"}
    try:
        server.ensure_running()
        dsn = server.uri()
        config = base / "aegisctl.yaml"
        config.write_text(yaml.safe_dump({
            "targets": {"primary": {"dsn": dsn}},
            "backup": {"directory": str(base / "backups"), "compress": 0}}))
        loaded = load_config(str(config))
        target = resolve_target(loaded, env={})
        with psycopg.connect(dsn, autocommit=True) as conn:
            init_schema(conn, SchemaSettings(embedding_dim=args.dim), wait_lock=60)
            started = time.perf_counter()
            fill(conn, args.rows, args.dim)
            conn.execute("VACUUM ANALYZE episodic_memory")
            print(f"loaded {args.rows} rows in {time.perf_counter() - started:.1f}s",
                  file=sys.stderr)
        manifest = create_backup(loaded, target, CreateOptions(label="before"))

        with psycopg.connect(dsn, autocommit=True) as conn:
            started = time.perf_counter()
            plain = conn.execute("DELETE FROM episodic_memory WHERE context->>'agent' = 'a2'"
                                 ).rowcount
            seconds = time.perf_counter() - started
            results["plain"] = {"rows": plain, "seconds": round(seconds, 3),
                                "rows_per_s": round(plain / seconds)}

            selection = Selection(Filters(context={"agent": "a1"}))
            started = time.perf_counter()
            chosen, _ = select(conn, loaded.settings, selection, None, args.dim)
            selected = time.perf_counter() - started
            started = time.perf_counter()
            done = forget(conn, loaded.settings, "primary", chosen, "bench")
            seconds = time.perf_counter() - started
            rows = sum(done.deleted.values())
            results["forget"] = {"rows": rows, "batches": done.batches,
                                 "select_seconds": round(selected, 3),
                                 "seconds": round(seconds, 3),
                                 "rows_per_s": round(rows / seconds),
                                 "vs_plain": round(rows / seconds / results["plain"]["rows_per_s"],
                                                   2)}

        plan = plan_restore(loaded, target, manifest, target_db="aegis_restored", tables=[],
                            clean=False, jobs=1)
        from aegisctl.db import connect

        with connect(loaded, target, "bench", "maintenance") as admin:
            admin.execute("CREATE DATABASE aegis_restored TEMPLATE template0")
        started = time.perf_counter()
        _restore(loaded, target, manifest, plan, no_owner=False)
        restore_seconds = time.perf_counter() - started
        ledger = current_ledger(loaded.settings.backup, "primary")
        with psycopg.connect(server.uri("aegis_restored"), autocommit=True) as conn:
            started = time.perf_counter()
            replayed = replay(conn, ledger.ledger)
            seconds = time.perf_counter() - started
        results["replay"] = {"rows_removed": replayed.rows_removed,
                             "ledger_entries": replayed.ledger_entries,
                             "seconds": round(seconds, 3),
                             "pg_restore_seconds": round(restore_seconds, 2)}
        print(json.dumps(results, indent=2))
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
