"""`aegisctl diag <topic>`: one named SQL file per topic, run on one connection, returned as one
result (sections of rows: diagnostics.result) with the one JSON form and the one table view.

A query the user lacks the privilege for (or that cannot run here) becomes a one-line error in
its section; the other sections still run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.diagnostics import queries
from aegisctl.diagnostics.result import (
    HIDDEN,
    PRIVILEGE_NOTE,
    DiagResult,
    format_seconds,
    run_file,
    run_query,
)

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import Settings

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
