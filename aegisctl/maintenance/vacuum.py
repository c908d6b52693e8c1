"""VACUUM, VACUUM FULL and ANALYZE, one table at a time, each with a short lock_timeout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.maintenance.catalog import Relation, find_relation, user_tables
from aegisctl.maintenance.runner import MaintContext, MaintResult, Step, render_sql, run_locked
from aegisctl.units import format_bytes

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from aegisctl.output import Block


def resolve_tables(conn: psycopg.Connection[Any], names: list[str] | None) -> list[Relation]:
    """The named tables (checked in the catalog), or every user table."""
    if names:
        return [find_relation(conn, name) for name in names]
    return user_tables(conn)


@dataclass
class FullVacuumPlan:
    """What VACUUM FULL will lock, shown before the user confirms."""

    tables: list[Relation]

    @property
    def total_bytes(self) -> int:
        return sum(t.size for t in self.tables)

    def to_json(self) -> dict[str, Any]:
        return {"tables": [{"table": t.qualified, "bytes": t.size} for t in self.tables],
                "total_bytes": self.total_bytes}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        return [
            Note("VACUUM FULL rewrites each table under an ACCESS EXCLUSIVE lock: nothing can "
                 "read or write the table until its rewrite ends, and it needs free disk space "
                 "about the size of the table."),
            Table([Column("table", "id"), Column("size", "number")],
                  [(t.qualified, format_bytes(t.size)) for t in self.tables],
                  title=f"tables to rewrite ({format_bytes(self.total_bytes)} in all)"),
        ]


def vacuum_statement(table: Relation, *, full: bool, analyze: bool) -> sql.Composable:
    from psycopg import sql

    options = [sql.SQL(o) for o, on in (("FULL", full), ("ANALYZE", analyze)) if on]
    if not options:
        return sql.SQL("VACUUM {}").format(table.ident())
    return sql.SQL("VACUUM ({}) {}").format(sql.SQL(", ").join(options), table.ident())


def vacuum(ctx: MaintContext, tables: list[Relation], *, full: bool = False,
           analyze: bool = False) -> MaintResult:
    label = "VACUUM" + (" FULL" if full else "") + (" ANALYZE" if analyze else "")
    result = MaintResult(action=label.lower(), dry_run=ctx.dry_run)
    _run_each(ctx, result, tables, lambda t: vacuum_statement(t, full=full, analyze=analyze))
    return result


def analyze(ctx: MaintContext, tables: list[Relation]) -> MaintResult:
    from psycopg import sql

    result = MaintResult(action="analyze", dry_run=ctx.dry_run)
    _run_each(ctx, result, tables, lambda t: sql.SQL("ANALYZE {}").format(t.ident()))
    return result


def _run_each(ctx: MaintContext, result: MaintResult, tables: list[Relation],
              build: Any) -> None:
    for table in tables:
        statement = build(table)
        step = Step(statement=render_sql(ctx.conn, statement), target=table.qualified)
        result.steps.append(step)
        if ctx.dry_run:
            continue
        if ctx.should_stop():
            result.interrupted = True
            step.status = "skipped"
            step.detail = "interrupted before it started"
            continue
        run_locked(ctx, statement, step)
        if step.status in ("skipped", "cancelled"):
            result.interrupted = True
