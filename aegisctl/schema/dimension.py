"""The embedding dimension: chosen once at `schema init`, recorded in the database, checked by
every command that meets a configured one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aegisctl.config import (
    DEFAULT_EMBEDDING_DIM,
    MAX_EMBEDDING_DIM,
    MAX_VECTOR_INDEX_DIM,
    check_embedding_dim_range,
)
from aegisctl.errors import ConfigError

if TYPE_CHECKING:
    import psycopg

# The range is declared once, in aegisctl.config (config validation uses it too).
MAX_HALFVEC_INDEX_DIM = MAX_EMBEDDING_DIM
METADATA_TABLE = "aegis_metadata"


def validate_dim(dim: int, where: str = "embedding dimension") -> int:
    return check_embedding_dim_range(dim, where)


def resolve_embedding_dim(conn: psycopg.Connection[Any], requested: int | None,
                          configured: int | None) -> tuple[int, str]:
    """The dimension a schema command works with, and the setting it came from: --embedding-dim
    (`requested`), else schema.embedding_dim (`configured`), else the database's recorded one,
    else the default for a new database. A given one must equal the database's."""
    if requested is not None:
        dim, setting = requested, "--embedding-dim"
    elif configured is not None:
        dim, setting = configured, "schema.embedding_dim"
    else:
        recorded = database_embedding_dim(conn)
        if recorded is not None:
            return recorded, "the database"
        dim, setting = DEFAULT_EMBEDDING_DIM, "schema.embedding_dim"
    validate_dim(dim, setting)
    check_embedding_dim(conn, dim, setting)
    return dim, setting


def embedding_index_expr(dim: int) -> str:
    """The expression the HNSW index is built on: `embedding`, or `embedding::halfvec(N)` above
    2000 dimensions. A search must ORDER BY this same expression for the index to be used."""
    validate_dim(dim)
    if dim > MAX_VECTOR_INDEX_DIM:
        return f"embedding::halfvec({dim})"
    return "embedding"


def hnsw_index_key(dim: int) -> str:
    """The key of `CREATE INDEX ... USING hnsw (<key>)` for the embedding column."""
    if dim > MAX_VECTOR_INDEX_DIM:
        return f"({embedding_index_expr(dim)}) halfvec_cosine_ops"
    return "embedding vector_cosine_ops"


def _table_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def database_embedding_dim(conn: psycopg.Connection[Any]) -> int | None:
    """The dimension the database was initialised with; None for a database without the
    schema. Falls back to the column type when the metadata row is missing (a database
    created by hand from the seed)."""
    if _table_exists(conn, METADATA_TABLE):
        row = conn.execute(
            "SELECT value FROM aegis_metadata WHERE key = 'embedding_dim'"
        ).fetchone()
        if row is not None:
            return int(row[0])
    if _table_exists(conn, "episodic_memory"):
        row = conn.execute(
            "SELECT a.atttypmod FROM pg_attribute a"
            " WHERE a.attrelid = to_regclass('episodic_memory') AND a.attname = 'embedding'"
            " AND NOT a.attisdropped"
        ).fetchone()
        if row is not None and row[0] is not None and int(row[0]) > 0:
            return int(row[0])
    return None


def check_embedding_dim(conn: psycopg.Connection[Any], configured: int,
                        setting: str = "schema.embedding_dim") -> None:
    """Raise ConfigError when the configured dimension differs from the database's."""
    actual = database_embedding_dim(conn)
    if actual is not None and actual != configured:
        raise ConfigError(
            f"embedding dimension mismatch: the database stores {actual}-dimension embeddings "
            f"but the configuration says {configured} ({setting})",
            hint=f"set {setting}: {actual} (and use an embedding model of that size), or "
            "initialise a new database with the other dimension",
        )


def record_embedding_dim(conn: psycopg.Connection[Any], dim: int) -> None:
    """Store the dimension (inside the caller's transaction); never overwrites another one."""
    conn.execute(
        "INSERT INTO aegis_metadata (key, value, updated_at) VALUES ('embedding_dim', %s, now())"
        " ON CONFLICT (key) DO NOTHING",
        (str(dim),),
    )
