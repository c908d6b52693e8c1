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

Latency: the query vector travels as a binary parameter (pgvector's binary format: 1.5 KB for
384 dimensions instead of ~8 KB of text parsed by the server), the transaction-local settings
go in one statement, and the planner's row estimate (an EXPLAIN) is asked only when a filter
is active — an unfiltered search reads pg_class.reltuples.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aegisctl.config import SearchSettings, Settings
from aegisctl.errors import OperationFailed, UsageError
from aegisctl.memory.filters import Filters
from aegisctl.memory.refs import IMPORTANCE_WEIGHT, TABLES, Kind, record_from_row

if TYPE_CHECKING:
    import psycopg
    from pgvector import Vector

    from aegisctl.memory.providers import EmbeddingProvider

Mode = Literal["semantic", "keyword", "hybrid"]
TRIGRAM_THRESHOLD = 0.4
# The trigram top-up is for short or misspelt queries; for a long text its index search turns
# into a scan that compares thousands of trigrams per row.
TRIGRAM_MAX_QUERY = 200
FTS_CONFIG = "english"
# Identifiers a user copies from docs or logs: snake_case, CONSTANTS, name(), .command, x86_64.
_TOKEN = re.compile(r"\.?[A-Za-z_][A-Za-z0-9_.$]*(?:\(\))?|\b\d+[A-Za-z_][A-Za-z0-9_]*")
_WORDS = re.compile(r"\w+")


@dataclass
class Hit:
    kind: Kind
    id: int
    record: dict[str, Any]
    similarity: float | None = None
    keyword_score: float | None = None
    match: str | None = None  # fulltext | trigram
    ranks: dict[str, int] = field(default_factory=dict)
    score: float = 0.0
    decay: float | None = None
    coverage: float | None = None  # share of the query's search terms the memory contains
    exact_terms: list[str] = field(default_factory=list)  # identifiers of the query it holds
    duplicates: list[str] = field(default_factory=list)  # near-identical hits folded into it
    highlights: list[tuple[int, int]] = field(default_factory=list)  # spans in its text
    marked: str | None = None  # ts_headline's text with markers, when the search asked for it

    @property
    def key(self) -> tuple[str, int]:
        return (self.kind, self.id)

    @property
    def text(self) -> str:
        return str(self.record.get(TABLES[self.kind].text) or "")

    @property
    def relevance(self) -> float:
        """The mode-independent measure --min-score compares (0..1)."""
        return max(self.similarity or 0.0, self.coverage or 0.0)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.record)
        out["score"] = round(self.score, 6)
        out["similarity"] = None if self.similarity is None else round(self.similarity, 6)
        out["keyword_score"] = (None if self.keyword_score is None
                                else round(self.keyword_score, 6))
        out["match"] = self.match
        out["ranks"] = dict(self.ranks)
        out["coverage"] = None if self.coverage is None else round(self.coverage, 6)
        out["relevance"] = round(self.relevance, 6)
        out["exact_terms"] = list(self.exact_terms)
        out["duplicates"] = list(self.duplicates)
        out["highlights"] = [list(span) for span in self.highlights]
        if self.decay is not None:
            out["decay"] = round(self.decay, 6)
        return out


@dataclass
class PathInfo:
    kind: Kind
    signal: str  # semantic | keyword | trigram
    path: str
    estimated_rows: int | None = None
    rows: int = 0
    plan: list[str] = field(default_factory=list)


@dataclass
class Explain:
    mode: Mode
    provider: str | None = None
    model: str | None = None
    embed_ms: float = 0.0
    search_ms: float = 0.0
    ef_search: int | None = None
    iterative_scan: str | None = None
    paths: list[PathInfo] = field(default_factory=list)


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
    if mode != "semantic":
        keyword = keyword_search(conn, kinds, request.filters, request.query, fetch, explain,
                                 request.explain, vector, dim)
    terms = exact_terms(request.query)
    hits = fuse(semantic, keyword, mode, settings.search, terms)
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
    hits = hits[:max(request.limit * 3, 30)] if request.min_score is not None else \
        hits[:request.limit]
    annotate(conn, [h for h in hits if h.coverage is None], request.query, terms, vector,
             request.highlight)
    for hit in hits:
        if hit.marked is not None or (terms and not hit.highlights):
            hit.highlights = _spans(hit.text, hit.marked, terms)
    if request.min_score is not None:
        hits = [h for h in hits if h.relevance >= request.min_score]
    explain.search_ms = round((time.perf_counter() - started) * 1000, 2)
    return SearchResult(query=request.query, mode=mode, hits=hits[:request.limit],
                        explain=explain)


