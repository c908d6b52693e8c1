"""`backup verify`: checksums, `pg_restore --list`, and optionally a full restore test into a
scratch database (always dropped afterwards) with row counts, index validity, embedding
dimensions and a nearest-neighbour query checked.

A check that could not run to completion (pg_restore killed by a signal, the connection lost,
the server gone, the scratch side out of disk space) says nothing about the backup: it is
recorded as `interrupted` (the manifest's `interrupted_check`), the backup keeps its previous
verification, and the caller reports the cause. Only a check that ran to its end can fail a
backup (and so let prune delete it)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.backup import crypto
from aegisctl.backup.dump import USER_TABLES, vector_columns
from aegisctl.backup.manifest import BackupManifest, Verification, format_time, utcnow
from aegisctl.backup.store import TMP_PREFIX, BackupStore, check_files
from aegisctl.backup.tools import PgTools, child_conninfo, choose_pg_dump, restore_error
from aegisctl.children import die_with_parent, exit_cause
from aegisctl.config import LoadedConfig
from aegisctl.db import connect, connect_params
from aegisctl.errors import ConnectionFailed, OperationFailed
from aegisctl.locks import target_lock
from aegisctl.targets import Target
from aegisctl.testhooks import pause_at

if TYPE_CHECKING:
    import psycopg

    from aegisctl.memory.ledger import CurrentLedger
    from aegisctl.memory.replay import ReplayResult
    from aegisctl.output import Block

log = logging.getLogger(__name__)


def tools_for(loaded: LoadedConfig, manifest: BackupManifest) -> PgTools:
    """A pg_restore able to read this archive: at least the major version that wrote it."""
    major = int(manifest.pg_dump_version.split(".")[0])
    return choose_pg_dump(loaded.settings.backup.pg_dump_path, major)


def archive_path(store: BackupStore, manifest: BackupManifest) -> Path:
    if manifest.format == "directory":
        return store.file_path(Path(manifest.files[0].path).parts[0])
    return store.file_path(manifest.archive.path)


@contextlib.contextmanager
def readable_archive(store: BackupStore, manifest: BackupManifest,
                     key: crypto.BackupKey | None) -> Iterator[Path]:
    """The archive as pg_restore can read it: decrypted into a 0600 temporary if need be."""
    path = archive_path(store, manifest)
    if not manifest.encryption:
        yield path
        return
    plain = store.folder / f"{TMP_PREFIX}{manifest.id}.plain.{os.getpid()}"
    try:
        crypto.decrypt_to_file(path, plain, key)
        yield plain
    finally:
        plain.unlink(missing_ok=True)


class CheckInterrupted(OperationFailed):
    """The check could not run to completion; the cause is not the backup's."""


# What pg_restore (or the server under it) says when the test, not the backup, broke off.
_LOST_CONNECTION = ("server closed the connection unexpectedly",
                    "terminating connection due to administrator command",
                    "terminating connection because of crash of another server process",
                    "the database system is shutting down", "the database system is in recovery",
                    "could not send data to server", "could not receive data from server",
                    "no connection to the server", "SSL connection has been closed unexpectedly",
                    "connection to server", "Connection refused")
_DISK_FULL = ("No space left on device", "could not extend file", "Disk quota exceeded")


def interruption(what: str, stderr: str, code: int) -> str | None:
    """Why `what` (a child that touched the server) could not finish, when the reason is not
    the backup's: a signal, a lost connection, the scratch side's disk; None otherwise."""
    if code < 0:
        return f"{what} was {exit_cause(code)}"
    if any(marker in stderr for marker in _DISK_FULL):
        return f"{what} ran out of disk space on the server: {restore_error(stderr, code)}"
    if any(marker in stderr for marker in _LOST_CONNECTION):
        return f"{what} lost its connection to the server: {restore_error(stderr, code)}"
    return None


