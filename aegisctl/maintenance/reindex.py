"""REINDEX, concurrently by default, and the clean-up of invalid indexes.

A failed or cancelled REINDEX CONCURRENTLY leaves an invalid `<index>_ccnew` (or `_ccold`)
index behind; a failed CREATE INDEX CONCURRENTLY leaves the index itself invalid. Invalid
indexes are never used by queries but are still maintained on every write. Before and after
its work this module finds them on the tables it touches, their TOAST tables included:
leftovers of a concurrent rebuild are dropped (DROP INDEX CONCURRENTLY), any other invalid
index is rebuilt concurrently, and an invalid index that cannot be rebuilt is reported as a
failure (exit 1), never left unsaid.

A REINDEX CONCURRENTLY that gives up (lock_timeout: it waited for a session holding a lock on
the table, or for an older snapshot), is cancelled or fails drops the `_ccnew` indexes it had
just created (TOAST ones included) before anything else, so retries never pile up leftovers:
a reindex never leaves more invalid indexes than it found. Its message names what it waited
for: the blocking session's pid and statement, or the holder of the old snapshot.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from aegisctl.db import backoff_delays
from aegisctl.maintenance.catalog import Relation, find_relation, user_tables
from aegisctl.maintenance.runner import (
    LOCK_NOT_AVAILABLE,
    MaintContext,
    MaintResult,
    Step,
    render_sql,
    run_locked,
    sleep_unless_stopped,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

LEFTOVER = re.compile(r"_cc(new|old)\d*$")


def supports_concurrently(conn: psycopg.Connection[Any]) -> bool:
    return conn.info.server_version >= 120000


_INVALID_SQL = """
SELECT ic.oid, n.nspname, ic.relname, coalesce(owner.oid, tc.oid), coalesce(own.nspname, tn.nspname),
       coalesce(owner.relname, tc.relname), coalesce(owner.relkind, tc.relkind)
  FROM pg_index i
  JOIN pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = ic.relnamespace
  JOIN pg_class tc ON tc.oid = i.indrelid
  JOIN pg_namespace tn ON tn.oid = tc.relnamespace
  LEFT JOIN pg_class owner ON tc.relkind = 't' AND owner.reltoastrelid = tc.oid
  LEFT JOIN pg_namespace own ON own.oid = owner.relnamespace
 WHERE NOT i.indisvalid AND ic.relkind = 'i'
   AND coalesce(own.nspname, tn.nspname) NOT IN ('pg_catalog', 'information_schema')
   AND coalesce(own.nspname, tn.nspname) NOT LIKE 'pg\\_toast%%'
   AND coalesce(own.nspname, tn.nspname) NOT LIKE 'pg\\_temp%%'
   AND (%(oids)s::oid[] IS NULL OR tc.oid = ANY(%(oids)s::oid[])
        OR owner.oid = ANY(%(oids)s::oid[]))
 ORDER BY 5, 6, 3