def query_vector(conn: psycopg.Connection[Any], values: Sequence[float]) -> Vector:
    """The query embedding as a pgvector parameter sent in binary (registers the type once per
    connection): no 20 KB text literal for the server to parse."""
    from pgvector import Vector
    from pgvector.psycopg.vector import register_vector_info
    from psycopg.types import TypeInfo

    # One sum instead of 1536 checks: NaN and infinity carry through it (a finite sum of
    # float4-range values cannot overflow a double).
    if not math.isfinite(sum(values)):
        raise OperationFailed("the query embedding contains NaN or infinite values")
    if conn.adapters.types.get("vector") is None:
        info = TypeInfo.fetch(conn, "vector")
        if info is None:
            raise OperationFailed("the vector extension is not installed in this database",
                                  hint="run aegisctl schema init")
        register_vector_info(conn, info)
    return Vector(list(values))


# ---------------------------------------------------------------------------------------------
# Semantic


_VERSIONS: weakref.WeakKeyDictionary[Any, tuple[int, ...]] = weakref.WeakKeyDictionary()
# Per connection: the session's hnsw.ef_search as set by us, and table sizes with their time.
_SESSION: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
RELTUPLES_TTL = 60.0  # seconds an unfiltered search trusts a table size it read


def _session(conn: psycopg.Connection[Any]) -> dict[Any, Any]:
    state = _SESSION.get(conn)
    if state is None:
        state = _SESSION[conn] = {}
    return state


def _remember(conn: psycopg.Connection[Any], key: tuple[Any, ...], value: Any,
              most: int) -> None:
    """Keep `value` for this connection under `key`, whose first item names the kind of entry;
    a long-lived connection asking many distinct filters drops that kind's entries at `most`."""
    state = _session(conn)
    same_kind = [k for k in state if isinstance(k, tuple) and k[0] == key[0]]
    if len(same_kind) >= most:
        for old in same_kind:
            del state[old]
    state[key] = value


def pgvector_version(conn: psycopg.Connection[Any]) -> tuple[int, ...]:
    """pgvector's version, asked once per connection."""
    known = _VERSIONS.get(conn)
    if known is not None:
        return known
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row is None:
        raise OperationFailed("the vector extension is not installed in this database",
                              hint="run aegisctl schema init")
    version = tuple(int(p) for p in str(row[0]).split(".") if p.isdigit())
    _VERSIONS[conn] = version
    return version


def _order_expr(dim: int, alias: str = "") -> tuple[Any, Any]:
    """(indexed expression, query cast) — the same expression the HNSW index is built on."""
    from psycopg import sql

    from aegisctl.schema import embedding_index_expr

    column = sql.Identifier(alias, "embedding") if alias else sql.Identifier("embedding")
    if embedding_index_expr(dim) == "embedding":
        return column, sql.SQL("%(q)b")
    half = sql.SQL("::halfvec({})").format(sql.Literal(dim))
    return sql.Composed([sql.SQL("("), column, half, sql.SQL(")")]), sql.SQL("%(q)b") + half


def _select_list(kind: Kind, alias: str = "", binary: bool = False) -> Any:
    """The kind's columns; `binary`: for a binary-format result (which psycopg decodes faster),
    the importance enum is sent as text, since psycopg has no binary loader for it."""
    from psycopg import sql

    def column(name: str) -> Any:
        ident = sql.Identifier(alias, name) if alias else sql.Identifier(name)
        if binary and name == "importance":
            return sql.SQL("{}::text AS {}").format(ident, sql.Identifier(name))
        return ident

    return sql.SQL(", ").join(column(c) for c in ("id", *TABLES[kind].columns))


def estimate_rows(conn: psycopg.Connection[Any], kind: Kind, where: Any,
                  params: dict[str, Any], filtered: bool = True) -> int:
    """The planner's estimate of how many rows with an embedding match the filters; without
    filters, the table's row count from its statistics (no planning pass)."""
    from psycopg import sql

    if not filtered:
        cached = _session(conn).get(("reltuples", kind))
        if cached is not None and time.monotonic() - cached[1] < RELTUPLES_TTL:
            return int(cached[0])
        row = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                           (TABLES[kind].table,)).fetchone()
        if row is not None and int(row[0]) >= 0:
            _session(conn)[("reltuples", kind)] = (int(row[0]), time.monotonic())
            return int(row[0])
    # The same filter again on this connection (an agent's loop, the scheduler) reuses the
    # planner's answer for RELTUPLES_TTL seconds instead of planning it once more.
    key = ("estimate", kind, where.as_bytes(conn),
           repr(sorted((k, v) for k, v in params.items() if k not in ("q", "k"))))
    cached = _session(conn).get(key)
    if cached is not None and time.monotonic() - cached[1] < RELTUPLES_TTL:
        return int(cached[0])
    query = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE embedding IS NOT NULL AND {}"
                    ).format(sql.Identifier(TABLES[kind].table), where)
    row = conn.execute(query, params).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else __import__("json").loads(row[0])
    estimate = int(plan[0]["Plan"]["Plan Rows"])
    _remember(conn, key, (estimate, time.monotonic()), 256)
    return estimate