def restore_list(tools: PgTools, archive: Path) -> list[str]:
    done = subprocess.run([tools.sibling("pg_restore"), "--list", str(archive)],
                          capture_output=True, text=True, preexec_fn=die_with_parent())
    if done.returncode != 0:
        if done.returncode < 0:
            raise CheckInterrupted(f"pg_restore --list was {exit_cause(done.returncode)}")
        lines = done.stderr.strip().splitlines()
        raise OperationFailed("pg_restore --list cannot read the archive: "
                              + exit_cause(done.returncode, lines[-1] if lines else None))
    return [ln for ln in done.stdout.splitlines() if ln and not ln.startswith(";")]


@dataclass
class VerifyReport:
    manifest: BackupManifest
    verification: Verification  # status ok | failed | interrupted
    scratch_database: str | None = None
    erasures: ReplayResult | None = None  # the erasure ledger replayed into the scratch copy

    @property
    def ok(self) -> bool:
        return self.verification.status == "ok"

    @property
    def interrupted(self) -> str | None:
        """The cause, when the check could not run to completion (nothing was recorded
        against the backup)."""
        v = self.verification
        return "; ".join(v.problems) if v.status == "interrupted" else None

    def interrupted_message(self) -> str:
        """One line for the user: what broke off and what the backup still counts as."""
        m = self.manifest
        kept = f"{m.verification.status} ({m.verification.level}, {m.verification.at})" \
            if m.verification else "unverified"
        return (f"the {self.verification.level} check of backup {m.id} could not run to "
                f"completion: {self.interrupted}; the backup keeps its previous verification: "
                f"{kept}")

    def to_json(self) -> dict[str, Any]:
        v = self.verification
        return {"id": self.manifest.id, "ok": self.ok, "status": v.status, "level": v.level,
                "at": v.at, "problems": v.problems, "checks": v.checks,
                "scratch_database": self.scratch_database,
                "erasures": self.erasures.to_json() if self.erasures else None}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        v = self.verification
        blocks: list[Block] = [Note(f"ok      {check}") for check in v.checks]
        if v.status == "interrupted":
            blocks += [Note(f"INTERRUPTED {problem}") for problem in v.problems]
            blocks.append(Note(f"backup {self.manifest.id}: check interrupted ({v.level}); "
                               f"still {self.manifest.verified}"))
            return blocks
        blocks += [Note(f"PROBLEM {problem}") for problem in v.problems]
        blocks.append(Note(f"backup {self.manifest.id}: {v.status} ({v.level})"))
        return blocks


def verify_locked(loaded: LoadedConfig, target: Target, backup_id: str | None, *,
                  restore_test: bool = False, jobs: int = 1,
                  wait_lock: float = 0.0) -> VerifyReport:
    """`backup verify ID` (None: the newest complete backup) under the target's backup lock,
    the one create, prune, restore, upload, keep, cleanup and maint take: a prune cannot delete
    the files being read, and the manifest, which verify rewrites with its result, cannot be
    changed underneath it (by `keep`, an upload). The lock is exclusive, as for the others:
    verify writes too. A bad id or no backup is reported before waiting for the lock."""
    store = BackupStore(loaded.settings.backup, target.name)
    picked = store.load(backup_id) if backup_id is not None else store.latest()
    with target_lock(loaded.settings, target.name, "backup verify", wait_lock):
        # Read again under the lock: a prune may have removed it, a keep changed it meanwhile.
        manifest = store.load(picked.id)
        return verify_backup(loaded, target, manifest, restore_test=restore_test, jobs=jobs)


