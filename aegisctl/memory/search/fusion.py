"""Fusion and ranking: the single modes keep their signal's order; hybrid is weighted
reciprocal rank fusion plus the exact-term boost, then the safeguard (the first hit of the
signal that is sure of itself keeps a place in the top GUARD_SLOT); --decay weighs by age and
importance."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.config import SearchSettings
from aegisctl.errors import UsageError
from aegisctl.memory.refs import IMPORTANCE_WEIGHT
from aegisctl.memory.search.hits import Hit, Mode, contains_term

if TYPE_CHECKING:
    from aegisctl.memory.search.keyword import TermStats

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


def searchable(hit: Hit) -> str:
    """The text a memory is embedded and indexed from (aegisctl.memory.recipe)."""
    from aegisctl.memory.recipe import embed_text

    return embed_text(hit.kind, hit.record)


@dataclass
class Weights:
    """Each signal's weight in hybrid fusion for one query, and what decided it."""

    semantic: float
    keyword: float
    keyword_strength: float = 1.0  # 0..1
    semantic_strength: float = 1.0  # 0..1
    reason: str = "fixed weights (search.adaptive: false)"
    measured: bool = False  # the strengths were measured (not the defaults)
    safeguard: str = "off"  # what the safeguard did, for --explain

    def to_json(self) -> dict[str, Any]:
        return {"semantic_weight": round(self.semantic, 4), "keyword_weight": round(self.keyword, 4),
                "keyword_strength": round(self.keyword_strength, 4),
                "semantic_strength": round(self.semantic_strength, 4), "reason": self.reason,
                "safeguard": self.safeguard}


# Query-adaptive fusion (chosen on bench/relevance.py, tuned on one manual, checked on another):
# a signal's weight is its configured weight x (FLOOR + (1 - FLOOR) x strength).
FLOOR = 0.25
# Keyword strength: the best of the first KEYWORD_TOP keyword hits' share of the query's IDF
# mass (does any memory hold most of what the query names?), scaled by how selective the
# query's rarest term is (a query of common words only matches everything a little).
KEYWORD_TOP = 3
# Semantic strength: how far the best similarity stands above the SPREAD_DEPTH-th one; a flat
# top (every memory about equally close) says the vectors do not recognise the query.
SPREAD_DEPTH = 10
SPREAD_FULL = 0.1
# Agreement: a memory in the first AGREE_DEPTH of both lists gets AGREEMENT first-place votes.
AGREE_DEPTH = 10
AGREEMENT = 0.5
# The safeguard: fusion may not bury the first hit of the signal that is sure of itself. When
# the keyword signal is weak for the query (strength below GUARD_WEAK: no memory holds most of
# its rare terms), semantic's first hit keeps a place in the first GUARD_SLOT; when it is strong
# (from GUARD_STRONG), keyword's first hit does. In between, fusion alone decides. Without it,
# fusion tuned on the PostgreSQL manual lost SQLite questions whose answer semantic search
# ranked first (bench/relevance.py; the thresholds were chosen on the SQLite docs alone).
GUARD_WEAK = 0.6
GUARD_STRONG = 0.8
GUARD_SLOT = 2


def adaptive_weights(semantic: list[Hit], keyword: list[Hit], stats: TermStats | None,
                     search: SearchSettings) -> Weights:
    """Each signal's strength for this query (which the safeguard reads too) and, with
    search.adaptive, the weights it implies."""
    if stats is None:
        return Weights(search.semantic_weight, search.keyword_weight)
    shares = [h.term_share or 0.0 for h in keyword[:KEYWORD_TOP]]
    keyword_strength = max(shares, default=0.0) * (0.5 + 0.5 * stats.selectivity)
    sims = [h.similarity for h in semantic[:SPREAD_DEPTH] if h.similarity is not None]
    spread = sims[0] - sims[-1] if len(sims) >= 2 else 0.0
    semantic_strength = min(1.0, max(0.0, spread / SPREAD_FULL)) if sims else 0.0
    if not search.adaptive:
        return Weights(search.semantic_weight, search.keyword_weight,
                       keyword_strength=keyword_strength, semantic_strength=semantic_strength,
                       measured=True)
    weights = Weights(
        semantic=search.semantic_weight * (FLOOR + (1 - FLOOR) * semantic_strength),
        keyword=search.keyword_weight * (FLOOR + (1 - FLOOR) * keyword_strength),
        keyword_strength=keyword_strength, semantic_strength=semantic_strength, measured=True)
    weak = [name for name, strength in (("keyword", keyword_strength),
                                        ("semantic", semantic_strength)) if strength < 0.5]
    weights.reason = ("both signals strong" if not weak else
                      f"{weak[0]} signal weak" if len(weak) == 1 else "both signals weak")
    return weights


