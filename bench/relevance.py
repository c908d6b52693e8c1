"""Search relevance on real text: the yardstick for every ranking change.

    .venv/bin/python bench/relevance.py --docs /usr/share/doc/sqlite3 \\
        [--server-python .benchvenv/bin/python | --embedding-url http://127.0.0.1:8765/v1] \\
        [--cache /tmp/minilm-cache.sqlite] [--variants] [--json results.json]

Corpus: the SQLite documentation from the Debian package sqlite3-doc (`apt-get install
sqlite3-doc`, or without root: `apt-get download sqlite3-doc && dpkg-deb -x sqlite3-doc_*.deb
DIR` and pass DIR/usr/share/doc/sqlite3). bench/relevance_corpus.py turns its pages into ~7,700
semantic memories (concept = page and section title, content = one paragraph).

Questions: bench/relevance_questions.json, 53 questions written as users ask them — 26
paraphrases sharing few words with their answer, 27 keyword-style ones naming an exact term
(a PRAGMA, an error code, a C function, a compile-time option) — each labelled with the
paragraphs that answer it (page + a phrase of the paragraph).

Model: all-MiniLM-L6-v2 (384-d) served over the OpenAI embeddings protocol by
bench/minilm_server.py, which runs in a separate venv (torch is never a dependency of aegisctl,
its tests or CI; see that file for the three commands that create `.benchvenv`). Embedding the
corpus takes a few minutes on 2 shared cores; `--cache` keeps vectors for the next run.

Pipeline: an embedded PostgreSQL in a temporary folder (or $AEGISCTL_BENCH_DSN), `aegisctl
schema init`, `aegisctl memory import` of the corpus (embedded through the server by aegisctl's
own provider), then every question through aegisctl's search core — the code behind `aegisctl
memory search --kind semantic --limit 10 --mode M` — in each mode. Baselines in the same run:
plain exact pgvector kNN (`ORDER BY embedding <=> q LIMIT 10`) over embeddings of
`concept + ". " + content` and of `content` alone (the pre-0009 recipe), same model.

Printed: success@5 (an answer in the top 5) and MRR@10 per mode and per question style.
`--variants` adds the hybrid ablations (each fusion change on and off).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DIM = 384
MODEL = "all-MiniLM-L6-v2"


@dataclass
class Scores:
    ranks: dict[str, list[int | None]] = field(default_factory=dict)  # style -> first rank

    def add(self, style: str, rank: int | None) -> None:
        self.ranks.setdefault(style, []).append(rank)
        self.ranks.setdefault("all", []).append(rank)

    def success(self, style: str, k: int = 5) -> float:
        ranks = self.ranks.get(style, [])
        return sum(1 for r in ranks if r is not None and r <= k) / max(1, len(ranks))

    def mrr(self, style: str, k: int = 10) -> float:
        ranks = self.ranks.get(style, [])
        return sum(1.0 / r for r in ranks if r is not None and r <= k) / max(1, len(ranks))


def first_rank(ids: list[int], relevant: set[int]) -> int | None:
    for rank, memory_id in enumerate(ids, start=1):
        if memory_id in relevant:
            return rank
    return None


def post_embeddings(url: str, texts: list[str]) -> list[list[float]]:
    out: list[list[float]] = []
    for start in range(0, len(texts), 64):
        body = json.dumps({"model": MODEL, "input": texts[start:start + 64]}).encode()
        request = urllib.request.Request(url.rstrip("/") + "/embeddings", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            data = json.loads(response.read())["data"]
        out.extend(item["embedding"] for item in sorted(data, key=lambda d: d["index"]))
    return out


def start_embedding_server(python: str, cache: str | None) -> tuple[subprocess.Popen[str], str]:
    port_file = Path(tempfile.mkdtemp(prefix="minilm-")) / "port"
    code = (f"import sys, threading; sys.path.insert(0, {str(HERE)!r}); import minilm_server as m; "
            f"s, _ = m.start(0, {cache!r}); open({str(port_file)!r}, 'w').write(str(s.server_address[1])); "
            "threading.Event().wait()")
    proc = subprocess.Popen([python, "-c", code], text=True)
    for _ in range(600):
        if port_file.exists() and port_file.read_text():
            return proc, f"http://127.0.0.1:{port_file.read_text()}/v1"
        if proc.poll() is not None:
            raise SystemExit(f"the embedding server exited ({proc.returncode}); see "
                             "bench/minilm_server.py for how to create its venv")
        time.sleep(0.2)
    raise SystemExit("the embedding server did not start within 120 s")


def relevant_ids(conn: psycopg.Connection[Any], answers: list[dict[str, str]]) -> set[int]:
    found: set[int] = set()
    for answer in answers:
        rows = conn.execute(
            "SELECT id FROM semantic_memory WHERE metadata->>'page' = %s "
            "AND strpos(lower(content), lower(%s)) > 0", (answer["page"], answer["text"]),
        ).fetchall()
        found.update(int(r[0]) for r in rows)
    return found


def build_baseline(conn: psycopg.Connection[Any], url: str) -> None:
    """Plain kNN tables: one vector per memory from concept + '. ' + content, one from content."""
    rows = conn.execute("SELECT id, concept, content FROM semantic_memory ORDER BY id").fetchall()
    full = post_embeddings(url, [f"{r[1]}. {r[2]}" for r in rows])
    content = post_embeddings(url, [str(r[2]) for r in rows])
    conn.execute(f"CREATE TABLE bench_knn (id int PRIMARY KEY, full_e vector({DIM}), "
                 f"content_e vector({DIM}))")
    with conn.cursor() as cur, cur.copy("COPY bench_knn FROM STDIN") as cp:
        for (memory_id, _, _), f, c in zip(rows, full, content, strict=True):
            cp.write_row((memory_id, "[" + ",".join(map(repr, f)) + "]",
                          "[" + ",".join(map(repr, c)) + "]"))
    conn.execute("ANALYZE bench_knn")


def knn(conn: psycopg.Connection[Any], column: str, vector: list[float]) -> list[int]:
    literal = "[" + ",".join(map(repr, vector)) + "]"
    rows = conn.execute(f"SELECT id FROM bench_knn ORDER BY {column} <=> %s::vector LIMIT 10",
                        (literal,)).fetchall()
    return [int(r[0]) for r in rows]


def variants(base: Any) -> list[tuple[str, Any]]:
    """Hybrid ablations: each fusion change switched off alone, and all of them off."""
    out: list[tuple[str, Any]] = []

    def with_(label: str, **changes: Any) -> None:
        settings = copy.deepcopy(base)
        for key, value in changes.items():
            setattr(settings.search, key, value)
        out.append((label, settings))

    with_("hybrid, textbook RRF (k 60, equal weights, depth 40, no boost, no dedupe)",
          rrf_k=60, semantic_weight=1.0, keyword_weight=1.0, candidates=40,
          exact_term_boost=0.0, dedupe=0.0)
    with_("hybrid without the exact-term boost", exact_term_boost=0.0)
    with_("hybrid with equal signal weights", semantic_weight=1.0, keyword_weight=1.0)
    with_("hybrid with candidate depth 20", candidates=20)
    with_("hybrid with candidate depth 100", candidates=100)
    with_("hybrid with rrf_k 10", rrf_k=10)
    with_("hybrid without dedupe", dedupe=0.0)
    return out


def sweep(base: Any) -> list[tuple[str, Any]]:
    """The grid the defaults were chosen from (--sweep)."""
    out: list[tuple[str, Any]] = []
    for rrf_k in (10, 30, 60):
        for keyword_weight in (0.5, 0.75, 1.0, 1.5):
            for boost in (0.0, 1.0, 2.0):
                for candidates in (30, 40, 50):
                    settings = copy.deepcopy(base)
                    settings.search.rrf_k = rrf_k
                    settings.search.semantic_weight = 1.0
                    settings.search.keyword_weight = keyword_weight
                    settings.search.exact_term_boost = boost
                    settings.search.candidates = candidates
                    out.append((f"k {rrf_k} kw {keyword_weight} boost {boost} "
                                f"depth {candidates}", settings))
    return out


def run_questions(conn: psycopg.Connection[Any], settings: Any, provider: Any,
                  questions: list[dict[str, Any]], relevant: list[set[int]], mode: str
                  ) -> Scores:
    from aegisctl.memory.filters import Filters
    from aegisctl.memory.search import SearchRequest, search

    scores = Scores()
    for question, answers in zip(questions, relevant, strict=True):
        request = SearchRequest(query=question["q"], filters=Filters(kind="semantic"),
                                limit=10, mode=mode)  # type: ignore[arg-type]
        result = search(conn, settings, request, provider, DIM)
        ids = [h.id for h in result.hits]
        scores.add(question["style"], first_rank(ids, answers))
    return scores


def import_corpus(conn: psycopg.Connection[Any], dsn: str, url: str, corpus: Path, lines: int,
                  questions: list[dict[str, Any]], work: Path) -> None:
    """`aegisctl memory import` of the corpus, embedded through the endpoint."""
    config = work / "bench.yaml"
    config.write_text(json.dumps({
        "targets": {"bench": {"dsn": dsn}},
        # The import embeds inside its transaction: no statement timeout on 2 busy cores.
        "connection": {"timeouts": {"query": {"statement_timeout": 0}}},
        "schema": {"embedding_dim": DIM},
        "embedding": {"provider": "openai", "base_url": url, "model": MODEL,
                      "dimensions": DIM, "batch_size": 64, "timeout": 600},
    }))
    aegisctl = str(Path(sys.executable).parent / "aegisctl")
    started = time.perf_counter()
    done = subprocess.run([aegisctl, "--config", str(config), "memory", "import",
                           str(corpus), "-f", "json"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"memory import failed: {done.stderr}")
    count = conn.execute("SELECT count(*) FROM semantic_memory").fetchone()
    print(f"corpus: SQLite docs (sqlite3-doc), {lines} paragraphs, {count[0] if count else 0} "
          f"imported (exact duplicates skipped) in {time.perf_counter() - started:.0f} s; "
          f"model {MODEL} ({DIM}-d) over HTTP; {len(questions)} questions "
          f"({sum(q['style'] == 'paraphrase' for q in questions)} paraphrase, "
          f"{sum(q['style'] == 'keyword' for q in questions)} keyword)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", required=True, type=Path,
                        help="the sqlite3-doc HTML folder (usr/share/doc/sqlite3)")
    parser.add_argument("--questions", type=Path, default=HERE / "relevance_questions.json")
    parser.add_argument("--embedding-url", help="a running OpenAI-compatible endpoint (…/v1)")
    parser.add_argument("--server-python", default=str(HERE.parent / ".benchvenv/bin/python"),
                        help="the bench venv's python, to start bench/minilm_server.py")
    parser.add_argument("--cache", default=None, help="embedding cache file (SQLite)")
    parser.add_argument("--variants", action="store_true", help="hybrid ablations too")
    parser.add_argument("--sweep", action="store_true", help="the hybrid tuning grid too")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary database")
    parser.add_argument("--reuse", default=None, metavar="DSN",
                        help="a database a --keep run left (skips the import and baselines)")
    args = parser.parse_args()

    from relevance_corpus import records

    from aegisctl.config import SchemaSettings, Settings
    from aegisctl.local import EmbeddedServer
    from aegisctl.memory.providers import OpenAIProvider
    from aegisctl.schema import init_schema

    questions = json.loads(args.questions.read_text())["questions"]
    work = Path(tempfile.mkdtemp(prefix="aegisctl-relevance-", dir="/tmp"))
    work.chmod(0o755)
    server = None
    embedder = None
    try:
        url = args.embedding_url
        if not url:
            embedder, url = start_embedding_server(args.server_python, args.cache)
        corpus = work / "corpus.jsonl"
        rows = records(args.docs)
        with corpus.open("w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        dsn = args.reuse or os.environ.get("AEGISCTL_BENCH_DSN")
        if not dsn:
            server = EmbeddedServer(work / "pgdata", database="postgres")
            dsn = server.ensure_running().uri
        if not args.reuse:
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute("DROP DATABASE IF EXISTS aegis_relevance (FORCE)")
                admin.execute("CREATE DATABASE aegis_relevance")
            dsn = make_conninfo(dsn, dbname="aegis_relevance")
        conn = psycopg.connect(dsn, autocommit=True)
        if not args.reuse:
            init_schema(conn, SchemaSettings(embedding_dim=DIM))
            import_corpus(conn, dsn, url, corpus, len(rows), questions, work)
            build_baseline(conn, url)
        else:
            print(f"reusing {dsn}")
        if args.keep:
            print(f"database kept: {dsn}", file=sys.stderr)
        relevant = [relevant_ids(conn, q["answers"]) for q in questions]
        unanswerable = [q["q"] for q, r in zip(questions, relevant, strict=True) if not r]
        if unanswerable:
            raise SystemExit(f"labels match no memory: {unanswerable}")

        settings = Settings()
        settings.schema.embedding_dim = DIM
        provider = OpenAIProvider(base_url=url, model=MODEL, dimensions=DIM, batch_size=64,
                                  api_key=None, api_key_env=None, send_dimensions=False,
                                  timeout=600, retries=2, max_retry_wait=5)
        results: list[tuple[str, Scores]] = []
        query_vectors = post_embeddings(url, [q["q"] for q in questions])
        for label, column in (("plain kNN, concept + \". \" + content", "full_e"),
                              ("plain kNN, content only (old recipe)", "content_e")):
            scores = Scores()
            for q, vector, answers in zip(questions, query_vectors, relevant, strict=True):
                scores.add(q["style"], first_rank(knn(conn, column, vector), answers))
            results.append((label, scores))
        for mode in ("keyword", "semantic", "hybrid"):
            results.append((f"aegisctl {mode}",
                            run_questions(conn, settings, provider, questions, relevant, mode)))
        print_table(results)
        if args.variants:
            for label, variant in variants(settings):
                results.append((label, run_questions(conn, variant, provider, questions,
                                                     relevant, "hybrid")))
        if args.sweep:
            grid = [(label, run_questions(conn, variant, provider, questions, relevant,
                                          "hybrid")) for label, variant in sweep(settings)]
            grid.sort(key=lambda item: -(item[1].success("all") + item[1].mrr("all")))
            print("\nsweep (best first):")
            print_table(grid)
        if args.variants:
            print("\nwith the ablations:")
            print_table(results)
        if args.json:
            args.json.write_text(json.dumps({
                label: {style: {"success@5": round(s.success(style), 3),
                                "mrr@10": round(s.mrr(style), 3)}
                        for style in ("all", "paraphrase", "keyword")}
                for label, s in results}, indent=2))
        conn.close()
    finally:
        if embedder is not None:
            embedder.terminate()
        if server is not None and not args.keep:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work}", file=sys.stderr)


def print_table(results: list[tuple[str, Scores]]) -> None:
    width = max(len(label) for label, _ in results)
    print(f"\n{'':<{width}}  {'all':^15}  {'paraphrase':^15}  {'keyword':^15}")
    print(f"{'mode':<{width}}  " + "  ".join(["s@5    MRR@10 "] * 3))
    for label, scores in results:
        cells = "  ".join(f"{scores.success(s):.3f}  {scores.mrr(s):.3f}  "
                          for s in ("all", "paraphrase", "keyword"))
        print(f"{label:<{width}}  {cells}")


if __name__ == "__main__":
    main()