def verify_backup(loaded: LoadedConfig, target: Target, manifest: BackupManifest, *,
                  restore_test: bool = False, jobs: int = 1, fresh: bool = False) -> VerifyReport:
    """Checks a backup and records the result in its manifest; the caller holds the target's
    backup lock (`verify_locked`, or `backup create`). A wrong or missing encryption key
    raises (the backup is not at fault) and records nothing. `fresh`: the backup was just
    written and checksummed by this process, so its files are only checked to exist."""
    store = BackupStore(loaded.settings.backup, target.name)
    key = crypto.load_key(loaded.settings.backup.encryption) if manifest.encryption else None
    ledger = None
    if restore_test:
        from aegisctl.memory.ledger import current_ledger

        # Read (and validated) before anything runs: a damaged ledger copy is not the
        # backup's fault, so it stops the command and records nothing against the backup.
        ledger = current_ledger(loaded.settings.backup, target.name)
    replayed: list[ReplayResult] = []
    if manifest.encryption:
        path = archive_path(store, manifest)
        if path.is_file():
            with open(path, "rb") as handle, contextlib.suppress(OperationFailed):
                crypto.read_header(handle, key, path.name)  # wrong key -> ConfigError
    checks: list[str] = []
    problems = check_files(store, manifest, checksum=not fresh)
    level = "checksum"
    scratch = None
    if not problems:
        checks.append(f"sha256 of {len(manifest.files)} file(s)"
                      + (" (computed at create)" if fresh else ""))
        tools = tools_for(loaded, manifest)
        try:
            with readable_archive(store, manifest, key) as archive:
                if manifest.encryption:
                    checks.append("decrypted and authenticated")
                entries = restore_list(tools, archive)
                level = "list"
                checks.append(f"pg_restore --list: {len(entries)} entries")
                problems += _missing_data_entries(manifest, entries)
                if restore_test and not problems:
                    level = "restore-test"
                    scratch, restored, found = _restore_test(loaded, target, manifest, tools,
                                                             archive, jobs, ledger, replayed)
                    problems += found
                    if restored is not None:
                        checks.append(f"restored into scratch database {scratch} (dropped)")
                        checks += restored
        except CheckInterrupted as exc:
            return _interrupted(store, manifest, level, exc.message, checks, scratch)
        except OperationFailed as exc:
            problems.append(exc.message)
    verification = Verification(status="failed" if problems else "ok", level=level,
                                at=format_time(utcnow()), problems=problems, checks=checks)
    manifest.verification = verification
    manifest.interrupted_check = None  # superseded by a check that ran to its end
    if level == "restore-test":
        manifest.restore_test = verification
    store.save(manifest)
    return VerifyReport(manifest, verification, scratch, replayed[0] if replayed else None)


def _interrupted(store: BackupStore, manifest: BackupManifest, level: str, cause: str,
                 checks: list[str], scratch: str | None) -> VerifyReport:
    """Record the attempt beside the backup's verification, which stays as it was."""
    attempt = Verification(status="interrupted", level=level, at=format_time(utcnow()),
                           problems=[cause], checks=checks)
    manifest.interrupted_check = attempt
    store.save(manifest)
    return VerifyReport(manifest, attempt, scratch)


def _missing_data_entries(manifest: BackupManifest, entries: list[str]) -> list[str]:
    # pg_restore --list prints "<id>; <oids> TABLE DATA <schema> <name> <owner>" with the
    # names unquoted: a name may hold spaces, so it is matched whole, never split on them.
    data = [e[e.index(" TABLE DATA ") + len(" TABLE DATA "):] for e in entries
            if " TABLE DATA " in e]
    missing = [f"{t.schema}.{t.name}" for t in manifest.tables
               if not any(d.startswith(f"{t.schema} {t.name} ") for d in data)]
    return [f"no TABLE DATA entry for {name}" for name in missing]


SCRATCH_PREFIX = "aegis_verify_"
SCRATCH_COMMENT = "aegisctl restore-test scratch database"


def scratch_comment(target: str, backup_id: str) -> str:
    """What marks a scratch database as ours (with its name prefix): safe to drop."""
    return (f"{SCRATCH_COMMENT} (target {target}, backup {backup_id}, host "
            f"{socket.gethostname()}, pid {os.getpid()}); dropped by the next backup verify")


def leftover_scratch(conn: psycopg.Connection[Any], target: str | None = None
                     ) -> list[tuple[str, str]]:
    """(name, comment) of scratch databases a restore test left behind (a server restart, a
    kill): named with our prefix *and* carrying our comment (of `target`, when given)."""
    marker = f"{SCRATCH_COMMENT} (target {target}," if target else f"{SCRATCH_COMMENT} ("
    rows = conn.execute(
        "SELECT d.datname, shobj_description(d.oid, 'pg_database') FROM pg_database d"
        " WHERE starts_with(d.datname, %s)"
        "   AND starts_with(shobj_description(d.oid, 'pg_database'), %s)"
        " ORDER BY 1", (SCRATCH_PREFIX, marker)).fetchall()
    return [(str(name), str(comment)) for name, comment in rows]


