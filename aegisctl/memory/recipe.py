"""The embedding recipe: which text of a memory is embedded and full-text indexed.

A memory's meaning is not only in its main text: a semantic memory's `concept` (often a title
such as "PRAGMA busy_timeout") says what the paragraph is about, and an episodic memory's event
type and decision say what happened and what was chosen. Embedding `content` or `summary` alone
left that out (measured on bench/relevance.py: semantic search lost 11 points of success@5 to a
plain kNN over concept + content).

Recipe 2 (RECIPE_VERSION), the same at `memory import`, `memory add` and `memory reembed`:

- semantic: `concept + ". " + content` (no ". " when the concept already ends in . : ? or !).
- episodic: `event_type + ": " + summary`, then `" Decision: " + decision` when there is one.

Recipe 1 is the text column alone (what aegisctl did before migration 0009). Each row records
the recipe its embedding was made with in `embedding_recipe` (NULL when it has no embedding, or
when the vector came from outside, such as an `embedding` field in an imported line — then
aegisctl does not know its recipe). `memory stats` counts rows on an older recipe and `memory
reembed --stale` re-embeds just those.

Full-text search indexes the same fields (migration 0009 and 0002): semantic `content_tsv` is
concept (weight A) + content (B); episodic `summary_tsv` is summary (A) + event type and
decision (B). `fts_sql(kind)` is that expression, for documentation and tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aegisctl.memory.refs import Kind

RECIPE_VERSION = 2
LEGACY_RECIPE = 1

# The generated tsvector columns after migration 0009 (kept here so tests can pin them).
FTS_SQL: dict[Kind, str] = {
    "semantic": ("setweight(to_tsvector('english'::regconfig, concept), 'A') || "
                 "setweight(to_tsvector('english'::regconfig, content), 'B')"),
    "episodic": ("setweight(to_tsvector('english'::regconfig, summary), 'A') || "
                 "setweight(to_tsvector('english'::regconfig, "
                 "coalesce(event_type, '') || ' ' || coalesce(decision, '')), 'B')"),
}


def _join(head: str, tail: str, separator: str) -> str:
    head, tail = head.strip(), tail.strip()
    if not head:
        return tail
    if not tail:
        return head
    if head[-1] in ".:?!":
        return f"{head} {tail}"
    return f"{head}{separator}{tail}"


def embed_text(kind: Kind, record: Mapping[str, Any]) -> str:
    """The text embedded for a memory (recipe RECIPE_VERSION); `record` holds its columns."""
    if kind == "semantic":
        return _join(str(record.get("concept") or ""), str(record.get("content") or ""), ". ")
    text = _join(str(record.get("event_type") or ""), str(record.get("summary") or ""), ": ")
    decision = str(record.get("decision") or "").strip()
    if decision:
        text = _join(text, f"Decision: {decision}", " ")
    return text


def recipe_columns(kind: Kind) -> tuple[str, ...]:
    """The columns embed_text reads (a re-embed selects these)."""
    return ("concept", "content") if kind == "semantic" else ("event_type", "summary",
                                                                "decision")


def fts_sql(kind: Kind) -> str:
    return FTS_SQL[kind]
