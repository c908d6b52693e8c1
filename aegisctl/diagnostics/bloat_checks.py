"""`aegisctl check`: table and index bloat, in bytes and as a share of the relation.

The estimate comes from the planner's statistics (`sql/diagnostics/bloat.sql`, the approach
of check_postgres and pghero): it reads no table. Where the pgstattuple extension is installed
(and the role may use it), the tables large enough to matter are measured instead with
`pgstattuple_approx`, which reads only the pages the visibility map does not vouch for.
A relation is flagged when its wasted bytes pass the threshold *and* its wasted share passes
`min_ratio`: a few wasted megabytes of a huge table, or a tiny table half empty, are not worth
a page. A table never analyzed cannot be estimated: that is said, not passed over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.diagnostics.checks import CheckContext, CheckResult, grade, register_check
from aegisctl.units import format_bytes

if TYPE_CHECKING:
    import psycopg

# Tables measured with pgstattuple_approx per run, largest first (it reads pages).
APPROX_LIMIT = 20
# Relations smaller than this are not looked at (nothing to win).
MIN_BYTES = 1024 * 1024


@dataclass
class Bloat:
    kind: str  # table | index
    name: str  # schema.relation
    table: str
    bytes: int
    wasted: int | None  # None: statistics missing
    measured: bool = False  # pgstattuple_approx rather than the estimate
    is_unique: bool = False

    @property
    def ratio(self) -> float:
        return (self.wasted or 0) / self.bytes if self.bytes else 0.0

    def advice(self) -> str:
        if self.kind == "index":
            return f"aegisctl maint reindex --index {self.name} (REINDEX CONCURRENTLY: reads " \
                   "and writes go on)"
        return f"aegisctl maint vacuum --table {self.name} makes the space reusable; to " \
               f"return it to the OS, aegisctl maint vacuum --full --table {self.name} " \
               "(rewrites the table under an ACCESS EXCLUSIVE lock: every read and write of " \
               "it waits until the rewrite ends)"

    def describe(self) -> str:
        how = "measured" if self.measured else "estimated"
        return f"{self.name}: {format_bytes(self.wasted or 0)} of {format_bytes(self.bytes)} " \
               f"({self.ratio:.0%}) wasted ({how})"


def _approx_schema(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                       "ON n.oid = e.extnamespace WHERE e.extname = 'pgstattuple'").fetchone()
    return str(row[0]) if row else None


def _measure(conn: psycopg.Connection[Any], schema: str, oid: int, fillfactor: int
             ) -> int | None:
    """Wasted bytes from pgstattuple_approx: the relation less the pages its live tuples
    (and their line pointers) need at its fillfactor. None when the role may not use it."""
    import psycopg
    from psycopg import sql

    try:
        with conn.transaction():
            row = conn.execute(sql.SQL(
                "SELECT table_len, approx_tuple_len, approx_tuple_count, "
                "current_setting('block_size')::int FROM {}(%s::oid)").format(
                    sql.Identifier(schema, "pgstattuple_approx")), (oid,)).fetchone()
    except psycopg.Error:
        return None
    assert row is not None
    length, tuple_len, tuples, block = int(row[0]), float(row[1]), float(row[2]), int(row[3])
    pages = math.ceil((tuple_len + 4 * tuples) / ((block - 24) * fillfactor / 100))
    return max(0, length - pages * block)


def bloat_of_tables(conn: psycopg.Connection[Any], approx_from: int) -> list[Bloat]:
    """Every table of at least MIN_BYTES, estimated; those of `approx_from` bytes or more
    measured with pgstattuple_approx when it is available."""
    from aegisctl.diagnostics import queries
    from aegisctl.diagnostics.result import fetch

    rows = fetch(conn, queries.query("bloat", "tables").sql, {"min_bytes": MIN_BYTES})
    schema = _approx_schema(conn)
    found = []
    big = sorted((r for r in rows if r["bytes"] >= approx_from), key=lambda r: -r["bytes"])
    measure = {r["oid"] for r in big[:APPROX_LIMIT]} if schema else set()
    for row in rows:
        item = Bloat("table", f"{row['schema']}.{row['table']}", row["table"], row["bytes"],
                     row["wasted_bytes"])
        if row["oid"] in measure and schema is not None:
            measured = _measure(conn, schema, row["oid"], row["fillfactor"])
            if measured is not None:
                item.wasted, item.measured = measured, True
        found.append(item)
    return found


def bloat_of_indexes(conn: psycopg.Connection[Any]) -> list[Bloat]:
    from aegisctl.diagnostics import queries
    from aegisctl.diagnostics.result import fetch

    rows = fetch(conn, queries.query("bloat", "indexes").sql, {"min_bytes": MIN_BYTES})
    return [Bloat("index", f"{r['schema']}.{r['index']}", r["table"], r["bytes"],
                  r["wasted_bytes"], is_unique=r["is_unique"]) for r in rows]


def _judge(name: str, items: list[Bloat], warning: int, critical: int, min_ratio: float
           ) -> CheckResult:
    known = [b for b in items if b.wasted is not None]
    missing = [b for b in items if b.wasted is None]
    flagged = [b for b in known if b.ratio > min_ratio]
    worst = max(flagged, key=lambda b: b.wasted or 0, default=None)
    value = worst.wasted if worst is not None else 0
    over = [b for b in flagged if (b.wasted or 0) > warning]
    if over:
        over.sort(key=lambda b: -(b.wasted or 0))
        message = "; ".join(b.describe() for b in over[:3])
        message += f"{' and more' if len(over) > 3 else ''}: {over[0].advice()}"
    else:
        message = f"{len(known)} {'table' if name == 'table_bloat' else 'index'}(es) of " \
                  f"{format_bytes(MIN_BYTES)}+ under {format_bytes(warning)} wasted " \
                  f"(or under {min_ratio:.0%})"
    if missing:
        names = ", ".join(b.name for b in missing[:5]) + (" ..." if len(missing) > 5 else "")
        message += f"; statistics missing (never analyzed), not estimated: {names}: " \
                   "aegisctl maint analyze"
    return grade(name, value, warning, critical, unit="B", minimum=0, message=message)


@register_check("table_bloat", "wasted space in tables (dead rows, free space), estimated "
                "from the statistics or measured with pgstattuple_approx")
def table_bloat(ctx: CheckContext) -> CheckResult:
    t = ctx.settings.table_bloat
    return _judge("table_bloat", bloat_of_tables(ctx.db, t.warning), t.warning, t.critical,
                  t.min_ratio)


@register_check("index_bloat", "wasted space in B-tree indexes, estimated from the statistics")
def index_bloat(ctx: CheckContext) -> CheckResult:
    t = ctx.settings.index_bloat
    return _judge("index_bloat", bloat_of_indexes(ctx.db), t.warning, t.critical, t.min_ratio)
