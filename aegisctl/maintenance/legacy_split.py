"""`maint partitions --split-legacy`: the legacy partition a conversion left (the old table,
`MINVALUE` up to a month start) becomes one partition per month, online, so retention can drop
its old months one by one instead of waiting until all of it has expired.

PostgreSQL cannot narrow a partition's range while it holds rows of the range given up, and
rows moved out would have nowhere to go meanwhile, so the rows are copied, then swapped:

1. setup (one short transaction): a staging table `<table>_split`, partitioned by month like
   the table (its columns, defaults, constraints, indexes and foreign keys), with one
   partition per month of the legacy rows (each with a validated CHECK of its bounds, so
   attaching it later does not scan it) and a DEFAULT; a trigger on the legacy partition
   mirrors every insert, update and delete into the staging table from then on.
2. copy, in batches of pages (`ctid` ranges; each batch its own transaction with a short
   lock_timeout, retried): the rows are read `FOR SHARE` (an update or delete of those rows
   waits for the batch's commit, then the trigger mirrors it) and inserted `ON CONFLICT DO
   NOTHING` (a row the trigger already put there stays). The staging table's comment records
   the pages copied, in the batch's own transaction: a killed run resumes where it stopped.
3. verify (one REPEATABLE READ snapshot, no lock beyond ACCESS SHARE): the legacy partition and
   the staging table hold the same rows (count and a sum of row hashes).
4. swap (one short transaction): DETACH the legacy partition, detach each month from the
   staging table and ATTACH it to the table (its CHECK proves the range: no scan; only the
   DEFAULT partition is scanned, as for any new month), drop the CHECKs, the trigger and the
   staging table. ACCESS EXCLUSIVE on the table for milliseconds.
5. drop the detached legacy partition (marked by a comment, so a run killed before this step
   drops it next time).

Killed at any point (kill -9 included) a re-run finishes: before the swap the legacy partition
is untouched and still serves every row; the swap is one transaction.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed
from aegisctl.maintenance.catalog import Relation
from aegisctl.schema.partition_bounds import (
    PartitionKey,
    RangePartition,
    add_months,
    bound_literal,
    month_partition_name,
    month_start,
    months_between,
    range_partitions,
    short_name,
)
from aegisctl.schema.partition_tx import LockPolicy, pause_point, short_transaction

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

STAGING_MARK = "aegisctl split of "  # + legacy partition + " (pages copied: N)"
DONE_MARK = "aegisctl split: replaced by monthly partitions, to drop; was a partition of "
BOUND = "aegisctl_split_bound"
_PROGRESS = re.compile(r"^(.*) \(pages copied: ([0-9]+)\)$")


@dataclass
class SplitReport:
    table: str
    legacy: str | None = None
    status: str = "nothing to split"  # planned | split | interrupted | nothing to split
    months: list[str] = field(default_factory=list)
    rows_estimate: int = 0
    copied_rows: int = 0
    batches: int = 0
    resumed_at_page: int = 0
    longest_batch_seconds: float = 0.0
    swap_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def lines(self, dry_run: bool) -> list[str]:
        """What the split did (or would do), for the table view."""
        if self.legacy is None:
            return ["no legacy partition to split"]
        months = f"{len(self.months)} monthly partition(s)" + (
            f" ({self.months[0]} .. {self.months[-1]})" if self.months else "")
        if dry_run:
            return [f"would copy {self.legacy} (about {self.rows_estimate} rows) into "
                    f"{months} in batches, swap them in (ACCESS EXCLUSIVE on the table for "
                    "milliseconds) and drop it"]
        done = {"split": f"split {self.legacy} into {months}: {self.copied_rows} rows copied "
                         f"in {self.batches} batch(es), longest {self.longest_batch_seconds:.2f}s,"
                         f" swap {self.swap_seconds:.3f}s",
                "interrupted": f"splitting {self.legacy}: interrupted after {self.batches} "
                               "batch(es); run again to resume"}
        return [done.get(self.status, f"{self.legacy}: {self.status}"), *self.notes]

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "legacy_partition": self.legacy, "status": self.status,
                "months": self.months, "rows_estimate": self.rows_estimate,
                "copied_rows": self.copied_rows, "batches": self.batches,
                "resumed_at_page": self.resumed_at_page,
                "longest_batch_seconds": round(self.longest_batch_seconds, 4),
                "swap_seconds": round(self.swap_seconds, 4), "notes": self.notes}


@dataclass
class _Plan:
    parent: Relation
    key: PartitionKey
    legacy: RangePartition
    staging: Relation | None
    months: list[dt.datetime]
    columns: list[str]
    primary_key: list[str]
    page: int = 0  # pages of the legacy partition copied so far


def _ident(rel: Relation, name: str) -> sql.Identifier:
    from psycopg import sql

    return sql.Identifier(rel.schema, name)


def _is_legacy(part: RangePartition) -> bool:
    """What `schema partition` leaves: a plain partition from MINVALUE up to a month start
    (a partition someone made to span several months on purpose is left alone)."""
    return (not part.is_default and part.relation.kind == "r" and part.lower is None
            and part.upper is not None and part.upper == month_start(part.upper))


def _relation(conn: psycopg.Connection[Any], schema: str, name: str) -> Relation | None:
    row = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c"
        "  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (schema, name)).fetchone()
    return Relation(int(row[0]), str(row[1]), str(row[2]), str(row[3])) if row else None


def _comment(conn: psycopg.Connection[Any], oid: int) -> str:
    row = conn.execute("SELECT obj_description(%s, 'pg_class')", (oid,)).fetchone()
    return str(row[0]) if row and row[0] else ""


def _columns(conn: psycopg.Connection[Any], oid: int) -> list[str]:
    return [str(r[0]) for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0"
        " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum", (oid,)).fetchall()]


def _primary_key(conn: psycopg.Connection[Any], oid: int) -> list[str]:
    return [str(r[0]) for r in conn.execute(
        "SELECT a.attname FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(num, ord)"
        "  JOIN pg_attribute a ON a.attnum = k.num"
        " WHERE i.indrelid = %s AND i.indisprimary AND a.attrelid = i.indrelid"
        " ORDER BY k.ord", (oid,)).fetchall()]


def _staging_name(parent: Relation) -> str:
    return short_name(parent.name, "_split")


def _drop_leftover_legacy(conn: psycopg.Connection[Any], parent: Relation,
                          policy: LockPolicy, report: SplitReport) -> None:
    """A legacy partition a killed run swapped out but did not drop."""

    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname FROM pg_description d"
        "  JOIN pg_class c ON c.oid = d.objoid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE d.classoid = 'pg_class'::regclass AND d.objsubid = 0 AND d.description = %s"
        "   AND c.relkind = 'r' AND NOT c.relispartition",
        (DONE_MARK + parent.qualified,)).fetchall()
    for r in rows:
        rel = Relation(int(r[0]), str(r[1]), str(r[2]), "r")
        _drop_table(conn, rel, policy)
        report.notes.append(f"dropped {rel.qualified}, swapped out by an earlier run")


def _drop_table(conn: psycopg.Connection[Any], rel: Relation, policy: LockPolicy) -> None:
    from psycopg import sql

    def body() -> None:
        conn.execute(sql.SQL("DROP TABLE {}").format(rel.ident()))

    short_transaction(conn, f"drop {rel.qualified}", policy, body)


def _plan(conn: psycopg.Connection[Any], parent: Relation, key: PartitionKey,
          report: SplitReport) -> _Plan | None:
    from psycopg import sql

    parts = range_partitions(conn, parent.oid, key)
    staging = _relation(conn, parent.schema, _staging_name(parent))
    legacy: RangePartition | None = None
    page = 0
    if staging is not None:
        match = _PROGRESS.match(_comment(conn, staging.oid)[len(STAGING_MARK):]) \
            if _comment(conn, staging.oid).startswith(STAGING_MARK) else None
        if match is None:
            raise OperationFailed(
                f"{staging.qualified} exists and is not aegisctl's staging table for a split",
                hint="rename or drop it, then run again")
        legacy = next((p for p in parts if p.relation.qualified == match.group(1)), None)
        if legacy is None:
            raise OperationFailed(f"{staging.qualified}: its legacy partition "
                                  f"{match.group(1)} is no longer a partition of "
                                  f"{parent.qualified}", hint=f"drop {staging.qualified} "
                                  "(it only holds copies), then run again")
        page = int(match.group(2))
        report.resumed_at_page = page
    else:
        candidates = [p for p in parts if _is_legacy(p)]
        if not candidates:
            return None
        legacy = candidates[0]
    report.legacy = legacy.relation.qualified
    assert legacy.upper is not None
    primary_key = _primary_key(conn, parent.oid)
    if not primary_key:
        raise OperationFailed(f"{parent.qualified} has no primary key: the split matches the "
                              "copies to their rows by it",
                              hint="add a primary key that includes the partition column")
    row = conn.execute(sql.SQL("SELECT min({}), GREATEST((SELECT reltuples FROM pg_class"
                               " WHERE oid = %s), 0)::bigint FROM {}").format(
        sql.Identifier(key.column), legacy.relation.ident()),
        (legacy.relation.oid,)).fetchone()
    oldest = row[0] if row else None
    report.rows_estimate = int(row[1]) if row else 0
    # An empty legacy partition: no month to make (the swap only detaches and drops it).
    first = month_start(_utc(oldest, key)) if oldest is not None else legacy.upper
    months = months_between(first, legacy.upper)
    if staging is not None:
        months = _staging_months(conn, staging, key)
    return _Plan(parent, key, legacy, staging, months, _columns(conn, parent.oid), primary_key,
                 page)


def _utc(value: Any, key: PartitionKey) -> dt.datetime:
    """A timestamp or date column's value in UTC (the session's time zone during the split)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)  # a date


