"""`backup restore`: plan first (what exists, what will be overwritten), check the backup is
readable before anything is touched, then pg_restore.

A full restore with one job runs in a single transaction: if it fails, nothing changed; a
database the restore created is dropped again when the restore fails. Template databases and
the maintenance database are refused unless the caller names that intent (every database
created later from a template would contain the agent's memories).

A selective restore (--table) of tables that exist replaces their rows in one transaction:
pg_restore's data is streamed into psql (never held in memory). Foreign keys of other tables
that reference the restored tables are dropped for the load and re-created afterwards, which
re-checks every referencing row: if one points at a row the backup does not have, the whole
transaction fails and nothing changed. Tables that do not exist are created by pg_restore -t
(definition and data; pg_restore does not bring their indexes).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from aegisctl.backup import crypto
from aegisctl.backup.dump import USER_TABLES
from aegisctl.backup.manifest import BackupManifest
from aegisctl.backup.store import BackupStore, check_files
from aegisctl.backup.tools import child_conninfo, restore_error
from aegisctl.backup.verify import readable_archive, restore_list, tools_for
from aegisctl.children import die_with_parent
from aegisctl.config import LoadedConfig
from aegisctl.db import connect, connect_params
from aegisctl.errors import OperationFailed, UsageError
from aegisctl.targets import Target

if TYPE_CHECKING:
    import psycopg

    from aegisctl.memory.ledger import CurrentLedger
    from aegisctl.memory.replay import ReplayResult
    from aegisctl.output import Block

MAINTENANCE_DATABASES = ("postgres",)


@dataclass
class ForeignKey:
    name: str
    table: str  # the referencing table, schema.name
    references: str  # the restored table it references
    definition: str  # pg_get_constraintdef, schema-qualified


@dataclass
class RestorePlan:
    backup_id: str
    database: str
    create_database: bool
    tables: list[str]
    clean: bool
    jobs: int
    existing_tables: dict[str, int] = field(default_factory=dict)  # table -> estimated rows
    overwritten: list[str] = field(default_factory=list)
    mode: str = "full"  # full | replace-rows | create-tables
    referencing: list[ForeignKey] = field(default_factory=list)
    sequences: list[tuple[str, str, str]] = field(default_factory=list)  # (seq, table, column)
    system_database: str | None = None  # why the destination is a system database
    # The newest erasure ledger (aegisctl.memory.ledger), read and validated before anything
    # is touched: the restore replays it.
    ledger: CurrentLedger | None = field(default=None, repr=False)
    backup_has_ledger: bool = False  # the backup holds aegis_erasures (taken after 0010)

    @property
    def holds_data(self) -> bool:
        return bool(self.existing_tables)

    def describe(self) -> list[str]:
        lines = [f"restore backup {self.backup_id} into database '{self.database}'"
                 + (" (created first)" if self.create_database else "")]
        if self.system_database:
            lines.append(f"'{self.database}' is {self.system_database}")
        if self.mode == "replace-rows":
            lines.append("replace every row of: " + ", ".join(self.overwritten))
            for fk in self.referencing:
                lines.append(
                    f"{fk.table} references {fk.references} ({fk.name}): its rows are kept; "
                    f"the constraint is re-checked after the load, and if any row points at "
                    f"a {fk.references} row the backup does not have, the restore fails and "
                    "nothing is changed")
        elif self.mode == "create-tables":
            lines.append("create and fill: " + ", ".join(self.tables))
        elif self.clean and self.overwritten:
            lines.append(f"DROP and recreate every object in the backup; {len(self.overwritten)}"
                         " existing table(s) overwritten: " + ", ".join(self.overwritten))
        elif self.overwritten:
            lines.append(f"the database holds {len(self.overwritten)} table(s): objects that "
                         "exist make the restore fail (pass --clean to replace them)")
        if self.ledger is not None and self.ledger.ledger.entries:
            lines.append(f"then replay the erasure ledger ({len(self.ledger.ledger.entries)} "
                         "entries): memories forgotten after the backup was taken are deleted "
                         "again")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"backup_id": self.backup_id, "database": self.database,
                "create_database": self.create_database, "mode": self.mode,
                "tables": self.tables, "clean": self.clean, "jobs": self.jobs,
                "overwritten": self.overwritten,
                "referencing": [{"constraint": f.name, "table": f.table,
                                 "references": f.references} for f in self.referencing],
                "system_database": self.system_database, "plan": self.describe()}


@dataclass
class RestoreResult:
    plan: RestorePlan
    dry_run: bool
    restored: bool
    erasures: ReplayResult | None = None  # the erasure ledger's replay

    def to_json(self) -> dict[str, Any]:
        return {**self.plan.to_json(), "dry_run": self.dry_run, "restored": self.restored,
                "erasures": self.erasures.to_json() if self.erasures else None}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        if self.dry_run:
            return [Note("dry run: backup checked readable, nothing was changed")]
        blocks: list[Block] = [Note(f"restored backup {self.plan.backup_id} into database "
                                    f"'{self.plan.database}'")]
        if self.erasures is not None:
            blocks += self.erasures.to_view()
        return blocks


def _split(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return schema or "public", table


REFERENCING = """
SELECT k.conname, format('%%I.%%I', rn.nspname, r.relname), format('%%I.%%I', tn.nspname, t.relname),
       pg_get_constraintdef(k.oid)
