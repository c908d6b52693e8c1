"""`schema partition TABLE --by month`: turn a table into a range-partitioned one online.

How, and which locks (each short transaction waits at most lock_timeout for its locks, then
rolls back and retries, so the application never queues behind it for long):

1. bound check: `ADD CONSTRAINT ... CHECK (col IS NOT NULL AND col < H) NOT VALID` - ACCESS
   EXCLUSIVE on the table for milliseconds (no scan). H is the first month start after the
   newest row and next week, so rows written meanwhile satisfy it.
2. validate: `VALIDATE CONSTRAINT` - SHARE UPDATE EXCLUSIVE for the scan: reads and writes go
   on, only other DDL and VACUUM wait.
3. build: in one transaction, a new partitioned parent LIKE the table (defaults, generated
   columns, CHECK constraints, storage, comments), its primary key, unique constraints and
   indexes (HNSW included) from the table's own definitions, owner and grants, monthly
   partitions from H on (premake months), a DEFAULT partition, then the outgoing foreign keys
   (SHARE ROW EXCLUSIVE on the referenced tables until COMMIT, milliseconds: all of it is
   empty). The table itself is only read (ACCESS SHARE).
4. swap: in one transaction, ACCESS EXCLUSIVE on the table and the new parent; rename the table
   to TABLE_legacy and the parent to TABLE (indexes likewise), ATTACH the old table as the
   partition FROM (MINVALUE) TO (H) - no scan, the validated check proves the range - drop
   the check, hand the owned sequences to the parent, move the table's comment. Milliseconds;
   a writer waits at most lock_timeout + that.

Every row stays where it is: the old table becomes the first partition, so nothing is copied
and nothing written meanwhile can be lost. Killed at any point, the server rolls back the
transaction in flight; a re-run drops an unfinished parent (empty by construction), reuses the
bound check and finishes. Once swapped, a re-run only makes the partitions ahead.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed
from aegisctl.maintenance.catalog import Relation
from aegisctl.schema.partition_bounds import (
    add_months,
    bound_literal,
    default_partition_name,
    month_partition_name,
    month_start,
    months_between,
    partition_key,
    short_name,
)
from aegisctl.schema.partition_inspect import TableFacts, find_table, inspect_table
from aegisctl.schema.partition_tx import LockPolicy, pause_point, short_transaction

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from aegisctl.output import Block

BOUND_CHECK = "aegisctl_partition_bound"
BUILD_MARK = "aegisctl partition: unfinished new parent of "
LEGACY_COMMENT = "rows of {} from before it was partitioned by month (aegisctl schema partition)"
# Rows written during the conversion must satisfy the bound check: keep a week of margin.
MARGIN = dt.timedelta(days=7)


@dataclass
class ConversionStep:
    name: str
    locks: str  # which locks, on what
    holds: str  # how long they are held
    statements: list[str] = field(default_factory=list)
    status: str = "planned"  # planned | done | skipped
    seconds: float | None = None  # measured: from the first lock granted to COMMIT
    attempts: int = 0
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"step": self.name, "locks": self.locks, "holds": self.holds,
                "status": self.status, "attempts": self.attempts,
                "held_seconds": None if self.seconds is None else round(self.seconds, 4),
                "detail": self.detail,
                "statements": self.statements}


@dataclass
class ConversionResult:
    table: str
    column: str
    dry_run: bool
    status: str = "planned"  # planned | converted | already partitioned
    legacy: str | None = None
    legacy_upper: dt.datetime | None = None
    partitions: list[str] = field(default_factory=list)  # created (or to create)
    default_partition: str | None = None
    rows_estimate: int = 0
    steps: list[ConversionStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def longest_lock_s(self) -> float:
        return max((s.seconds or 0.0 for s in self.steps if s.name != "validate"), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "column": self.column, "dry_run": self.dry_run,
                "status": self.status, "legacy_partition": self.legacy,
                "legacy_upper": self.legacy_upper.isoformat() if self.legacy_upper else None,
                "partitions": self.partitions, "default_partition": self.default_partition,
                "rows_estimate": self.rows_estimate,
                "longest_strong_lock_seconds": round(self.longest_lock_s, 4),
                "steps": [s.to_json() for s in self.steps], "notes": self.notes}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        blocks: list[Block] = []
        if self.dry_run:
            blocks.append(Note(f"-- schema partition {self.table}: the plan (nothing changed "
                               "yet)"))
        blocks.append(Table(
            ["step", Column("locks", "text"), Column("held", "text"), "status",
             Column("seconds", "number"), Column("attempts", "number")],
            [(s.name, s.locks, s.holds, s.status,
              None if s.seconds is None else round(s.seconds, 3), s.attempts or None)
             for s in self.steps], title=f"{self.table}: {self.status}", empty="nothing to do"))
        if self.dry_run:
            for step in self.steps:
                blocks += [Note(f"{text};") for text in step.statements]
        blocks += [Note(n) for n in self.notes]
        return blocks


@dataclass
class _Names:
    parent: str  # the final name (the table's)
    building: str  # the new parent until the swap
    legacy: str
    default: str

    @classmethod
    def of(cls, table: str) -> _Names:
        return cls(table, short_name(table, "_aegisctl_new"), short_name(table, "_legacy"),
                   default_partition_name(table))


def convert_table(conn: psycopg.Connection[Any], name: str, column: str, *, premake: int = 3,
                  default_partition: bool = True, dry_run: bool = False,
                  policy: LockPolicy | None = None) -> ConversionResult:
    """Plan (dry_run) or carry out the conversion of `name` into monthly range partitions.
    `conn` is in autocommit mode on the primary."""
    policy = policy or LockPolicy()
    conn.execute("SET TIME ZONE 'UTC'")
    relation = find_table(conn, name)
    facts = inspect_table(conn, relation, column)
    result = ConversionResult(relation.qualified, column, dry_run,
                              rows_estimate=facts.rows_estimate)
    if relation.kind == "p":
        return _already_partitioned(conn, facts, result, premake, policy)
    names = _Names.of(relation.name)
    now = _server_now(conn)
    upper = _legacy_upper(conn, facts, now)
    months = months_between(upper, max(add_months(month_start(now), premake + 1),
                                       add_months(upper, 1)))
    result.legacy, result.legacy_upper = f"{relation.schema}.{names.legacy}", upper
    result.partitions = [f"{relation.schema}.{month_partition_name(relation.name, m)}"
                         for m in months]
    result.default_partition = (f"{relation.schema}.{names.default}" if default_partition
                                else None)
    _refuse_name_clashes(conn, facts, names)
    check = _bound_check_name(upper)
    steps = _plan_steps(conn, facts, names, upper, months, default_partition, check)
    result.steps = steps
    if dry_run:
        return result
    _run(conn, facts, names, steps, policy, upper, months, default_partition, check)
    result.status = "converted"
    result.notes.append(
        f"{result.legacy} holds every row from before {upper:%Y-%m-%d} (one partition: "
        "cleanup run deletes its expired rows in batches until the whole of it has expired, "
        "then drops it)")
    result.notes.append(f"run `ANALYZE {relation.qualified}` for statistics on the parent; "
                        "`aegisctl maint partitions` keeps the months ahead created")
    return result


def _server_now(conn: psycopg.Connection[Any]) -> dt.datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0].astimezone(dt.UTC)  # type: ignore[no-any-return]


def _legacy_upper(conn: psycopg.Connection[Any], facts: TableFacts,
                  now: dt.datetime) -> dt.datetime:
    """The first month start after the newest row and after next week."""
    from psycopg import sql

    query = sql.SQL("SELECT max({})::timestamptz FROM {}").format(
        sql.Identifier(facts.column), facts.relation.ident())
    if facts.column_type != "timestamp with time zone":
        query = sql.SQL("SELECT max({})::timestamp AT TIME ZONE 'UTC' FROM {}").format(
            sql.Identifier(facts.column), facts.relation.ident())
    row = conn.execute(query).fetchone()
    newest = row[0].astimezone(dt.UTC) if row and row[0] is not None else now
    existing = _existing_check(conn, facts.relation)
    reach = max(newest, now + MARGIN)
    upper = add_months(month_start(reach), 1)
    if existing is not None and existing[1] >= upper:
        return existing[1]  # an interrupted run's check still holds: reuse it
    return upper


def _bound_check_name(upper: dt.datetime) -> str:
    return f"{BOUND_CHECK}_{upper:%Y_%m}"


def _existing_check(conn: psycopg.Connection[Any],
                    relation: Relation) -> tuple[str, dt.datetime] | None:
    row = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s AND contype = 'c'"
                       " AND conname LIKE %s ORDER BY conname DESC LIMIT 1",
                       (relation.oid, BOUND_CHECK + "\\_%")).fetchone()
    if not row:
        return None
    try:
        stamp = dt.datetime.strptime(str(row[0])[len(BOUND_CHECK) + 1:], "%Y_%m")
    except ValueError:
        return None
    return str(row[0]), stamp.replace(tzinfo=dt.UTC)


def _refuse_name_clashes(conn: psycopg.Connection[Any], facts: TableFacts,
                         names: _Names) -> None:
    wanted = [names.legacy] + [short_name(i.name, "_legacy") for i in facts.indexes]
    row = conn.execute("SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace"
                       " AND relname = ANY(%s) LIMIT 1",
                       (facts.relation.schema, wanted)).fetchone()
    if row:
        raise OperationFailed(f"cannot partition {facts.relation.qualified}: the name {row[0]} "
                              "it needs is taken", hint=f"rename {row[0]} first")


# ---------------------------------------------------------------------------------------------
# The statements


def _plan_steps(conn: psycopg.Connection[Any], facts: TableFacts, names: _Names,
                upper: dt.datetime, months: list[dt.datetime], default_partition: bool,
                check: str) -> list[ConversionStep]:
    table = facts.relation.qualified
    text = [s.as_string(conn) for s in _check_statements(facts, upper, check)]
    build = [s.as_string(conn) for s in
             _build_statements(facts, names, months, default_partition, check)]
    swap = [s.as_string(conn) for s in _swap_statements(facts, names, upper, check)]
    referenced = ", ".join(sorted({fk[1].split(" REFERENCES ", 1)[1].split("(")[0]
                                   for fk in facts.foreign_keys})) or "none"
    return [
        ConversionStep("bound check", f"ACCESS EXCLUSIVE on {table}", "milliseconds (no scan)",
                       text[:1]),
        ConversionStep("validate", f"SHARE UPDATE EXCLUSIVE on {table}",
                       "the scan; reads and writes continue", text[1:]),
        ConversionStep("build parent", f"ACCESS SHARE on {table}; SHARE ROW EXCLUSIVE on "
                       f"referenced tables ({referenced})", "milliseconds (all empty)", build),
        ConversionStep("swap", f"ACCESS EXCLUSIVE on {table} and the new parent (and, for the "
                       f"foreign keys' triggers, on {referenced})",
                       "milliseconds (renames and an ATTACH without scan)", swap),
    ]


def _check_statements(facts: TableFacts, upper: dt.datetime, check: str) -> list[sql.Composed]:
    from psycopg import sql

    col = sql.Identifier(facts.column)
    return [
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} IS NOT NULL AND {} < {}::{}) "
                "NOT VALID").format(facts.relation.ident(), sql.Identifier(check), col,
                                    col, sql.Literal(bound_literal(upper, facts.column_type)),
                                    sql.SQL(facts.column_type)),
        sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(facts.relation.ident(),
                                                                sql.Identifier(check)),
    ]


def _build_statements(facts: TableFacts, names: _Names, months: list[dt.datetime],
                      default_partition: bool, check: str) -> list[sql.Composed]:
    from psycopg import sql

    schema = facts.relation.schema
    new = sql.Identifier(schema, names.building)
    out: list[sql.Composed] = [
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING "
                "CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING COMMENTS "
                "INCLUDING STATISTICS) PARTITION BY RANGE ({})").format(
            new, facts.relation.ident(), sql.Identifier(facts.column)),
        sql.SQL("COMMENT ON TABLE {} IS {}").format(
            new, sql.Literal(BUILD_MARK + facts.relation.qualified)),
        sql.SQL("ALTER TABLE {} OWNER TO {}").format(new, sql.Identifier(facts.owner)),
    ]
    # LIKE copied the bound check: the partitions ahead must not inherit it.
    out.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(new, sql.Identifier(check)))
    for index in facts.indexes:
        temp = sql.Identifier(short_name(index.name, "_pnew"))
        if index.constraint and index.constraint_def:
            out.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                new, temp, sql.SQL(index.constraint_def)))
        else:
            out.append(_index_on(index, facts, new, temp))
        if index.comment:
            out.append(sql.SQL("COMMENT ON INDEX {} IS {}").format(
                sql.Identifier(schema, short_name(index.name, "_pnew")),
                sql.Literal(index.comment)))
    col = facts.column_type
    bounds = [(month_partition_name(facts.relation.name, m), m, add_months(m, 1)) for m in months]
    for part, lower, upper in bounds:
        out.append(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, part), new, sql.Literal(bound_literal(lower, col)),
            sql.Literal(bound_literal(upper, col))))
    if default_partition:
        out.append(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
            sql.Identifier(schema, names.default), new))
    for part in [b[0] for b in bounds] + ([names.default] if default_partition else []):
        out.append(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
            sql.Identifier(schema, part), sql.Identifier(facts.owner)))
    out += _grants(facts, new)
    out += [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
        new, sql.Identifier(fk_name), sql.SQL(definition))
        for fk_name, definition in facts.foreign_keys]
    return out


def _index_on(index: Any, facts: TableFacts, new: sql.Identifier,
              temp: sql.Identifier) -> sql.Composed:
    """The table's own index definition, re-targeted at the new parent."""
    from psycopg import sql

    marker = " USING "
    head, _, rest = index.definition.partition(marker)
    if not rest or not head.startswith(("CREATE INDEX ", "CREATE UNIQUE INDEX ")):
        raise OperationFailed(f"cannot copy index {index.name}: unexpected definition "
                              f"{index.definition!r}")
    unique = sql.SQL("UNIQUE ") if head.startswith("CREATE UNIQUE") else sql.SQL("")
    return sql.SQL("CREATE {}INDEX {} ON {} USING {}").format(unique, temp, new, sql.SQL(rest))


