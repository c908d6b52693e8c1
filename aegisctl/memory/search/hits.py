"""A search hit and what is shown with it: the explain record, near-duplicate folding,
coverage, similarity and the highlight spans of the final hits."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aegisctl.memory.refs import TABLES, Kind
from aegisctl.memory.search.pg import FTS_CONFIG, similarity_column

if TYPE_CHECKING:
    import psycopg

Mode = Literal["semantic", "keyword", "hybrid"]
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
    term_share: float | None = None  # share of the query terms' IDF mass it holds (keyword)
    rerank_score: float | None = None  # the rerank model's score, when one is configured

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
        if self.rerank_score is not None:
            out["rerank_score"] = round(self.rerank_score, 6)
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
    rerank_ms: float = 0.0
    # Hybrid: each signal's weight for this query and why (query-adaptive fusion).
    fusion: dict[str, Any] = field(default_factory=dict)
    paths: list[PathInfo] = field(default_factory=list)


def contains_term(text: str, term: str) -> int:
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
                cfg=sql.Literal(FTS_CONFIG), similarity=similarity_column(vector),
                tsv=sql.Identifier(info.tsv), text=sql.Identifier(info.text),
                table=sql.Identifier(info.table)), params).fetchall()
        for memory_id, sim, matched, total, text in rows:
            hit = mine[int(memory_id)]
            if hit.similarity is None and sim is not None:
                hit.similarity = float(sim)
            hit.coverage = int(matched) / int(total) if total else 0.0
            hit.marked = text


def spans(text: str, marked: str | None, terms: Sequence[str]) -> list[tuple[int, int]]:
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
        start = contains_term(lowered, term)
        while start >= 0:
            spans.append((start, start + len(term)))
            following = contains_term(lowered[start + len(term):], term)
            start = -1 if following < 0 else start + len(term) + following
    merged: list[tuple[int, int]] = []
    for start, end in sorted(set(spans)):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def coverage(query_lexemes: Sequence[str] | None, lexemes: Sequence[str] | None) -> float:
    """The share of the query's lexemes that a memory's tsvector holds (what counting
    `tsv @@ 'lexeme'` per query lexeme gives)."""
    if not query_lexemes:
        return 0.0
    have = set(lexemes or ())
    return sum(1 for lexeme in query_lexemes if lexeme in have) / len(query_lexemes)
