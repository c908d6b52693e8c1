"""Rebuild HNSW indexes concurrently with new parameters (m, ef_construction).

REINDEX keeps an index's parameters, so a new index is built beside the old one with
CREATE INDEX CONCURRENTLY (searches keep using the old one meanwhile), then the old one is
dropped concurrently and the new one takes its name. maintenance_work_mem and
max_parallel_maintenance_workers are raised for the build: pgvector builds much faster while
the graph fits in memory. A failed build drops its half-built index.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.errors import UsageError
from aegisctl.maintenance.catalog import Relation, find_relation, table_indexes
from aegisctl.maintenance.runner import MaintContext, MaintResult, Step, render_sql, run_locked
from aegisctl.testhooks import pause_at
from aegisctl.units import format_bytes

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

NEW_SUFFIX = "_aegisnew"
PGVECTOR_DEFAULTS = {"m": 16, "ef_construction": 64}


@dataclass
class HnswIndex:
    index: Relation
    table: Relation
    key: str  # the indexed column or expression, as the server prints it
    opclass: tuple[str, str]  # schema, name
    options: dict[str, int]


def find_hnsw(conn: psycopg.Connection[Any], table: str | None,
              index: str | None) -> list[HnswIndex]:
    if index:
        idx = find_relation(conn, index, kinds="i", what="index")
        found = [row for row in table_indexes(conn, None, access_method="hnsw")
                 if row[0].oid == idx.oid]
        if not found:
            raise UsageError(f"index '{index}' is not an HNSW index")
    else:
        oids = [find_relation(conn, table).oid] if table else None
        found = table_indexes(conn, oids, access_method="hnsw")
        if not found:
            raise UsageError("no HNSW index " + (f"on table '{table}'" if table else "found"))
    result = []
    for idx, tbl, _valid, _am in found:
        if idx.name.endswith(NEW_SUFFIX):
            continue
        row = conn.execute(
            "SELECT pg_get_indexdef(i.indexrelid, 1, false), opn.nspname, opc.opcname,"
            "       c.reloptions, i.indnatts"
            "  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            "  JOIN pg_opclass opc ON opc.oid = i.indclass[0]"
            "  JOIN pg_namespace opn ON opn.oid = opc.opcnamespace"
            " WHERE i.indexrelid = %s", (idx.oid,)).fetchone()
        assert row is not None
        if row[4] != 1:
            raise UsageError(f"{idx.qualified} has {row[4]} columns; only one-column HNSW "
                             "indexes are rebuilt")
        options = dict(PGVECTOR_DEFAULTS)
        for item in row[3] or []:
            name, _, value = item.partition("=")
            if name in options and value.isdigit():
                options[name] = int(value)
        result.append(HnswIndex(idx, tbl, str(row[0]), (str(row[1]), str(row[2])), options))
    return result


def check_parameters(m: int | None, ef_construction: int | None) -> None:
    if m is not None and not 2 <= m <= 100:
        raise UsageError(f"--m {m}: pgvector allows 2..100")
    if ef_construction is not None and not 4 <= ef_construction <= 1000:
        raise UsageError(f"--ef-construction {ef_construction}: pgvector allows 4..1000")


def _key_sql(key: str) -> sql.Composable:
    from psycopg import sql

    # A plain column comes back as its (possibly quoted) name; an expression in parentheses.
    # Either way it is the server's own rendering of its catalog, not user input.
    if re.fullmatch(r'[a-z_][a-z0-9_$]*|"(?:[^"]|"")+"', key):
        return sql.SQL(key)
    return sql.SQL("({})").format(sql.SQL(key))


def _wait_for_lockers(ctx: MaintContext, table: Relation) -> str:
    """Wait (the maintenance lock attempts and backoff) for sessions idle in a transaction, or
    holding a writer's lock longer than lock_timeout, on the table; what still blocks, or ""."""
    from aegisctl.db import backoff_delays
    from aegisctl.maintenance.reindex import lock_holders
    from aegisctl.maintenance.runner import sleep_unless_stopped

    settings = ctx.settings
    delays = backoff_delays(settings.lock_attempts, max(settings.lock_timeout, 0.5),
                            settings.lock_max_delay)
    for attempt in range(len(delays) + 1):
        holders = lock_holders(ctx.conn, [table.oid], settings.lock_timeout)
        if not holders or attempt >= len(delays):
            return "waited for " + holders if holders else ""
        if sleep_unless_stopped(ctx, delays[attempt]):
            return "interrupted while waiting for " + holders
    return ""


