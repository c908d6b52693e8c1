"""Semantic, keyword and hybrid search over episodic and semantic memory.

Semantic search is written so pgvector's HNSW index serves it: `ORDER BY <index expr> <=> $q
LIMIT k` with the filters in the same query and the similarity in the select list. Filtered
queries use iterative index scans (pgvector >= 0.8) so a selective filter still returns k rows;
when the planner estimates the filtered set at most `search.exact_below` rows, the search is
exact instead (a materialised CTE: the filter's B-tree/GIN index, then exact distances), which
is then both faster and perfect.

Keyword search is full-text with OR semantics, ranked by the summed inverse document frequency
of the query terms a memory contains (then ts_rank_cd): AND semantics finds almost nothing for
natural-language questions. A trigram pass (pg_trgm word similarity) tops it up for short or
misspelt queries.

Hybrid is weighted reciprocal rank fusion: each signal contributes weight / (rrf_k + rank) from
its own candidate list (`search.candidates` deep, independent of --limit), and a hit that
contains an identifier the query names (`SQLITE_BUSY`, `busy_timeout`, `sqlite3_open_v2()`,
`.import`) gets `search.exact_term_boost` first-place votes more, scaled by the share of the
query's identifiers it contains. The defaults were chosen on bench/relevance.py (53 labelled
questions on the SQLite documentation); the figures are in README's search section.

Every hit then gets the same two absolute measures whatever the mode: `similarity` (cosine, when
a provider is configured) and `coverage` (the share of the query's search terms it contains);
`relevance` = the larger of the two is what --min-score compares, so a threshold means the same
in every mode. Near-identical hits (the same paragraph stored twice, with small edits) are
folded into the best-ranked one (`duplicates`), and `highlights` gives the character spans of
the matched terms in the memory's text.

The signals live in one module each: `semantic`, `keyword`, `fusion` (fusion, the exact-term
boost, decay), `hits` (the hit, explain, dedupe, coverage and highlights) and `pg` (what they
share from the connection); this module runs them in order.

Latency: the query vector travels as a binary parameter (pgvector's binary format: 1.5 KB for
384 dimensions instead of ~8 KB of text parsed by the server), the transaction-local settings
go in one statement, and the planner's row estimate (an EXPLAIN) is asked only when a filter
is active — an unfiltered search reads pg_class.reltuples.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.config import Settings
from aegisctl.errors import UsageError
from aegisctl.memory.filters import Filters
from aegisctl.memory.search.fusion import (
    Weights,
    adaptive_weights,
    apply_decay,
    exact_terms,
    fuse,
    importance_weight,
)
from aegisctl.memory.search.hits import (
    Explain,
    Hit,
    Mode,
    PathInfo,
    annotate,
    coverage,
    dedupe,
    spans,
)
from aegisctl.memory.search.keyword import TermStats, keyword_search, query_lexemes
from aegisctl.memory.search.pg import pgvector_version, query_vector
from aegisctl.memory.search.semantic import estimate_rows, semantic_search

if TYPE_CHECKING:
    import psycopg
    from pgvector import Vector

    from aegisctl.memory.providers import EmbeddingProvider

__all__ = [
    "Explain", "Hit", "Mode", "PathInfo", "SearchRequest", "SearchResult", "TermStats",
    "Weights", "adaptive_weights", "apply_decay",
    "coverage", "dedupe", "estimate_rows", "exact_terms", "fuse", "importance_weight",
    "keyword_search", "pgvector_version", "query_lexemes", "query_vector", "resolve_mode",
    "search", "semantic_search",
]


@dataclass
class SearchRequest:
    query: str
    filters: Filters = field(default_factory=Filters)
    limit: int = 10
    mode: Mode | None = None
    threshold: float | None = None
    min_score: float | None = None  # on Hit.relevance, in every mode
    decay_half_life: float | None = None  # seconds
    explain: bool = False
    dedupe: bool = True
    highlight: bool = True  # mark matched terms (a table shows them; an agent may not need them)
    vector: Sequence[float] | None = None  # the query's embedding, when the caller has it
    rerank: bool = True  # hybrid: use search.rerank when one is configured


@dataclass
class SearchResult:
    query: str
    mode: Mode
    hits: list[Hit]
    explain: Explain


def resolve_mode(requested: Mode | None, settings: Settings,
                 provider: EmbeddingProvider | None, has_vector: bool = False) -> Mode:
    """The mode to run; `has_vector`: the caller brings the query's embedding itself."""
    able = provider is not None or has_vector
    mode = requested or settings.search.default_mode or ("hybrid" if able else "keyword")
    if mode != "keyword" and not able:
        if requested is None and settings.search.default_mode is None:
            return "keyword"
        raise UsageError(
            f"{mode} search needs an embedding provider, and embedding.provider is none",
            hint="configure embedding: (openai or local), or use --mode keyword",
        )
    return mode