def drop_leftover_scratch(conn: psycopg.Connection[Any], target: str) -> list[str]:
    """Drop the scratch databases earlier restore tests of `target` left behind; one still in
    use (a restore test running elsewhere) is left alone. The names dropped."""
    import psycopg
    from psycopg import sql

    dropped = []
    for name, _comment in leftover_scratch(conn, target):
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.errors.ObjectInUse:
            continue
        log.warning("dropped scratch database %s, left behind by an interrupted restore test",
                    name)
        dropped.append(name)
    return dropped


def _restore_test(loaded: LoadedConfig, target: Target, manifest: BackupManifest,
                  tools: PgTools, archive: Path, jobs: int, ledger: CurrentLedger | None = None,
                  replayed: list[ReplayResult] | None = None
                  ) -> tuple[str, list[str] | None, list[str]]:
    """(scratch database, checks passed after a successful restore (None: the restore
    failed), problems). Raises CheckInterrupted when the test could not run to its end.
    After the checks, the erasure ledger (with the live database's own rows) is replayed into
    the scratch copy, as every restore does (its result appended to `replayed`)."""
    import psycopg
    from psycopg import sql

    scratch = f"{SCRATCH_PREFIX}{manifest.id.lower().replace('-', '_')}_{secrets.token_hex(3)}"
    admin = connect(loaded, target, "backup verify", "maintenance")
    with _quiet_when_lost(admin):
        drop_leftover_scratch(admin, target.name)
        try:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                sql.Identifier(scratch)))
            admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(scratch), sql.Literal(scratch_comment(target.name, manifest.id))))
            params = connect_params(loaded.settings, target, "backup verify", "maintenance")
            conninfo, env = child_conninfo(params.conninfo, target.password, "backup verify",
                                           dbname=scratch)
            argv = [tools.sibling("pg_restore"), "-d", conninfo, "--exit-on-error",
                    "--no-owner", "--no-privileges"]
            argv += [f"--jobs={jobs}"] if jobs > 1 else ["--single-transaction"]
            proc = subprocess.Popen([*argv, str(archive)], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                    preexec_fn=die_with_parent())
            pause_at("verify.pg_restore", child=proc.pid)
            _, stderr = proc.communicate()
            if proc.returncode != 0:
                cause = interruption("pg_restore", stderr, proc.returncode)
                if cause:
                    raise CheckInterrupted(cause)
                reason = restore_error(stderr, proc.returncode)
                return scratch, None, [f"restore test failed: {reason}"]
            try:
                with connect(loaded, target, "backup verify", "maintenance",
                             dbname=scratch) as conn:
                    pause_at("verify.check-restored")
                    passed: list[str] = []
                    problems = _compare(conn, manifest, passed)
                    if ledger is not None and replayed is not None:
                        from aegisctl.memory.ledger import read_db_ledger
                        from aegisctl.memory.replay import replay

                        done = replay(conn, ledger.ledger.merged(read_db_ledger(admin)),
                                      ledger.notes)
                        passed.append(done.line())
                        replayed.append(done)
                    return scratch, passed, problems
            except ConnectionFailed as exc:
                raise CheckInterrupted(f"the restored database could not be reached: "
                                       f"{exc.message}") from None
            except psycopg.OperationalError as exc:
                raise CheckInterrupted(f"lost the connection to the server while checking "
                                       f"the restored database: {_first_line(exc)}") from None
        except psycopg.OperationalError as exc:
            raise CheckInterrupted(f"lost the connection to the server: {_first_line(exc)}"
                                   ) from None
        finally:
            _drop_scratch(admin, scratch)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _drop_scratch(admin: psycopg.Connection[Any], scratch: str) -> None:
    """Drop the scratch database; when the server went away it stays, marked by its name and
    comment, and the next verify drops it (`check` reports it until then)."""
    import psycopg
    from psycopg import sql

    try:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(scratch)))
    except psycopg.Error as exc:
        log.warning("could not drop the scratch database %s (%s); the next backup verify "
                    "drops it", scratch, _first_line(exc))


