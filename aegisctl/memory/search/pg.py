"""What every search signal needs from its connection: per-connection state (pgvector's
version, the session's ef_search, cached estimates and composed statements), the query vector
as a binary parameter, a kind's select list and EXPLAIN lines."""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed
from aegisctl.memory.refs import TABLES, Kind

if TYPE_CHECKING:
    import psycopg
    from pgvector import Vector

FTS_CONFIG = "english"


def query_vector(conn: psycopg.Connection[Any], values: Sequence[float]) -> Vector:
    """The query embedding as a pgvector parameter sent in binary (registers the type once per
    connection): no 20 KB text literal for the server to parse."""
    from pgvector import Vector
    from pgvector.psycopg.vector import register_vector_info
    from psycopg.types import TypeInfo

    # One sum instead of 1536 checks: NaN and infinity carry through it (a finite sum of
    # float4-range values cannot overflow a double).
    if not math.isfinite(sum(values)):
        raise OperationFailed("the query embedding contains NaN or infinite values")
    if conn.adapters.types.get("vector") is None:
        info = TypeInfo.fetch(conn, "vector")
        if info is None:
            raise OperationFailed("the vector extension is not installed in this database",
                                  hint="run aegisctl schema init")
        register_vector_info(conn, info)
    return Vector(list(values))


_VERSIONS: weakref.WeakKeyDictionary[Any, tuple[int, ...]] = weakref.WeakKeyDictionary()
# Per connection: the session's hnsw.ef_search as set by us, and table sizes with their time.
_SESSION: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
RELTUPLES_TTL = 60.0  # seconds an unfiltered search trusts a table size it read


def session_state(conn: psycopg.Connection[Any]) -> dict[Any, Any]:
    state = _SESSION.get(conn)
    if state is None:
        state = _SESSION[conn] = {}
    return state


def remember(conn: psycopg.Connection[Any], key: tuple[Any, ...], value: Any,
              most: int) -> None:
    """Keep `value` for this connection under `key`, whose first item names the kind of entry;
    a long-lived connection asking many distinct filters drops that kind's entries at `most`."""
    state = session_state(conn)
    same_kind = [k for k in state if isinstance(k, tuple) and k[0] == key[0]]
    if len(same_kind) >= most:
        for old in same_kind:
            del state[old]
    state[key] = value


def pgvector_version(conn: psycopg.Connection[Any]) -> tuple[int, ...]:
    """pgvector's version, asked once per connection."""
    known = _VERSIONS.get(conn)
    if known is not None:
        return known
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row is None:
        raise OperationFailed("the vector extension is not installed in this database",
                              hint="run aegisctl schema init")
    version = tuple(int(p) for p in str(row[0]).split(".") if p.isdigit())
    _VERSIONS[conn] = version
    return version


def select_list(kind: Kind, alias: str = "", binary: bool = False) -> Any:
    """The kind's columns; `binary`: for a binary-format result (which psycopg decodes faster),
    the importance enum is sent as text, since psycopg has no binary loader for it."""
    from psycopg import sql

    def column(name: str) -> Any:
        ident = sql.Identifier(alias, name) if alias else sql.Identifier(name)
        if binary and name == "importance":
            return sql.SQL("{}::text AS {}").format(ident, sql.Identifier(name))
        return ident

    return sql.SQL(", ").join(column(c) for c in ("id", *TABLES[kind].columns))


_VECTOR_LITERAL = re.compile(r"'\[[-0-9.e,]{200,}\]'")


def plan_lines(rows: list[dict[str, Any]]) -> list[str]:
    """EXPLAIN output with the query vector's literal shortened."""
    return [_VECTOR_LITERAL.sub("'[query vector]'", str(next(iter(r.values()))))
            for r in rows]


def similarity_column(vector: Vector | None) -> Any:
    from psycopg import sql

    if vector is None:
        return sql.SQL("NULL::float8 AS similarity")
    return sql.SQL("1 - (embedding <=> %(q)b) AS similarity")
