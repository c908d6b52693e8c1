"""`schema verify` on a table `schema partition` converted: the differences partitioning makes
by design (a partitioned table, its indexes created ON ONLY the parent, the partition column
NOT NULL and added to the primary key and unique constraints) are not drift."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from aegisctl.schema.differences import Difference


def _keys(conn: psycopg.Connection[Any], schema: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT c.relname, a.attname FROM pg_partitioned_table p"
        "  JOIN pg_class c ON c.oid = p.partrelid"
        "  JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]"
        " WHERE c.relnamespace = %s::regnamespace AND p.partnatts = 1", (schema,)).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def _widened(expected: str, actual: str, column: str) -> bool:
    """`actual` is `expected` with the column appended to its last column list."""
    if not expected.endswith(")"):
        return False
    return any(actual == f"{expected[:-1]}, {name})" for name in (column, f'"{column}"'))


def _explained(diff: Difference, keys: dict[str, str]) -> bool:
    from aegisctl.schema.differences import index_table

    expected, actual = diff.expected or "", diff.actual or ""
    if diff.kind == "table":
        return diff.name in keys and (expected, actual) == ("r", "p")
    if diff.kind == "column":
        table, _, column = diff.name.partition(".")
        return keys.get(table) == column and actual.replace(" NOT NULL", "", 1) == expected
    if diff.kind == "index":
        key = keys.get(index_table(actual or expected))
        if key is None:
            return False
        normal = actual.replace(" ON ONLY ", " ON ", 1)
        return normal == expected or _widened(expected, normal, key)
    if diff.kind == "constraint":
        key = keys.get(diff.name.split(".", 1)[0])
        if key is None:
            return False
        if diff.problem == "unexpected":
            return actual in (f"NOT NULL {key}", f'NOT NULL "{key}"')
        return _widened(expected, actual, key)
    return False


def drop_partitioning_differences(conn: psycopg.Connection[Any], schema: str,
                                  differences: list[Difference]) -> list[Difference]:
    keys = _keys(conn, schema)
    if not keys:
        return differences
    return [d for d in differences if not _explained(d, keys)]