FROM pg_constraint k
JOIN pg_class r ON r.oid = k.conrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
JOIN pg_class t ON t.oid = k.confrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE k.contype = 'f' AND k.confrelid = ANY(%s::regclass[])
ORDER BY 2, 1
"""

SERIAL_COLUMNS = """
SELECT s.seq, s.attname FROM (
  SELECT pg_get_serial_sequence(%(reg)s::text, a.attname) AS seq, a.attname
  FROM pg_attribute a
  WHERE a.attrelid = %(reg)s::text::regclass AND a.attnum > 0 AND NOT a.attisdropped) s
WHERE s.seq IS NOT NULL
"""


def _destination(admin: psycopg.Connection[Any], database: str) -> tuple[bool, str | None]:
    row = admin.execute("SELECT datistemplate FROM pg_database WHERE datname = %s",
                        (database,)).fetchone()
    why = None
    if database in ("template0", "template1") or (row is not None and row[0]):
        why = "a template database (every database created from it would get the backup)"
    elif database in MAINTENANCE_DATABASES:
        why = "the maintenance database (tools and every client connect there first)"
    return row is not None, why


def plan_restore(loaded: LoadedConfig, target: Target, manifest: BackupManifest, *,
                 target_db: str | None, tables: list[str], clean: bool,
                 jobs: int, allow_system_db: bool = False) -> RestorePlan:
    """Checks the backup (checksums and pg_restore --list) and inspects the destination."""
    store = BackupStore(loaded.settings.backup, target.name)
    problems = check_files(store, manifest)
    if problems:
        raise OperationFailed(f"backup {manifest.id} is damaged, nothing was touched: "
                              + "; ".join(problems))
    key = crypto.load_key(loaded.settings.backup.encryption) if manifest.encryption else None
    tools = tools_for(loaded, manifest)
    with readable_archive(store, manifest, key) as archive:
        restore_list(tools, archive)
    known = {f"{t.schema}.{t.name}" for t in manifest.tables}
    wanted = list(dict.fromkeys(f"{s}.{t}" for s, t in map(_split, tables)))
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise UsageError(f"backup {manifest.id} has no table {', '.join(unknown)}")
    if wanted and jobs > 1:
        raise UsageError("--table restores run in one transaction; drop --jobs")
    admin = connect(loaded, target, "backup restore", "maintenance")
    with admin:
        database = target_db or admin.info.dbname
        exists, system = _destination(admin, database)
        from aegisctl.memory.ledger import current_ledger

        # The newest ledger: the copies beside the backups and on the remote, and the live
        # database's own (it may be about to be overwritten). A damaged copy stops here.
        ledger = current_ledger(loaded.settings.backup, target.name, admin)
    if system and not allow_system_db:
        raise UsageError(f"refusing to restore into '{database}': it is {system}",
                         hint="restore into another database with --target-db NAME, or pass "
                              "--into-system-database if that is really what you want")
    plan = RestorePlan(manifest.id, database, not exists, wanted, clean, jobs,
                       system_database=system, ledger=ledger,
                       backup_has_ledger="public.aegis_erasures" in known)
    if exists:
        with connect_to(loaded, target, database, "backup restore") as conn:
            for schema, name, estimate in conn.execute(USER_TABLES).fetchall():
                plan.existing_tables[f"{schema}.{name}"] = max(int(estimate), 0)
            if wanted:
                _inspect_tables(conn, plan, wanted)
    if wanted:
        present = [t for t in wanted if t in plan.existing_tables]
        if present and len(present) != len(wanted):
            raise UsageError("some of the tables exist and some do not; restore them separately")
        plan.mode = "replace-rows" if present else "create-tables"
        plan.overwritten = present
        if not present:
            plan.referencing, plan.sequences = [], []
    else:
        plan.overwritten = sorted(plan.existing_tables)
    return plan


def _inspect_tables(conn: psycopg.Connection[Any], plan: RestorePlan, wanted: list[str]) -> None:
    """Foreign keys that reference the tables, and their serial sequences (qualified names:
    pg_restore's output empties search_path)."""
    from psycopg import sql

    present = [t for t in wanted if t in plan.existing_tables]
    if not present:
        return
    with conn.transaction():
        conn.execute("SET LOCAL search_path = ''")
        regs = [sql.Identifier(*_split(t)).as_string(conn) for t in present]
        for name, table, references, definition in conn.execute(REFERENCING, (regs,)):
            plan.referencing.append(ForeignKey(name, table, references, definition))
        for reg in regs:
            for seq, column in conn.execute(SERIAL_COLUMNS, {"reg": reg}):
                plan.sequences.append((seq, reg, column))


def connect_to(loaded: LoadedConfig, target: Target, database: str,
               command: str) -> psycopg.Connection[Any]:
    """A connection to another database on the target's server."""
    return connect(loaded, target, command, "maintenance", dbname=database)


def run_restore(loaded: LoadedConfig, target: Target, manifest: BackupManifest,
                plan: RestorePlan, *, force: bool, no_owner: bool = False
                ) -> ReplayResult | None:
    """pg_restore, then the erasure ledger's replay (what it removed, None without a
    ledger); a database this restore created is dropped again when either fails."""
    if plan.overwritten and not force:
        raise OperationFailed(
            f"database '{plan.database}' holds data ({len(plan.overwritten)} table(s): "
            f"{', '.join(plan.overwritten[:5])}{'...' if len(plan.overwritten) > 5 else ''}); "
            "refusing to restore over it",
            hint="pass --force to overwrite, --target-db NAME to restore elsewhere, "
                 "or --dry-run to see the plan")
    from psycopg import sql

    if plan.create_database:
        with connect(loaded, target, "backup restore", "maintenance") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                sql.Identifier(plan.database)))
    try:
        _restore(loaded, target, manifest, plan, no_owner)
        return _replay(loaded, target, plan)
    except BaseException as exc:
        if plan.create_database:
            with connect(loaded, target, "backup restore", "maintenance") as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(plan.database)))
            if isinstance(exc, OperationFailed):
                raise OperationFailed(f"{exc.message} (the database '{plan.database}' this "
                                      "restore created was dropped again)") from None
        raise