_TERMS_SQL = (
    "SELECT '''' || replace(replace(l, E'\\\\', E'\\\\\\\\'), '''', '''''') || '''' AS t "
    "FROM unnest(tsvector_to_array(to_tsvector({cfg}::regconfig, %(text)s))) AS l")


def _lexeme_columns(kind: Kind, query_text: str | None) -> Any:
    """Two extra output columns when the hits' coverage is wanted: the row's lexemes, and the
    query's (an InitPlan: stemmed once per statement, not once per row). Coverage is then a set
    intersection in Python, which costs the server nothing per row."""
    from psycopg import sql

    if query_text is None:
        return sql.SQL("")
    return sql.SQL(", tsvector_to_array({tsv}) AS lexemes_, (SELECT tsvector_to_array("
                   "to_tsvector({cfg}::regconfig, %(text)s))) AS qlex_").format(
        tsv=sql.Identifier(TABLES[kind].tsv), cfg=sql.Literal(FTS_CONFIG))


def _annotated(kind: Kind, query: Any) -> Any:
    """`query` wrapped so highlight markers are computed for its rows only."""
    from psycopg import sql

    terms = sql.SQL(_TERMS_SQL).format(cfg=sql.Literal(FTS_CONFIG))
    marked = sql.SQL(
        "(SELECT ts_headline({cfg}::regconfig, h.{text}, string_agg(t.t, ' | ')::tsquery, "
        "'HighlightAll=true, StartSel=\x1e, StopSel=\x1f') FROM ({terms}) AS t "
        "HAVING count(*) > 0)").format(cfg=sql.Literal(FTS_CONFIG), terms=terms,
                                        text=sql.Identifier(TABLES[kind].text))
    return sql.SQL(
        "SELECT {cols}, h.similarity, h.lexemes_, h.qlex_, {marked} AS marked_ "
        "FROM ({query}) AS h ORDER BY h.similarity DESC, h.id").format(
            cols=_select_list(kind, "h"), marked=marked, query=query)


def coverage(query_lexemes: Sequence[str] | None, lexemes: Sequence[str] | None) -> float:
    """The share of the query's lexemes that a memory's tsvector holds (what counting
    `tsv @@ 'lexeme'` per query lexeme gives)."""
    if not query_lexemes:
        return 0.0
    have = set(lexemes or ())
    return sum(1 for lexeme in query_lexemes if lexeme in have) / len(query_lexemes)


def _semantic_hit(kind: Kind, row: dict[str, Any], query_text: str | None) -> Hit:
    hit = Hit(kind=kind, id=int(row["id"]), record=record_from_row(kind, row),
              similarity=float(row["similarity"]))
    if query_text is not None:
        hit.coverage = coverage(row["qlex_"], row["lexemes_"])
        hit.marked = row.get("marked_")
    return hit


def _semantic_query(conn: psycopg.Connection[Any], kind: Kind, where: Any, dim: int,
                    exact: bool, query_text: str | None, highlight: bool) -> bytes:
    """The semantic statement, composed once per connection and shape: composing it with
    psycopg.sql each time costs a sizeable share of an HNSW search's whole time."""
    from psycopg import sql

    key = ("semantic-sql", kind, dim, exact, query_text is not None, highlight,
           where.as_bytes(conn))
    state = _session(conn)
    cached = state.get(key)
    if isinstance(cached, bytes):
        return cached
    table = sql.Identifier(TABLES[kind].table)
    extra = _lexeme_columns(kind, query_text)
    if exact:
        # Ordered by the similarity column, not the operator: the HNSW index cannot serve
        # it, the filter's indexes find the rows and each distance is computed once.
        query = sql.SQL(
            "SELECT {cols}, 1 - (embedding <=> %(q)b) AS similarity{extra} FROM {table} "
            "WHERE embedding IS NOT NULL AND {where} "
            "ORDER BY similarity DESC, id LIMIT %(k)s"
        ).format(cols=_select_list(kind, binary=True), table=table, where=where, extra=extra)
    else:
        order, qcast = _order_expr(dim)
        query = sql.SQL(
            "SELECT {cols}, 1 - ({order} <=> {qcast}) AS similarity{extra} FROM {table} "
            "WHERE embedding IS NOT NULL AND {where} "
            "ORDER BY {order} <=> {qcast} LIMIT %(k)s"
        ).format(cols=_select_list(kind, binary=True), order=order, qcast=qcast, table=table,
                 where=where, extra=extra)
    if query_text is not None and highlight:
        query = _annotated(kind, query)
    composed = query.as_bytes(conn)
    _remember(conn, key, composed, 64)
    return composed


