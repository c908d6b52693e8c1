"""`backup create`: pg_dump into a temporary name, fsync, rename, then the manifest.

Row counts are taken in a REPEATABLE READ transaction whose snapshot pg_dump is handed
(--snapshot), so the manifest's exact counts are those of the dump, even under writes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from aegisctl import __version__
from aegisctl.backup import crypto
from aegisctl.backup.manifest import (
    BackupFile,
    BackupManifest,
    TableCount,
    directory_digest,
    format_time,
    utcnow,
)
from aegisctl.backup.store import (
    CHUNK,
    TMP_PREFIX,
    BackupStore,
    free_space,
    fsync_dir,
    fsync_tree,
    remove_path,
    sha256_file,
)
from aegisctl.backup.systems import read_system_id, warn_if_shared
from aegisctl.backup.tools import PgTools, child_conninfo, choose_pg_dump
from aegisctl.children import die_with_parent, exit_cause
from aegisctl.config import LoadedConfig
from aegisctl.db import connect, connect_params, server_version
from aegisctl.errors import ConfigError, OperationFailed
from aegisctl.targets import Target
from aegisctl.testhooks import pause_at

if TYPE_CHECKING:
    import psycopg

Progress = Callable[[str, int], None]


@dataclass
class CreateOptions:
    label: str | None = None
    format: str | None = None
    jobs: int | None = None
    compress: int | None = None
    globals: bool = False


USER_TABLES = """
SELECT n.nspname, c.relname, c.reltuples::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

VECTOR_COLUMNS = """
SELECT n.nspname, c.relname, a.attname, a.atttypmod
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.atttypid = to_regtype('vector') AND a.attnum > 0 AND NOT a.attisdropped
  AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'  -- pg_dump leaves temp tables out
ORDER BY 1, 2, 3
"""


def table_counts(conn: psycopg.Connection[Any], exact_limit: int) -> list[TableCount]:
    from psycopg import sql

    counts = []
    for schema, name, estimate in conn.execute(USER_TABLES).fetchall():
        if estimate < 0 or estimate <= exact_limit:
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema),
                                                                 sql.Identifier(name))
            row = conn.execute(query).fetchone()
            counts.append(TableCount(schema, name, int(row[0]) if row else 0, True))
        else:
            counts.append(TableCount(schema, name, int(estimate), False))
    return counts


