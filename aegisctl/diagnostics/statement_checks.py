"""`aegisctl check`: statement means from pg_stat_statements, over a window.

pg_stat_statements is cumulative: one `pg_sleep(6)` would keep its mean above the threshold
until someone reset the statistics, and the alert would never clear. So each run keeps a
snapshot (calls and total time per statement) and judges the calls made since the previous
run; a statement needs `checks.slow_query_seconds.min_calls` calls in that window. The first
run, and the first after a statistics reset, judge everything since the reset.
"""

from __future__ import annotations

import time
from typing import Any

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    Status,
    grade,
    register_check,
)
from aegisctl.diagnostics.result import format_seconds
from aegisctl.diagnostics.snapshots import load_snapshot, save_snapshot
from aegisctl.diagnostics.topics import PGSS_MISSING

SNAPSHOT = "pg_stat_statements"


def _entries(ctx: CheckContext, schema: str) -> tuple[str | None, dict[str, list[float]]]:
    """(stats reset time, {userid:queryid:toplevel: [calls, total_ms]}) of this database,
    read without the query texts (the text of the worst one is fetched alone)."""
    from psycopg import sql

    reset = None
    info = ctx.rows(sql.SQL("SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                            "WHERE n.nspname = {} AND p.proname = 'pg_stat_statements_info'"
                            ).format(sql.Literal(schema)))
    if info:
        reset = str(ctx.one(sql.SQL("SELECT stats_reset FROM {}").format(
            sql.Identifier(schema, "pg_stat_statements_info")))[0])
    rows = ctx.rows(sql.SQL(
        "SELECT userid::text || ':' || queryid::text || ':' || toplevel::text, calls, "
        "total_exec_time FROM {}(false) WHERE queryid IS NOT NULL AND dbid = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())").format(
            sql.Identifier(schema, "pg_stat_statements")))
    return reset, {key: [int(calls), float(total)] for key, calls, total in rows}


def _query_text(ctx: CheckContext, schema: str, key: str) -> str:
    from psycopg import sql

    userid, queryid, toplevel = key.split(":")
    row = ctx.db.execute(sql.SQL(
        "SELECT query FROM {} WHERE userid = %s::oid AND queryid = %s::bigint "
        "AND toplevel = %s::boolean LIMIT 1").format(
            sql.Identifier(schema, "pg_stat_statements")), (userid, queryid, toplevel)).fetchone()
    text = " ".join(((row[0] if row else None) or "").split())
    return text[:77] + "..." if len(text) > 80 else text


def window(previous: dict[str, Any] | None, reset: str | None,
           current: dict[str, list[float]]) -> dict[str, tuple[int, float]]:
    """{statement: (calls, total ms)} since the previous snapshot. A statement whose counters
    went down was evicted and re-entered (or the statistics were reset): its current figures
    are all the window holds."""
    before: dict[str, Any] = {}
    if previous is not None and previous.get("reset") == reset:
        before = previous.get("entries") or {}
    out = {}
    for key, (calls, total) in current.items():
        old = before.get(key)
        if isinstance(old, list) and len(old) == 2 and old[0] <= calls:
            calls, total = calls - int(old[0]), total - float(old[1])
        out[key] = (int(calls), float(total))
    return out


@register_check("slow_statements", "the slowest mean execution time in pg_stat_statements "
                "since the previous check run (statements with enough calls)")
def slow_statements(ctx: CheckContext) -> CheckResult:
    from aegisctl.diagnostics.topics import pgss_schema

    schema = pgss_schema(ctx.db)
    t = ctx.settings.slow_query_seconds
    if schema is None:
        database = ctx.one("SELECT current_database()")[0]
        return CheckResult("slow_statements", Status.UNKNOWN, None, t.warning, t.critical, "s",
                           PGSS_MISSING.format(db=database))
    previous = load_snapshot(ctx, SNAPSHOT)
    reset, current = _entries(ctx, schema)
    calls_in = window(previous, reset, current)
    save_snapshot(ctx, SNAPSHOT, {"reset": reset, "at": time.time(),
                                  "entries": {k: v for k, v in current.items()}})
    since = "since the statistics reset" if previous is None or previous.get("reset") != reset \
        else f"in the {format_seconds(round(time.time() - float(previous.get('at', 0))))} " \
             "since the previous check"
    judged = [(total / calls / 1000, calls, key) for key, (calls, total) in calls_in.items()
              if calls >= t.min_calls]
    if not judged:
        return grade("slow_statements", 0.0, t.warning, t.critical, unit="s", minimum=0,
                     message=f"no statement with {t.min_calls}+ calls {since}")
    mean, calls, key = max(judged)
    mean = round(mean, 3)
    message = f"slowest mean {format_seconds(mean)} over {calls} call(s) {since}"
    if mean > t.warning:
        message += f": {_query_text(ctx, schema, key)}"
    return grade("slow_statements", mean, t.warning, t.critical, unit="s", minimum=0,
                 message=message)