def semantic_search(conn: psycopg.Connection[Any], settings: Settings, kinds: Sequence[Kind],
                    filters: Filters, vector: Vector | str, dim: int, limit: int, explain: Explain,
                    with_plan: bool = False, exclude: tuple[str, int] | None = None,
                    query_text: str | None = None, highlight: bool = False) -> list[Hit]:
    """The `limit` nearest memories across `kinds`, most similar first. With `query_text`
    the same statement also measures each hit's coverage (and, with `highlight`, marks its
    matched terms), so semantic mode needs no second round trip."""
    from psycopg import sql
    from psycopg.rows import dict_row

    from aegisctl.pooler import per_transaction

    if isinstance(vector, str):  # pgvector's text form, e.g. a stored embedding::text
        vector = query_vector(conn, [float(x) for x in vector.strip("[] ").split(",")])
    version = pgvector_version(conn)
    iterative = settings.search.iterative_scan if version >= (0, 8) else "off"
    ef_search = min(1000, max(settings.search.ef_search, limit))
    explain.ef_search = ef_search
    hits: list[Hit] = []
    for kind in kinds:
        where, params = filters.where(kind)
        if exclude and exclude[0] == kind:
            where = sql.SQL("{} AND id <> %(exclude_id)s").format(where)
            params["exclude_id"] = exclude[1]
        params.update(q=vector, k=limit)
        estimated = estimate_rows(conn, kind, where, params,
                                  filtered=filters.active or exclude is not None)
        exact = estimated <= settings.search.exact_below
        if exact:
            path = f"exact: estimated {estimated} matching rows <= search.exact_below"
            local: dict[str, str] = {}
        else:
            local = {"hnsw.ef_search": str(ef_search)}
            path = f"hnsw index, ef_search {ef_search}"
            if filters.active or exclude:
                if iterative != "off":
                    local["hnsw.iterative_scan"] = iterative
                    # Left alone, the planner often prefers "filter by B-tree, then sort every
                    # match" (exact but ~20x slower at 10k matches): the estimate said the
                    # matching set is large, so walk the graph.
                    local["enable_sort"] = "off"
                    path += f", iterative scan ({iterative})"
                    explain.iterative_scan = iterative
                else:
                    path += " (pgvector < 0.8: a selective filter may return fewer rows)"
            path += f"; estimated {estimated} matching rows"
        query = _semantic_query(conn, kind, where, dim, exact, query_text, highlight)
        if query_text is not None:
            params["text"] = query_text
        info_path = PathInfo(kind=kind, signal="semantic", path=path, estimated_rows=estimated)
        if list(local) == ["hnsw.ef_search"] and conn.autocommit and not with_plan \
                and not per_transaction(conn):
            # Unfiltered: ef_search is the only setting, so it is set for the session (once
            # per connection and value) and the query runs alone — one round trip, like the
            # bare ORDER BY ... LIMIT. Through a transaction pooler a session SET would
            # land on a shared server connection: there it goes with the query below.
            state = _session(conn)
            if state.get("ef_search") != ef_search:
                conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef_search)))
                state["ef_search"] = ef_search
            local = {}
        if not local and not with_plan:
            with conn.cursor(row_factory=dict_row, binary=True) as cur:
                rows = cur.execute(query, params).fetchall()
            info_path.rows = len(rows)
            explain.paths.append(info_path)
            hits.extend(_semantic_hit(kind, r, query_text) for r in rows)
            continue
        # Pipeline mode: BEGIN, the settings, the query and COMMIT travel together instead of
        # waiting for one another's answers.
        with conn.pipeline(), conn.transaction(), \
                conn.cursor(row_factory=dict_row, binary=True) as cur:
            if local:
                names = list(local)
                cur.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(
                    sql.SQL("set_config({}, {}, true)").format(sql.Literal(n),
                                                               sql.Literal(local[n]))
                    for n in names)))
            if with_plan:
                cur.execute(b"EXPLAIN " + query, params)
                info_path.plan = _plan_lines(cur.fetchall())
            cur.execute(query, params)
            rows = cur.fetchall()
        if info_path.plan:
            used = any("Index Scan using" in line and "embedding" in line
                       for line in info_path.plan)
            info_path.path += ("; the plan scans the HNSW index" if used
                               else "; the plan does not use the HNSW index")
        info_path.rows = len(rows)
        explain.paths.append(info_path)
        hits.extend(_semantic_hit(kind, r, query_text) for r in rows)
    hits.sort(key=lambda h: -(h.similarity or 0.0))
    for rank, hit in enumerate(hits[:limit], start=1):
        hit.ranks["semantic"] = rank
    return hits[:limit]