def _staging_months(conn: psycopg.Connection[Any], staging: Relation,
                    key: PartitionKey) -> list[dt.datetime]:
    return [p.lower for p in range_partitions(conn, staging.oid, key)
            if not p.is_default and p.lower is not None]


def _bound(moment: dt.datetime, key: PartitionKey) -> sql.Composable:
    from psycopg import sql

    return sql.SQL("{}::{}").format(sql.Literal(bound_literal(moment, key.column_type)),
                                    sql.SQL(key.column_type))


def _setup(conn: psycopg.Connection[Any], plan: _Plan, policy: LockPolicy) -> Relation:
    """Staging table, its months, the mirroring trigger: one transaction."""
    from psycopg import sql

    parent, key, legacy = plan.parent, plan.key, plan.legacy.relation
    name = _staging_name(parent)
    staging = _ident(parent, name)
    col = sql.Identifier(key.column)
    owner = conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s",
                         (parent.oid,)).fetchone()
    columns = [sql.Identifier(c) for c in plan.columns]
    pk = [sql.Identifier(c) for c in plan.primary_key]
    # The table's own foreign keys, as the server prints them: on the staging table (empty:
    # no scan) they are checked row by row as copies arrive, and a month attached later
    # brings its validated key along instead of having one validated under the swap's lock.
    foreign_keys = [(str(r[0]), str(r[1])) for r in conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = %s AND contype = 'f' AND conparentid = 0 ORDER BY conname",
        (parent.oid,)).fetchall()]
    function = _ident(parent, short_name(parent.name, "_split_mirror"))
    body = sql.SQL(
        "BEGIN IF TG_OP IN ('UPDATE', 'DELETE') THEN DELETE FROM {staging} WHERE ({pk}) = ({old});"
        " END IF; IF TG_OP IN ('INSERT', 'UPDATE') THEN INSERT INTO {staging} ({cols})"
        " VALUES ({new}) ON CONFLICT DO NOTHING; END IF; RETURN NULL; END").format(
        staging=staging, pk=sql.SQL(", ").join(pk),
        old=sql.SQL(", ").join(sql.SQL("OLD.{}").format(c) for c in pk),
        cols=sql.SQL(", ").join(columns),
        new=sql.SQL(", ").join(sql.SQL("NEW.{}").format(c) for c in columns))

    def body_tx() -> None:
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING COMMENTS)"
                             " PARTITION BY RANGE ({})").format(staging, parent.ident(), col))
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(staging, sql.Literal(
            f"{STAGING_MARK}{legacy.qualified} (pages copied: 0)")))
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
            _ident(parent, short_name(name, "_default")), staging))
        for month in plan.months:
            lo, hi = _bound(month, key), _bound(add_months(month, 1), key)
            part = _ident(parent, month_partition_name(parent.name, month))
            conn.execute(sql.SQL(
                "CREATE TABLE {} PARTITION OF {} (CONSTRAINT {} CHECK ({} IS NOT NULL AND"
                " {} >= {} AND {} < {})) FOR VALUES FROM ({}) TO ({})").format(
                part, staging, sql.Identifier(BOUND), col, col, lo, col, hi, lo, hi))
            if owner:
                conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                    part, sql.Identifier(str(owner[0]))))
        for fk_name, definition in foreign_keys:
            conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                staging, sql.Identifier(fk_name), sql.SQL(definition)))
        conn.execute(sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}")
                     .format(function, sql.Literal(body.as_string(conn))))
        # Last: the only lock here that writers of the table can meet (SHARE ROW EXCLUSIVE
        # on the legacy partition, until COMMIT).
        conn.execute(sql.SQL("CREATE TRIGGER aegisctl_split_mirror AFTER INSERT OR UPDATE OR"
                             " DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
            legacy.ident(), function))

    short_transaction(conn, f"set up the split of {legacy.qualified}", policy, body_tx)
    made = _relation(conn, parent.schema, name)
    assert made is not None
    return made


