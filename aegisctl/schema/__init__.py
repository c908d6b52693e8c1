"""The Aegis schema: extensions, versioned migrations, the embedding dimension, verification.

Public API (other modules build on these names):
  embedding_index_expr(dim)        -> "embedding" | "embedding::halfvec(N)" (ORDER BY this)
  database_embedding_dim(conn)     -> int | None
  check_embedding_dim(conn, dim)   raises ConfigError on mismatch
  migrate(conn, settings, ...)     -> MigrationResult
  schema_status(conn)              -> SchemaStatus
  init_schema(conn, settings, ...) -> InitResult (extensions, then migrations)
  verify_schema(conn, ...)         -> VerifyReport
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.config import SchemaSettings
from aegisctl.schema.dimension import (
    check_embedding_dim,
    database_embedding_dim,
    embedding_index_expr,
    resolve_embedding_dim,
)
from aegisctl.schema.extensions import ExtensionReport, install_extensions, list_extensions
from aegisctl.schema.runner import (
    MigrationFailed,
    MigrationResult,
    SchemaStatus,
    acquire_lock,
    migrate,
    release_lock,
    schema_status,
)

if TYPE_CHECKING:
    import psycopg

    from aegisctl.output import Block

__all__ = [
    "ExtensionReport",
    "InitResult",
    "MigrationFailed",
    "MigrationResult",
    "SchemaStatus",
    "check_embedding_dim",
    "database_embedding_dim",
    "embedding_index_expr",
    "init_schema",
    "install_extensions",
    "list_extensions",
    "migrate",
    "schema_status",
]


@dataclass
class InitResult:
    extensions: ExtensionReport
    migration: MigrationResult

    def to_json(self) -> dict[str, Any]:
        return {"extensions": self.extensions.to_json(), "migration": self.migration.to_json()}

    def to_view(self) -> list[Block]:
        return [*self.extensions.to_view(), *self.migration.to_view()]


def init_schema(conn: psycopg.Connection[Any], settings: SchemaSettings, *,
                embedding_dim: int | None = None, wait_lock: float | None = None,
                migrations_dir: Path | None = None) -> InitResult:
    """Install the configured extensions, then apply every pending migration. Idempotent."""
    dim, _ = resolve_embedding_dim(conn, embedding_dim, settings.embedding_dim)
    # Under the migration lock: two concurrent inits must not race on CREATE EXTENSION either.
    waited = acquire_lock(conn, settings.lock_wait if wait_lock is None else wait_lock)
    try:
        extensions = install_extensions(conn, None, settings.extensions)
        migration = migrate(conn, settings, embedding_dim=dim, migrations_dir=migrations_dir,
                            lock_held=True)
    finally:
        release_lock(conn)
    migration.lock_waited_s = round(waited, 3)
    return InitResult(extensions, migration)