# ---------------------------------------------------------------------------------------------
# Keyword


_VECTOR_LITERAL = re.compile(r"'\[[-0-9.e,]{200,}\]'")


def _plan_lines(rows: list[dict[str, Any]]) -> list[str]:
    """EXPLAIN output with the query vector's literal shortened."""
    return [_VECTOR_LITERAL.sub("'[query vector]'", str(next(iter(r.values()))))
            for r in rows]


def _tsquery_literal(lexeme: str) -> str:
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


# The keyword side ranks by at most this many distinct terms of the query, the first ones in
# it: a pasted page of text is not a question, and PostgreSQL caps a statement's target list.
MAX_QUERY_TERMS = 64


def query_lexemes(conn: psycopg.Connection[Any], text: str) -> list[str]:
    """The query's distinct search terms in order of appearance, at most MAX_QUERY_TERMS."""
    row = conn.execute(
        "SELECT array(SELECT lexeme FROM unnest(to_tsvector(%s::regconfig, %s)) "
        "ORDER BY positions[1], lexeme LIMIT %s)", (FTS_CONFIG, text, MAX_QUERY_TERMS)
    ).fetchone()
    return list(row[0]) if row and row[0] else []


def _has_trigram(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'").fetchone()
    return bool(row and row[0])


def keyword_search(conn: psycopg.Connection[Any], kinds: Sequence[Kind], filters: Filters,
                   text: str, limit: int, explain: Explain, with_plan: bool = False,
                   vector: Vector | None = None, dim: int = 0,
                   lexemes: list[str] | None = None) -> list[Hit]:
    """Full-text (OR of the query's lexemes, IDF-ranked), topped up by trigram similarity."""
    if lexemes is None:
        lexemes = query_lexemes(conn, text)
    hits: list[Hit] = []
    if lexemes:
        for kind in kinds:
            hits.extend(_fulltext(conn, kind, filters, lexemes, limit, explain, with_plan,
                                  vector))
        hits.sort(key=lambda h: -(h.keyword_score or 0.0))
        hits = hits[:limit]
    if len(hits) < limit and len(text) <= TRIGRAM_MAX_QUERY and _has_trigram(conn):
        seen = {h.key for h in hits}
        extra: list[Hit] = []
        for kind in kinds:
            extra.extend(h for h in _trigram(conn, kind, filters, text, limit, explain,
                                             with_plan, vector) if h.key not in seen)
        extra.sort(key=lambda h: -(h.keyword_score or 0.0))
        hits.extend(extra[:limit - len(hits)])
    for rank, hit in enumerate(hits, start=1):
        hit.ranks["keyword"] = rank
    return hits


def _similarity_column(vector: Vector | None) -> Any:
    from psycopg import sql

    if vector is None:
        return sql.SQL("NULL::float8 AS similarity")
    return sql.SQL("1 - (embedding <=> %(q)b) AS similarity")


def _ranked(kind: Kind, inner: Any, vector: Vector | None) -> Any:
    """A keyword query (ranked by kw_score, limited) with each hit's cosine similarity added
    after its LIMIT: in the ranking query itself the distance would be computed, and the
    TOASTed vector read, for every matching row (tens of thousands for a common word), not for
    the few kept. `inner` selects the kind's columns, `embedding AS embedding_` and kw_score."""
    from psycopg import sql

    similarity = _similarity_column(None) if vector is None else \
        sql.SQL("1 - (h.embedding_ <=> %(q)b) AS similarity")
    return sql.SQL("SELECT {cols}, {similarity}, h.kw_score FROM ({inner}) AS h "
                   "ORDER BY h.kw_score DESC, h.id DESC").format(
        cols=_select_list(kind, "h"), similarity=similarity, inner=inner)


def _fulltext(conn: psycopg.Connection[Any], kind: Kind, filters: Filters, lexemes: list[str],
              limit: int, explain: Explain, with_plan: bool, vector: Vector | None) -> list[Hit]:
    from psycopg import sql

    info = TABLES[kind]
    table, tsv = sql.Identifier(info.table), sql.Identifier(info.tsv)
    queries = [_tsquery_literal(lx) for lx in lexemes]
    or_query = " | ".join(queries)
    # Document frequency of each term, for IDF: one pass over the rows holding any of them.
    counts = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE {} @@ {}::tsquery)").format(tsv, sql.Literal(q))
        for q in queries
    )
    row = conn.execute(
        sql.SQL("SELECT {counts}, (SELECT reltuples::bigint FROM pg_class "
                "WHERE oid = {regclass}::regclass) FROM {table} WHERE {tsv} @@ %s::tsquery")
        .format(counts=counts, regclass=sql.Literal(info.table), table=table, tsv=tsv),
        (or_query,),
    ).fetchone()
    assert row is not None
    dfs = [int(x) for x in row[:-1]]
    total = int(row[-1] or 0)
    if total <= 0:  # never analysed: count once
        counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        total = int(counted[0]) if counted else 0
    total = max(total, max(dfs, default=0), 1)
    idf = [math.log(1 + (total - df + 0.5) / (df + 0.5)) for df in dfs]
    where, params = filters.where(kind)
    params.update(orq=or_query, k=limit)
    if vector is not None:
        params["q"] = vector
    # The summed IDF of the terms a row holds, as one CASE per term with the weights inlined:
    # evaluated for every matching row, it is cheaper than a per-row subquery over arrays.
    idf_sum = sql.SQL(" + ").join(
        sql.SQL("CASE WHEN {} @@ {}::tsquery THEN {} ELSE 0 END").format(
            tsv, sql.Literal(q), sql.Literal(round(w, 9)))
        for q, w, df in zip(queries, idf, dfs, strict=True) if df > 0
    ) if any(dfs) else sql.SQL("0")
    query = _ranked(kind, sql.SQL(
        "SELECT {cols}, embedding AS embedding_, ({idf_sum}) "
        "+ ts_rank_cd({tsv}, %(orq)s::tsquery, 32) AS kw_score "
        "FROM {table} WHERE {tsv} @@ %(orq)s::tsquery AND {where} "
        "ORDER BY kw_score DESC, id DESC LIMIT %(k)s"
    ).format(cols=_select_list(kind), idf_sum=idf_sum, tsv=tsv, table=table, where=where),
        vector)
    path = PathInfo(kind=kind, signal="keyword",
                    path=f"full-text OR of {len(lexemes)} terms, IDF-ranked (GIN on {info.tsv})")
    return _keyword_hits(conn, kind, query, params, path, explain, with_plan, "fulltext")