@contextlib.contextmanager
def _quiet_when_lost(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Close a connection without psycopg's rollback noise when the server has gone."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _compare(conn: psycopg.Connection[Any], manifest: BackupManifest,
             passed: list[str]) -> list[str]:
    from psycopg import sql

    problems = []
    present = {(s, t) for s, t, _ in conn.execute(USER_TABLES).fetchall()}
    for table in manifest.tables:
        name = f"{table.schema}.{table.name}"
        if (table.schema, table.name) not in present:
            problems.append(f"{name}: missing after restore")
            continue
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(table.schema), sql.Identifier(table.name))).fetchone()
        restored = int(row[0]) if row else 0
        if table.exact and restored != table.rows:
            problems.append(f"{name}: {restored} rows restored, manifest says {table.rows}")
        if not table.exact and table.rows > 0 and restored == 0:
            problems.append(f"{name}: empty after restore, about {table.rows} rows expected")
    invalid = conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE NOT (i.indisvalid AND i.indisready) AND n.nspname <> 'pg_catalog'").fetchall()
    problems += [f"index {name} is not valid" for (name,) in invalid]
    dims = vector_columns(conn)
    for column, dim in manifest.vector_columns.items():
        if dims.get(column) != dim:
            problems.append(f"{column}: embedding dimension {dims.get(column)}, recorded {dim}")
    problems += _nearest_neighbour(conn, passed)
    return problems


# Every vector index (HNSW or IVFFlat) on a vector column or on an expression over one (the
# halfvec cast used above 2000 dimensions): its key as the server deparses it, and the type
# its operator class takes.
VECTOR_INDEXES = """
SELECT n.nspname, c.relname, ic.relname, o.opcname,
       pg_get_indexdef(i.indexrelid, 1, true), format_type(o.opcintype, NULL)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_am am ON am.oid = ic.relam AND am.amname IN ('hnsw', 'ivfflat')
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_opclass o ON o.oid = i.indclass[0]
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2, 3
"""

_OPERATORS = {"l2": "<->", "ip": "<#>", "l1": "<+>", "cosine": "<=>", "hamming": "<~>",
              "jaccard": "<%>"}


def _nearest_neighbour(conn: psycopg.Connection[Any], passed: list[str]) -> list[str]:
    """Through each vector index: the nearest neighbours of a stored vector come back. The
    index key is the server's own deparse of the restored index (a column, or an expression
    such as `(embedding::halfvec(3072))`)."""
    from psycopg import sql

    problems = []
    for schema, table, index, opclass, key, key_type in conn.execute(VECTOR_INDEXES).fetchall():
        kind = str(opclass).rsplit("_ops", 1)[0].rsplit("_", 1)[-1]
        op = _OPERATORS.get(kind)
        if op is None or key_type not in ("vector", "halfvec", "sparsevec", "bit"):
            problems.append(f"index {index}: operator class {opclass} is not one the "
                            "restore test knows how to query")
            continue
        tbl = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        expr = sql.SQL(str(key))
        probe = conn.execute(sql.SQL("SELECT ({})::text FROM {} WHERE ({}) IS NOT NULL LIMIT 1")
                             .format(expr, tbl, expr)).fetchone()
        if probe is None:
            passed.append(f"index {index}: table empty, nothing to query")
            continue
        with conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")
            query = sql.SQL("SELECT 1 FROM {} ORDER BY ({}) " + op + " %s::{} LIMIT 5").format(
                tbl, expr, sql.SQL(key_type))
            plan = "\n".join(str(r[0]) for r in conn.execute(
                sql.SQL("EXPLAIN ") + query, (probe[0],)).fetchall())
            rows = conn.execute(query, (probe[0],)).fetchall()
        if not rows:
            problems.append(f"nearest-neighbour query through {index} returned no rows")
        elif index not in plan:
            problems.append(f"nearest-neighbour query did not use index {index}")
        else:
            passed.append(f"nearest-neighbour query through {index} ({key_type}, {kind})")
    return problems
