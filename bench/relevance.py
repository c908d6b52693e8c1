"""Search relevance on real text, tuned on one manual and reported on another.

    nice .venv/bin/python bench/relevance.py [--corpus sqlite --corpus postgres] \\
        [--server-python .benchvenv/bin/python | --embedding-url http://127.0.0.1:8765/v1] \\
        [--cache FILE] [--work DIR] [--rerank-url URL] [--json results.json]

Corpora (Debian documentation packages; bench/relevance_corpus.py turns pages into semantic
memories, concept = page and section title, content = one paragraph):
- sqlite: the SQLite documentation (`sqlite3-doc`, /usr/share/doc/sqlite3): the pages holding
  a labelled answer plus a fixed sample of the others, 4,000 paragraphs of ~7,700.
  Questions: bench/relevance_questions.json, 53 (26 paraphrase, 27 keyword-style).
- postgres: the PostgreSQL 15 manual's administration chapters (`postgresql-doc-15`,
  /usr/share/doc/postgresql-doc-15/html), 2,802 paragraphs: configuration parameters,
  vacuum, WAL, backup and PITR, replication, monitoring, locking, indexes, roles, pg_dump.
  Questions: bench/relevance_questions_postgres.json, 52 (26 paraphrase, 26 keyword-style),
  written by reading the manual; each labels the paragraphs that answer it (page + a phrase).
Without root: `apt-get download sqlite3-doc postgresql-doc-15 && dpkg-deb -x PKG.deb DIR` and
pass the folders with --docs-sqlite / --docs-postgres.

Model: all-MiniLM-L6-v2 (384-d) over the OpenAI embeddings protocol by bench/minilm_server.py in
a separate venv (torch is never a dependency of aegisctl, its tests or CI; see that file).
`--cache` keeps the vectors (SQLite, by text hash): the corpora embed once.

Pipeline per corpus: an embedded PostgreSQL (kept in --work DIR and reused when given), `aegisctl
schema init`, `aegisctl memory import` (embedded through the server by aegisctl's provider),
then every question through aegisctl's search core (what `memory search --kind semantic --limit
10 --mode M` runs). Baseline in the same run: plain exact pgvector kNN (`ORDER BY embedding <=>
q LIMIT 10`) over the same vectors, without aegisctl's dedupe and fusion.

No tuning on the reporting set: the fusion grid (--grid; 972 settings: rrf_k, keyword weight,
adaptive on/off and the adaptive rule's constants, and the safeguard's thresholds, off
included) is scored on one corpus, its best setting (success@5 + MRR@10 there) is reported on
the other, in both directions; so is the best setting of the grid without the safeguard, to
show what it changes. The shipped defaults are the setting tuned on the SQLite docs; they are
printed as rows of their own, with and without the safeguard, next to the fixed-weight fusion
of two releases ago. `--rerank-url` adds hybrid + rerank through a `POST /rerank` server, with
its latency.
Printed: success@5 and MRR@10 per mode and question style (nDCG@10 in --json).
"""

from __future__ import annotations

import argparse
import copy
import itertools
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
class Corpus:
    name: str
    label: str
    docs: Path
    questions_file: Path
    max_paragraphs: int


CORPORA = {
    "sqlite": Corpus("sqlite", "SQLite docs (sqlite3-doc)", Path("/usr/share/doc/sqlite3"),
                     HERE / "relevance_questions.json", 4000),
    "postgres": Corpus("postgres", "PostgreSQL 15 manual, administration (postgresql-doc-15)",
                       Path("/usr/share/doc/postgresql-doc-15/html"),
                       HERE / "relevance_questions_postgres.json", 4000),
}


