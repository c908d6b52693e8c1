"""A diag result (sections of rows, notes) with its one JSON form and its one table view, and
running a topic's named queries into it. Topics (topics.py, vectors.py), the advice they add
(hints.py) and the checks share these pieces, so none of them imports another for them."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aegisctl.diagnostics import queries
from aegisctl.units import format_bytes

if TYPE_CHECKING:
    import psycopg

    from aegisctl.output import Block


HIDDEN = "<insufficient privilege>"
PRIVILEGE_NOTE = ("some sessions' details are hidden from this user: grant pg_read_all_stats "
                  "(or connect as a superuser) to see them")
# Columns holding prose (wrapped), never truncated identifiers.
TEXT_COLUMNS = {"query", "blocked_query", "blocking_query", "last_query", "definition",
                "covering_definition", "note", "key", "wants", "advice", "plan"}


@dataclass
class Section:
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    fields: bool = False  # a single row shown as key/value pairs
    error: str | None = None
    empty: str = "none"
    view_columns: list[str] | None = None  # the table shows these (JSON has every column)
    # Shown as one block of fields per row, titled by these columns' values (wide rows).
    records: tuple[str, ...] | None = None

    def to_json(self) -> Any:
        if self.fields:
            return self.rows[0] if self.rows else None
        return self.rows


@dataclass
class DiagResult:
    topic: str
    target: str
    database: str | None = None
    role: str | None = None
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_ms: float = 0.0

    def section(self, name: str) -> Section:
        for item in self.sections:
            if item.name == name:
                return item
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "target": self.target,
            "database": self.database,
            "role": self.role,
            "sections": {s.name: s.to_json() for s in self.sections},
            "errors": {s.name: s.error for s in self.sections if s.error},
            "notes": self.notes,
            "elapsed_ms": self.elapsed_ms,
        }

    def to_view(self) -> list[Block]:
        from aegisctl.output import Fields, Note

        blocks: list[Block] = [Fields([("target", self.target), ("database", self.database),
                                       ("role", self.role)], title=f"diag {self.topic}")]
        for section in self.sections:
            title = section.name.replace("_", " ")
            if section.error:
                blocks.append(Note(f"{title}: {section.error}"))
            elif section.fields:
                row = section.rows[0] if section.rows else {}
                headers = headers_for(list(row))
                blocks.append(Fields([(headers[k], _display(k, v)) for k, v in row.items()],
                                     title=title))
            elif section.records and section.rows:
                blocks.extend(record_blocks(section, title))
            else:
                blocks.append(table_block(section.rows, title, section.empty,
                                          section.view_columns))
        blocks.extend(Note(note) for note in self.notes)
        return blocks


def record_blocks(section: Section, title: str) -> list[Block]:
    from aegisctl.output import Fields

    keys = section.records or ()
    blocks: list[Block] = []
    for row in section.rows:
        names = [n for n in (section.view_columns or list(row)) if n not in keys]
        headers = headers_for(names)
        label = ".".join(str(row[k]) for k in keys)
        if len(keys) == 1:
            label = f"{keys[0].replace('_', ' ')} {label}"
        blocks.append(Fields([(headers[n], _display(n, row[n])) for n in names],
                             title=f"{title}: {label}"))
    return blocks


# What the table view shows of the wide sections (JSON always has every column), and the
# sections shown as one block per row.
VIEWS: dict[tuple[str, str], list[str]] = {
    ("activity", "long_running"): ["pid", "user", "running_seconds", "wait_event", "query"],
    ("activity", "idle_in_transaction"): ["pid", "user", "transaction_seconds", "idle_seconds",
                                          "last_query", "hint"],
    ("activity", "waiting"): ["pid", "user", "waiting_seconds", "blocked_by", "query"],
    ("size", "tables"): ["schema", "table", "total_bytes", "heap_bytes", "index_bytes",
                         "toast_bytes"],
    ("cache", "tables"): ["table", "heap_read", "heap_hit_ratio", "index_hit_ratio"],
    ("indexes", "usage"): ["table", "index", "scans", "size_bytes"],
    ("indexes", "unused"): ["table", "index", "size_bytes", "table_seq_scans"],
    ("indexes", "duplicate"): ["table", "index", "covered_by", "size_bytes"],
    ("indexes", "invalid"): ["table", "index", "size_bytes", "valid", "ready", "hint"],
    ("slow", "by_mean"): ["calls", "mean_ms", "max_ms", "query"],
    ("slow", "by_total"): ["calls", "total_ms", "total_pct", "query"],
    ("vacuum", "tables"): ["table", "dead_tuples", "dead_ratio", "last_autovacuum"],
    ("replication", "slots"): ["slot_name", "slot_type", "active", "wal_status",
                               "retained_wal_bytes"],
}
RECORDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("locks", "blocking"): ("blocked_pid",),
    ("replication", "replicas"): ("application",),
    ("replication", "receiver"): ("sender_host",),
    ("vectors", "columns"): ("schema", "table", "column"),
    ("vectors", "indexes"): ("schema", "index"),
}
DATETIME_COLUMNS = {"last_vacuum", "last_analyze", "last_autovacuum", "last_autoanalyze",
                    "stats_reset", "last_replayed_commit"}


def headers_for(names: list[str]) -> dict[str, str]:
    """Column headers: `size_bytes` shows as `size` (its values are formatted), unless that
    would make two headers alike (`replay_lag_bytes` and `replay_lag_seconds`)."""
    short = {}
    for name in names:
        short[name] = name
        for suffix in ("_bytes", "_seconds"):
            if name.endswith(suffix):
                short[name] = name.removesuffix(suffix)
    counts: dict[str, int] = {}
    for value in short.values():
        counts[value] = counts.get(value, 0) + 1
    return {name: short[name] if counts[short[name]] == 1 else name for name in names}


def format_seconds(value: float) -> str:
    if value < 60:
        return f"{value:g}s"
    minutes, seconds = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def _display(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name.endswith("_bytes") and isinstance(value, int | float):
        return format_bytes(value)
    if name.endswith("_seconds") and isinstance(value, int | float):
        return format_seconds(float(value))
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, str) and name in DATETIME_COLUMNS:
        with contextlib.suppress(ValueError):  # shown as an age; JSON keeps the timestamp
            moment = dt.datetime.fromisoformat(value)
            age = (dt.datetime.now(moment.tzinfo) - moment).total_seconds()
            return f"{format_seconds(max(0, int(age)))} ago"
    if isinstance(value, str) and name.endswith("query"):
        return " ".join(value.split())  # statements on one (wrapped) line
    return value


def table_block(rows: list[dict[str, Any]], title: str | None, empty: str = "none",
                names: list[str] | None = None) -> Block:
    from aegisctl.output import Column, Table

    if names is None:
        names = list(rows[0]) if rows else []
    headers = headers_for(names)
    columns: list[Column | str] = []
    for name in names:
        sample = next((r[name] for r in rows if r[name] is not None), None)
        if name in TEXT_COLUMNS:
            kind = "text"
        elif isinstance(sample, int | float) and not isinstance(sample, bool):
            kind = "number"
        else:
            kind = "id"
        columns.append(Column(headers[name], kind))  # type: ignore[arg-type]
    table_rows: list[Sequence[Any]] = [[_display(name, row[name]) for name in names] for row in rows]
    return Table(columns, table_rows, title=title, empty=f"{title}: {empty}" if title else empty)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def fetch(conn: psycopg.Connection[Any], sql: Any, params: dict[str, Any] | None = None
          ) -> list[dict[str, Any]]:
    """Rows as plain dicts (JSON-ready values)."""
    cursor = conn.execute(sql, params or {})
    if cursor.description is None:
        return []
    names = [d.name for d in cursor.description]
    return [{n: _plain(v) for n, v in zip(names, row, strict=True)} for row in cursor.fetchall()]


def describe_error(exc: BaseException) -> str:
    """One line for a query that could not run."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if sqlstate == "42501":
        return f"permission denied ({first}); grant pg_read_all_stats or pg_monitor to this user"
    if sqlstate == "57014":
        return f"cancelled by statement_timeout ({first})"
    if sqlstate == "55P03":
        return (f"a table it reads is locked by another session ({first}); see "
                "`aegisctl diag locks`")
    return first


def run_query(conn: psycopg.Connection[Any], result: DiagResult, topic: str, name: str,
              params: dict[str, Any] | None = None, sql: Any = None, empty: str = "none") -> Section:
    """Run one named query of the topic's SQL file into a section of the result."""
    import psycopg

    named = queries.query(topic, name)
    section = Section(name, fields=named.fields, empty=empty)
    try:
        section.rows = fetch(conn, sql if sql is not None else named.sql, params)
    except psycopg.Error as exc:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            conn.rollback()
        section.error = describe_error(exc)
    if any(v == HIDDEN for row in section.rows for v in row.values()) \
            and PRIVILEGE_NOTE not in result.notes:
        result.notes.append(PRIVILEGE_NOTE)
    result.sections.append(section)
    return section


def run_file(conn: psycopg.Connection[Any], result: DiagResult, topic: str,
             params: dict[str, Any] | None = None) -> None:
    for named in queries.load(topic):
        run_query(conn, result, topic, named.name, params)
