"""Fusion and ranking: the single modes keep their signal's order; hybrid is weighted
reciprocal rank fusion plus the exact-term boost; --decay weighs by age and importance."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

from aegisctl.config import SearchSettings
from aegisctl.errors import UsageError
from aegisctl.memory.refs import IMPORTANCE_WEIGHT
from aegisctl.memory.search.hits import Hit, Mode, contains_term

# Identifiers a user copies from docs or logs: snake_case, CONSTANTS, name(), .command, x86_64.
_TOKEN = re.compile(r"\.?[A-Za-z_][A-Za-z0-9_.$]*(?:\(\))?|\b\d+[A-Za-z_][A-Za-z0-9_]*")


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
            hit.exact_terms = [t for t in terms if contains_term(text, t) >= 0]
            hit.score += search.exact_term_boost * first * len(hit.exact_terms) / len(terms)
    return sorted(merged.values(), key=lambda h: (-h.score, min(h.ranks.values())))


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