@dataclass
class Scores:
    ranks: dict[str, list[int | None]] = field(default_factory=dict)  # style -> first rank
    ndcgs: dict[str, list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)

    def add(self, style: str, ids: list[int], relevant: set[int]) -> None:
        from aegisctl.memory.metrics import first_rank, ndcg

        for key in (style, "all"):
            self.ranks.setdefault(key, []).append(first_rank(ids, relevant))  # type: ignore[arg-type]
            self.ndcgs.setdefault(key, []).append(ndcg(ids, relevant, 10))  # type: ignore[arg-type]

    def success(self, style: str, k: int = 5) -> float:
        ranks = self.ranks.get(style, [])
        return sum(1 for r in ranks if r is not None and r <= k) / max(1, len(ranks))

    def mrr(self, style: str, k: int = 10) -> float:
        ranks = self.ranks.get(style, [])
        return sum(1.0 / r for r in ranks if r is not None and r <= k) / max(1, len(ranks))

    def ndcg(self, style: str) -> float:
        values = self.ndcgs.get(style, [])
        return sum(values) / max(1, len(values))

    def p95_ms(self) -> float:
        ordered = sorted(self.seconds)
        return 1000 * ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] \
            if ordered else 0.0


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
    code = (f"import sys, threading; sys.path.insert(0, {str(HERE)!r}); "
            f"import minilm_server as m; s, _ = m.start(0, {cache!r}, 1); "
            f"open({str(port_file)!r}, 'w').write(str(s.server_address[1])); "
            "threading.Event().wait()")
    proc = subprocess.Popen([python, "-c", code], text=True)
    for _ in range(600):
        if port_file.exists() and port_file.read_text():
            port = port_file.read_text()
            shutil.rmtree(port_file.parent, ignore_errors=True)  # it served its purpose
            return proc, f"http://127.0.0.1:{port}/v1"
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


def knn(conn: psycopg.Connection[Any], vector: list[float]) -> list[int]:
    """Plain exact kNN over the stored vectors (no index, no dedupe, no fusion)."""
    literal = "[" + ",".join(map(repr, vector)) + "]"
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        rows = conn.execute("SELECT id FROM semantic_memory ORDER BY embedding <=> %s::vector "
                            "LIMIT 10", (literal,)).fetchall()
    return [int(r[0]) for r in rows]


# The fusion grid scored on the tuning corpus: SearchSettings fields, and the adaptive rule's
# and the safeguard's constants in aegisctl/memory/search/fusion.py. GUARD_WEAK 0.0 with
# GUARD_STRONG 9.0 is the safeguard off (the first value of each, so a tie prefers it off).
GRID: dict[str, tuple[Any, ...]] = {
    "rrf_k": (10, 30, 60),
    "keyword_weight": (0.5, 0.75, 1.0),
    "adaptive": (False, True),
    "FLOOR": (0.25, 0.5),
    "SPREAD_FULL": (0.1, 0.3),
    "AGREEMENT": (0.0, 0.5),
    "GUARD_WEAK": (0.0, 0.5, 0.6, 0.7),
    "GUARD_STRONG": (9.0, 0.8, 0.9),
}
CONSTANTS = ("FLOOR", "SPREAD_FULL", "AGREEMENT")
GUARDS = ("GUARD_WEAK", "GUARD_STRONG")
GUARD_OFF = {"GUARD_WEAK": 0.0, "GUARD_STRONG": 9.0}


@dataclass
class Variant:
    label: str
    settings: Any
    constants: dict[str, float]

    def apply(self) -> None:
        from aegisctl.memory.search import fusion

        for name, value in self.constants.items():
            setattr(fusion, name, value)

    @property
    def fusion_key(self) -> str:
        """What the fused order depends on (everything but the safeguard)."""
        return self.label.split(" | ")[0]

    @property
    def guarded(self) -> bool:
        return any(self.constants[g] != GUARD_OFF[g] for g in GUARDS)


def grid(base: Any, with_guard: bool = True) -> list[Variant]:
    out: list[Variant] = []
    names = list(GRID)
    for values in itertools.product(*(GRID[n] for n in names)):
        chosen = dict(zip(names, values, strict=True))
        if not chosen["adaptive"] and any(chosen[c] != GRID[c][0] for c in CONSTANTS):
            continue  # the constants only matter to the adaptive rule
        if not with_guard and any(chosen[g] != GUARD_OFF[g] for g in GUARDS):
            continue
        settings = copy.deepcopy(base)
        for name in ("rrf_k", "keyword_weight", "adaptive"):
            setattr(settings.search, name, chosen[name])
        settings.search.safeguard = True
        label = " ".join(f"{n} {chosen[n]}" for n in names if n not in GUARDS and (
            chosen["adaptive"] or n not in CONSTANTS))
        guard = ("safeguard off" if all(chosen[g] == GUARD_OFF[g] for g in GUARDS) else
                 f"safeguard: semantic below {chosen['GUARD_WEAK']}" + (
                     f", keyword from {chosen['GUARD_STRONG']}"
                     if chosen["GUARD_STRONG"] != GUARD_OFF["GUARD_STRONG"] else ""))
        out.append(Variant(f"{label} | {guard}", settings,
                           {c: chosen[c] for c in CONSTANTS + GUARDS}))
    return out