def _pages(conn: psycopg.Connection[Any], rel: Relation) -> tuple[int, float]:
    row = conn.execute("SELECT pg_relation_size(%s) / current_setting('block_size')::int,"
                       " CASE WHEN relpages > 0 THEN GREATEST(reltuples, 0) / relpages END"
                       " FROM pg_class WHERE oid = %s", (rel.oid, rel.oid)).fetchone()
    assert row is not None
    return int(row[0]), float(row[1] or 100.0)


def _copy(conn: psycopg.Connection[Any], plan: _Plan, staging: Relation, batch_rows: int,
          policy: LockPolicy, report: SplitReport) -> bool:
    """Copy the legacy partition's pages from plan.page on; False when stopped."""
    from psycopg import sql

    legacy = plan.legacy.relation
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in plan.columns)
    while True:
        pages, per_page = _pages(conn, legacy)
        if plan.page >= pages:
            return True
        if policy.should_stop():
            return False
        step = max(1, int(batch_rows / max(per_page, 1.0)))
        start, end = plan.page, plan.page + step
        copied = [0]

        def batch(start: int = start, end: int = end, copied: list[int] = copied) -> None:
            cur = conn.execute(sql.SQL(
                "WITH src AS (SELECT {cols} FROM {legacy} WHERE ctid >= {lo}::tid"
                " AND ctid < {hi}::tid FOR SHARE) INSERT INTO {staging} ({cols})"
                " SELECT {cols} FROM src ON CONFLICT DO NOTHING").format(
                cols=columns, legacy=legacy.ident(), lo=sql.Literal(f"({start},0)"),
                hi=sql.Literal(f"({end},0)"), staging=staging.ident()))
            copied[0] = max(cur.rowcount, 0)
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
                staging.ident(),
                sql.Literal(f"{STAGING_MARK}{legacy.qualified} (pages copied: {end})")))

        outcome = short_transaction(conn, f"copy pages {start}-{end} of {legacy.qualified}",
                                    policy, batch)
        plan.page = end
        report.batches += 1
        report.copied_rows += copied[0]
        report.longest_batch_seconds = max(report.longest_batch_seconds, outcome.seconds)
        pause_point("split-batch")


