"""The keyword signal: full-text with OR semantics ranked by the summed inverse document
frequency of the query terms a memory holds (then ts_rank_cd), topped up by pg_trgm word
similarity for short or misspelt queries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.memory.filters import Filters
from aegisctl.memory.refs import TABLES, Kind, record_from_row
from aegisctl.memory.search.hits import Explain, Hit, PathInfo
from aegisctl.memory.search.pg import FTS_CONFIG, plan_lines, select_list, similarity_column

if TYPE_CHECKING:
    import psycopg
    from pgvector import Vector

TRIGRAM_THRESHOLD = 0.4
# The trigram top-up is for short or misspelt queries; for a long text its index search turns
# into a scan that compares thousands of trigrams per row.
TRIGRAM_MAX_QUERY = 200


@dataclass
class TermStats:
    """What the keyword side learnt about the query's terms (for query-adaptive fusion):
    per kind, each term's document frequency and IDF, and the corpus size."""

    idf: dict[str, float] = field(default_factory=dict)  # lexeme -> the largest IDF of a kind
    documents: int = 0

    @property
    def selectivity(self) -> float:
        """The most selective term's IDF over the IDF of a term held by a single memory
        (0..1): near 0 when every query term is common, 1 when one is held by one memory."""
        if not self.idf or self.documents <= 1:
            return 0.0
        rarest = math.log(1 + (self.documents - 0.5) / 1.5)
        return min(1.0, max(self.idf.values()) / rarest)


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
                   lexemes: list[str] | None = None,
                   stats: TermStats | None = None) -> list[Hit]:
    """Full-text (OR of the query's lexemes, IDF-ranked), topped up by trigram similarity.
    `stats`, when given, is filled with the query terms' IDF (hybrid's fusion reads it)."""
    if lexemes is None:
        lexemes = query_lexemes(conn, text)
    stats = TermStats() if stats is None else stats
    hits: list[Hit] = []
    if lexemes:
        for kind in kinds:
            hits.extend(_fulltext(conn, kind, filters, lexemes, limit, explain, with_plan,
                                  vector, stats))
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


def _ranked(kind: Kind, inner: Any, vector: Vector | None, share: Any = None) -> Any:
    """A keyword query (ranked by kw_score, limited) with each hit's cosine similarity added
    after its LIMIT: in the ranking query itself the distance would be computed, and the
    TOASTed vector read, for every matching row (tens of thousands for a common word), not for
    the few kept. `inner` selects the kind's columns, `embedding AS embedding_` and kw_score;
    `share` (over the kept rows' `h.tsv_`) is each hit's share of the query's IDF mass."""
    from psycopg import sql

    similarity = similarity_column(None) if vector is None else \
        sql.SQL("1 - (h.embedding_ <=> %(q)b) AS similarity")
    share = sql.SQL("NULL::float8") if share is None else share
    return sql.SQL("SELECT {cols}, {similarity}, h.kw_score, {share} AS term_share "
                   "FROM ({inner}) AS h ORDER BY h.kw_score DESC, h.id DESC").format(
        cols=select_list(kind, "h"), similarity=similarity, inner=inner, share=share)


def _fulltext(conn: psycopg.Connection[Any], kind: Kind, filters: Filters, lexemes: list[str],
              limit: int, explain: Explain, with_plan: bool, vector: Vector | None,
              stats: TermStats) -> list[Hit]:
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
    stats.documents = max(stats.documents, total)
    for lexeme, weight, df in zip(lexemes, idf, dfs, strict=True):
        if df > 0:  # a term no memory holds tells nothing about the keyword side's answers
            stats.idf[lexeme] = max(weight, stats.idf.get(lexeme, 0.0))
    mass = sum(w for w, df in zip(idf, dfs, strict=True) if df > 0)
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
    # The same sum over the kept rows only (h.tsv_), as a share of the query's IDF mass.
    share = sql.SQL("({}) / {}").format(sql.SQL(" + ").join(
        sql.SQL("CASE WHEN h.tsv_ @@ {}::tsquery THEN {} ELSE 0 END").format(
            sql.Literal(q), sql.Literal(round(w, 9)))
        for q, w, df in zip(queries, idf, dfs, strict=True) if df > 0),
        sql.Literal(round(mass, 9))) if mass > 0 else None
    query = _ranked(kind, sql.SQL(
        "SELECT {cols}, embedding AS embedding_, {tsv} AS tsv_, ({idf_sum}) "
        "+ ts_rank_cd({tsv}, %(orq)s::tsquery, 32) AS kw_score "
        "FROM {table} WHERE {tsv} @@ %(orq)s::tsquery AND {where} "
        "ORDER BY kw_score DESC, id DESC LIMIT %(k)s"
    ).format(cols=select_list(kind), idf_sum=idf_sum, tsv=tsv, table=table, where=where),
        vector, share)
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
    ).format(cols=select_list(kind), column=column, table=sql.Identifier(info.table),
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
            path.plan = plan_lines(cur.fetchall())
        cur.execute(query, params)
        rows = cur.fetchall()
    path.rows = len(rows)
    explain.paths.append(path)
    return [Hit(kind=kind, id=int(r["id"]), record=record_from_row(kind, r),
                similarity=None if r["similarity"] is None else float(r["similarity"]),
                keyword_score=float(r["kw_score"]), match=match,
                term_share=None if r["term_share"] is None else float(r["term_share"]))
            for r in rows]