def _grants(facts: TableFacts, new: sql.Identifier) -> list[sql.Composed]:
    from psycopg import sql

    def grantee(name: str) -> sql.Composable:
        return sql.SQL("PUBLIC") if name == "PUBLIC" else sql.Identifier(name)

    out: list[sql.Composed] = []
    for privilege, who, option in facts.grants:
        out.append(sql.SQL("GRANT {} ON {} TO {}{}").format(
            sql.SQL(privilege), new, grantee(who),
            sql.SQL(" WITH GRANT OPTION") if option else sql.SQL("")))
    for privilege, column, who, option in facts.column_grants:
        out.append(sql.SQL("GRANT {} ({}) ON {} TO {}{}").format(
            sql.SQL(privilege), sql.Identifier(column), new, grantee(who),
            sql.SQL(" WITH GRANT OPTION") if option else sql.SQL("")))
    return out


def _swap_statements(facts: TableFacts, names: _Names, upper: dt.datetime,
                     check: str) -> list[sql.Composed]:
    from psycopg import sql

    schema = facts.relation.schema
    old, new = facts.relation.ident(), sql.Identifier(schema, names.building)
    final, legacy = sql.Identifier(schema, names.parent), sql.Identifier(schema, names.legacy)
    out: list[sql.Composed] = [
        sql.SQL("LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE").format(old, new),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(old, sql.Identifier(names.legacy)),
    ]
    for index in facts.indexes:
        out.append(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            sql.Identifier(schema, index.name), sql.Identifier(short_name(index.name, "_legacy"))))
        out.append(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            sql.Identifier(schema, short_name(index.name, "_pnew")), sql.Identifier(index.name)))
    out += [
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, sql.Identifier(names.parent)),
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM (MINVALUE) TO ({})").format(
            final, legacy, sql.Literal(bound_literal(upper, facts.column_type))),
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(legacy, sql.Identifier(check)),
    ]
    out += [sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
        sql.Identifier(seq_schema, seq), final, sql.Identifier(column))
        for seq_schema, seq, column in facts.sequences]
    out += [
        sql.SQL("COMMENT ON TABLE {} IS {}").format(final, sql.Literal(facts.comment)),
        sql.SQL("COMMENT ON TABLE {} IS {}").format(
            legacy, sql.Literal(LEGACY_COMMENT.format(facts.relation.qualified))),
    ]
    return out


