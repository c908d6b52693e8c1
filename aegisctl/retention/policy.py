"""A retention policy checked against the catalog: the table, its age column, the exemption
columns and the referencing tables must exist (else a configuration error, exit 2), and the
policy becomes one WHERE clause, "expired and not exempt", built from quoted identifiers and
bound parameters only."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.errors import ConfigError
from aegisctl.maintenance.catalog import Relation
from aegisctl.retention.settings import PolicySettings
from aegisctl.units import CalendarAge, parse_age, subtract_age

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

TIME_TYPES = {"timestamp with time zone", "timestamp without time zone", "date"}


@dataclass
class ForeignKey:
    """A foreign key of `child` pointing at the policy's table: rows it references are kept."""

    child: Relation
    child_columns: list[str]
    parent_columns: list[str]


@dataclass
class ResolvedPolicy:
    name: str
    settings: PolicySettings
    table: Relation
    column: str
    column_type: str
    age: CalendarAge
    keep: dict[str, list[str]]
    referenced_by: list[ForeignKey] = field(default_factory=list)
    # A valid btree index whose first key is the age column: batches walk it.
    indexed: bool = False
    hnsw_indexes: list[Relation] = field(default_factory=list)
    partitioned_on_column: bool = False
    rows_estimate: int = 0  # pg_class.reltuples when the policy was resolved

    def cutoff(self, now: dt.datetime) -> dt.datetime:
        return subtract_age(now.astimezone(dt.UTC), self.age)

    def condition(self, alias: str, cutoff: dt.datetime) -> tuple[sql.Composable, dict[str, Any]]:
        """`<alias>.column < cutoff AND NOT exempt` and its parameters."""
        from psycopg import sql

        row = sql.Identifier(alias)
        parts: list[sql.Composable] = [
            sql.SQL("{}.{} < %(cutoff)s").format(row, sql.Identifier(self.column))]
        params: dict[str, Any] = {"cutoff": cutoff}
        for n, (column, values) in enumerate(sorted(self.keep.items())):
            # NULL is not an exempt value: a row with no importance is not important.
            parts.append(sql.SQL("NOT COALESCE({}.{}::text = ANY(%(keep_{})s::text[]), false)")
                         .format(row, sql.Identifier(column), sql.SQL(str(n))))
            params[f"keep_{n}"] = list(values)
        for n, fk in enumerate(self.referenced_by):
            ref = sql.Identifier(f"ref_{n}")
            joins = sql.SQL(" AND ").join(
                sql.SQL("{}.{} = {}.{}").format(ref, sql.Identifier(c), row, sql.Identifier(p))
                for c, p in zip(fk.child_columns, fk.parent_columns, strict=True))
            parts.append(sql.SQL("NOT EXISTS (SELECT 1 FROM {} AS {} WHERE {})").format(
                fk.child.ident(), ref, joins))
        return sql.SQL(" AND ").join(parts), params


def _fail(policy: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"cleanup.policies.{policy}.{key}: {message}",
                       hint="fix the policy in the config; see `aegisctl cleanup run --dry-run`")


def resolve_policy(conn: psycopg.Connection[Any], name: str,
                   settings: PolicySettings) -> ResolvedPolicy:
    from aegisctl.resources import sql_dir

    query = (sql_dir() / "retention" / "policy_catalog.sql").read_text()
    row = conn.execute(query, {"schema": settings.schema, "table": settings.table,
                               "column": settings.column}).fetchone()
    if row is None:
        raise _fail(name, "table", f"no table {settings.schema}.{settings.table} in database "
                                   f"'{conn.info.dbname}'")
    table = Relation(int(row[0]), str(row[1]), str(row[2]), str(row[3]), int(row[4] or 0))
    columns = {str(k): str(v) for k, v in dict(row[6]).items()}
    if settings.column not in columns:
        raise _fail(name, "column", f"table {table.qualified} has no column "
                                    f"'{settings.column}' (columns: {', '.join(sorted(columns))})")
    if columns[settings.column] not in TIME_TYPES:
        raise _fail(name, "column", f"{table.qualified}.{settings.column} is "
                                    f"{columns[settings.column]}, not a timestamp or date")
    try:
        age = parse_age(settings.max_age)
    except ValueError as exc:
        raise _fail(name, "max_age", str(exc)) from None
    for column in settings.keep:
        if column not in columns:
            raise _fail(name, f"keep.{column}", f"table {table.qualified} has no column "
                                                f"'{column}'")
    policy = ResolvedPolicy(name=name, settings=settings, table=table, column=settings.column,
                            column_type=columns[settings.column], age=age,
                            keep={k: list(v) for k, v in settings.keep.items()},
                            rows_estimate=int(row[5] or 0))
    for child_name in settings.keep_referenced_by:
        policy.referenced_by += _foreign_keys(conn, name, table, child_name)
    policy.indexed = bool(row[7])
    policy.hnsw_indexes = [Relation(int(r[0]), str(r[1]), str(r[2]), "i") for r in row[8]]
    key = row[9]
    policy.partitioned_on_column = bool(
        table.kind == "p" and key and key[0] == "r" and key[1] == 1
        and key[2] == settings.column)
    return policy


def _foreign_keys(conn: psycopg.Connection[Any], policy: str, table: Relation,
                  child_name: str) -> list[ForeignKey]:
    from aegisctl.maintenance.catalog import split_name

    schema, rel = split_name(child_name)
    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind,"
        "       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(num, ord)"
        "             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num"
        "             ORDER BY k.ord),"
        "       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(num, ord)"
        "             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num"
        "             ORDER BY k.ord)"
        "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        "  LEFT JOIN pg_constraint con ON con.conrelid = c.oid AND con.contype = 'f'"
        "       AND con.confrelid = %(parent)s"
        " WHERE c.relname = %(rel)s AND c.relkind IN ('r', 'p')"
        "   AND (n.nspname = %(schema)s OR (%(schema)s::text IS NULL AND n.nspname = %(own)s))",
        {"parent": table.oid, "rel": rel, "schema": schema, "own": table.schema}).fetchall()
    if not rows:
        raise _fail(policy, "keep_referenced_by", f"no table '{child_name}'")
    keys = [r for r in rows if r[4]]
    if not keys:
        raise _fail(policy, "keep_referenced_by", f"table '{child_name}' has no foreign key "
                                                  f"to {table.qualified}")
    return [ForeignKey(Relation(int(r[0]), str(r[1]), str(r[2]), str(r[3])), list(r[4]),
                       list(r[5])) for r in keys]