def _replay(loaded: LoadedConfig, target: Target, plan: RestorePlan) -> ReplayResult | None:
    from aegisctl.memory.replay import replay

    if plan.ledger is None:
        return None
    with connect_to(loaded, target, plan.database, "backup restore") as conn:
        try:
            # The database's aegis_erasures tells which erasures the backup holds only when
            # it came from the backup: not after a restore of some tables, nor from a backup
            # older than the ledger (the live table would be left in place). Then every entry
            # is replayed.
            restored = plan.backup_has_ledger and (
                not plan.tables or "public.aegis_erasures" in plan.tables)
            return replay(conn, plan.ledger.ledger, plan.ledger.notes,
                          restored_ledger=restored)
        except Exception as exc:
            if type(exc).__module__.split(".")[0] != "psycopg":
                raise
            raise OperationFailed(
                f"backup {plan.backup_id} was restored into '{plan.database}', but replaying "
                f"the erasure ledger failed ({str(exc).strip().splitlines()[0]}): memories "
                "forgotten since the backup may be back",
                hint="run the restore again, or forget them again with "
                     "`aegisctl memory forget`") from None


def _restore(loaded: LoadedConfig, target: Target, manifest: BackupManifest,
             plan: RestorePlan, no_owner: bool) -> None:
    store = BackupStore(loaded.settings.backup, target.name)
    key = crypto.load_key(loaded.settings.backup.encryption) if manifest.encryption else None
    tools = tools_for(loaded, manifest)
    params = connect_params(loaded.settings, target, "backup restore", "maintenance")
    conninfo, env = child_conninfo(params.conninfo, target.password, "backup restore",
                                   dbname=plan.database)
    pg_restore = tools.sibling("pg_restore")
    with readable_archive(store, manifest, key) as archive:
        if plan.mode == "replace-rows":
            _replace_rows(tools.sibling("psql"), pg_restore, conninfo, env, plan, str(archive))
            return
        argv = [pg_restore, "-d", conninfo, "--exit-on-error"]
        if no_owner:
            argv += ["--no-owner", "--no-privileges"]
        if plan.clean:
            argv += ["--clean", "--if-exists"]
        argv += [f"--jobs={plan.jobs}"] if plan.jobs > 1 else ["--single-transaction"]
        for name in plan.tables:
            schema, table = _split(name)
            argv += ["-n", schema, "-t", table]
        done = subprocess.run([*argv, str(archive)], env=env, capture_output=True, text=True,
                              preexec_fn=die_with_parent())
    if done.returncode != 0:
        raise OperationFailed(
            f"pg_restore failed: {restore_error(done.stderr, done.returncode)}"
            + (" (single transaction: nothing was changed)"
               if plan.jobs == 1 and not plan.create_database else ""))


