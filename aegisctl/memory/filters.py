"""Filters shared by search, export and recent: which kinds, and the WHERE clause per kind."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from aegisctl.errors import UsageError
from aegisctl.memory.refs import IMPORTANCE_LEVELS, KINDS, TABLES, Kind, MemoryRef
from aegisctl.units import parse_duration

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def parse_context(values: list[str]) -> dict[str, str]:
    """`--context KEY=VALUE` (repeatable) -> {KEY: VALUE}; one key given twice is an error."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, wanted = value.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--context '{value}' is not KEY=VALUE",
                             hint="e.g. --context agent=planner")
        if key in pairs and pairs[key] != wanted:
            raise UsageError(f"--context {key} is given twice with different values")
        pairs[key] = wanted
    return pairs


def parse_when(value: str, now: dt.datetime | None = None) -> dt.datetime:
    """`7d`, `36h`, `2w` (that long ago) or a date / ISO timestamp (UTC unless it says)."""
    now = now or dt.datetime.now(dt.UTC)
    text = value.strip()
    if _DATE_RE.match(text):
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"'{value}' is not a date: use YYYY-MM-DD or an ISO "
                             "timestamp") from None
        return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    try:
        return now - dt.timedelta(seconds=parse_duration(text))
    except ValueError:
        raise UsageError(
            f"'{value}' is neither a duration nor a date",
            hint="use e.g. 7d, 12h, 2w, 6mo or 2024-05-01",
        ) from None


@dataclass
class Filters:
    kind: Kind | None = None  # None: both tables
    event_types: list[str] = field(default_factory=list)  # any of
    tags: list[str] = field(default_factory=list)  # all of
    min_importance: str | None = None
    categories: list[str] = field(default_factory=list)  # any of
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    sources: list[str] = field(default_factory=list)  # semantic source, any of
    context: dict[str, str] = field(default_factory=dict)  # episodic context KEY=VALUE, all of
    ids: list[MemoryRef] = field(default_factory=list)  # only these memories (any of)

    def __post_init__(self) -> None:
        if self.min_importance and self.min_importance not in IMPORTANCE_LEVELS:
            raise UsageError(f"--min-importance must be one of {', '.join(IMPORTANCE_LEVELS)}")

    @property
    def active(self) -> bool:
        return bool(self.event_types or self.tags or self.min_importance or self.categories
                    or self.since or self.until or self.sources or self.context or self.ids)

    def kinds(self) -> list[Kind]:
        """The tables to search: --type, --min-importance and --context exist only on episodic
        memory, --category and --source only on semantic memory, so they narrow the search to
        that table."""
        episodic_only = bool(self.event_types or self.min_importance or self.context)
        semantic_only = bool(self.categories or self.sources)
        if episodic_only and semantic_only:
            raise UsageError(
                "--type/--min-importance/--context filter episodic memories and "
                "--category/--source semantic ones: no memory can match both",
            )
        wanted = [self.kind] if self.kind else list(KINDS)
        if episodic_only:
            wanted = [k for k in wanted if k == "episodic"]
        if semantic_only:
            wanted = [k for k in wanted if k == "semantic"]
        if self.ids:
            wanted = [k for k in wanted if any(r.kind == k for r in self.ids)]
        if not wanted:
            raise UsageError(f"the filters given do not apply to {self.kind} memories")
        return wanted

    def where(self, kind: Kind, alias: str = "") -> tuple[Any, dict[str, Any]]:
        """(sql.Composable condition, params) for one table; `TRUE` when nothing filters."""
        from psycopg import sql

        def col(name: str) -> Any:
            return sql.Identifier(alias, name) if alias else sql.Identifier(name)

        info = TABLES[kind]
        parts: list[Any] = []
        params: dict[str, Any] = {}
        if self.ids:
            parts.append(sql.SQL("{} = ANY(%(f_ids)s::integer[])").format(col("id")))
            params["f_ids"] = sorted({r.id for r in self.ids if r.kind == kind})
        if self.tags:
            parts.append(sql.SQL("{} @> %(f_tags)s::text[]").format(col("tags")))
            params["f_tags"] = list(self.tags)
        if self.since:
            parts.append(sql.SQL("{} >= %(f_since)s").format(col(info.time)))
            params["f_since"] = self.since
        if self.until:
            parts.append(sql.SQL("{} < %(f_until)s").format(col(info.time)))
            params["f_until"] = self.until
        if kind == "episodic":
            if self.event_types:
                parts.append(sql.SQL("{} = ANY(%(f_types)s::text[])").format(col("event_type")))
                params["f_types"] = list(self.event_types)
            if self.min_importance:
                parts.append(sql.SQL("{} >= %(f_importance)s::memory_importance").format(
                    col("importance")))
                params["f_importance"] = self.min_importance
            # Compared as text (->>), so `attempt=3` matches a JSON number and a string alike.
            for n, (key, value) in enumerate(sorted(self.context.items())):
                parts.append(sql.SQL("{} ->> {} = {}").format(
                    col("context"), sql.Placeholder(f"f_ctx_k{n}"),
                    sql.Placeholder(f"f_ctx_v{n}")))
                params[f"f_ctx_k{n}"] = key
                params[f"f_ctx_v{n}"] = value
        else:
            if self.categories:
                parts.append(sql.SQL("{} = ANY(%(f_categories)s::text[])").format(
                    col("category")))
                params["f_categories"] = list(self.categories)
            if self.sources:
                parts.append(sql.SQL("{} = ANY(%(f_sources)s::text[])").format(col("source")))
                params["f_sources"] = list(self.sources)
        if not parts:
            return sql.SQL("TRUE"), params
        return sql.SQL(" AND ").join(parts), params