def captured(loaded: Loaded, settings: Any) -> list[tuple[Any, ...]]:
    """Each question's two candidate lists, fetched once through the core's signal functions
    (so a grid of fusion settings is scored without asking the database again)."""
    from aegisctl.memory.filters import Filters
    from aegisctl.memory.search import (
        Explain,
        TermStats,
        keyword_search,
        query_vector,
        semantic_search,
    )

    out = []
    depth = settings.search.candidates
    for question, vector in zip(loaded.questions, loaded.vectors, strict=True):
        q = query_vector(loaded.conn, vector)
        explain, stats = Explain(mode="hybrid"), TermStats()
        semantic = semantic_search(loaded.conn, settings, ["semantic"], Filters(kind="semantic"),
                                   q, DIM, depth, explain)
        keyword = keyword_search(loaded.conn, ["semantic"], Filters(kind="semantic"),
                                 question["q"], depth, explain, False, q, DIM, stats=stats)
        out.append((semantic, keyword, stats))
    return out


def score_offline(loaded: Loaded, lists: list[tuple[Any, ...]], variants: list[Variant]
                  ) -> list[Scores]:
    """What search() ranks in hybrid mode, from the captured lists: fuse (once per fusion
    setting), the safeguard (per variant), then dedupe."""
    from aegisctl.memory.search import adaptive_weights, exact_terms, fuse
    from aegisctl.memory.search.fusion import safeguard

    fused_by: dict[str, list[tuple[list[Any], Any, Any, float]]] = {}
    out = []
    for variant in variants:
        variant.apply()
        search = variant.settings.search
        fused = fused_by.get(variant.fusion_key)
        if fused is None:
            fused = fused_by[variant.fusion_key] = []
            search.safeguard = False
            for question, (semantic, keyword, stats) in zip(loaded.questions, lists,
                                                             strict=True):
                sem, kw = _fresh(semantic), _fresh(keyword)
                weights = adaptive_weights(sem, kw, stats, search)
                hits = fuse(sem, kw, "hybrid", search, exact_terms(question["q"]), weights)
                fused.append((hits, sem, kw, weights.keyword_strength))
            search.safeguard = True
        scores = Scores()
        for question, (hits, sem, kw, strength), answers in zip(
                loaded.questions, fused, loaded.relevant, strict=True):
            order = list(hits)
            safeguard(order, sem, kw, strength)
            scores.add(question["style"], top_ids(order, search.dedupe), answers)
        out.append(scores)
    return out


def _fresh(hits: list[Any]) -> list[Any]:
    """Shallow copies that fusion may annotate without touching the captured hits."""
    return [_fresh_hit(h) for h in hits]


def _fresh_hit(hit: Any) -> Any:
    hit = copy.copy(hit)
    hit.ranks, hit.duplicates, hit.exact_terms = dict(hit.ranks), [], list(hit.exact_terms)
    return hit


def top_ids(hits: list[Any], threshold: float, n: int = 10) -> list[int]:
    """The first n ids after dedupe (which folds a hit only into better-ranked ones, so a
    prefix of the list gives the same first n whenever it keeps n)."""
    from aegisctl.memory.search import dedupe

    for prefix in (hits[:3 * n], hits):
        kept = dedupe([_fresh_hit(h) for h in prefix], threshold)
        if len(kept) >= n or prefix is hits:
            return [h.id for h in kept[:n]]
    return []


@dataclass
class Loaded:
    corpus: Corpus
    conn: psycopg.Connection[Any]
    questions: list[dict[str, Any]]
    relevant: list[set[int]]
    vectors: list[list[float]]
    paragraphs: int