"""


def invalid_indexes(conn: psycopg.Connection[Any],
                    table_oids: list[int] | None) -> list[tuple[Relation, Relation]]:
    """(invalid index, the user table it belongs to) on these tables (None: every user table),
    the indexes of their TOAST tables included (a REINDEX TABLE CONCURRENTLY rebuilds those
    too, and leaves `pg_toast.*_ccnew` behind when it fails)."""
    rows = conn.execute(_INVALID_SQL, {"oids": table_oids}).fetchall()
    return [(Relation(int(r[0]), r[1], r[2], "i"), Relation(int(r[3]), r[4], r[5], r[6]))
            for r in rows]


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

    found = len(invalid_indexes(conn, scope))
    _clean_invalid(ctx, result, scope, rebuild=True)
    keyword = sql.SQL(" CONCURRENTLY") if concurrently else sql.SQL("")
    for kind, rel in targets:
        if kind == "INDEX" and any(s.target == rel.qualified for s in result.steps):
            continue  # already rebuilt as an invalid index, or dropped as a leftover
        statement = sql.SQL("REINDEX {}{} {}").format(sql.SQL(kind), keyword, rel.ident())
        if concurrently:
            _reindex_concurrently(ctx, result, statement, rel.qualified,
                                  [rel.oid] if kind == "TABLE" else scope)
        else:
            _run(ctx, result, statement, rel.qualified)
    _clean_invalid(ctx, result, scope, rebuild=False)
    if not ctx.dry_run:
        left = len(invalid_indexes(conn, scope))
        if left > found:
            result.notes.append(f"{left} invalid index(es) remain (there were {found}): their "
                                "drop could not get its lock; the next reindex drops them")
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
            _reindex_concurrently(ctx, result, statement, idx.qualified, [table.oid])
            if result.steps[-1].status == "done":
                result.steps[-1].detail = "was invalid (a failed concurrent build); rebuilt"
        else:
            step = Step(statement="", target=idx.qualified, status="failed",
                        detail=f"index on {table.qualified} is still invalid; fix its cause "
                               "(e.g. duplicate keys for a unique index) and rerun, or drop it")
            result.steps.append(step)


def _reindex_concurrently(ctx: MaintContext, result: MaintResult, statement: sql.Composed,
                          target: str, scope: list[int] | None) -> None:
    """REINDEX ... CONCURRENTLY with lock_timeout and retries, dropping the `_ccnew` indexes
    each failed attempt leaves (TOAST ones included) before the next one or the end."""
    step = Step(statement=render_sql(ctx.conn, statement), target=target)
    result.steps.append(step)
    if ctx.dry_run:
        return
    if ctx.should_stop():
        step.status, step.detail = "skipped", "interrupted before it started"
        result.interrupted = True
        return
    settings = ctx.settings
    delays = backoff_delays(settings.lock_attempts, max(settings.lock_timeout, 0.5),
                            settings.lock_max_delay)
    started = time.perf_counter()
    for attempt in range(len(delays) + 1):
        # A session idle in a transaction with a writer's lock on the table (or holding one
        # for longer than lock_timeout) would make this attempt fail *after* it created its
        # _ccnew indexes, and would block their DROP as well: wait for it without starting.
        holders = lock_holders(ctx.conn, scope, settings.lock_timeout)
        if holders:
            step.status, step.sqlstate = "failed", LOCK_NOT_AVAILABLE
            step.attempts, step.seconds = attempt + 1, time.perf_counter() - started
            waited, blocker = True, "waited for " + holders
        else:
            before = {index.oid for index, _ in invalid_indexes(ctx.conn, scope)}
            run_locked(ctx, statement, step, attempts=1)
            step.attempts, step.seconds = attempt + 1, time.perf_counter() - started
            if step.status == "done":
                return
            waited = step.sqlstate == LOCK_NOT_AVAILABLE
            blocker = waited_for(ctx.conn, scope) if waited else ""
            _drop_new_leftovers(ctx, result, scope, before, target)
        if step.status in ("skipped", "cancelled"):
            result.interrupted = True
            return
        if not waited:
            return
        if attempt >= len(delays):
            step.detail = (f"gave up after {step.attempts} attempts, each waiting at most "
                           f"{settings.lock_timeout:g}s: {blocker}; the leftovers of each "
                           "attempt were dropped")
            return
        if ctx.progress:
            ctx.progress(f"{target}: {blocker}; retrying in {delays[attempt]:.1f}s")
        if sleep_unless_stopped(ctx, delays[attempt]):
            step.status, step.detail = "skipped", "interrupted while waiting for the lock"
            result.interrupted = True
            return
        step.status = "planned"


def _drop_new_leftovers(ctx: MaintContext, result: MaintResult, scope: list[int] | None,
                        before: set[int], target: str) -> None:
    from psycopg import sql

    for idx, _table in invalid_indexes(ctx.conn, scope):
        if idx.oid in before or not LEFTOVER.search(idx.name):
            continue
        statement = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(idx.ident())
        _run(ctx, result, statement, idx.qualified, even_if_stopping=True)
        result.steps[-1].detail = result.steps[-1].detail or \
            f"left by the failed rebuild of {target}; dropped"


# Sessions holding a lock on the tables (all modes, or only those a concurrent rebuild waits
# for: any that conflicts with SHARE), oldest transaction first.
_BLOCKERS_SQL = """
SELECT a.pid, a.state, now() - coalesce(a.xact_start, a.query_start), left(a.query, 160),
       string_agg(DISTINCT l.mode, ', ')
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.granted AND l.pid <> pg_backend_pid() AND l.database = (
         SELECT oid FROM pg_database WHERE datname = current_database())
   AND (%(oids)s::oid[] IS NULL OR l.relation = ANY(%(oids)s::oid[]))
   AND l.relation IS NOT NULL
   AND (NOT %(writers)s OR l.mode IN ('RowExclusiveLock', 'ShareUpdateExclusiveLock',
        'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'))
   AND (now() - coalesce(a.xact_start, a.query_start) >= make_interval(secs => %(older)s)
        OR a.state LIKE 'idle in transaction%%')
 GROUP BY 1, 2, 3, 4 ORDER BY 3 DESC NULLS LAST LIMIT 3