def _replace_rows_sql(plan: RestorePlan) -> tuple[bytes, bytes]:
    """What psql runs before and after pg_restore's data: in one transaction."""
    from psycopg import sql

    def ident(name: str) -> str:
        return sql.Identifier(*_split(name)).as_string(None)

    def literal(text: str) -> str:
        return sql.Literal(text).as_string(None)

    before = ["BEGIN;", "SELECT pg_catalog.set_config('search_path', '', false);"]
    for fk in plan.referencing:
        before.append(f"ALTER TABLE {fk.table} DROP CONSTRAINT "
                      f"{sql.Identifier(fk.name).as_string(None)};")
    before.append("TRUNCATE ONLY " + ", ".join(ident(t) for t in plan.tables) + ";")
    after = ["SELECT pg_catalog.set_config('search_path', '', false);"]
    for fk in plan.referencing:
        after.append(f"ALTER TABLE {fk.table} ADD CONSTRAINT "
                     f"{sql.Identifier(fk.name).as_string(None)} {fk.definition};")
    for seq, table, column in plan.sequences:
        after.append(
            f"SELECT pg_catalog.setval({literal(seq)}::regclass, greatest("
            f"coalesce(pg_catalog.pg_sequence_last_value({literal(seq)}::regclass), 1), "
            f"coalesce((SELECT max({sql.Identifier(column).as_string(None)}) FROM {table}), 1)"
            "));")
    after.append("COMMIT;")
    return ("\n".join(before) + "\n").encode(), ("\n".join(after) + "\n").encode()


def _replace_rows(psql: str, pg_restore: str, conninfo: str, env: dict[str, str],
                  plan: RestorePlan, archive: str) -> None:
    before, after = _replace_rows_sql(plan)
    argv = [pg_restore, "--data-only", "-f", "-"]
    for name in plan.tables:
        schema, table = _split(name)
        argv += ["-n", schema, "-t", table]
    with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_err:
        loader = subprocess.Popen([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=psql_err, env=env, preexec_fn=die_with_parent())
        source = subprocess.Popen([*argv, archive], stdout=subprocess.PIPE, stderr=restore_err,
                                  env=env, preexec_fn=die_with_parent())
        assert loader.stdin is not None and source.stdout is not None
        try:
            with contextlib.suppress(BrokenPipeError):
                loader.stdin.write(before)
                shutil.copyfileobj(source.stdout, loader.stdin, 1024 * 1024)
            source_code = source.wait()
            with contextlib.suppress(BrokenPipeError):
                if source_code == 0:  # without COMMIT, psql's exit rolls everything back
                    loader.stdin.write(after)
                loader.stdin.close()
            loader_code = loader.wait()
        finally:
            for proc in (source, loader):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if source_code != 0:
            raise OperationFailed("pg_restore failed, nothing was changed: "
                                  + restore_error(_text(restore_err), source_code))
        if loader_code != 0:
            raise OperationFailed("restoring rows failed, nothing was changed: "
                                  + restore_error(_text(psql_err), loader_code))


def _text(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode(errors="replace")