def run_questions(loaded: Loaded, settings: Any, mode: str, rerank: bool = False) -> Scores:
    from aegisctl.memory.filters import Filters
    from aegisctl.memory.search import SearchRequest, search

    scores = Scores()
    for question, vector, answers in zip(loaded.questions, loaded.vectors, loaded.relevant,
                                         strict=True):
        request = SearchRequest(query=question["q"], filters=Filters(kind="semantic"),
                                limit=10, mode=mode, vector=vector,  # type: ignore[arg-type]
                                rerank=rerank)
        started = time.perf_counter()
        result = search(loaded.conn, settings, request, None, DIM)
        scores.seconds.append(time.perf_counter() - started)
        scores.add(question["style"], [h.id for h in result.hits], answers)
    return scores


def load_corpus(corpus: Corpus, admin_dsn: str, url: str, work: Path,
                docs: Path | None) -> Loaded:
    """The corpus's database (imported once; a --work folder keeps it for the next run)."""
    from relevance_corpus import CORPORA as PARSERS
    from relevance_corpus import subset

    from aegisctl.config import SchemaSettings
    from aegisctl.schema import init_schema

    questions = json.loads(corpus.questions_file.read_text())["questions"]
    dbname = f"aegis_relevance_{corpus.name}"
    dsn = make_conninfo(admin_dsn, dbname=dbname)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                               (dbname,)).fetchone()
    ready = False
    if exists:
        with psycopg.connect(dsn, autocommit=True) as probe:
            ready = bool(probe.execute("SELECT to_regclass('bench_ready') IS NOT NULL")
                         .fetchone()[0])  # type: ignore[index]
    if not ready:
        rows = PARSERS[corpus.name](docs or corpus.docs)
        if not rows:
            raise SystemExit(f"no pages under {docs or corpus.docs}: install the Debian "
                             "package named in bench/relevance.py's docstring")
        pages = {a["page"] for q in questions for a in q["answers"]}
        rows = subset(rows, pages, corpus.max_paragraphs)
        path = work / f"{corpus.name}.jsonl"
        with path.open("w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {dbname} (FORCE)")
            admin.execute(f"CREATE DATABASE {dbname}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            init_schema(conn, SchemaSettings(embedding_dim=DIM))
        import_corpus(dsn, url, path, work, corpus)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE semantic_memory")
            conn.execute("CREATE TABLE bench_ready ()")
    conn = psycopg.connect(dsn, autocommit=True)
    count = conn.execute("SELECT count(*) FROM semantic_memory").fetchone()
    relevant = [relevant_ids(conn, q["answers"]) for q in questions]
    unanswerable = [q["q"] for q, r in zip(questions, relevant, strict=True) if not r]
    if unanswerable:
        raise SystemExit(f"{corpus.name}: labels match no memory: {unanswerable}")
    vectors = post_embeddings(url, [q["q"] for q in questions])
    loaded = Loaded(corpus, conn, questions, relevant, vectors, int(count[0]) if count else 0)
    print(f"corpus {corpus.name}: {corpus.label}, {loaded.paragraphs} memories; "
          f"{len(questions)} questions ({sum(q['style'] == 'paraphrase' for q in questions)} "
          f"paraphrase, {sum(q['style'] == 'keyword' for q in questions)} keyword)")
    return loaded


def import_corpus(dsn: str, url: str, corpus_file: Path, work: Path, corpus: Corpus) -> None:
    """`aegisctl memory import` of the corpus, embedded through the endpoint."""
    config = work / f"bench-{corpus.name}.yaml"
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
                           str(corpus_file), "-f", "json"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"memory import failed: {done.stderr}")
    print(f"{corpus.name}: imported in {time.perf_counter() - started:.0f} s "
          f"(model {MODEL}, {DIM}-d, over HTTP)")


def rank_key(scores: Scores) -> float:
    return scores.success("all") + scores.mrr("all")


