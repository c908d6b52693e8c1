"""REINDEX, concurrently by default, and the clean-up of invalid indexes.

A failed or cancelled REINDEX CONCURRENTLY leaves an invalid `<index>_ccnew` (or `_ccold`)
index behind; a failed CREATE INDEX CONCURRENTLY leaves the index itself invalid. Invalid
indexes are never used by queries but are still maintained on every write. Before and after
its work this module finds them on the tables it touches: leftovers of a concurrent rebuild are
dropped (DROP INDEX CONCURRENTLY), any other invalid index is rebuilt concurrently, and an
invalid index that cannot be rebuilt is reported as a failure (exit 1), never left unsaid.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from aegisctl.maintenance.catalog import Relation, find_relation, table_indexes, user_tables
from aegisctl.maintenance.runner import MaintContext, MaintResult, Step, render_sql, run_locked

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

LEFTOVER = re.compile(r"_cc(new|old)\d*$")


def supports_concurrently(conn: psycopg.Connection[Any]) -> bool:
    return conn.info.server_version >= 120000


def invalid_indexes(conn: psycopg.Connection[Any],
                    table_oids: list[int] | None) -> list[tuple[Relation, Relation]]:
    return [(index, table) for index, table, _valid, _am
            in table_indexes(conn, table_oids, invalid_only=True)]


def reindex(ctx: MaintContext, *, tables: list[str] | None = None, index: str | None = None,
            all_tables: bool = False, concurrently: bool | None = None) -> MaintResult:
    from psycopg import sql

    conn = ctx.conn
    if concurrently is None:
        concurrently = supports_concurrently(conn)
    result = MaintResult(action="reindex" + (" concurrently" if concurrently else ""),
                         dry_run=ctx.dry_run)
    targets: list[tuple[str, Relation]] = []
    if index:
        idx = find_relation(conn, index, kinds="iI", what="index")
        targets.append(("INDEX", idx))
        owner = conn.execute("SELECT indrelid FROM pg_index WHERE indexrelid = %s",
                             (idx.oid,)).fetchone()
        scope: list[int] | None = [int(owner[0])] if owner else []
    else:
        rels = [find_relation(conn, t) for t in tables or []] if not all_tables \
            else user_tables(conn, kinds="rm")
        targets += [("TABLE", rel) for rel in rels]
        scope = None if all_tables else [r.oid for r in rels]
    if not concurrently:
        result.notes.append("without CONCURRENTLY, REINDEX blocks writes to the table (and "
                            "reads that would use the index) while it runs")

    _clean_invalid(ctx, result, scope, rebuild=True)
    keyword = sql.SQL(" CONCURRENTLY") if concurrently else sql.SQL("")
    for kind, rel in targets:
        if kind == "INDEX" and any(s.target == rel.qualified for s in result.steps):
            continue  # already rebuilt as an invalid index
        statement = sql.SQL("REINDEX {}{} {}").format(sql.SQL(kind), keyword, rel.ident())
        _run(ctx, result, statement, rel.qualified)
    _clean_invalid(ctx, result, scope, rebuild=False)
    return result


def _run(ctx: MaintContext, result: MaintResult, statement: sql.Composed,
         target: str, even_if_stopping: bool = False) -> None:
    step = Step(statement=render_sql(ctx.conn, statement), target=target)
    result.steps.append(step)
    if ctx.dry_run:
        return
    if ctx.should_stop() and not even_if_stopping:
        step.status, step.detail = "skipped", "interrupted before it started"
        result.interrupted = True
        return
    run_locked(ctx, statement, step)
    if step.status in ("skipped", "cancelled"):
        result.interrupted = True


def _clean_invalid(ctx: MaintContext, result: MaintResult, scope: list[int] | None,
                   rebuild: bool) -> None:
    """Drop leftovers of concurrent rebuilds; rebuild (first pass) or report (last pass) any
    other invalid index."""
    from psycopg import sql

    if ctx.dry_run and not rebuild:
        return
    for idx, table in invalid_indexes(ctx.conn, scope):
        if LEFTOVER.search(idx.name):
            statement = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(idx.ident())
            # Even after an interrupt: a cancelled rebuild's leftover is dropped on the way out.
            _run(ctx, result, statement, idx.qualified, even_if_stopping=True)
            result.steps[-1].detail = result.steps[-1].detail or \
                f"invalid leftover of a concurrent rebuild on {table.qualified}"
        elif rebuild:
            statement = sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(idx.ident())
            _run(ctx, result, statement, idx.qualified)
            if result.steps[-1].status == "done":
                result.steps[-1].detail = "was invalid (a failed concurrent build); rebuilt"
        else:
            step = Step(statement="", target=idx.qualified, status="failed",
                        detail=f"index on {table.qualified} is still invalid; fix its cause "
                               "(e.g. duplicate keys for a unique index) and rerun, or drop it")
            result.steps.append(step)
