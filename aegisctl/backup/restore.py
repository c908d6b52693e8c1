"""`backup restore`: plan first (what exists, what will be overwritten), check the backup is
readable before anything is touched, then pg_restore.

A full restore with one job runs in a single transaction: if it fails, nothing changed. A
selective restore (--table) of tables that exist replaces their rows atomically (TRUNCATE and
the data in one psql transaction), keeping their indexes; tables that do not exist are created
by pg_restore -t (definition and data; pg_restore does not bring their indexes).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.backup import crypto
from aegisctl.backup.dump import USER_TABLES
from aegisctl.backup.manifest import BackupManifest
from aegisctl.backup.store import BackupStore
from aegisctl.backup.tools import child_conninfo
from aegisctl.backup.verify import check_files, readable_archive, restore_list, tools_for
from aegisctl.config import LoadedConfig
from aegisctl.db import connect, connect_params
from aegisctl.errors import OperationFailed, UsageError
from aegisctl.targets import Target

if TYPE_CHECKING:
    import psycopg


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

    @property
    def holds_data(self) -> bool:
        return bool(self.existing_tables)

    def describe(self) -> list[str]:
        lines = [f"restore backup {self.backup_id} into database '{self.database}'"
                 + (" (created first)" if self.create_database else "")]
        if self.mode == "replace-rows":
            lines.append("replace every row of: " + ", ".join(self.overwritten))
        elif self.mode == "create-tables":
            lines.append("create and fill: " + ", ".join(self.tables))
        elif self.clean and self.overwritten:
            lines.append(f"DROP and recreate every object in the backup; {len(self.overwritten)}"
                         " existing table(s) overwritten: " + ", ".join(self.overwritten))
        elif self.overwritten:
            lines.append(f"the database holds {len(self.overwritten)} table(s): objects that "
                         "exist make the restore fail (pass --clean to replace them)")
        return lines


def _split(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return schema or "public", table


def plan_restore(loaded: LoadedConfig, target: Target, manifest: BackupManifest, *,
                 target_db: str | None, tables: list[str], clean: bool,
                 jobs: int) -> RestorePlan:
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
    wanted = [f"{s}.{t}" for s, t in map(_split, tables)]
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise UsageError(f"backup {manifest.id} has no table {', '.join(unknown)}")
    if wanted and jobs > 1:
        raise UsageError("--table restores run in one transaction; drop --jobs")
    admin = connect(loaded, target, "backup restore", "maintenance")
    with admin:
        database = target_db or admin.info.dbname
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                               (database,)).fetchone() is not None
    plan = RestorePlan(manifest.id, database, not exists, wanted, clean, jobs)
    if exists:
        conn = connect_to(loaded, target, database, "backup restore")
        with conn:
            for schema, name, estimate in conn.execute(USER_TABLES).fetchall():
                plan.existing_tables[f"{schema}.{name}"] = max(int(estimate), 0)
    if wanted:
        present = [t for t in wanted if t in plan.existing_tables]
        if present and len(present) != len(wanted):
            raise UsageError("some of the tables exist and some do not; restore them separately")
        plan.mode = "replace-rows" if present else "create-tables"
        plan.overwritten = present
    else:
        plan.overwritten = sorted(plan.existing_tables)
    return plan


def connect_to(loaded: LoadedConfig, target: Target, database: str,
               command: str) -> psycopg.Connection[Any]:
    """A connection to another database on the target's server."""
    return connect(loaded, target, command, "maintenance", dbname=database)


def run_restore(loaded: LoadedConfig, target: Target, manifest: BackupManifest,
                plan: RestorePlan, *, force: bool, no_owner: bool = False) -> None:
    if plan.overwritten and not force:
        raise OperationFailed(
            f"database '{plan.database}' holds data ({len(plan.overwritten)} table(s): "
            f"{', '.join(plan.overwritten[:5])}{'...' if len(plan.overwritten) > 5 else ''}); "
            "refusing to restore over it",
            hint="pass --force to overwrite, --target-db NAME to restore elsewhere, "
                 "or --dry-run to see the plan")
    from psycopg import sql

    store = BackupStore(loaded.settings.backup, target.name)
    key = crypto.load_key(loaded.settings.backup.encryption) if manifest.encryption else None
    tools = tools_for(loaded, manifest)
    if plan.create_database:
        with connect(loaded, target, "backup restore", "maintenance") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                sql.Identifier(plan.database)))
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
        done = subprocess.run([*argv, str(archive)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise OperationFailed(
            f"pg_restore failed: {lines[-1] if lines else done.returncode}"
            + (" (single transaction: nothing was changed)" if plan.jobs == 1 else ""))


def _replace_rows(psql: str, pg_restore: str, conninfo: str, env: dict[str, str],
                  plan: RestorePlan, archive: str) -> None:
    from psycopg import sql

    argv = [pg_restore, "--data-only", "-f", "-"]
    for name in plan.tables:
        schema, table = _split(name)
        argv += ["-n", schema, "-t", table]
    data = subprocess.run([*argv, archive], env=env, capture_output=True)
    if data.returncode != 0:
        raise OperationFailed(f"pg_restore failed: {data.stderr.decode(errors='replace')[-200:]}")
    truncate = "TRUNCATE ONLY " + ", ".join(
        sql.Identifier(*_split(t)).as_string(None) for t in plan.tables) + ";\n"
    done = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                           "-d", conninfo], input=truncate.encode() + data.stdout, env=env,
                          capture_output=True)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.decode(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln] or lines
        hints = [ln.strip() for ln in lines if "HINT" in ln]
        detail = " ".join(errors[-1:] + hints) or str(done.returncode)
        raise OperationFailed(f"restoring rows failed, nothing was changed: {detail}")
