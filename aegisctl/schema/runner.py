"""The migrations runner: bookkeeping, the advisory lock, applying and reporting.

Each migration runs in its own transaction, together with its row in aegis_schema_migrations,
so it is applied completely or not at all. Concurrent runs are serialised by a session advisory
lock taken by spinning on pg_try_advisory_lock: a waiting pg_advisory_lock can deadlock against
CREATE INDEX CONCURRENTLY in another session (Flyway #1654, golang-migrate #960).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, LiteralString

from aegisctl import __version__
from aegisctl.config import SchemaSettings
from aegisctl.errors import LockBusy, OperationFailed, UsageError
from aegisctl.resources import migrations_dir as default_migrations_dir
from aegisctl.schema.dimension import (
    check_embedding_dim,
    database_embedding_dim,
    record_embedding_dim,
    resolve_embedding_dim,
)
from aegisctl.schema.files import MigrationFile, Statement, load_migrations, split_statements

if TYPE_CHECKING:
    import psycopg

    from aegisctl.output import Block

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "aegis_schema_migrations"
# "AEGIS" in ASCII: the key of the session advisory lock that serialises migrations.
LOCK_KEY = 0x4145474953

BOOTSTRAP: tuple[LiteralString, ...] = (
    """CREATE TABLE IF NOT EXISTS aegis_schema_migrations (
        version    integer PRIMARY KEY,
        name       text NOT NULL,
        sha256     text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        duration   interval NOT NULL,
        applied_by text NOT NULL DEFAULT current_user
    )""",
    """CREATE TABLE IF NOT EXISTS aegis_metadata (
        key        text PRIMARY KEY,
        value      text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""",
)


@dataclass
class MigrationState:
    version: int
    name: str
    state: str  # applied | pending | changed | missing (applied, file gone)
    filename: str | None = None
    transactional: bool = True
    applied_at: dt.datetime | None = None
    duration_ms: float | None = None
    applied_by: str | None = None
    file_sha256: str | None = None
    recorded_sha256: str | None = None


@dataclass
class SchemaStatus:
    migrations: list[MigrationState]
    embedding_dim: int | None
    initialised: bool  # the bookkeeping table exists

    def having(self, state: str) -> list[MigrationState]:
        return [m for m in self.migrations if m.state == state]

    @property
    def current_version(self) -> int | None:
        applied = [m.version for m in self.migrations if m.state in ("applied", "changed",
                                                                     "missing")]
        return max(applied) if applied else None

    @property
    def up_to_date(self) -> bool:
        return not any(m.state != "applied" for m in self.migrations)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "current_version": self.current_version,
                "up_to_date": self.up_to_date}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Fields, Table

        return [
            Fields([
                ("version", _fmt_version(self.current_version)),
                ("embedding dimension", self.embedding_dim or "not set (run aegisctl schema init)"),
                ("pending", len(self.having("pending"))),
                ("changed", len(self.having("changed"))),
            ], title="schema"),
            Table([Column("version", "id"), Column("name", "text"), Column("state", "id"),
                   Column("applied (UTC)", "id"), Column("took", "number"),
                   Column("applied by", "text")],
                  [(f"{m.version:04d}", m.name, m.state,
                    m.applied_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")
                    if m.applied_at else "-",
                    f"{m.duration_ms} ms" if m.duration_ms is not None else "-",
                    # user@host; the aegisctl version that applied it is in the JSON
                    (m.applied_by or "-").split(" (")[0]) for m in self.migrations],
                  empty="no migrations"),
        ]


def _fmt_version(version: int | None) -> str:
    return f"{version:04d}" if version is not None else "none"


@dataclass
class AppliedStep:
    version: int
    name: str
    filename: str
    statements: int
    transactional: bool
    duration_ms: float | None = None  # None in a dry run


@dataclass
class MigrationResult:
    dry_run: bool
    embedding_dim: int
    from_version: int | None
    to_version: int | None
    steps: list[AppliedStep] = field(default_factory=list)
    lock_waited_s: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.steps) and not self.dry_run

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "changed": self.changed}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        if not self.steps:
            return [Note(f"schema is up to date at version {_fmt_version(self.to_version)} "
                         f"(embedding dimension {self.embedding_dim}); nothing to do")]
        verb = "would apply" if self.dry_run else "applied"
        blocks: list[Block] = [Table(
            [Column("version", "id"), Column("file", "id"), Column("statements", "number"),
             "transaction", Column("took", "number")],
            [(f"{s.version:04d}", s.filename, s.statements,
              "yes" if s.transactional else "no (marker)",
              "-" if s.duration_ms is None else f"{s.duration_ms} ms") for s in self.steps],
            title=f"{verb} {len(self.steps)} migration(s), {_fmt_version(self.from_version)} -> "
                  f"{_fmt_version(self.to_version)}, embedding dimension {self.embedding_dim}")]
        if self.dry_run:
            blocks.append(Note("dry run: nothing was changed"))
        return blocks


class MigrationFailed(OperationFailed):
    """A migration failed and was rolled back; carries what a report needs."""

    def __init__(self, migration: MigrationFile, statement: Statement | None, line: int | None,
                 sqlstate: str | None, server_error: str, rolled_back: bool,
                 applied_before: list[AppliedStep]) -> None:
        self.migration = migration
        self.statement = statement
        self.line = line
        self.sqlstate = sqlstate
        self.server_error = server_error
        self.rolled_back = rolled_back
        self.applied_before = applied_before
        where = f"{migration.filename}"
        if statement is not None:
            where += f", statement {statement.index} at line {line or statement.line}"
            snippet = " ".join(statement.text.split())
            if len(snippet) > 160:
                snippet = snippet[:157] + "..."
            where += f" ({snippet})"
        code = f" [{sqlstate}]" if sqlstate else ""
        outcome = ("rolled back: nothing of this migration was applied" if rolled_back else
                   "this migration runs outside a transaction: statements before the failing "
                   "one stay applied")
        super().__init__(f"migration failed in {where}: {server_error}{code}; {outcome}",
                         hint="fix the migration or the data and run `aegisctl schema migrate` "
                         "again")

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.migration.path),
            "version": self.migration.version,
            "statement_index": self.statement.index if self.statement else None,
            "line": self.line,
            "statement": self.statement.text if self.statement else None,
            "sqlstate": self.sqlstate,
            "server_error": self.server_error,
            "rolled_back": self.rolled_back,
            "applied_before": [s.version for s in self.applied_before],
        }


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def _recorded(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    if not _exists(conn, MIGRATIONS_TABLE):
        return []
    return conn.execute(
        "SELECT version, name, sha256, applied_at,"
        " extract(epoch FROM duration) * 1000, applied_by"
        " FROM aegis_schema_migrations ORDER BY version"
    ).fetchall()


def schema_status(conn: psycopg.Connection[Any], migrations_dir: Path | None = None,
                  files: list[MigrationFile] | None = None) -> SchemaStatus:
    """Applied, pending, changed-since-applied and missing migrations. Changes nothing."""
    if files is None:
        files = load_migrations(migrations_dir or default_migrations_dir())
    by_version = {f.version: f for f in files}
    states: dict[int, MigrationState] = {}
    for version, name, sha, applied_at, duration_ms, applied_by in _recorded(conn):
        file = by_version.get(version)
        state = "missing" if file is None else "applied" if file.sha256 == sha else "changed"
        states[version] = MigrationState(
            version=version, name=name, state=state,
            filename=file.filename if file else None,
            transactional=file.transactional if file else True,
            applied_at=applied_at, duration_ms=round(float(duration_ms), 1),
            applied_by=applied_by, file_sha256=file.sha256 if file else None,
            recorded_sha256=sha)
    for file in files:
        if file.version not in states:
            states[file.version] = MigrationState(
                version=file.version, name=file.name, state="pending", filename=file.filename,
                transactional=file.transactional, file_sha256=file.sha256)
    return SchemaStatus(
        migrations=[states[v] for v in sorted(states)],
        embedding_dim=database_embedding_dim(conn),
        initialised=_exists(conn, MIGRATIONS_TABLE),
    )


def _refuse_changed(status: SchemaStatus) -> None:
    changed = status.having("changed")
    if changed:
        details = "; ".join(
            f"{m.filename} (applied with sha256 {m.recorded_sha256[:12] if m.recorded_sha256 else '?'}"
            f", file now {m.file_sha256[:12] if m.file_sha256 else '?'})"
            for m in changed
        )
        raise OperationFailed(
            f"refusing to migrate: released migration(s) changed after they were applied: "
            f"{details}",
            hint="a released migration must never be edited: restore the original file and put "
            "the change in a new NNNN_name.sql",
        )


def _plan(status: SchemaStatus, files: list[MigrationFile], to: int | None) -> list[MigrationFile]:
    versions = {f.version for f in files}
    current = status.current_version
    if to is not None:
        if to not in versions:
            known = ", ".join(f"{v:04d}" for v in sorted(versions)) or "none"
            raise UsageError(f"no migration with version {to} (known: {known})")
        if current is not None and to < current:
            raise UsageError(
                f"the database is already at version {current:04d}, past --to {to:04d}",
                hint="aegisctl never migrates down: restore a backup to go back",
            )
    pending = {m.version for m in status.having("pending")}
    return [f for f in files if f.version in pending and (to is None or f.version <= to)]


def acquire_lock(conn: psycopg.Connection[Any], wait_seconds: float) -> float:
    """Take the migration lock, polling pg_try_advisory_lock for up to wait_seconds.
    Returns the seconds waited; raises LockBusy when the time is up."""
    started = time.monotonic()
    delay = 0.05
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if row and row[0]:
            return time.monotonic() - started
        remaining = wait_seconds - (time.monotonic() - started)
        if remaining <= 0:
            raise LockBusy(
                f"another run holds the schema migration lock on this database"
                f"{_lock_holder(conn)}",
                hint="wait for it to finish, or pass --wait-lock SECONDS to wait longer",
            )
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 1.0)


def _lock_holder(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.usename FROM pg_locks l"
        " JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.database = ("
        "   SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND l.classid = %s AND l.objid = %s AND l.objsubid = 1 LIMIT 1",
        (LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF),
    ).fetchone()
    if row is None:
        return ""
    return f" (pid {row[0]}, {row[1] or 'unknown application'}, user {row[2]})"


def release_lock(conn: psycopg.Connection[Any]) -> None:
    import psycopg

    # A failure means the session is gone, and the lock with it.
    with contextlib.suppress(psycopg.Error):
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def _applied_by(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_user").fetchone()
    user = row[0] if row else "?"
    return f"{user}@{socket.gethostname()} (aegisctl {__version__})"


def _server_error(exc: Exception) -> tuple[str | None, str, int | None]:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc).strip().splitlines()[0]
    detail = getattr(diag, "message_detail", None)
    hint = getattr(diag, "message_hint", None)
    text = primary + (f" ({detail})" if detail else "") + (f" (hint: {hint})" if hint else "")
    position = getattr(diag, "statement_position", None)
    return getattr(exc, "sqlstate", None), text, int(position) if position else None


def _apply_one(conn: psycopg.Connection[Any], migration: MigrationFile, dim: int,
               applied_by: str, done: list[AppliedStep]) -> AppliedStep:
    import psycopg

    statements = split_statements(migration.render(dim))
    step = AppliedStep(migration.version, migration.name, migration.filename, len(statements),
                       migration.transactional)
    started = time.perf_counter()
    current: Statement | None = None

    def run_statements() -> None:
        nonlocal current
        for statement in statements:
            current = statement
            conn.execute(statement.text)
        current = None

    def record() -> None:
        elapsed = time.perf_counter() - started
        conn.execute(
            "INSERT INTO aegis_schema_migrations (version, name, sha256, duration, applied_by)"
            " VALUES (%s, %s, %s, make_interval(secs => %s), %s)",
            (migration.version, migration.name, migration.sha256, elapsed, applied_by),
        )
        record_embedding_dim(conn, dim)
        step.duration_ms = round(elapsed * 1000, 1)

    try:
        if migration.transactional:
            with conn.transaction():
                run_statements()
                record()
        else:
            run_statements()
            with conn.transaction():
                record()
    except psycopg.Error as exc:
        sqlstate, message, position = _server_error(exc)
        line = None
        if current is not None:
            line = current.line
            if position:
                line += current.text[: position - 1].count("\n")
        raise MigrationFailed(migration, current, line, sqlstate, message,
                              rolled_back=migration.transactional, applied_before=done) from exc
    log.info("applied %s in %.1f ms", migration.filename, step.duration_ms or 0)
    return step


def _require_vector(conn: psycopg.Connection[Any], plan: list[MigrationFile]) -> None:
    if not any("{{embedding" in f.text for f in plan):
        return
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row is None:
        raise OperationFailed(
            "the pgvector extension (vector) is not installed in this database, and the schema "
            "needs it",
            hint="run `aegisctl ext install vector`, or `aegisctl schema init` which installs the "
            "configured extensions and then migrates",
        )


def migrate(conn: psycopg.Connection[Any], settings: SchemaSettings, *,
            to: int | None = None, dry_run: bool = False, wait_lock: float | None = None,
            embedding_dim: int | None = None, migrations_dir: Path | None = None,
            lock_held: bool = False) -> MigrationResult:
    """Apply the pending migrations (up to `to`), each in its own transaction.

    `conn` must be in autocommit mode. The dimension is `embedding_dim`, else the configured
    one, else the database's (resolve_embedding_dim); it must equal the database's when the
    database has one. A dry run takes no lock and
    changes nothing. `lock_held`: the caller already holds the migration lock (acquire_lock).
    """
    files = load_migrations(migrations_dir or default_migrations_dir())
    dim, setting = resolve_embedding_dim(conn, embedding_dim, settings.embedding_dim)

    if dry_run:
        status = schema_status(conn, files=files)
        _refuse_changed(status)
        plan = _plan(status, files, to)
        return MigrationResult(
            dry_run=True, embedding_dim=dim, from_version=status.current_version,
            to_version=plan[-1].version if plan else status.current_version,
            steps=[AppliedStep(f.version, f.name, f.filename,
                               len(split_statements(f.render(dim))), f.transactional)
                   for f in plan])

    waited = 0.0
    if not lock_held:
        waited = acquire_lock(conn, settings.lock_wait if wait_lock is None else wait_lock)
    try:
        with conn.transaction():
            for statement in BOOTSTRAP:
                conn.execute(statement)
        # Read the state only now, under the lock: another run may just have applied.
        check_embedding_dim(conn, dim, setting)
        status = schema_status(conn, files=files)
        _refuse_changed(status)
        plan = _plan(status, files, to)
        _require_vector(conn, plan)
        result = MigrationResult(dry_run=False, embedding_dim=dim,
                                 from_version=status.current_version,
                                 to_version=status.current_version, lock_waited_s=round(waited, 3))
        applied_by = _applied_by(conn)
        for migration in plan:
            result.steps.append(_apply_one(conn, migration, dim, applied_by, result.steps))
            result.to_version = migration.version
        if not plan and database_embedding_dim(conn) is None and status.current_version:
            with conn.transaction():
                record_embedding_dim(conn, dim)
        return result
    finally:
        if not lock_held:
            release_lock(conn)
