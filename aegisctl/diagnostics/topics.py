"""`aegisctl diag <topic>`: one named SQL file per topic, run on one connection, returned as one
result (sections of rows) with the one JSON form and the one table view.

A query the user lacks the privilege for (or that cannot run here) becomes a one-line error in
its section; the other sections still run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aegisctl.diagnostics import queries
from aegisctl.units import format_bytes

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import Settings
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


# ---------------------------------------------------------------------------------------------
# Topics


@dataclass
class DiagOptions:
    limit: int = 20
    min_seconds: float | None = None  # activity: statements running at least this long
    recall_sample: int = 0  # vectors
    table: str | None = None  # explain-search: schema.table (or table)
    column: str | None = None  # explain-search


Runner = Callable[["psycopg.Connection[Any]", DiagResult, "Settings", DiagOptions], None]


def _activity(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
              options: DiagOptions) -> None:
    seconds = options.min_seconds if options.min_seconds is not None \
        else settings.checks.slow_query_seconds.warning
    run_file(conn, result, "activity", {"long_seconds": seconds})
    summary = result.section("summary")
    if summary.rows and summary.rows[0].get("hidden_sessions") and PRIVILEGE_NOTE not in result.notes:
        result.notes.append(PRIVILEGE_NOTE)
    result.section("long_running").empty = f"no statement running for {format_seconds(seconds)} or more"
    result.section("idle_in_transaction").empty = "no session idle in a transaction"
    result.section("waiting").empty = "no session waiting for a lock"
    from aegisctl.diagnostics import hints

    hints.idle_in_transaction(conn, result)


def _locks(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
           options: DiagOptions) -> None:
    run_file(conn, result, "locks")
    result.section("blocking").empty = "no session is blocked by another"


def _size(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
          options: DiagOptions) -> None:
    run_file(conn, result, "size", {"limit": options.limit})
    summary = result.section("summary")
    allocated = settings.checks.database_size_pct.allocated
    if summary.rows:
        row = summary.rows[0]
        row["allocated_bytes"] = allocated
        row["allocated_pct"] = round(100.0 * row["size_bytes"] / allocated, 1) if allocated else None
        if not allocated:
            result.notes.append("set checks.database_size_pct.allocated (e.g. 100GB) to compare "
                                "the size with the storage allotted to this database")


def _cache(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
           options: DiagOptions) -> None:
    run_file(conn, result, "cache")
    summary = result.section("summary")
    if summary.rows:
        row = summary.rows[0]
        blocks = row["heap_blocks_hit"] + row["heap_blocks_read"]
        minimum = settings.checks.cache_hit_ratio.min_blocks
        if blocks < minimum:
            result.notes.append(f"only {blocks} heap blocks accessed since the statistics reset "
                                f"(fewer than checks.cache_hit_ratio.min_blocks = {minimum}): "
                                "the ratio says little yet")
    result.section("tables").empty = "no table has read a block from disk"


def _indexes(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
             options: DiagOptions) -> None:
    run_file(conn, result, "indexes", {"limit": options.limit})
    result.section("usage").empty = "no user indexes"
    result.section("unused").empty = "no unused index"
    result.section("duplicate").empty = "no duplicate index"
    result.section("invalid").empty = "no invalid index"
    from aegisctl.diagnostics import hints

    hints.invalid_indexes(conn, result)
    result.notes.append("scan counts are since the last statistics reset and per server: an index "
                        "unused here may serve queries on a replica")


def pgss_schema(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                       "ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'").fetchone()
    return str(row[0]) if row else None


PGSS_MISSING = ("pg_stat_statements is not installed in database {db}: add it to "
                "shared_preload_libraries (postgresql.conf, then restart the server) and run "
                "CREATE EXTENSION pg_stat_statements; in this database (the embedded server "
                "preloads it; `aegisctl schema init` creates it)")


def _slow(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
          options: DiagOptions) -> None:
    from psycopg import sql

    schema = pgss_schema(conn)
    if schema is None:
        result.notes.append(PGSS_MISSING.format(db=result.database))
        return
    view = sql.Identifier(schema, "pg_stat_statements")
    for name in ("by_mean", "by_total"):
        text = queries.query("slow", name).sql
        section = run_query(conn, result, "slow", name, {"limit": options.limit},
                            sql=sql.SQL(text).format(pgss=view),
                            empty="no statements recorded yet")
        if section.error and "shared_preload_libraries" in section.error:
            section.error = ("pg_stat_statements is installed but not loaded: add it to "
                             "shared_preload_libraries and restart the server")
    rows = result.section("by_mean").rows
    if any(r.get("query") == HIDDEN for r in rows):
        result.notes[:] = [n for n in result.notes if n != PRIVILEGE_NOTE]
        result.notes.append("statements of other users are hidden: grant pg_read_all_stats to see "
                            "their text")


def _vacuum(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
            options: DiagOptions) -> None:
    run_file(conn, result, "vacuum", {"limit": options.limit})
    result.section("tables").empty = "no user tables"
    from aegisctl.diagnostics import hints

    hints.vacuum(conn, result, settings)


def _replication(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
                 options: DiagOptions) -> None:
    run_file(conn, result, "replication")
    replicas = result.section("replicas")
    if result.role == "standby":
        replicas.empty = "a standby: its primary lists the replicas"
    else:
        replicas.empty = "no replica connected"
    receiver = result.section("receiver")
    receiver.empty = ("not receiving WAL (a primary)" if result.role == "primary"
                      else "no WAL receiver running: the standby is not streaming")
    result.section("slots").empty = "no replication slots"
    hidden = (result.role == "standby" and receiver.rows
              and receiver.rows[0].get("sender_host") is None) \
        or any(r.get("state") is None for r in replicas.rows)
    if hidden and PRIVILEGE_NOTE not in result.notes:
        result.notes.append(PRIVILEGE_NOTE)


WATCHED_SETTINGS = ["shared_buffers", "effective_cache_size", "work_mem", "maintenance_work_mem",
                    "max_parallel_maintenance_workers", "max_parallel_workers_per_gather",
                    "hnsw.ef_search", "hnsw.iterative_scan", "ivfflat.probes", "max_connections",
                    "random_page_cost", "autovacuum", "autovacuum_vacuum_scale_factor",
                    "autovacuum_max_workers", "shared_preload_libraries", "track_io_timing",
                    "log_min_duration_statement"]


def _settings(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
              options: DiagOptions) -> None:
    from aegisctl.diagnostics.advice import advise, load_vector_library

    load_vector_library(conn)
    section = run_query(conn, result, "settings", "settings", {"names": WATCHED_SETTINGS})
    advise(conn, section.rows, settings)
    section.view_columns = ["name", "value", "source", "note"]
