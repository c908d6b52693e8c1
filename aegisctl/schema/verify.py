"""`schema verify`: does the live database hold what its applied migrations should have made?

The expected shape is not a hand-kept list that could drift from the SQL: the applied migrations
are replayed into a scratch schema inside a transaction that is always rolled back, and the
catalogs of both schemas are compared (tables, columns, indexes, constraints, triggers, enum
types), along with the recorded checksums and the configured extensions.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed
from aegisctl.resources import migrations_dir as default_migrations_dir
from aegisctl.schema.differences import Difference, index_table
from aegisctl.schema.dimension import database_embedding_dim
from aegisctl.schema.extensions import OPTIONAL_EXTENSIONS
from aegisctl.schema.files import load_migrations, split_statements
from aegisctl.schema.runner import schema_status

if TYPE_CHECKING:
    import psycopg

    from aegisctl.output import Block

Catalog = dict[str, dict[str, str]]  # kind -> object key -> definition


@dataclass
class VerifyReport:
    embedding_dim: int | None
    schema: str
    checked: dict[str, int] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        if self.ok:
            plural = {"index": "indexes"}
            checked = ", ".join(f"{n} {plural.get(kind, kind + 's')}"
                                for kind, n in self.checked.items())
            return [Note(f"schema verified: no differences ({checked})")]
        return [Table(["kind", Column("name", "id"), "problem", Column("expected", "text"),
                       Column("actual", "text")],
                      [(d.kind, d.name, d.problem, d.expected or "", d.actual or "")
                       for d in self.differences], title="differences")]


_QUERIES: dict[str, str] = {
    "table": """SELECT c.relname, c.relkind::text FROM pg_class c
        WHERE c.relnamespace = %(ns)s::regnamespace AND c.relkind IN ('r', 'p')""",
    "column": """SELECT c.relname || '.' || a.attname,
            format_type(a.atttypid, a.atttypmod)
            || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
            || CASE WHEN a.attgenerated = 's' THEN ' GENERATED ' ELSE ' DEFAULT ' END
            || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = %(ns)s::regnamespace AND c.relkind IN ('r', 'p')
          AND a.attnum > 0 AND NOT a.attisdropped""",
    "index": """SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        WHERE i.relnamespace = %(ns)s::regnamespace""",
    "constraint": """SELECT c.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        WHERE c.relnamespace = %(ns)s::regnamespace""",
    "trigger": """SELECT c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = %(ns)s::regnamespace AND NOT t.tgisinternal""",
    "type": """SELECT t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
        FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
        WHERE t.typnamespace = %(ns)s::regnamespace GROUP BY t.typname""",
}


def _snapshot(conn: psycopg.Connection[Any], schema: str) -> Catalog:
    prefix = re.compile(r'(?<![\w".])(?:"' + re.escape(schema) + r'"|' + re.escape(schema)
                        + r")\.")
    catalog: Catalog = {}
    for kind, query in _QUERIES.items():
        rows = conn.execute(query, {"ns": schema}).fetchall()
        catalog[kind] = {str(k): prefix.sub("", str(v)) for k, v in rows}
    return catalog


def _expected(conn: psycopg.Connection[Any], files: list[Any], dim: int) -> Catalog:
    import psycopg
    from psycopg import sql

    scratch = f"aegis_verify_{secrets.token_hex(4)}"
    with conn.transaction(force_rollback=True):
        try:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
        except psycopg.errors.InsufficientPrivilege:
            raise OperationFailed(
                "schema verify needs the CREATE privilege on the database: it replays the "
                "migrations in a scratch schema inside a transaction that is rolled back",
                hint="run it as the database owner",
            ) from None
        path_row = conn.execute("SELECT current_setting('search_path')").fetchone()
        path = str(path_row[0]) if path_row else "public"
        conn.execute(sql.SQL("SELECT set_config('search_path', {}, true)").format(
            sql.Literal(f'"{scratch}", {path}')))
        for migration in files:
            text = migration.render(dim)
            if not migration.transactional:
                text = re.sub(r"\bCONCURRENTLY\b", "", text, flags=re.IGNORECASE)
            for statement in split_statements(text):
                conn.execute(statement.text)
        catalog = _snapshot(conn, scratch)
        catalog["constraint (restored)"] = _round_trip_checks(conn, scratch)
        return catalog


def _round_trip_checks(conn: psycopg.Connection[Any], scratch: str) -> dict[str, str]:
    """CHECK constraints as a dump and restore leaves them: PostgreSQL deparses `x IN (...)`
    on a varchar column differently once its own deparse is parsed again (the casts move
    inside the ARRAY), so a restored database shows that second form. Re-creating each
    scratch constraint from its deparse yields it."""
    from psycopg import sql

    rows = conn.execute(
        "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k"
        " JOIN pg_class c ON c.oid = k.conrelid"
        " WHERE c.relnamespace = %s::regnamespace AND k.contype = 'c'", (scratch,)).fetchall()
    for table, name, definition in rows:
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}, ADD CONSTRAINT {} {}").format(
            sql.Identifier(scratch, table), sql.Identifier(name), sql.Identifier(name),
            sql.SQL(definition)))
    return _snapshot(conn, scratch)["constraint"]


def verify_schema(conn: psycopg.Connection[Any], extensions: list[str],
                  migrations_dir: Path | None = None) -> VerifyReport:
    """Compare the live database with what the applied migrations produce. Changes nothing."""
    files = load_migrations(migrations_dir or default_migrations_dir())
    status = schema_status(conn, files=files)
    schema_row = conn.execute("SELECT current_schema()").fetchone()
    schema = str(schema_row[0]) if schema_row and schema_row[0] else "public"
    dim = database_embedding_dim(conn)
    report = VerifyReport(embedding_dim=dim, schema=schema)
    for m in status.migrations:
        if m.state != "applied":
            report.differences.append(Difference("migration", m.filename or f"{m.version:04d}",
                                                 m.state))
    report.differences.extend(_extension_differences(conn, extensions))
    applied = {m.version for m in status.migrations if m.state in ("applied", "changed")}
    if not applied:
        report.differences.append(Difference("migration", "(all)", "not initialised",
                                             actual="run `aegisctl schema init`"))
        return report
    if dim is None:
        report.differences.append(Difference("metadata", "embedding_dim", "missing"))
        return report
    actual = _snapshot(conn, schema)
    expected = _expected(conn, [f for f in files if f.version in applied], dim)
    restored_form = expected.pop("constraint (restored)")
    tables = set(expected["table"])
    for kind, wanted in expected.items():
        have = actual.get(kind, {})
        report.checked[kind] = len(wanted)
        for key, definition in sorted(wanted.items()):
            if key not in have:
                report.differences.append(Difference(kind, key, "missing", expected=definition))
            elif kind == "constraint" and have[key] == restored_form.get(key):
                continue  # the same constraint after a dump and restore
            elif have[key] != definition:
                report.differences.append(Difference(kind, key, "different",
                                                     expected=definition, actual=have[key]))
        for key, definition in sorted(have.items()):
            if key in wanted or kind in ("table", "type"):
                continue
            owner = key.split(".", 1)[0] if kind != "index" else index_table(definition)
            if owner in tables:
                report.differences.append(Difference(kind, key, "unexpected", actual=definition))
    from aegisctl.schema.verify_partitions import drop_partitioning_differences

    report.differences = drop_partitioning_differences(conn, schema, report.differences)
    return report


def _extension_differences(conn: psycopg.Connection[Any],
                           extensions: list[str]) -> list[Difference]:
    rows = conn.execute(
        "SELECT r.name, e.extversion, a.default_version FROM unnest(%s::text[]) AS r(name)"
        " LEFT JOIN pg_extension e ON e.extname = r.name"
        " LEFT JOIN pg_available_extensions a ON a.name = r.name",
        (list(dict.fromkeys(["vector", *extensions])),),
    ).fetchall()
    found = []
    for name, installed, available in rows:
        if installed:
            continue
        if name in OPTIONAL_EXTENSIONS and not available:
            continue
        found.append(Difference("extension", name, "not installed",
                                expected="installed", actual="available" if available
                                else "not available on the server"))
    return found
