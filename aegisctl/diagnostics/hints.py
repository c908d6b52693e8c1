"""What `aegisctl diag` says to do about what it found: a `hint` per row where a row calls for
an action, and notes under the sections. The SQL that finds things stays in sql/diagnostics/;
this module only reads catalog values and composes advice (identifiers through psycopg.sql)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import Settings
    from aegisctl.diagnostics.result import DiagResult


def _short(text: str | None, width: int = 80) -> str:
    flat = " ".join((text or "").split())
    return flat[:width - 3] + "..." if len(flat) > width else flat


def idle_in_transaction(conn: psycopg.Connection[Any], result: DiagResult) -> None:
    """Each session idle in a transaction: its pid, age and last statement, how to end it, and
    the setting that ends such sessions by itself."""
    from aegisctl.diagnostics.result import format_seconds

    rows = result.section("idle_in_transaction").rows
    if not rows:
        return
    timeout = conn.execute("SELECT current_setting('idle_in_transaction_session_timeout')"
                           ).fetchone()
    setting = str(timeout[0]) if timeout else "0"
    for row in rows:
        row["hint"] = f"SELECT pg_terminate_backend({row['pid']})"
    for row in rows[:5]:
        result.notes.append(
            f"pid {row['pid']} ({row.get('user')}) has been idle in a transaction for "
            f"{format_seconds(row.get('idle_seconds') or 0)} (open "
            f"{format_seconds(row.get('transaction_seconds') or 0)}), last statement: "
            f"{_short(row.get('last_query'))}. It holds its locks and keeps VACUUM from "
            f"removing dead rows; end it with SELECT pg_terminate_backend({row['pid']}) "
            "(its transaction is rolled back)")
    prevent = "ALTER DATABASE ... SET idle_in_transaction_session_timeout = '5min' (or per " \
              "role) ends such sessions by itself"
    result.notes.append(f"idle_in_transaction_session_timeout is {setting}"
                        f"{' (off)' if setting in ('0', '0ms') else ''}: {prevent}")


def vacuum(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings) -> None:
    """The bloat estimate of every table of some size, with what to run; a note per table
    whose dead rows call for a VACUUM."""
    from aegisctl.diagnostics.bloat_checks import bloat_of_tables
    from aegisctl.diagnostics.result import Section

    threshold = settings.checks.table_bloat
    rows = []
    for item in bloat_of_tables(conn, threshold.warning):
        if item.wasted is None:
            rows.append({"table": item.name, "bytes": item.bytes, "wasted_bytes": None,
                         "wasted_ratio": None, "how": "statistics missing",
                         "hint": f"never analyzed: aegisctl maint analyze --table {item.name}"})
        elif item.ratio > threshold.min_ratio and item.wasted > 0:
            rows.append({"table": item.name, "bytes": item.bytes, "wasted_bytes": item.wasted,
                         "wasted_ratio": round(item.ratio, 4),
                         "how": "measured" if item.measured else "estimated",
                         "hint": item.advice()})
    result.sections.append(Section(
        "bloat", rows, empty=f"no table of 1 MB or more over {threshold.min_ratio:.0%} wasted",
        view_columns=["table", "bytes", "wasted_bytes", "wasted_ratio", "how", "hint"]))
    for row in result.section("tables").rows:
        if (row.get("dead_ratio") or 0) > 0.2 and (row.get("dead_tuples") or 0) >= 1000:
            name = f"{row['schema']}.{row['table']}"
            result.notes.append(f"{name}: {row['dead_tuples']:,} dead rows "
                                f"({row['dead_ratio']:.0%}): aegisctl maint vacuum --table {name}")


def unique_duplicates(conn: psycopg.Connection[Any], index_oid: int) -> int | None:
    """For a unique index: how many key values occur more than once in its table (what made
    a concurrent build fail; a REINDEX would fail the same way). None: not unique, or the
    keys could not be counted."""
    import psycopg
    from psycopg import sql

    row = conn.execute("""
        SELECT i.indisunique, i.indrelid::regclass::text, i.indnkeyatts,
               pg_get_expr(i.indpred, i.indrelid),
               array(SELECT pg_get_indexdef(i.indexrelid, k, true)
                     FROM generate_series(1, i.indnkeyatts) k)
        FROM pg_index i WHERE i.indexrelid = %s""", (index_oid,)).fetchone()
    if row is None or not row[0]:
        return None
    _, table, _, predicate, keys = row
    # Key expressions and the predicate are the server's own deparsed text of the catalog.
    key_list = sql.SQL(", ").join(sql.SQL(k) for k in keys)
    conditions = [sql.SQL("({}) IS NOT NULL").format(sql.SQL(k)) for k in keys]
    if predicate:
        conditions.append(sql.SQL("({})").format(sql.SQL(predicate)))
    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} GROUP BY {} "
                    "HAVING count(*) > 1) d").format(
        sql.SQL(table), sql.SQL(" AND ").join(conditions), key_list)
    try:
        with conn.transaction():
            found = conn.execute(query).fetchone()
    except psycopg.Error:
        return None
    return int(found[0]) if found else None


def invalid_index_hint(conn: psycopg.Connection[Any], index_oid: int, name: str) -> str:
    duplicates = unique_duplicates(conn, index_oid)
    if duplicates:
        # No rebuild advice: it would fail on the same duplicates.
        return (f"unique, and {duplicates} key value(s) occur more than once in its table: a "
                "rebuild would fail the same way. Decide which rows to keep and remove the "
                f"others, then create the index again; or DROP INDEX CONCURRENTLY {name}")
    return f"aegisctl maint reindex --index {name} (or DROP INDEX CONCURRENTLY {name})"


def invalid_indexes(conn: psycopg.Connection[Any], result: DiagResult) -> None:
    rows = result.section("invalid").rows
    for row in rows:
        row["hint"] = invalid_index_hint(conn, int(row["oid"]), f"{row['schema']}.{row['index']}")