def evaluate(loaded: list[Loaded], settings: Any, rerank: bool, use_grid: bool
             ) -> dict[str, list[tuple[str, Scores]]]:
    results: dict[str, list[tuple[str, Scores]]] = {}
    for item in loaded:
        rows: list[tuple[str, Scores]] = []
        plain = Scores()
        for q, vector, answers in zip(item.questions, item.vectors, item.relevant,
                                      strict=True):
            plain.add(q["style"], knn(item.conn, vector), answers)
        rows.append(("plain kNN (exact, same vectors)", plain))
        for mode in ("keyword", "semantic", "hybrid"):
            label = f"aegisctl {mode} (defaults)"
            if mode == "hybrid":
                label = "aegisctl hybrid, shipped (defaults = tuned on sqlite)"
            rows.append((label, run_questions(item, settings, mode)))
        unguarded = copy.deepcopy(settings)
        unguarded.search.safeguard = False
        rows.append(("aegisctl hybrid, shipped without the safeguard",
                     run_questions(item, unguarded, "hybrid")))
        fixed = copy.deepcopy(unguarded)
        fixed.search.adaptive = False
        fixed.search.rrf_k = 60
        rows.append(("aegisctl hybrid, two releases ago (fixed weights, rrf_k 60)",
                     run_questions(item, fixed, "hybrid")))
        if rerank:
            rows.append(("aegisctl hybrid + rerank (defaults)",
                         run_questions(item, settings, "hybrid", rerank)))
        results[item.corpus.name] = rows
    if use_grid and len(loaded) == 2:
        from aegisctl.memory.search import fusion

        shipped = {c: getattr(fusion, c) for c in CONSTANTS + GUARDS}
        for tune, report in (loaded, loaded[::-1]):
            lists = captured(tune, copy.deepcopy(settings))
            variants = grid(settings)
            started = time.perf_counter()
            scored = list(zip(variants, score_offline(tune, lists, variants), strict=True))
            seconds = time.perf_counter() - started
            # Stable sort: among equal scores the grid's order decides (safeguard off first).
            scored.sort(key=lambda entry: rank_key(entry[1]), reverse=True)
            for which, pool in (("", scored),
                                (", safeguard not in the grid",
                                 [e for e in scored if not e[0].guarded])):
                best, on_tune = pool[0]
                print(f"\ntuned on {tune.corpus.name}{which} ({len(pool)} settings, scored "
                      f"offline in {seconds:.0f} s, ranked by success@5 + MRR@10): "
                      f"{best.label} (s@5 {on_tune.success('all'):.3f}, MRR "
                      f"{on_tune.mrr('all'):.3f} there)")
                best.apply()
                results[report.corpus.name].append(
                    (f"hybrid tuned on {tune.corpus.name}{which}",
                     run_questions(report, best.settings, "hybrid")))
                if rerank and not which:
                    results[report.corpus.name].append(
                        (f"hybrid tuned on {tune.corpus.name} + rerank",
                         run_questions(report, best.settings, "hybrid", rerank)))
                Variant("shipped", settings, shipped).apply()
            guarded = sum(1 for v, _ in scored if v.guarded)
            print(f"settings at least as good as {tune.corpus.name}'s best single mode in "
                  f"both metrics: {_at_least(tune, results, scored, True)} of {guarded} with "
                  f"a safeguard, {_at_least(tune, results, scored, False)} of "
                  f"{len(scored) - guarded} without")
    return results