def _verify(conn: psycopg.Connection[Any], plan: _Plan, staging: Relation) -> None:
    """Same rows in both, seen in one snapshot (the trigger keeps them equal from the setup
    on, so any difference is a fault: nothing is swapped)."""
    from psycopg import sql

    conn.autocommit = False
    try:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        found = []
        for rel in (plan.legacy.relation, staging):
            row = conn.execute(sql.SQL("SELECT count(*), coalesce(sum(hashtext(t::text)), 0)"
                                       " FROM {} AS t").format(rel.ident())).fetchone()
            found.append(tuple(row) if row else None)
        conn.rollback()
    finally:
        conn.autocommit = True
    if found[0] != found[1]:
        raise OperationFailed(
            f"the copies of {plan.legacy.relation.qualified} do not match it (rows, row "
            f"hashes: {found[0]} vs {found[1]}); nothing was swapped",
            hint=f"drop {staging.qualified} (it only holds copies) and run again")


def _swap(conn: psycopg.Connection[Any], plan: _Plan, staging: Relation,
          policy: LockPolicy) -> float:
    from psycopg import sql

    parent, key, legacy = plan.parent, plan.key, plan.legacy.relation
    parts = range_partitions(conn, staging.oid, key)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in plan.columns)
    function = _ident(parent, short_name(parent.name, "_split_mirror"))

    statements: list[sql.Composable] = [sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
        parent.ident(), legacy.ident())]
    for part in parts:
        statements.append(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
            staging.ident(), part.relation.ident()))
        if part.is_default:
            continue
        assert part.lower is not None and part.upper is not None
        statements += [
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                parent.ident(), part.relation.ident(), _bound(part.lower, key),
                _bound(part.upper, key)),
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(part.relation.ident(),
                                                                 sql.Identifier(BOUND))]
    for part in parts:
        if part.is_default:  # rows older than the first month: the table routes them
            statements += [sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                parent.ident(), columns, columns, part.relation.ident()),
                sql.SQL("DROP TABLE {}").format(part.relation.ident())]
    statements += [
        sql.SQL("DROP TRIGGER aegisctl_split_mirror ON {}").format(legacy.ident()),
        sql.SQL("DROP TABLE {}").format(staging.ident()),
        sql.SQL("DROP FUNCTION {}()").format(function),
        sql.SQL("COMMENT ON TABLE {} IS {}").format(
            legacy.ident(), sql.Literal(DONE_MARK + parent.qualified))]

    def body() -> None:
        pause_point("split-swap")
        # One round trip (no parameters: the simple query protocol): the table's ACCESS
        # EXCLUSIVE lock is held for the statements' work, not for a round trip each.
        conn.execute(sql.SQL("; ").join(statements))

    return short_transaction(conn, f"swap {legacy.qualified} for its months", policy,
                             body).seconds