def _drop_new(ctx: MaintContext, result: MaintResult, new: Relation, sql: Any) -> None:
    """Drop the freshly built index with a plain DROP INDEX under the short lock_timeout: it
    needs the table's lock only for an instant, and is not stuck behind old snapshots."""
    step = Step(statement="", target=new.qualified)
    statement = sql.SQL("DROP INDEX IF EXISTS {}").format(new.ident())
    step.statement = render_sql(ctx.conn, statement)
    run_locked(ctx, statement, step)
    if step.status != "done":
        step.detail = (f"{step.detail}; {new.qualified} stays (valid, beside the old index): "
                       "the next run drops it first")
    result.steps.append(step)


def rebuild_vector_indexes(ctx: MaintContext, *, table: str | None = None,
                           index: str | None = None, m: int | None = None,
                           ef_construction: int | None = None,
                           maintenance_work_mem: int | None = None,
                           parallel_workers: int | None = None) -> MaintResult:
    from psycopg import sql

    check_parameters(m, ef_construction)
    conn = ctx.conn
    work_mem = maintenance_work_mem or ctx.settings.maintenance_work_mem
    workers = ctx.settings.parallel_workers if parallel_workers is None else parallel_workers
    result = MaintResult(action="vector-index", dry_run=ctx.dry_run)
    for hnsw in find_hnsw(conn, table, index):
        options = dict(hnsw.options)
        options["m"] = m or options["m"]
        options["ef_construction"] = ef_construction or options["ef_construction"]
        if options["ef_construction"] < 2 * options["m"]:
            raise UsageError(f"ef_construction ({options['ef_construction']}) must be at least "
                             f"2 * m ({2 * options['m']})")
        new = Relation(0, hnsw.index.schema, (hnsw.index.name[:63 - len(NEW_SUFFIX)]
                                              + NEW_SUFFIX), "i")
        settings_stmt = sql.SQL("SET maintenance_work_mem = {}; "
                                "SET max_parallel_maintenance_workers = {}").format(
            sql.Literal(f"{max(1, work_mem // 1024)}kB"), sql.Literal(workers))
        statements = [
            ("settings", settings_stmt),
            ("clean", sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(new.ident())),
            ("build", sql.SQL(
                "CREATE INDEX CONCURRENTLY {} ON {} USING hnsw ({} {}) "
                "WITH (m = {}, ef_construction = {})").format(
                sql.Identifier(new.name), hnsw.table.ident(), _key_sql(hnsw.key),
                sql.Identifier(*hnsw.opclass), sql.Literal(options["m"]),
                sql.Literal(options["ef_construction"]))),
            ("drop", sql.SQL("DROP INDEX CONCURRENTLY {}").format(hnsw.index.ident())),
            ("rename", sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                new.ident(), sql.Identifier(hnsw.index.name))),
        ]
        failed = False
        for what, statement in statements:
            step = Step(statement=render_sql(conn, statement), target=hnsw.index.qualified)
            if what != "settings" or ctx.dry_run:
                result.steps.append(step)
            if ctx.dry_run:
                continue
            if what == "settings":
                conn.execute(statement)
                continue
            if ctx.should_stop():
                step.status, step.detail = "skipped", "interrupted before it started"
                result.interrupted = True
                failed = True
                break
            if what == "drop":
                pause_at("vector-index.before-drop")
                blockers = _wait_for_lockers(ctx, hnsw.table)
                if blockers:
                    # DROP INDEX CONCURRENTLY marks the old index invalid first, then waits for
                    # these sessions: starting it now would leave the old index invalid and the
                    # new one serving under its temporary name. Keep the old one; drop the new.
                    step.status = "failed"
                    step.detail = (f"not swapped: {blockers}; the old index is kept, valid, "
                                   "and the new one dropped; rerun when they have ended")
                    _drop_new(ctx, result, new, sql)
                    failed = True
                    break
            started = time.perf_counter()
            run_locked(ctx, statement, step)
            if what == "build" and step.status == "done":
                step.detail = (f"built in {time.perf_counter() - started:.1f}s with m="
                               f"{options['m']}, ef_construction={options['ef_construction']}, "
                               f"maintenance_work_mem={format_bytes(work_mem)}, "
                               f"{workers} parallel worker(s)")
            if step.status != "done":
                failed = True
                result.interrupted = result.interrupted or step.status == "cancelled"
                if what == "build":
                    cleanup = Step(statement="", target=new.qualified)
                    run_locked(ctx, sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                        new.ident()), cleanup)
                    step.detail += "; the half-built index was dropped"
                break
        if failed:
            break
    conn.execute("RESET maintenance_work_mem; RESET max_parallel_maintenance_workers")
    return result