def _at_least(tune: Loaded, results: dict[str, list[tuple[str, Scores]]],
              scored: list[tuple[Variant, Scores]], guarded: bool) -> int:
    rows = dict(results[tune.corpus.name])
    singles = [rows["aegisctl keyword (defaults)"], rows["aegisctl semantic (defaults)"]]
    s5 = max(s.success("all") for s in singles)
    mrr = max(s.mrr("all") for s in singles)
    return sum(1 for v, s in scored if v.guarded == guarded
               and round(s.success("all"), 3) >= round(s5, 3)
               and round(s.mrr("all"), 3) >= round(mrr, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", choices=sorted(CORPORA),
                        help="repeatable; default: both")
    parser.add_argument("--docs-sqlite", type=Path, default=None)
    parser.add_argument("--docs-postgres", type=Path, default=None)
    parser.add_argument("--embedding-url", help="a running OpenAI-compatible endpoint (…/v1)")
    parser.add_argument("--server-python", default=str(HERE.parent / ".benchvenv/bin/python"),
                        help="the bench venv's python, to start bench/minilm_server.py")
    parser.add_argument("--cache", default=None, help="embedding cache file (SQLite)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the databases here and reuse them on the next run")
    parser.add_argument("--no-grid", action="store_true", help="skip the tuning grid")
    parser.add_argument("--rerank-url", default=None,
                        help="a POST /rerank server (…/v1 or its root) for hybrid + rerank")
    parser.add_argument("--rerank-model", default="rerank")
    parser.add_argument("--rerank-top-n", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    from aegisctl.config import RerankSettings, Settings
    from aegisctl.local import EmbeddedServer

    names = args.corpus or ["sqlite", "postgres"]
    work = args.work or Path(tempfile.mkdtemp(prefix="aegisctl-relevance-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    server = None
    embedder = None
    try:
        url = args.embedding_url
        if not url:
            embedder, url = start_embedding_server(args.server_python, args.cache)
        admin_dsn = os.environ.get("AEGISCTL_BENCH_DSN")
        if not admin_dsn:
            server = EmbeddedServer(work / "pgdata", database="postgres")
            admin_dsn = server.ensure_running().uri
        assert admin_dsn
        docs = {"sqlite": args.docs_sqlite, "postgres": args.docs_postgres}
        loaded = [load_corpus(CORPORA[n], admin_dsn, url, work, docs[n]) for n in names]
        settings = Settings()
        settings.schema.embedding_dim = DIM
        rerank = False
        if args.rerank_url:
            settings.search.rerank = RerankSettings(base_url=args.rerank_url,
                                                    model=args.rerank_model,
                                                    top_n=args.rerank_top_n)
            rerank = True
        results = evaluate(loaded, settings, rerank, not args.no_grid)
        for name, rows in results.items():
            print(f"\n{name}:")
            print_table(rows)
        print()
        for line in verdicts(results):
            print(line)
        if args.json:
            args.json.write_text(json.dumps({
                name: {label: {style: {"success@5": round(s.success(style), 3),
                                       "mrr@10": round(s.mrr(style), 3),
                                       "ndcg@10": round(s.ndcg(style), 3)}
                               for style in ("all", "paraphrase", "keyword")}
                       | {"p95_ms": round(s.p95_ms(), 1)}
                       for label, s in rows}
                for name, rows in results.items()}, indent=2))
        for item in loaded:
            item.conn.close()
    finally:
        if embedder is not None:
            embedder.terminate()
        if server is not None and args.work is None:
            server.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def verdicts(results: dict[str, list[tuple[str, Scores]]]) -> list[str]:
    """The issue's bar, per corpus: is each hybrid row at least as good as the better single
    mode in both success@5 and MRR@10 (rounded as printed)?"""
    out = []
    for name, rows in results.items():
        table = dict(rows)
        singles = [table["aegisctl keyword (defaults)"], table["aegisctl semantic (defaults)"]]
        s5 = round(max(s.success("all") for s in singles), 3)
        mrr = round(max(s.mrr("all") for s in singles), 3)
        for label, scores in rows:
            if label.startswith("aegisctl hybrid, shipped (") or (
                    label.startswith("hybrid tuned on") and "rerank" not in label):
                a, b = round(scores.success("all"), 3), round(scores.mrr("all"), 3)
                verdict = ("better than both single modes" if a > s5 and b > mrr else
                           "at least the better single mode" if a >= s5 and b >= mrr else
                           "BELOW the better single mode")
                out.append(f"{name}: {label}: {a:.3f} / {b:.3f} against {s5:.3f} / {mrr:.3f}: "
                           f"{verdict}")
    return out


def print_table(results: list[tuple[str, Scores]]) -> None:
    width = max(len(label) for label, _ in results)
    print(f"{'':<{width}}  {'all':^15}  {'paraphrase':^15}  {'keyword':^15}  {'p95':>7}")
    print(f"{'mode':<{width}}  " + "  ".join(["s@5    MRR@10 "] * 3) + "  " + f"{'ms':>7}")
    for label, scores in results:
        cells = "  ".join(f"{scores.success(s):.3f}  {scores.mrr(s):.3f}  "
                          for s in ("all", "paraphrase", "keyword"))
        print(f"{label:<{width}}  {cells}  {scores.p95_ms():7.1f}")


if __name__ == "__main__":
    main()