def split_legacy(conn: psycopg.Connection[Any], parent: Relation, key: PartitionKey,
                 policy: LockPolicy, *, batch_rows: int = 5000,
                 dry_run: bool = False) -> SplitReport:
    """Split the table's legacy partition into months (or finish a split a killed run began).
    `conn` is in autocommit mode on the primary."""
    conn.execute("SET TIME ZONE 'UTC'")
    report = SplitReport(parent.qualified)
    if not dry_run:
        _drop_leftover_legacy(conn, parent, policy, report)
    plan = _plan(conn, parent, key, report)
    if plan is None:
        return report
    report.months = [f"{parent.schema}.{month_partition_name(parent.name, m)}"
                     for m in plan.months]
    if dry_run:
        report.status = "planned" if plan.staging is None else "planned (resume)"
        return report
    started = time.perf_counter()
    staging = plan.staging or _setup(conn, plan, policy)
    if not _copy(conn, plan, staging, batch_rows, policy, report):
        report.status = "interrupted"
        report.notes.append(f"stopped after page {plan.page}; run again to resume")
        return report
    _verify(conn, plan, staging)
    report.swap_seconds = _swap(conn, plan, staging, policy)
    legacy = plan.legacy.relation
    pause_point("split-drop")
    _drop_table(conn, legacy, policy)
    report.status = "split"
    report.notes.append(f"{legacy.qualified} replaced by {len(plan.months)} monthly "
                        f"partition(s) in {time.perf_counter() - started:.1f}s")
    return report
