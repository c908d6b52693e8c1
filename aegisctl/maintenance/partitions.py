"""`maint partitions`: keep monthly partitions created ahead, move rows out of the DEFAULT
partition into their month, and report every range-partitioned table's range, gaps and sizes.

Locks: creating a partition takes ACCESS EXCLUSIVE on the parent (and on the DEFAULT
partition, which PostgreSQL scans to prove no row there belongs to the new month) for
milliseconds; each partition is its own short transaction with a short lock_timeout, retried,
so a writer waits at most that long. Rows moved out of the DEFAULT partition are moved in that
same transaction: they are never missing, never in two places.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.errors import AegisError, OperationFailed
from aegisctl.maintenance.catalog import Relation
from aegisctl.schema.partition_bounds import (
    PartitionKey,
    RangePartition,
    add_months,
    bound_literal,
    gaps,
    month_partition_name,
    month_start,
    months_between,
    partition_key,
    range_partitions,
)
from aegisctl.schema.partition_tx import LockPolicy, short_transaction

if TYPE_CHECKING:
    import psycopg

    from aegisctl.maintenance.legacy_split import SplitReport
    from aegisctl.maintenance.partition_settings import PartitionSpec
    from aegisctl.output import Block


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@dataclass
class TableReport:
    table: str
    column: str
    configured: bool
    premake: int | None
    partitions: list[RangePartition] = field(default_factory=list)
    future: int = 0  # partitions starting after the current month
    default_rows: int | None = None  # None: no DEFAULT partition
    created: list[str] = field(default_factory=list)
    moved_rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def lower(self) -> dt.datetime | None:
        ranged = [p for p in self.partitions if not p.is_default]
        return ranged[0].lower if ranged else None

    @property
    def upper(self) -> dt.datetime | None:
        ranged = [p for p in self.partitions if not p.is_default]
        return ranged[-1].upper if ranged else None

    @property
    def size(self) -> int:
        return sum(p.relation.size for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table, "column": self.column, "configured": self.configured,
            "premake": self.premake, "lower": _iso(self.lower), "upper": _iso(self.upper),
            "future_partitions": self.future, "default_rows": self.default_rows,
            "size_bytes": self.size,
            "gaps": [{"from": _iso(a), "to": _iso(b)} for a, b in gaps(self.partitions)],
            "created": self.created, "moved_rows": self.moved_rows, "problems": self.problems,
            "partitions": [{"name": p.relation.qualified, "from": _iso(p.lower),
                            "to": _iso(p.upper), "default": p.is_default,
                            "size_bytes": p.relation.size, "rows_estimate": p.rows}
                           for p in self.partitions]}


@dataclass
class PartitionsReport:
    dry_run: bool
    tables: list[TableReport] = field(default_factory=list)
    splits: list[SplitReport] = field(default_factory=list)  # --split-legacy
    split_requested: bool = False

    @property
    def ok(self) -> bool:
        return not any(t.problems for t in self.tables) \
            and not any(s.status == "interrupted" for s in self.splits)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "ok": self.ok,
                "tables": [t.to_json() for t in self.tables],
                "splits": [s.to_json() for s in self.splits]}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table
        from aegisctl.units import format_bytes

        def day(moment: dt.datetime | None, open_end: str) -> str:
            return f"{moment:%Y-%m-%d}" if moment else open_end

        verb = "would create" if self.dry_run else "created"
        blocks: list[Block] = [Table(
            [Column("table", "id"), "column", "from", "to", Column("partitions", "number"),
             Column("ahead", "number"), Column("default rows", "number"),
             Column("size", "text"), Column("gaps", "text"), Column(verb, "number"),
             Column("moved", "number")],
            [(t.table, t.column, day(t.lower, "-inf"), day(t.upper, "+inf"),
              len([p for p in t.partitions if not p.is_default]), t.future, t.default_rows,
              format_bytes(t.size), ", ".join(f"{day(a, '')}..{day(b, '')}" for a, b in gaps(t.partitions))
              or "none", len(t.created), t.moved_rows) for t in self.tables],
            title="partitioned tables", empty="no range-partitioned tables")]
        for t in self.tables:
            blocks += [Note(f"{t.table}: {problem}") for problem in t.problems]
        for split in self.splits:
            blocks += [Note(f"{split.table}: {line}") for line in split.lines(self.dry_run)]
        if self.split_requested and not self.splits:
            blocks.append(Note("--split-legacy: no table to split (it splits the tables of the "
                               "partitions: section, or the one named by --table)"))
        return blocks


def _owner(conn: psycopg.Connection[Any], oid: int) -> str:
    row = conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s",
                       (oid,)).fetchone()
    return str(row[0]) if row else "CURRENT_USER"


def _columns(conn: psycopg.Connection[Any], oid: int) -> list[str]:
    return [str(r[0]) for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0"
        " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum", (oid,)).fetchall()]


def create_month(conn: psycopg.Connection[Any], parent: Relation, key: PartitionKey,
                 lower: dt.datetime, upper: dt.datetime, default: RangePartition | None,
                 policy: LockPolicy) -> tuple[str, int]:
    """Create the partition [lower, upper); rows of that range in the DEFAULT partition are
    moved into it in the same transaction. Returns (partition, rows moved)."""
    from psycopg import sql

    name = month_partition_name(parent.name, lower)
    ident = sql.Identifier(parent.schema, name)
    col = sql.Identifier(key.column)
    low = sql.SQL("{}::{}").format(sql.Literal(bound_literal(lower, key.column_type)),
                                   sql.SQL(key.column_type))
    high = sql.SQL("{}::{}").format(sql.Literal(bound_literal(upper, key.column_type)),
                                    sql.SQL(key.column_type))
    columns = sql.SQL(", ").join(map(sql.Identifier, _columns(conn, parent.oid)))
    owner = _owner(conn, parent.oid)
    moved = [0]

    def body() -> None:
        moved[0] = 0
        if default is not None:
            cur = conn.execute(sql.SQL(
                "CREATE TEMP TABLE aegisctl_moving ON COMMIT DROP AS WITH gone AS ("
                "DELETE FROM {} WHERE {} >= {} AND {} < {} RETURNING {}) SELECT * FROM gone"
            ).format(default.relation.ident(), col, low, col, high, columns))
            moved[0] = max(cur.rowcount, 0)
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})")
                     .format(ident, parent.ident(), low, high))
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(ident, sql.Identifier(owner)))
        if moved[0]:
            conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM aegisctl_moving").format(
                ident, columns, columns))

    short_transaction(conn, f"create partition {name}", policy, body)
    return f"{parent.schema}.{name}", moved[0]


def create_ahead(conn: psycopg.Connection[Any], parent: Relation, key: PartitionKey,
                 premake: int, policy: LockPolicy, *,
                 dry_run: bool = False) -> list[tuple[str, int]]:
    """Create every month from the current one to `premake` months beyond it that no
    partition covers (a hole in that span included). Returns (partition, rows moved from
    DEFAULT) for each (to create, on a dry run)."""
    parts = range_partitions(conn, parent.oid, key)
    ranged = [p for p in parts if not p.is_default]
    default = next((p for p in parts if p.is_default), None)
    now = month_start(_now(conn))
    made = []
    for month in months_between(now, add_months(now, premake + 1)):
        upper = add_months(month, 1)
        if any(_overlaps(p, month, upper) for p in ranged):
            continue
        made.append(_make(conn, parent, key, month, upper, default, policy, dry_run))
    return made


def _make(conn: psycopg.Connection[Any], parent: Relation, key: PartitionKey,
          lower: dt.datetime, upper: dt.datetime, default: RangePartition | None,
          policy: LockPolicy, dry_run: bool) -> tuple[str, int]:
    if dry_run:
        return f"{parent.schema}.{month_partition_name(parent.name, lower)}", 0
    return create_month(conn, parent, key, lower, upper, default, policy)


def _now(conn: psycopg.Connection[Any]) -> dt.datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0].astimezone(dt.UTC)  # type: ignore[no-any-return]


def default_rows(conn: psycopg.Connection[Any], default: RangePartition) -> int:
    from psycopg import sql

    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        default.relation.ident())).fetchone()
    return int(row[0]) if row else 0


def move_default_rows(conn: psycopg.Connection[Any], parent: Relation, key: PartitionKey,
                      policy: LockPolicy, report: TableReport, dry_run: bool) -> None:
    """Each month found in the DEFAULT partition gets its partition, rows moved in; a month
    that would overlap an existing partition, and NULLs, stay (reported)."""
    from psycopg import sql

    parts = range_partitions(conn, parent.oid, key)
    default = next((p for p in parts if p.is_default), None)
    if default is None:
        return
    col = sql.Identifier(key.column)
    month = sql.SQL("date_trunc('month', {}::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
                    ).format(col)
    if key.column_type != "timestamp with time zone":
        month = sql.SQL("date_trunc('month', {}::timestamp) AT TIME ZONE 'UTC'").format(col)
    found = conn.execute(sql.SQL("SELECT {} AS m, count(*) FROM {} GROUP BY 1 ORDER BY 1")
                         .format(month, default.relation.ident())).fetchall()
    ranged = [p for p in parts if not p.is_default]
    for start, count in found:
        if start is None:
            report.problems.append(f"{count} row(s) with a NULL {key.column} stay in the "
                                   "DEFAULT partition")
            continue
        lower = start.astimezone(dt.UTC)
        upper = add_months(lower, 1)
        if any(_overlaps(p, lower, upper) for p in ranged):
            report.problems.append(f"{count} row(s) of {lower:%Y-%m} stay in the DEFAULT "
                                   "partition: a partition already covers part of that month")
            continue
        if dry_run:
            report.created.append(f"{parent.schema}.{month_partition_name(parent.name, lower)}")
            report.moved_rows += int(count)
            continue
        name, moved = create_month(conn, parent, key, lower, upper, default, policy)
        report.created.append(name)
        report.moved_rows += moved


def _overlaps(part: RangePartition, lower: dt.datetime, upper: dt.datetime) -> bool:
    return ((part.lower is None or part.lower < upper)
            and (part.upper is None or part.upper > lower))


def partitioned_tables(conn: psycopg.Connection[Any]) -> list[tuple[Relation, PartitionKey]]:
    """Every table partitioned by range on one date/time column (partitions of partitions,
    and the staging table of a split in progress, excluded)."""
    from aegisctl.maintenance.legacy_split import STAGING_MARK

    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind, 0 FROM pg_partitioned_table p"
        "  JOIN pg_class c ON c.oid = p.partrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE NOT c.relispartition AND left(coalesce(obj_description(c.oid, 'pg_class'), ''),"
        "       length(%s)) <> %s ORDER BY n.nspname, c.relname",
        (STAGING_MARK, STAGING_MARK)).fetchall()
    found = []
    for r in rows:
        key = partition_key(conn, int(r[0]))
        if key is not None:
            found.append((Relation(int(r[0]), str(r[1]), str(r[2]), str(r[3]), 0), key))
    return found


def table_report(conn: psycopg.Connection[Any], parent: Relation, key: PartitionKey,
                 spec: PartitionSpec | None) -> TableReport:
    report = TableReport(parent.qualified, key.column, spec is not None,
                         spec.premake if spec else None)
    refresh(conn, parent, key, report)
    return report


def refresh(conn: psycopg.Connection[Any], parent: Relation, key: PartitionKey,
            report: TableReport) -> None:
    report.partitions = range_partitions(conn, parent.oid, key)
    next_month = add_months(month_start(_now(conn)), 1)
    report.future = sum(1 for p in report.partitions
                        if not p.is_default and p.lower is not None and p.lower >= next_month)
    default = next((p for p in report.partitions if p.is_default), None)
    report.default_rows = default_rows(conn, default) if default else None


def run_partitions(conn: psycopg.Connection[Any], specs: dict[str, PartitionSpec],
                   policy: LockPolicy, *, dry_run: bool = False,
                   only: list[str] | None = None,
                   split_batch_rows: int | None = None) -> PartitionsReport:
    """The `maint partitions` job over every range-partitioned table; the configured ones get
    their months ahead and their DEFAULT rows moved. With `split_batch_rows`, the legacy
    partition of each configured (or `only`-named) table is split into months first
    (aegisctl.maintenance.legacy_split)."""
    from aegisctl.maintenance.catalog import find_relation

    conn.execute("SET TIME ZONE 'UTC'")
    report = PartitionsReport(dry_run, split_requested=split_batch_rows is not None)
    configured: dict[int, PartitionSpec] = {}
    for entry, spec in specs.items():
        name = f"{spec.schema}.{spec.table_name(entry)}"
        try:
            relation = find_relation(conn, name, kinds="rp")
        except AegisError:
            report.tables.append(TableReport(name, spec.column, True, spec.premake,
                                             problems=["no such table"]))
            continue
        if relation.kind != "p":
            report.tables.append(TableReport(
                name, spec.column, True, spec.premake,
                problems=[f"not partitioned yet: run `aegisctl schema partition {name} --by "
                          f"month --column {spec.column}`"]))
            continue
        configured[relation.oid] = spec
    for parent, key in partitioned_tables(conn):
        if only and parent.qualified not in only and parent.name not in only:
            continue
        wanted = configured.get(parent.oid)
        if split_batch_rows is not None and (wanted is not None or only):
            from aegisctl.maintenance.legacy_split import split_legacy

            try:
                report.splits.append(split_legacy(conn, parent, key, policy,
                                                  batch_rows=split_batch_rows,
                                                  dry_run=dry_run))
            except OperationFailed as exc:
                problem = TableReport(parent.qualified, key.column, wanted is not None,
                                      wanted.premake if wanted else None)
                problem.problems.append(f"splitting the legacy partition: {exc}"
                                        + (f" ({exc.hint})" if exc.hint else ""))
                report.tables.append(problem)
                continue
        table = table_report(conn, parent, key, wanted)
        report.tables.append(table)
        if wanted is None:
            continue
        if key.column != wanted.column:
            table.problems.append(f"partitioned on {key.column}, configured column "
                                  f"{wanted.column}")
            continue
        try:
            move_default_rows(conn, parent, key, policy, table, dry_run)
            made = create_ahead(conn, parent, key, wanted.premake, policy, dry_run=dry_run)
        except OperationFailed as exc:
            table.problems.append(str(exc))
            continue
        table.created += [name for name, _ in made]
        table.moved_rows += sum(moved for _, moved in made)
        if not dry_run:
            refresh(conn, parent, key, table)
    return report
