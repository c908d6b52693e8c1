"""`diag settings`: the current value of each setting that matters for an agent-memory workload,
and a note where it is far from the usual advice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aegisctl.units import format_bytes

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import Settings

MiB = 1024 * 1024


def vector_schema(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                       "ON n.oid = e.extnamespace WHERE e.extname = 'vector'").fetchone()
    return str(row[0]) if row else None


def load_vector_library(conn: psycopg.Connection[Any]) -> None:
    """pgvector's settings (hnsw.ef_search...) exist in a session once its library is loaded:
    calling one of its functions loads it."""
    import contextlib

    import psycopg
    from psycopg import sql

    schema = vector_schema(conn)
    if schema is None:
        return
    with contextlib.suppress(psycopg.Error):
        conn.execute(sql.SQL("SELECT {}('[1]'::{})").format(
            sql.Identifier(schema, "vector_dims"), sql.Identifier(schema, "vector")))


def largest_vector_index(conn: psycopg.Connection[Any]) -> tuple[str, int] | None:
    row = conn.execute(
        "SELECT c.oid::regclass::text, pg_relation_size(c.oid) FROM pg_class c "
        "JOIN pg_am am ON am.oid = c.relam WHERE am.amname IN ('hnsw', 'ivfflat') "
        "ORDER BY 2 DESC LIMIT 1").fetchone()
    return (str(row[0]), int(row[1])) if row else None


def _note(row: dict[str, Any], settings: Settings, largest: tuple[str, int] | None) -> str | None:
    name, value, size = row["name"], row["setting"], row.get("bytes")
    if name == "shared_buffers" and size is not None and size <= 128 * MiB:
        return "the 128MB default: the usual advice is about 25% of RAM on a dedicated server"
    if name == "effective_cache_size" and size is not None and size <= 4096 * MiB:
        return ("the 4GB default: set it to what the OS can cache (often 50-75% of RAM) so the "
                "planner favours index scans")
    if name == "work_mem" and size is not None:
        if size < 4 * MiB:
            return "below the 4MB default: sorts and hashes spill to disk"
        if size > 256 * MiB:
            return "large: each sort or hash of each session may use this much"
    if name == "maintenance_work_mem" and size is not None:
        if largest and largest[1] > size:
            return (f"smaller than the largest vector index ({largest[0]}, "
                    f"{format_bytes(largest[1])}): an HNSW build that does not fit in memory is "
                    "much slower; raise it before (re)building")
        if size <= 64 * MiB:
            return "the 64MB default: raise it (1GB or more) before building HNSW indexes"
    if name == "max_parallel_maintenance_workers" and int(value) < 2:
        return "pgvector builds HNSW indexes in parallel: 2 or more workers speed builds up"
    if name == "hnsw.ef_search":
        ef = int(value)
        note = f"aegisctl memory search sets its own per query (search.ef_search = " \
               f"{settings.search.ef_search})"
        if ef < settings.search.limit:
            return f"below search.limit ({settings.search.limit}): HNSW returns at most " \
                   f"ef_search rows; {note}"
        return note
    if name == "autovacuum" and value != "on":
        return ("off: dead tuples accumulate and transaction-ID age grows until an "
                "anti-wraparound vacuum is forced")
    if name == "autovacuum_vacuum_scale_factor" and float(value) >= 0.2:
        return ("a table is vacuumed after 20% of it is dead: lower it on large memory tables "
                "(ALTER TABLE ... SET (autovacuum_vacuum_scale_factor = 0.05))")
    if name == "random_page_cost" and float(value) >= 4:
        return "4 assumes spinning disks: 1.1 suits SSDs and favours index scans"
    if name == "shared_preload_libraries" and "pg_stat_statements" not in value:
        return "pg_stat_statements is not preloaded: `aegisctl diag slow` needs it"
    if name == "track_io_timing" and value != "on":
        return "on adds I/O time to EXPLAIN (BUFFERS) and pg_stat_statements; cheap on most systems"
    if name == "log_min_duration_statement" and int(value) < 0:
        return ("slow statements are not logged: the usual advice is 1000 (ms), "
                "ALTER DATABASE ... SET log_min_duration_statement = 1000")
    return None


def advise(conn: psycopg.Connection[Any], rows: list[dict[str, Any]], settings: Settings) -> None:
    """Rewrite the settings rows into name, value, source, note (raw setting/unit/bytes kept)."""
    largest = largest_vector_index(conn)
    present = {row["name"] for row in rows}
    for index, row in enumerate(rows):
        size = row.get("bytes")
        rows[index] = {"name": row["name"], "value": row["value"], "source": row["source"],
                       "note": _note(row, settings, largest), "setting": row["setting"],
                       "unit": row["unit"], "bytes": size}
    if "hnsw.ef_search" not in present:
        rows.append({"name": "hnsw.ef_search", "value": None, "source": None,
                     "note": "pgvector is not installed in this database", "setting": None,
                     "unit": None, "bytes": None})