def vector_columns(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {f"{s}.{t}.{c}": int(mod) for s, t, c, mod in conn.execute(VECTOR_COLUMNS).fetchall()}


def schema_version(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT to_regclass('aegis_schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    version = conn.execute("SELECT max(version)::text FROM aegis_schema_migrations").fetchone()
    return version[0] if version else None


def compress_arg(level: int) -> str:
    if not 0 <= level <= 9:
        raise ConfigError(f"backup.compress: {level} is not a gzip level 0-9")
    return "--compress=none" if level == 0 else f"--compress=gzip:{level}"


class _Run:
    """One pg_dump child with its stderr in a temporary file."""

    def __init__(self, argv: list[str], env: dict[str, str], stdout: int | IO[bytes] | None):
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed in finish/kill)
        try:
            # umask 077: whatever pg_dump creates is 0600 (files) / 0700 (folders).
            self.proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=self.errors,
                                         stdin=subprocess.DEVNULL, umask=0o077,
                                         preexec_fn=die_with_parent())
        except OSError as exc:
            self.errors.close()
            raise OperationFailed(f"cannot run {argv[0]}: {exc.strerror}") from None

    def finish(self, what: str) -> None:
        code = self.proc.wait()
        self.errors.seek(0)
        lines = [ln for ln in self.errors.read().decode(errors="replace").splitlines()
                 if ln.strip()]
        self.errors.close()
        if code != 0:
            raise OperationFailed(f"{what} failed: "
                                  f"{exit_cause(code, lines[-1] if lines else None)}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(Exception):
            self.errors.close()


def _dump_data(run: _Run, dest: Path, key: crypto.BackupKey | None,
               progress: Progress | None) -> None:
    """Waits for pg_dump; when encrypting, pumps its stdout through the cipher into dest."""
    if key is not None:
        assert run.proc.stdout is not None
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            writer = crypto.EncryptingWriter(out, key)
            done = 0
            while block := run.proc.stdout.read(CHUNK):
                writer.write(block)
                done += len(block)
                if progress:
                    progress("dumping", done)
            writer.close()
        return
    while True:
        try:
            run.proc.wait(timeout=0.5)
            return
        except subprocess.TimeoutExpired:
            if progress:
                progress("dumping", _size(dest))


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _files_of(store: BackupStore, staged: Path, final: Path) -> list[BackupFile]:
    """The manifest's entries for the files at `staged`, named as they will be at `final`."""
    if staged.is_dir():
        paths = sorted(p for p in staged.rglob("*") if p.is_file())
        return [BackupFile(str((final / p.relative_to(staged)).relative_to(store.folder)),
                           p.stat().st_size, sha256_file(p)) for p in paths]
    return [BackupFile(str(final.relative_to(store.folder)), staged.stat().st_size,
                       sha256_file(staged))]


def create_backup(
    loaded: LoadedConfig, target: Target, options: CreateOptions, *,
    now: Callable[[], Any] = utcnow, progress: Progress | None = None,
) -> BackupManifest:
    """Dump the target into a new backup; the caller holds the target's lock."""
    settings = loaded.settings.backup
    store = BackupStore(settings, target.name)
    store.ensure()
    store.remove_stale_temporaries()
    fmt = options.format or settings.format
    jobs = options.jobs or settings.jobs
    level = settings.compress if options.compress is None else options.compress
    key = crypto.load_key(settings.encryption)
    if key is not None and fmt == "directory":
        raise ConfigError("encrypted backups use the custom format; "
                          "set backup.format: custom or remove backup.encryption")
    if jobs > 1 and fmt != "directory":
        raise ConfigError("--jobs > 1 needs the directory format (--dir-format or "
                          "backup.format: directory)")
    compress = compress_arg(level)

    conn = connect(loaded, target, "backup create", "maintenance", autocommit=False)
    with conn:
        num, human = server_version(conn)
        system_id = read_system_id(conn)
        tools = choose_pg_dump(settings.pg_dump_path, num // 10000)
        from psycopg import IsolationLevel

        conn.rollback()
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot_row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert snapshot_row is not None
        database = conn.info.dbname
        started = now()
        backup_id = store.new_id(started)
        suffix = ".dir" if fmt == "directory" else (".dump.enc" if key else ".dump")
        final = store.folder / f"{backup_id}{suffix}"
        tmp = store.folder / f"{TMP_PREFIX}{final.name}"
        params = connect_params(loaded.settings, target, "backup create", "maintenance")
        conninfo, env = child_conninfo(params.conninfo, target.password, "backup create")
        argv = [tools.pg_dump, "-d", conninfo, f"--snapshot={snapshot_row[0]}",
                "--format=directory" if fmt == "directory" else "--format=custom", compress]
        if fmt == "directory":
            argv += [f"--jobs={jobs}"]
        if key is None:
            argv += ["-f", str(tmp)]
        run = _Run(argv, env, subprocess.PIPE if key else None)
        try:
            pause_at("create.pg_dump", child=run.proc.pid)
            # Counted while pg_dump runs (an encrypted dump waits on its pipe meanwhile).
            counts = table_counts(conn, settings.exact_count_limit)
            _dump_data(run, tmp, key, progress)
            run.finish(f"pg_dump ({tools.pg_dump})")
            vectors = vector_columns(conn)
            version = schema_version(conn)
        except BaseException as exc:
            run.kill()
            remove_path(tmp)
            if isinstance(exc, OperationFailed) and "No space left on device" in exc.message:
                raise OperationFailed(f"{exc.message} ({free_space(store.folder)} free in "
                                      f"{store.folder})") from None
            raise
        conn.rollback()

    # Nothing gets its final name before the manifest is complete on disk: a full disk or a
    # kill up to the renames leaves only ".tmp-" names, which the next create sweeps.
    staged: list[tuple[Path, Path]] = [(tmp, final)]
    try:
        if progress:
            progress("syncing", _size(tmp))
        fsync_tree(tmp)
        if progress:
            progress("checksumming", _size(tmp))
        files = _files_of(store, tmp, final)
        globals_file = None
        if options.globals:
            globals_file, globals_tmp = _dump_globals(store, tools, conninfo, env, backup_id,
                                                      key)
            staged.append((globals_tmp, store.folder / globals_file.path))
        finished = now()
        manifest = BackupManifest(
            id=backup_id, target=target.name, database=database, format=fmt,
            started_at=format_time(started), finished_at=format_time(finished),
            duration_seconds=round((finished - started).total_seconds(), 3),
            server_version=human, server_version_num=num,
            pg_dump_version=tools.version, pg_dump_path=tools.pg_dump,
            pg_dump_source=tools.source,
            compress=compress.removeprefix("--compress="),
            jobs=jobs if fmt == "directory" else 1,
            files=files, size=sum(f.size for f in files),
            sha256=files[0].sha256 if fmt == "custom" else directory_digest(files),
            label=options.label, schema_version=version, vector_columns=vectors,
            tables=counts, globals_file=globals_file,
            encryption={"algorithm": crypto.ALGORITHM, "key_id": key.key_id,
                        "chunk_size": crypto.CHUNK_SIZE} if key else None,
            system_id=system_id, aegisctl_version=__version__,
        )
        if settings.remote is not None:
            manifest.remote.status = "pending"
            manifest.remote.bucket = settings.remote.bucket
        staged_manifest = store.stage_manifest(manifest)
        pause_at("create.before-rename")
        for source, dest in staged:
            os.replace(source, dest)
        fsync_dir(store.folder)
        pause_at("create.before-manifest")
        os.replace(staged_manifest, store.manifest_path(backup_id))  # last: no manifest,
        fsync_dir(store.folder)                                        # no backup
    except BaseException:
        for source, _dest in staged:
            remove_path(source)
        store.staged_manifest_path(backup_id).unlink(missing_ok=True)
        if not store.manifest_path(backup_id).exists():
            for _source, dest in staged:
                remove_path(dest)  # renamed before the manifest could follow
        raise
    warn_if_shared({m.id: m.system_id for m in store.manifests()}, system_id, store.folder)
    return manifest


def _dump_globals(store: BackupStore, tools: PgTools, conninfo: str, env: dict[str, str],
                  backup_id: str, key: crypto.BackupKey | None) -> tuple[BackupFile, Path]:
    """The roles, written and fsynced under a temporary name (renamed with the rest of the
    backup once the manifest exists): (its entry, named as it will be, and the temporary)."""
    final = store.folder / f"{backup_id}.globals.sql{'.enc' if key else ''}"
    tmp = store.folder / f"{TMP_PREFIX}{final.name}"
    argv = [tools.sibling("pg_dumpall"), "--globals-only", "-d", conninfo]
    run = _Run(argv, env, subprocess.PIPE)
    try:
        assert run.proc.stdout is not None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            writer: Any = crypto.EncryptingWriter(out, key) if key else out
            while block := run.proc.stdout.read(CHUNK):
                writer.write(block)
            if key:
                writer.close()
        run.finish("pg_dumpall --globals-only")
        fsync_tree(tmp)
    except BaseException:
        run.kill()
        remove_path(tmp)
        raise
    return BackupFile(final.name, tmp.stat().st_size, sha256_file(tmp)), tmp
