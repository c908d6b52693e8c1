"""What `schema partition` must know about a table before touching it, and the refusals: a
table that cannot become range-partitioned is refused with the reason and the fix before any
statement runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed, UsageError
from aegisctl.maintenance.catalog import Relation, find_relation
from aegisctl.schema.partition_bounds import TIME_TYPES

if TYPE_CHECKING:
    import psycopg


@dataclass
class IndexCopy:
    name: str
    definition: str  # pg_get_indexdef: "CREATE [UNIQUE] INDEX name ON schema.table USING ..."
    constraint: str | None  # the PRIMARY KEY / UNIQUE constraint it backs
    constraint_def: str | None
    comment: str | None


@dataclass
class TableFacts:
    relation: Relation
    kind: str  # r | p
    column: str
    column_type: str
    nullable: bool
    owner: str
    comment: str | None
    indexes: list[IndexCopy] = field(default_factory=list)
    foreign_keys: list[tuple[str, str]] = field(default_factory=list)  # (name, definition)
    grants: list[tuple[str, str, bool]] = field(default_factory=list)  # (privilege, grantee, opt)
    column_grants: list[tuple[str, str, str, bool]] = field(default_factory=list)
    sequences: list[tuple[str, str, str]] = field(default_factory=list)  # (schema, seq, column)
    rows_estimate: int = 0


def find_table(conn: psycopg.Connection[Any], name: str) -> Relation:
    return find_relation(conn, name, kinds="rp")


def inspect_table(conn: psycopg.Connection[Any], relation: Relation, column: str) -> TableFacts:
    row = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, NULL), NOT a.attnotnull,"
        "       pg_get_userbyid(c.relowner), obj_description(c.oid, 'pg_class'),"
        "       greatest(c.reltuples, 0)::bigint"
        "  FROM pg_class c LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = %s"
        "   AND a.attnum > 0 AND NOT a.attisdropped WHERE c.oid = %s",
        (column, relation.oid)).fetchone()
    assert row is not None
    if row[0] is None:
        raise UsageError(f"{relation.qualified} has no column {column}",
                         hint="name the time column with --column")
    if row[1] not in TIME_TYPES:
        raise UsageError(f"{relation.qualified}.{column} is {row[1]}: monthly partitions need a "
                         "timestamptz, timestamp or date column", hint="choose one with --column")
    facts = TableFacts(relation, relation.kind, column, str(row[1]), bool(row[2]), str(row[3]),
                       row[4], rows_estimate=int(row[5]))
    if relation.kind == "p":
        return facts
    _refuse_unsupported(conn, facts)
    _read_indexes(conn, facts)
    facts.foreign_keys = [(str(r[0]), str(r[1])) for r in conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = %s AND contype = 'f' ORDER BY conname", (relation.oid,)).fetchall()]
    facts.grants = [(str(r[0]), str(r[1]), bool(r[2])) for r in conn.execute(
        "SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN 'PUBLIC'"
        "       ELSE pg_get_userbyid(a.grantee) END, a.is_grantable"
        "  FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = %s"
        "   AND a.grantee <> c.relowner", (relation.oid,)).fetchall()]
    facts.column_grants = [(str(r[0]), str(r[1]), str(r[2]), bool(r[3])) for r in conn.execute(
        "SELECT a.privilege_type, att.attname, CASE WHEN a.grantee = 0 THEN 'PUBLIC'"
        "       ELSE pg_get_userbyid(a.grantee) END, a.is_grantable"
        "  FROM pg_attribute att, aclexplode(att.attacl) a"
        " WHERE att.attrelid = %s AND att.attacl IS NOT NULL", (relation.oid,)).fetchall()]
    facts.sequences = [(str(r[0]), str(r[1]), str(r[2])) for r in conn.execute(
        "SELECT sn.nspname, s.relname, a.attname FROM pg_depend d"
        "  JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'"
        "  JOIN pg_namespace sn ON sn.oid = s.relnamespace"
        "  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
        " WHERE d.refobjid = %s AND d.classid = 'pg_class'::regclass AND d.deptype = 'a'",
        (relation.oid,)).fetchall()]
    return facts


def _refuse_unsupported(conn: psycopg.Connection[Any], facts: TableFacts) -> None:
    from psycopg import sql

    oid, name = facts.relation.oid, facts.relation.qualified
    referenced = conn.execute(
        "SELECT conname, conrelid::regclass::text FROM pg_constraint"
        " WHERE contype = 'f' AND confrelid = %s AND conrelid <> %s ORDER BY 1",
        (oid, oid)).fetchall()
    if referenced:
        keys = ", ".join(f"{r[0]} on {r[1]}" for r in referenced)
        raise OperationFailed(
            f"cannot partition {name}: foreign keys point at it ({keys})",
            hint="a key that references a partitioned table must include the partition column;"
                 " drop those foreign keys (or make them include it) first")
    identity = conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0"
                            " AND attidentity <> '' AND NOT attisdropped", (oid,)).fetchone()
    if identity:
        raise OperationFailed(
            f"cannot partition {name}: column {identity[0]} is an identity column, which a "
            "partition cannot have", hint="use a sequence default (bigserial) instead")
    for sql_text, what in (
        ("SELECT tgname FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal", "trigger"),
        ("SELECT relname FROM pg_class WHERE oid = %s AND relrowsecurity", "row-level security"),
        ("SELECT conname FROM pg_constraint WHERE conrelid = %s AND contype = 'x'",
         "exclusion constraint"),
        ("SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = %(o)s"
         " UNION ALL SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %(o)s",
         "inheritance"),
        ("SELECT DISTINCT v.oid::regclass::text FROM pg_depend d"
         "  JOIN pg_rewrite w ON w.oid = d.objid JOIN pg_class v ON v.oid = w.ev_class"
         " WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = %s AND v.oid <> d.refobjid",
         "view"),
    ):
        params: Any = {"o": oid} if "%(o)s" in sql_text else (oid,)
        found = conn.execute(sql_text, params).fetchone()
        if found:
            raise OperationFailed(f"cannot partition {name}: it has a {what} ({found[0]}), "
                                  "which this conversion does not carry over",
                                  hint=f"remove the {what} first and recreate it afterwards")
    _refuse_keys_without_column(conn, facts)
    if facts.nullable and conn.execute(sql.SQL("SELECT 1 FROM {} WHERE {} IS NULL LIMIT 1").format(
            facts.relation.ident(), sql.Identifier(facts.column))).fetchone():
        raise OperationFailed(
            f"cannot partition {name}: {facts.column} is NULL in some rows, and a row needs a "
            "value to have a month", hint=f"set {facts.column} in those rows (or delete them) "
            "and run again")


def _refuse_keys_without_column(conn: psycopg.Connection[Any], facts: TableFacts) -> None:
    from psycopg import sql

    rows = conn.execute(
        "SELECT i.indexrelid::regclass::text, coalesce(con.conname, ''), con.contype,"
        "       array(SELECT a.attname FROM unnest(i.indkey) k JOIN pg_attribute a"
        "             ON a.attrelid = i.indrelid AND a.attnum = k ORDER BY k)"
        "  FROM pg_index i LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid"
        "   AND con.conrelid = i.indrelid"
        " WHERE i.indrelid = %s AND i.indisunique", (facts.relation.oid,)).fetchall()
    for index, conname, contype, columns in rows:
        if facts.column in columns:
            continue
        table = facts.relation.ident().as_string(conn)
        col = sql.Identifier(facts.column).as_string(conn)
        cols = ", ".join(columns) or "an expression"
        listed = ", ".join(sql.Identifier(c).as_string(conn) for c in columns)
        what = {"p": "primary key", "u": "unique constraint"}.get(contype, "unique index")
        new_index = sql.Identifier(
            f"{facts.relation.name}_{'_'.join(columns)}_{facts.column}_key"[:63])
        idx = new_index.as_string(conn)
        con = sql.Identifier(conname).as_string(conn) if conname else ""
        fix = f"CREATE UNIQUE INDEX CONCURRENTLY {idx} ON {table} ({listed}, {col}); "
        if contype == "p" and facts.nullable:
            # SET NOT NULL skips its scan (under ACCESS EXCLUSIVE) when a validated CHECK
            # already proves it; VALIDATE scans without blocking writes.
            fix += (f"ALTER TABLE {table} ADD CONSTRAINT {facts.column}_not_null CHECK "
                    f"({col} IS NOT NULL) NOT VALID; ALTER TABLE {table} VALIDATE CONSTRAINT "
                    f"{facts.column}_not_null; ALTER TABLE {table} ALTER COLUMN {col} SET NOT "
                    f"NULL; ALTER TABLE {table} DROP CONSTRAINT {facts.column}_not_null; ")
        if contype in ("p", "u"):
            kind = "PRIMARY KEY" if contype == "p" else "UNIQUE"
            fix += (f"ALTER TABLE {table} DROP CONSTRAINT {con}, ADD CONSTRAINT {con} "
                    f"{kind} USING INDEX {idx}")
        else:
            fix += f"DROP INDEX CONCURRENTLY {index}"
        raise OperationFailed(
            f"cannot partition {facts.relation.qualified}: its {what} {conname or index} "
            f"({cols}) does not include {facts.column}, and on a partitioned table every "
            "primary key and unique index must include the partition column",
            hint=f"widen it first (unique per month instead of overall): {fix}")


def _read_indexes(conn: psycopg.Connection[Any], facts: TableFacts) -> None:
    rows = conn.execute(
        "SELECT ic.relname, pg_get_indexdef(i.indexrelid), con.conname,"
        "       pg_get_constraintdef(con.oid), obj_description(i.indexrelid, 'pg_class'),"
        "       i.indisvalid"
        "  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid"
        "  LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid"
        "   AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u')"
        " WHERE i.indrelid = %s ORDER BY ic.relname", (facts.relation.oid,)).fetchall()
    for name, definition, conname, condef, comment, valid in rows:
        if not valid:
            raise OperationFailed(
                f"cannot partition {facts.relation.qualified}: index {name} is invalid (a "
                "failed concurrent build)", hint="run `aegisctl maint reindex --table "
                f"{facts.relation.qualified}` first")
        facts.indexes.append(IndexCopy(str(name), str(definition), conname, condef, comment))