# ---------------------------------------------------------------------------------------------
# Running it


def _run(conn: psycopg.Connection[Any], facts: TableFacts, names: _Names,
         steps: list[ConversionStep], policy: LockPolicy, upper: dt.datetime,
         months: list[dt.datetime], default_partition: bool, check: str) -> None:
    add, validate = _check_statements(facts, upper, check)
    existing = _existing_check(conn, facts.relation)
    if existing is not None and existing[0] != check:  # an older run's bound: replace it
        _timed(conn, steps[0], policy, [_drop_check(facts, existing[0]), add])
    elif existing is None:
        _timed(conn, steps[0], policy, [add])
    else:
        steps[0].status, steps[0].detail = "skipped", "kept from an interrupted run"
    started = time.perf_counter()
    _run_validate(conn, validate, policy)
    steps[1].status, steps[1].seconds, steps[1].attempts = "done", \
        time.perf_counter() - started, 1
    pause_point("validated")
    _stop_between_steps(policy, "validating the bound check")
    _drop_unfinished_parent(conn, facts, names, policy)
    _timed(conn, steps[2], policy,
           _build_statements(facts, names, months, default_partition, check))
    pause_point("built")
    _stop_between_steps(policy, "building the new parent")
    swap = _swap_statements(facts, names, upper, check)
    locked_at: list[float] = []

    def body() -> None:
        conn.execute(swap[0])
        locked_at.append(time.perf_counter())
        pause_point("swap")
        # One round trip for the rest: the lock is held for the server's work, not for a
        # dozen round trips on a busy machine.
        conn.execute(_batch(swap[1:]))

    _timed(conn, steps[3], policy, body, locked_at)


