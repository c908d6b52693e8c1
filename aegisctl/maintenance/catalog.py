"""Tables and indexes named by a user or the config, proven to exist in the catalog before a
statement uses them (and then quoted through psycopg.sql.Identifier)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.errors import UsageError

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

_USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') " \
                "AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'"


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # r table | p partitioned table | m materialized view | i index
    size: int = 0  # bytes: table with indexes and toast, or the index

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def ident(self) -> sql.Composable:
        from psycopg import sql

        return sql.Identifier(self.schema, self.name)


def split_name(name: str) -> tuple[str | None, str]:
    """'schema.table' or 'table' (a quoted name with a dot is not supported: rename it)."""
    if name.count(".") > 1 or not name.strip(". "):
        raise UsageError(f"'{name}' is not a table name (use NAME or SCHEMA.NAME)")
    if "." in name:
        schema, rel = name.split(".", 1)
        return schema, rel
    return None, name


def _rows_to_relations(rows: list[tuple[Any, ...]]) -> list[Relation]:
    return [Relation(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4] or 0)) for r in rows]


def find_relation(conn: psycopg.Connection[Any], name: str, kinds: str = "rpm",
                  what: str = "table") -> Relation:
    schema, rel = split_name(name)
    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind, pg_total_relation_size(c.oid)"
        "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = %(rel)s AND c.relkind = ANY(%(kinds)s)"
        "   AND (n.nspname = %(schema)s OR (%(schema)s::text IS NULL"
        "        AND pg_table_is_visible(c.oid)))",
        {"rel": rel, "schema": schema, "kinds": list(kinds)}).fetchall()
    if not rows:
        raise UsageError(f"no {what} named '{name}' in database "
                         f"'{conn.info.dbname}'", hint="check the name (and its schema)")
    return _rows_to_relations(rows)[0]


def user_tables(conn: psycopg.Connection[Any], kinds: str = "rm") -> list[Relation]:
    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind, pg_total_relation_size(c.oid)"
        "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE c.relkind = ANY(%(kinds)s) AND {_USER_SCHEMAS}"
        " ORDER BY n.nspname, c.relname", {"kinds": list(kinds)}).fetchall()
    return _rows_to_relations(rows)


def table_indexes(conn: psycopg.Connection[Any], table_oids: list[int] | None,
                  invalid_only: bool = False, access_method: str | None = None,
                  ) -> list[tuple[Relation, Relation, bool, str]]:
    """(index, its table, valid, access method) for the given tables (None: every user
    table)."""
    rows = conn.execute(
        "SELECT ic.oid, n.nspname, ic.relname, 'i', pg_relation_size(ic.oid),"
        "       tc.oid, tn.nspname, tc.relname, tc.relkind, 0, i.indisvalid, am.amname"
        "  FROM pg_index i"
        "  JOIN pg_class ic ON ic.oid = i.indexrelid"
        "  JOIN pg_namespace n ON n.oid = ic.relnamespace"
        "  JOIN pg_class tc ON tc.oid = i.indrelid"
        "  JOIN pg_namespace tn ON tn.oid = tc.relnamespace"
        "  JOIN pg_am am ON am.oid = ic.relam"
        f" WHERE {_USER_SCHEMAS.replace('n.nspname', 'tn.nspname')}"
        "   AND (%(oids)s::oid[] IS NULL OR i.indrelid = ANY(%(oids)s::oid[]))"
        "   AND (NOT %(invalid)s OR NOT i.indisvalid)"
        "   AND (%(am)s::text IS NULL OR am.amname = %(am)s)"
        "   AND ic.relkind = 'i'"
        " ORDER BY tn.nspname, tc.relname, ic.relname",
        {"oids": table_oids, "invalid": invalid_only, "am": access_method}).fetchall()
    return [(Relation(int(r[0]), r[1], r[2], "i", int(r[4] or 0)),
             Relation(int(r[5]), r[6], r[7], r[8], 0), bool(r[10]), str(r[11])) for r in rows]
