"""Memory kinds, their tables, and memory ids.

The two tables have separate SERIAL ids, so a memory is addressed as `episodic:123` or
`semantic:45` (`e:123` and `s:45` are accepted too). Records are plain dicts whose keys are the
table's column names plus `id` (the full `kind:n` form) and `kind`: the same shape `memory
export` writes and `memory import` reads.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from aegisctl.errors import UsageError

Kind = Literal["episodic", "semantic"]
KINDS: tuple[Kind, ...] = ("episodic", "semantic")
IMPORTANCE_LEVELS = ("low", "medium", "high", "critical")
# The seed's decay model multiplies by an importance in 0..1 (default 0.5).
IMPORTANCE_WEIGHT = {"low": 0.25, "medium": 0.5, "high": 0.75, "critical": 1.0}


@dataclass(frozen=True)
class KindInfo:
    kind: Kind
    table: str
    text: str  # the column that is embedded and searched
    tsv: str  # its generated tsvector
    time: str  # the column --since/--until and recency use
    columns: tuple[str, ...]  # every user-visible column, in table order, without id/embedding
    required: tuple[str, ...]


TABLES: dict[Kind, KindInfo] = {
    "episodic": KindInfo(
        kind="episodic", table="episodic_memory", text="summary", tsv="summary_tsv",
        time="timestamp",
        columns=("timestamp", "event_type", "summary", "details", "context", "importance",
                 "tags", "related_memories", "created_at", "decision", "metadata",
                 "graphiti_synced_at"),
        required=("event_type", "summary"),
    ),
    "semantic": KindInfo(
        kind="semantic", table="semantic_memory", text="content", tsv="content_tsv",
        time="created_at",
        columns=("concept", "content", "category", "source", "confidence", "metadata", "tags",
                 "created_at", "updated_at"),
        required=("concept", "content"),
    ),
}
JSON_COLUMNS = {"details", "context", "metadata"}
TIME_COLUMNS = {"timestamp", "created_at", "updated_at", "graphiti_synced_at"}


@dataclass(frozen=True)
class MemoryRef:
    kind: Kind
    id: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


def parse_ref(text: str) -> MemoryRef:
    prefix, sep, number = text.strip().partition(":")
    kinds = {"episodic": "episodic", "e": "episodic", "semantic": "semantic", "s": "semantic"}
    if not sep or prefix.lower() not in kinds or not number.isdigit():
        raise UsageError(
            f"'{text}' is not a memory id",
            hint="memory ids look like episodic:123 or semantic:45 (the tables number "
                 "their rows separately)",
        )
    kind: Kind = "episodic" if kinds[prefix.lower()] == "episodic" else "semantic"
    return MemoryRef(kind, int(number))


def record_from_row(kind: Kind, row: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready record from a row holding `id` and (some of) the kind's columns."""
    record: dict[str, Any] = {"id": f"{kind}:{row['id']}", "kind": kind}
    for column in TABLES[kind].columns:
        if column in row:
            value = row[column]
            record[column] = value.isoformat() if isinstance(value, dt.datetime) else value
    return record


def text_of(record: dict[str, Any]) -> str:
    return str(record.get(TABLES[record["kind"]].text) or "")


def record_time(record: dict[str, Any]) -> dt.datetime | None:
    value = record.get(TABLES[record["kind"]].time)
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value)
    return value if isinstance(value, dt.datetime) else None