def _batch(statements: list[sql.Composed]) -> sql.Composed:
    """Statements sent in one round trip (no parameters: the simple query protocol)."""
    from psycopg import sql

    return sql.SQL("; ").join(statements)


def _stop_between_steps(policy: LockPolicy, done: str) -> None:
    from aegisctl.schema.partition_tx import Interrupted

    if policy.should_stop():
        raise Interrupted(f"interrupted after {done}: the table is unchanged and takes writes; "
                          "run the command again to finish")


def _timed(conn: psycopg.Connection[Any], step: ConversionStep, policy: LockPolicy,
           work: Any, locked_at: list[float] | None = None) -> None:
    def body() -> None:
        if callable(work):
            work()
        else:
            conn.execute(_batch(work))

    outcome = short_transaction(conn, step.name, policy, body)
    step.status, step.attempts = "done", outcome.attempts
    step.seconds = outcome.seconds
    if locked_at:  # from the lock granted to COMMIT: what a writer could have waited
        step.seconds = time.perf_counter() - locked_at[-1]


def _run_validate(conn: psycopg.Connection[Any], statement: sql.Composed,
                  policy: LockPolicy) -> None:
    """VALIDATE scans under SHARE UPDATE EXCLUSIVE (writes go on); only acquiring the lock is
    bounded by lock_timeout, the scan itself is not."""
    def body() -> None:
        conn.execute(statement)

    short_transaction(conn, "validate", policy, body)