def _trigram(conn: psycopg.Connection[Any], kind: Kind, filters: Filters, text: str,
             limit: int, explain: Explain, with_plan: bool, vector: Vector | None) -> list[Hit]:
    from psycopg import sql

    info = TABLES[kind]
    column = sql.Identifier(info.text)
    where, params = filters.where(kind)
    params.update(text=text, k=limit)
    if vector is not None:
        params["q"] = vector
    query = _ranked(kind, sql.SQL(
        "SELECT {cols}, embedding AS embedding_, word_similarity(%(text)s, {column}) AS kw_score "
        "FROM {table} WHERE %(text)s <%% {column} AND {where} "
        "ORDER BY kw_score DESC, id DESC LIMIT %(k)s"
    ).format(cols=_select_list(kind), column=column, table=sql.Identifier(info.table),
             where=where), vector)
    path = PathInfo(kind=kind, signal="trigram",
                    path=f"trigram word similarity >= {TRIGRAM_THRESHOLD} on {info.text} "
                         "(fallback: full-text found fewer than the limit)")
    with conn.transaction():
        conn.execute(f"SET LOCAL pg_trgm.word_similarity_threshold = {TRIGRAM_THRESHOLD}")
        return _keyword_hits(conn, kind, query, params, path, explain, with_plan, "trigram")


