"""Import benchmark: `memory import` through a real HTTP embedding endpoint with latency.

    python bench/import.py [--rows 20000] [--dim 384] [--delay 0.05] [--batch-size 64]

Starts the tests' OpenAI-protocol embedding server (tests/embedding_server.py) with `--delay`
seconds added to every request, like a model's latency, and measures in the same run:

  endpoint: the same texts, in the same batches, sent straight to the endpoint one request
            after the other (what the provider alone costs);
  import:   `aegisctl memory import FILE` as a user runs it (a new process: start-up,
            validation of the whole file, embedding, writing in committed batches).

The figure is import / endpoint (target <= 1.15x): writing overlaps with the requests, so the
import should cost little more than the endpoint itself.

It starts its own embedded PostgreSQL in a temporary folder under /tmp, or uses the server in
$AEGISCTL_BENCH_DSN (a database aegis_bench_import is dropped and created there).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import embedding_server
from embedding_server import CONCEPTS, EmbeddingServer

# The endpoint's cost should be its latency, not this process's CPU (which the import's
# PostgreSQL competes for on a small machine): each word's direction is computed once.
embedding_server._direction = functools.lru_cache(maxsize=None)(embedding_server._direction)

FILLER = (["the", "we", "a", "after", "our", "on", "for", "with", "when", "it", "then",
           "because", "of", "to", "in"] + [f"svc{i}" for i in range(300)])
DATA = ("{rows} episodic memories without embeddings: texts of 12-40 words, two thirds drawn "
        "from the endpoint's 10 concept vocabularies, one third from 315 filler words and "
        "service names; event_type note; one JSON object per line.")


def generate(rows: int, path: Path, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    vocabulary = [w for words in CONCEPTS.values() for w in words]
    texts = []
    with path.open("w") as handle:
        for i in range(rows):
            words = [rng.choice(vocabulary) if rng.random() < 0.66 else rng.choice(FILLER)
                     for _ in range(rng.randint(12, 40))]
            text = f"#{i} " + " ".join(words)
            texts.append(text)
            handle.write(json.dumps({"kind": "episodic", "event_type": "note",
                                     "summary": text}) + "\n")
    return texts


def _import(config: Path, target: str, path: Path) -> tuple[dict[str, Any], float]:
    aegisctl = str(Path(sys.executable).parent / "aegisctl")
    started = time.perf_counter()
    done = subprocess.run([aegisctl, "--config", str(config), "--target", target, "memory",
                           "import", str(path), "-f", "json"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"memory import failed: {done.stderr}")
    body: dict[str, Any] = json.loads(done.stdout)
    return body, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384, help="384: all-MiniLM-L6-v2's size")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from aegisctl.config import EmbeddingSettings, SchemaSettings
    from aegisctl.local import EmbeddedServer
    from aegisctl.memory.providers import make_provider
    from aegisctl.schema import init_schema

    work = Path(tempfile.mkdtemp(prefix="aegisctl-bench-import-", dir="/tmp"))
    work.chmod(0o755)
    server = None
    endpoint = EmbeddingServer(dim=args.dim).start()
    endpoint.state.delay = args.delay
    dsn = os.environ.get("AEGISCTL_BENCH_DSN")
    try:
        if not dsn:
            server = EmbeddedServer(work / "pgdata", database="postgres")
            dsn = server.ensure_running().uri
        assert dsn
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS aegis_bench_import (FORCE)")
            admin.execute("CREATE DATABASE aegis_bench_import")
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS aegis_bench_import_alone (FORCE)")
            admin.execute("CREATE DATABASE aegis_bench_import_alone")
        alone_dsn = make_conninfo(dsn, dbname="aegis_bench_import_alone")
        dsn = make_conninfo(dsn, dbname="aegis_bench_import")
        for each in (dsn, alone_dsn):
            with psycopg.connect(each, autocommit=True) as conn:
                init_schema(conn, SchemaSettings(embedding_dim=args.dim))
        print(f"data: {DATA.format(rows=args.rows)}")
        print(f"endpoint: tests/embedding_server.py over HTTP on 127.0.0.1, {args.dim} dims, "
              f"+{args.delay * 1000:.0f} ms per request, batches of {args.batch_size}; "
              "HNSW index present during the import (as in production)")
        jsonl = work / "memories.jsonl"
        texts = generate(args.rows, jsonl)
        settings = EmbeddingSettings(provider="openai", base_url=endpoint.base_url,
                                     model="bench", api_key_env=None,
                                     batch_size=args.batch_size)

        provider = make_provider(settings, args.dim)
        assert provider is not None
        started = time.perf_counter()
        vectors: list[list[float]] = []
        for start in range(0, len(texts), args.batch_size):
            vectors.extend(provider.embed_batch(texts[start:start + args.batch_size]))
        endpoint_s = time.perf_counter() - started
        requests = endpoint.state.requests
        # The same rows with their vectors: what writing alone costs (a fresh database).
        embedded = work / "embedded.jsonl"
        with jsonl.open() as source, embedded.open("w") as sink:
            for line, vector in zip(source, vectors, strict=True):
                sink.write(json.dumps({**json.loads(line), "embedding": vector}) + "\n")
        del vectors

        config = work / "bench.yaml"
        config.write_text(json.dumps({
            "targets": {"bench": {"dsn": dsn}, "alone": {"dsn": alone_dsn}},
            "embedding": {"provider": "openai", "base_url": endpoint.base_url,
                          "model": "bench", "api_key_env": None,
                          "batch_size": args.batch_size}}))
        body, import_s = _import(config, "bench", jsonl)
        alone, write_s = _import(config, "alone", embedded)
        assert alone["embedded"] == 0 and alone["inserted"]["episodic"] == args.rows
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*), count(embedding) FROM episodic_memory"
                               ).fetchone()
        assert row == (args.rows, args.rows), row
        assert endpoint.state.requests - requests == requests, "import sent other batches"
        ratio = import_s / endpoint_s
        print(f"endpoint alone: {endpoint_s:.1f} s for {requests} requests "
              f"({args.rows / endpoint_s:,.0f} texts/s)")
        print(f"memory import:  {import_s:.1f} s ({args.rows / import_s:,.0f} rows/s; "
              f"{body['batches']} committed batches, {body['embedded']} embedded; "
              f"in-process {body['seconds']:.1f} s)")
        print(f"writing alone:  {write_s:.1f} s (the same rows with their vectors, "
              "imported into a fresh database: validation, COPY, HNSW and GIN upkeep)")
        print(f"ratio import / endpoint: {ratio:.3f}x (target <= 1.15x) "
              f"{'OK' if ratio <= 1.15 else 'MISSED'}")
        floor = max(endpoint_s, write_s)
        print(f"ratio import / max(endpoint, writing alone): {import_s / floor:.3f}x "
              "(how well the two overlap)")
    finally:
        endpoint.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