def _drop_check(facts: TableFacts, name: str) -> sql.Composed:
    from psycopg import sql

    return sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(facts.relation.ident(),
                                                               sql.Identifier(name))


def _drop_unfinished_parent(conn: psycopg.Connection[Any], facts: TableFacts, names: _Names,
                            policy: LockPolicy) -> None:
    """An interrupted run's new parent (marked by its comment) is empty by construction:
    nothing writes to it before the swap. Drop it and build it again."""
    from psycopg import sql

    row = conn.execute(
        "SELECT c.oid, obj_description(c.oid, 'pg_class') FROM pg_class c"
        " WHERE c.relnamespace = %s::regnamespace AND c.relname = %s",
        (facts.relation.schema, names.building)).fetchone()
    if row is None:
        return
    if row[1] != BUILD_MARK + facts.relation.qualified:
        raise OperationFailed(f"cannot partition {facts.relation.qualified}: a table named "
                              f"{names.building} exists and is not ours",
                              hint=f"rename or drop {names.building}")
    target = sql.Identifier(facts.relation.schema, names.building)
    if conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(target)).fetchone():
        raise OperationFailed(f"the unfinished parent {names.building} holds rows: it was "
                              "written to after an interrupted conversion",
                              hint="move its rows back and drop it, then run again")
    def body() -> None:
        conn.execute(sql.SQL("DROP TABLE {}").format(target))

    short_transaction(conn, "drop the unfinished parent", policy, body)