def fuse(semantic: list[Hit], keyword: list[Hit], mode: Mode, search: SearchSettings,
         terms: Sequence[str] = (), weights: Weights | None = None) -> list[Hit]:
    """Single modes keep their signal's order; hybrid is weighted reciprocal rank fusion plus
    the exact-term boost (in units of a first-place vote, 1 / (rrf_k + 1)), with the weights
    `weights` (query-adaptive) or the configured ones, and a bonus when both signals agree;
    then, when `weights` measured the signals' strengths, the safeguard."""
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
        if existing.term_share is None:
            existing.term_share = hit.term_share
        if existing.similarity is None:
            existing.similarity = hit.similarity
    agreement = AGREEMENT if weights is not None and search.adaptive else 0.0
    measured = weights
    weights = weights or Weights(search.semantic_weight, search.keyword_weight)
    per_signal = {"semantic": weights.semantic, "keyword": weights.keyword}
    first = 1.0 / (search.rrf_k + 1)
    for hit in merged.values():
        hit.score = sum(per_signal.get(signal, 1.0) / (search.rrf_k + rank)
                        for signal, rank in hit.ranks.items())
        if agreement and max(hit.ranks.get("semantic", AGREE_DEPTH + 1),
                             hit.ranks.get("keyword", AGREE_DEPTH + 1)) <= AGREE_DEPTH:
            hit.score += agreement * first
        if terms:
            text = searchable(hit)
            hit.exact_terms = [t for t in terms if contains_term(text, t) >= 0]
            hit.score += search.exact_term_boost * first * len(hit.exact_terms) / len(terms)
    fused = sorted(merged.values(), key=lambda h: (-h.score, min(h.ranks.values())))
    if measured is not None and measured.measured:
        measured.safeguard = (safeguard(fused, semantic, keyword, measured.keyword_strength)
                              if search.safeguard else "off (search.safeguard: false)")
    return fused


def safeguard(fused: list[Hit], semantic: list[Hit], keyword: list[Hit],
              keyword_strength: float) -> str:
    """Keep the confident signal's first hit in the first GUARD_SLOT places of `fused` (moved
    there in place, its score raised to a tie with the hit it passes); says what it did."""
    if keyword_strength < GUARD_WEAK:
        signal, hits = "semantic", semantic
        why = f"keyword strength {keyword_strength:.2f} < {GUARD_WEAK}"
    elif keyword_strength >= GUARD_STRONG:
        signal, hits = "keyword", keyword
        why = f"keyword strength {keyword_strength:.2f} >= {GUARD_STRONG}"
    else:
        return (f"idle: keyword strength {keyword_strength:.2f} is between {GUARD_WEAK} and "
                f"{GUARD_STRONG}")
    if not hits:
        return f"idle: no {signal} hits"
    position = next(i for i, h in enumerate(fused) if h.key == hits[0].key)
    if position < GUARD_SLOT:
        return f"{signal}'s first hit is in place {position + 1} ({why})"
    guarded = fused.pop(position)
    fused.insert(GUARD_SLOT - 1, guarded)
    guarded.score = max(guarded.score, fused[GUARD_SLOT].score)
    return (f"{signal}'s first hit moved from place {position + 1} to {GUARD_SLOT} ({why})")


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