def search(conn: psycopg.Connection[Any], settings: Settings, request: SearchRequest,
           provider: EmbeddingProvider | None, dim: int) -> SearchResult:
    if not request.query.strip() and request.vector is None:
        raise UsageError("the search query is empty", hint="memory recent lists the newest")
    mode = resolve_mode(request.mode, settings, provider, request.vector is not None)
    if request.threshold is not None and mode == "keyword":
        raise UsageError("--threshold is a cosine similarity: it needs --mode semantic or hybrid")
    explain = Explain(mode=mode, provider=provider.name if provider else None,
                      model=provider.model if provider else None)
    kinds = request.filters.kinds()
    vector: Vector | None = None
    if request.vector is not None:
        vector = query_vector(conn, request.vector)
    elif provider is not None and (mode != "keyword" or request.min_score is not None):
        from aegisctl.memory.providers import embed_texts

        started = time.perf_counter()
        vector = query_vector(conn, embed_texts(provider, [request.query])[0])
        explain.embed_ms = round((time.perf_counter() - started) * 1000, 2)
    fused = mode == "hybrid" or request.decay_half_life is not None
    # Dedupe folds hits away, so each list carries a few spare rows.
    spare = request.limit + max(5, request.limit // 2) if request.dedupe else request.limit
    # Plain semantic search fetches just --limit rows (the latency-critical path) and asks
    # again, deeper, only when dedupe folded some of them away.
    plain = mode == "semantic" and not fused and request.min_score is None
    fetch = request.limit if plain else max(spare, settings.search.candidates) if fused \
        else spare
    started = time.perf_counter()
    semantic: list[Hit] = []
    keyword: list[Hit] = []
    if vector is not None and mode != "keyword":
        semantic = semantic_search(
            conn, settings, kinds, request.filters, vector, dim, fetch, explain,
            request.explain, query_text=request.query if mode == "semantic" else None,
            highlight=request.highlight)
        if request.threshold is not None:
            semantic = [h for h in semantic if (h.similarity or 0.0) >= request.threshold]
    stats = TermStats()
    if mode != "semantic":
        keyword = keyword_search(conn, kinds, request.filters, request.query, fetch, explain,
                                 request.explain, vector, dim, stats=stats)
    terms = exact_terms(request.query)
    weights = None
    if mode == "hybrid":
        weights = adaptive_weights(semantic, keyword, stats, settings.search)
    hits = fuse(semantic, keyword, mode, settings.search, terms, weights)
    if weights is not None:
        explain.fusion = weights.to_json()  # after fuse: it records what the safeguard did
    if request.decay_half_life is not None:
        hits = apply_decay(hits, request.decay_half_life)
    if request.dedupe:
        hits = dedupe(hits, settings.search.dedupe)
        if (plain and vector is not None and len(hits) < request.limit
                and len(semantic) >= fetch):
            semantic = semantic_search(
                conn, settings, kinds, request.filters, vector, dim, fetch * 3, explain,
                request.explain, query_text=request.query, highlight=request.highlight)
            if request.threshold is not None:
                semantic = [h for h in semantic
                            if (h.similarity or 0.0) >= request.threshold]
            hits = dedupe(fuse(semantic, [], mode, settings.search, terms),
                          settings.search.dedupe)
    if mode == "hybrid" and request.rerank and settings.search.rerank is not None:
        hits = _reranked(settings, request.query, hits, explain)
    hits = hits[:max(request.limit * 3, 30)] if request.min_score is not None else \
        hits[:request.limit]
    annotate(conn, [h for h in hits if h.coverage is None], request.query, terms, vector,
             request.highlight)
    for hit in hits:
        if hit.marked is not None or (terms and not hit.highlights):
            hit.highlights = spans(hit.text, hit.marked, terms)
    if request.min_score is not None:
        hits = [h for h in hits if h.relevance >= request.min_score]
    explain.search_ms = round((time.perf_counter() - started) * 1000, 2)
    return SearchResult(query=request.query, mode=mode, hits=hits[:request.limit],
                        explain=explain)


def _reranked(settings: Settings, query: str, hits: list[Hit], explain: Explain) -> list[Hit]:
    """The fused top N reordered by the configured rerank model (its time in explain)."""
    from aegisctl.memory.search.rerank import make_reranker, rerank

    reranker = make_reranker(settings.search.rerank)
    assert reranker is not None
    started = time.perf_counter()
    hits = rerank(reranker, query, hits)
    explain.rerank_ms = round((time.perf_counter() - started) * 1000, 2)
    return hits