def _keyword_hits(conn: psycopg.Connection[Any], kind: Kind, query: Any, params: dict[str, Any],
                  path: PathInfo, explain: Explain, with_plan: bool, match: str) -> list[Hit]:
    """Run a keyword query (and its plan when asked); its rows as hits."""
    from psycopg import sql
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        if with_plan:
            cur.execute(sql.SQL("EXPLAIN ") + query, params)
            path.plan = _plan_lines(cur.fetchall())
        cur.execute(query, params)
        rows = cur.fetchall()
    path.rows = len(rows)
    explain.paths.append(path)
    return [Hit(kind=kind, id=int(r["id"]), record=record_from_row(kind, r),
                similarity=None if r["similarity"] is None else float(r["similarity"]),
                keyword_score=float(r["kw_score"]), match=match) for r in rows]


# ---------------------------------------------------------------------------------------------
# Fusion and decay


def exact_terms(query: str) -> list[str]:
    """The identifiers a query names, lower-cased: words with an underscore, a digit inside,
    a dot inside or in front (`.import`), call parentheses, or written in capitals (SQLITE_BUSY,
    WAL) — things a user copied and wants found as written."""
    found: list[str] = []
    for match in _TOKEN.finditer(query):
        token = match.group(0)
        bare = token.removesuffix("()").strip(".")
        if len(bare) < 2:
            continue
        letters = [c for c in bare if c.isalpha()]
        identifier = ("_" in bare or token.endswith("()") or token.startswith(".")
                      or "." in bare or (any(c.isdigit() for c in bare) and letters)
                      or (len(letters) >= 3 and all(c.isupper() for c in letters)))
        term = (("." + bare) if token.startswith(".") else bare).lower()
        if identifier and term not in found:
            found.append(term)
    return found


def _contains_term(text: str, term: str) -> int:
    """Where `term` occurs in `text` as a whole token (case-insensitive), or -1."""
    lowered = text.lower()
    start = lowered.find(term)
    while start >= 0:
        end = start + len(term)
        before = lowered[start - 1] if start else " "
        after = lowered[end] if end < len(lowered) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return start
        start = lowered.find(term, start + 1)
    return -1


def _searchable(hit: Hit) -> str:
    """The text a memory is embedded and indexed from (aegisctl.memory.recipe)."""
    from aegisctl.memory.recipe import embed_text

    return embed_text(hit.kind, hit.record)


def fuse(semantic: list[Hit], keyword: list[Hit], mode: Mode, search: SearchSettings,
         terms: Sequence[str] = ()) -> list[Hit]:
    """Single modes keep their signal's order; hybrid is weighted reciprocal rank fusion plus
    the exact-term boost (in units of a first-place vote, 1 / (rrf_k + 1))."""
    if mode == "semantic":
        for hit in semantic:
            hit.score = hit.similarity or 0.0
        return semantic
    if mode == "keyword":
        for hit in keyword:
            hit.score = hit.keyword_score or 0.0
        return keyword
    merged: dict[tuple[str, int], Hit] = {}
    for hit in semantic + keyword:
        existing = merged.get(hit.key)
        if existing is None:
            merged[hit.key] = hit
            continue
        existing.ranks.update(hit.ranks)
        existing.keyword_score = existing.keyword_score or hit.keyword_score
        existing.match = existing.match or hit.match
        if existing.similarity is None:
            existing.similarity = hit.similarity
    weights = {"semantic": search.semantic_weight, "keyword": search.keyword_weight}
    first = 1.0 / (search.rrf_k + 1)
    for hit in merged.values():
        hit.score = sum(weights.get(signal, 1.0) / (search.rrf_k + rank)
                        for signal, rank in hit.ranks.items())
        if terms:
            text = _searchable(hit)
            hit.exact_terms = [t for t in terms if _contains_term(text, t) >= 0]
            hit.score += search.exact_term_boost * first * len(hit.exact_terms) / len(terms)
    return sorted(merged.values(), key=lambda h: (-h.score, min(h.ranks.values())))


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = _WORDS.findall(text.lower())
    if len(words) < 3:
        return {tuple(words)}
    return set(zip(words, words[1:], words[2:], strict=False))


def dedupe(hits: list[Hit], threshold: float) -> list[Hit]:
    """Fold each hit whose text shares at least `threshold` of its word trigrams (Jaccard) with
    a better-ranked hit into that hit; 0 disables."""
    if threshold <= 0:
        return hits
    kept: list[tuple[Hit, set[tuple[str, ...]]]] = []
    for hit in hits:
        shingles = _shingles(hit.text)
        for other, other_shingles in kept:
            shared = len(shingles & other_shingles)
            union = len(shingles) + len(other_shingles) - shared
            if shared and shared / union >= threshold:
                other.duplicates.append(hit.record.get("id") or f"{hit.kind}:{hit.id}")
                break
        else:
            kept.append((hit, shingles))
    return [hit for hit, _ in kept]