def _already_partitioned(conn: psycopg.Connection[Any], facts: TableFacts,
                         result: ConversionResult, premake: int,
                         policy: LockPolicy) -> ConversionResult:
    key = partition_key(conn, facts.relation.oid)
    if key is None or key.column != facts.column:
        raise OperationFailed(f"{facts.relation.qualified} is already partitioned, but not by "
                              f"range on {facts.column}")
    result.status = "already partitioned"
    if result.dry_run:
        return result
    from aegisctl.maintenance.partitions import create_ahead

    made = create_ahead(conn, facts.relation, key, premake, policy)
    result.partitions = [p for p, _ in made]
    result.notes.append(f"already partitioned by range on {facts.column}; "
                        f"{len(made)} partition(s) made ahead")
    return result


def partition_new_table(conn: psycopg.Connection[Any], name: str, column: str, *,
                        premake: int = 3, default_partition: bool = True,
                        policy: LockPolicy | None = None) -> ConversionResult | None:
    """`schema init` with a `partitions:` entry: a table still empty is made partitioned from
    the start, its primary key and unique constraints widened to include the column (instant
    on an empty table). None when it is already partitioned; a table holding rows is left
    to `schema partition` (its keys are the user's to widen)."""
    from psycopg import sql

    relation = find_table(conn, name)
    if relation.kind == "p":
        return None
    if conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(relation.ident())).fetchone():
        raise OperationFailed(f"{relation.qualified} already holds rows: convert it with "
                              f"`aegisctl schema partition {relation.qualified} --by month`")
    policy = policy or LockPolicy()
    col = sql.Identifier(column)
    keys = conn.execute(
        "SELECT con.conname, con.contype, array(SELECT a.attname FROM unnest(con.conkey) k"
        "       JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k)"
        "  FROM pg_constraint con WHERE con.conrelid = %s AND con.contype IN ('p', 'u')"
        "   AND NOT (SELECT attnum FROM pg_attribute WHERE attrelid = con.conrelid"
        "            AND attname = %s) = ANY(con.conkey)", (relation.oid, column)).fetchall()
    statements = [sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(
        relation.ident(), col)]
    for conname, contype, columns in keys:
        kind = sql.SQL("PRIMARY KEY" if contype == "p" else "UNIQUE")
        statements.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}, ADD CONSTRAINT {} {} "
                                  "({}, {})").format(
            relation.ident(), sql.Identifier(conname), sql.Identifier(conname), kind,
            sql.SQL(", ").join(map(sql.Identifier, columns)), col))

    def body() -> None:
        for statement in statements:
            conn.execute(statement)

    short_transaction(conn, f"widen the keys of {relation.qualified}", policy, body)
    return convert_table(conn, relation.qualified, column, premake=premake,
                         default_partition=default_partition, policy=policy)