"""
_SNAPSHOTS_SQL = """
SELECT pid, state, now() - coalesce(xact_start, query_start), left(query, 160)
  FROM pg_stat_activity
 WHERE pid <> pg_backend_pid() AND datname = current_database()
   AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)
   AND backend_type = 'client backend'
 ORDER BY xact_start NULLS LAST LIMIT 3
"""


def _with_toast(conn: psycopg.Connection[Any], scope: list[int] | None) -> list[int] | None:
    if scope is None:
        return None
    rows = conn.execute("SELECT oid FROM pg_class WHERE oid = ANY(%(o)s::oid[])"
                        " UNION SELECT reltoastrelid FROM pg_class WHERE oid = ANY(%(o)s::oid[])"
                        " AND reltoastrelid <> 0", {"o": scope}).fetchall()
    return [int(r[0]) for r in rows]


def _holders(conn: psycopg.Connection[Any], oids: list[int] | None, writers: bool,
             older: float) -> str:
    rows = conn.execute(_BLOCKERS_SQL, {"oids": oids, "writers": writers,
                                        "older": older}).fetchall()
    return "; ".join(f"pid {pid} ({state}, {_age(age)}, holds {modes} on the table): "
                     f"{_one_line(query)}" for pid, state, age, query, modes in rows)


def lock_holders(conn: psycopg.Connection[Any], scope: list[int] | None,
                 older_than: float) -> str:
    """Sessions holding a writer's lock on the tables while idle in a transaction, or for at
    least `older_than` seconds (a concurrent rebuild must wait for each), described; "" when
    none. Short-lived writers are left to the rebuild's own wait."""
    return _holders(conn, _with_toast(conn, scope), True, older_than)


def waited_for(conn: psycopg.Connection[Any], scope: list[int] | None) -> str:
    """What a concurrent rebuild that ran out of lock_timeout was waiting for: a session holding
    a lock on the table, else the oldest snapshots it must outlive (no lock involved)."""
    locks = _holders(conn, _with_toast(conn, scope), False, 0.0)
    if locks:
        return "waited for " + locks
    snapshots = conn.execute(_SNAPSHOTS_SQL).fetchall()
    if snapshots:
        return ("no lock was in the way: it waited for older snapshots to end, held by "
                + "; ".join(f"pid {pid} ({state}, {_age(age)}): {_one_line(query)}"
                            for pid, state, age, query in snapshots)
                + " (end those transactions, e.g. SELECT pg_terminate_backend(pid))")
    return "what it waited for has ended since; try again"


def _age(age: Any) -> str:
    seconds = age.total_seconds() if age is not None else 0.0
    return f"for {seconds:.0f}s" if seconds < 120 else f"for {seconds / 60:.0f} min"


def _one_line(query: str | None) -> str:
    return " ".join((query or "").split())[:160] or "(no statement)"