def annotate(conn: psycopg.Connection[Any], hits: list[Hit], query: str,
             terms: Sequence[str], vector: Any, highlight: bool = True) -> None:
    """Coverage, similarity (when missing) and highlight spans of the final hits: one query per
    kind over their ids, which also turns the query into its search terms (no extra round trip
    in semantic mode)."""
    from psycopg import sql

    if not hits:
        return
    for kind in {h.kind for h in hits}:
        info = TABLES[kind]
        mine = {h.id: h for h in hits if h.kind == kind}
        params: dict[str, Any] = {"ids": list(mine), "text": query, "hl": highlight}
        if vector is not None:
            params["q"] = vector
        rows = conn.execute(sql.SQL(
            "WITH lx AS (SELECT coalesce(array_agg(t), '{{}}') AS tqs, "
            "string_agg(t, ' | ') AS orq FROM (SELECT "
            "'''' || replace(replace(l, E'\\\\', E'\\\\\\\\'), '''', '''''') || '''' AS t "
            "FROM unnest(tsvector_to_array(to_tsvector({cfg}::regconfig, %(text)s))) AS l) "
            "AS terms) "
            "SELECT m.id, {similarity}, "
            "(SELECT count(*) FROM unnest(lx.tqs::tsquery[]) AS w(tq) WHERE m.{tsv} @@ w.tq) "
            "AS matched, cardinality(lx.tqs) AS total, "
            "CASE WHEN lx.orq IS NULL OR NOT %(hl)s THEN NULL "
            "ELSE ts_headline({cfg}::regconfig, m.{text}, "
            "lx.orq::tsquery, 'HighlightAll=true, StartSel=\x1e, StopSel=\x1f') END "
            "FROM {table} AS m, lx WHERE m.id = ANY(%(ids)s)").format(
                cfg=sql.Literal(FTS_CONFIG), similarity=_similarity_column(vector),
                tsv=sql.Identifier(info.tsv), text=sql.Identifier(info.text),
                table=sql.Identifier(info.table)), params).fetchall()
        for memory_id, sim, matched, total, text in rows:
            hit = mine[int(memory_id)]
            if hit.similarity is None and sim is not None:
                hit.similarity = float(sim)
            hit.coverage = int(matched) / int(total) if total else 0.0
            hit.marked = text


def _spans(text: str, marked: str | None, terms: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of the matched words: from ts_headline's markers (stemmed matches) when
    its text is the original's, plus every whole-token occurrence of an exact term."""
    spans: list[tuple[int, int]] = []
    if marked and "\x1e" not in text and "\x1f" not in text:
        plain, position, opened = [], 0, -1
        for char in marked:
            if char == "\x1e":
                opened = position
            elif char == "\x1f" and opened >= 0:
                spans.append((opened, position))
                opened = -1
            else:
                plain.append(char)
                position += 1
        if "".join(plain) != text:
            spans = []
    lowered = text.lower()
    for term in terms:
        start = _contains_term(lowered, term)
        while start >= 0:
            spans.append((start, start + len(term)))
            following = _contains_term(lowered[start + len(term):], term)
            start = -1 if following < 0 else start + len(term) + following
    merged: list[tuple[int, int]] = []
    for start, end in sorted(set(spans)):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def importance_weight(record: dict[str, Any]) -> float:
    """The seed's importance factor: the enum for episodic memories, confidence for semantic."""
    if record["kind"] == "episodic":
        return IMPORTANCE_WEIGHT.get(str(record.get("importance") or "medium"), 0.5)
    confidence = record.get("confidence")
    return 1.0 if confidence is None else min(1.0, max(0.0, float(confidence)))


def apply_decay(hits: list[Hit], half_life: float, now: dt.datetime | None = None) -> list[Hit]:
    """score x 0.5^(age / half_life) x importance, as in the seed's relevance model."""
    from aegisctl.memory.refs import record_time

    if half_life <= 0:
        raise UsageError("--decay needs a positive half-life such as 7d")
    now = now or dt.datetime.now(dt.UTC)
    for hit in hits:
        when = record_time(hit.record)
        age = max(0.0, (now - when).total_seconds()) if when else 0.0
        hit.decay = 0.5 ** (age / half_life) * importance_weight(hit.record)
        hit.score = max(hit.score, 0.0) * hit.decay
    return sorted(hits, key=lambda h: -h.score)
