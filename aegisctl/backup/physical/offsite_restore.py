"""Restore and drill from the remote store alone: a machine with only the config and the key.

Barman is not needed for this: the chain's volumes are downloaded, authenticated and
decrypted as they stream into tar extraction (`filter="data"`: no path leaves the folder, no
link points out of it), an incremental chain is combined with `pg_combinebackup`, the WAL
run from the backup's start is fetched into `aegisctl_wal/` inside the data directory, and
the recovery settings point `restore_command` at it. The whole run, not only up to the
first segment archived after --to-time: recovery stops at the first commit after the target,
and a long transaction's commit can lie many segments later (stopping early made PostgreSQL
end with "recovery ended before configured recovery target was reached"). The target
folder is handled as by the local restore (physical/restore_dir.py): staged, then moved into
place, so a killed restore never leaves a folder that looks like a data directory.
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.backup.physical.backups import BACKUP_ID, PhysicalBackup, save_state
from aegisctl.backup.physical.offsite import (
    SYSTEM_ID,
    Offsite,
    RemoteManifest,
    RemoteWindow,
    open_offsite,
    read_catalog,
    remote_systems,
    remote_window,
    restorable,
)
from aegisctl.errors import ConnectionFailed, OperationFailed, UsageError

if TYPE_CHECKING:
    from aegisctl.backup.physical.engine import Engine
    from aegisctl.backup.physical.restore import DrillReport, RestoreResult
    from aegisctl.config import LoadedConfig
    from aegisctl.targets import Target

WAL_DIR = "aegisctl_wal"
CHAIN_DIR = ".aegisctl-chain"


def resolve_system(loaded: LoadedConfig, target: Target, given: str | None) -> str:
    """Whose backups to restore: --system-id; else the reachable server's, when the store has
    backups of it; else the only database system with backups in the store."""
    from aegisctl.backup.physical.identity import connected_system_id

    if given is not None:
        if not SYSTEM_ID.match(given):
            raise UsageError(f"--system-id {given!r} is not a database system identifier")
        return given
    systems = remote_systems(loaded, target)
    try:
        current = connected_system_id(loaded, target)
    except ConnectionFailed:
        current = None
    if current in systems:
        return str(current)
    if len(systems) == 1:
        return systems[0]
    if not systems:
        raise UsageError(f"the remote store holds no physical backup of target '{target.name}'")
    raise UsageError(f"the remote store holds physical backups of several database systems "
                     f"for target '{target.name}': {', '.join(systems)}",
                     hint="choose one with --system-id")


@dataclass
class RemoteRestorePlan:
    offsite: Offsite
    backup: PhysicalBackup
    chain: list[RemoteManifest]
    wal: list[str]  # the WAL run from the backup's start
    history: list[str]
    target_dir: Path
    to_time: dt.datetime | None
    to_lsn: str | None
    window: RemoteWindow

    def describe(self) -> list[str]:
        point = (f"to {self.to_time.isoformat()}" if self.to_time else
                 f"to LSN {self.to_lsn}" if self.to_lsn else "to the end of the remote WAL")
        return [f"restore physical backup {self.backup.id} from s3://{self.offsite.bucket}/"
                f"{self.offsite.base} (chain {' -> '.join(m.id for m in self.chain)}) into "
                f"{self.target_dir}, {point}"]


def plan_remote_restore(loaded: LoadedConfig, target: Target, *, backup_id: str | None,
                        to_time: dt.datetime | None, to_lsn: str | None, target_dir: Path,
                        system_id: str | None = None) -> RemoteRestorePlan:
    from aegisctl.backup.physical.engine import engine_for
    from aegisctl.backup.physical.restore import _check_reachable, _check_target_dir

    if to_time and to_lsn:
        raise UsageError("give --to-time or --to-lsn, not both")
    if backup_id and not BACKUP_ID.match(backup_id):
        raise UsageError(f"{backup_id!r} is not a physical backup id (like 20260131T020000)")
    target_dir = _check_target_dir(target_dir)
    system = resolve_system(loaded, target, system_id)
    _check_reachable(engine_for(loaded, target, system_id=system), target_dir)
    offsite = open_offsite(loaded, target, system)
    catalog = read_catalog(offsite)
    window = remote_window(offsite, catalog)
    found = restorable(catalog)
    if to_time is not None and (window.start is None or window.end is None
                                or not window.start <= to_time <= window.end):
        span = (f"{window.start.isoformat()} .. {window.end.isoformat()}"
                if window.start and window.end else "empty: no restorable remote backup")
        raise UsageError(f"--to-time {to_time.isoformat()} is outside the remote recoverable "
                         f"window ({span})", hint="see `aegisctl backup wal status`")
    if backup_id:
        chosen = [item for item in found if item[0].id == backup_id]
        if not chosen:
            raise UsageError(f"physical backup {backup_id} cannot be restored from the store "
                             "(absent, or its chain or WAL is incomplete there)",
                             hint="see `aegisctl backup list`")
        if to_time and chosen[0][0].end_time and to_time < chosen[0][0].end_time:
            raise UsageError(f"--to-time {to_time.isoformat()} is before backup {backup_id} "
                             "ended: pick an older backup")
    else:
        chosen = [item for item in found if item[0].end_time
                  and (to_time is None or item[0].end_time <= to_time)]
        if not chosen:
            raise UsageError(f"no physical backup of target '{target.name}' can be restored "
                             "from the store" + (" before --to-time" if to_time else ""))
    backup, run = chosen[-1]
    manifests = {m.id: m for m in catalog.usable()}
    chain, node = [], manifests[backup.id]
    while True:
        chain.append(node)
        if node.parent is None:
            break
        node = manifests[node.parent]
    chain.reverse()
    if any(m.tablespaces for m in chain):
        raise OperationFailed("a backup with tablespaces cannot be restored from the store by "
                              "aegisctl yet", hint="download it with Barman's tools")
    history = sorted(n for n in catalog.wals if n.endswith(".history"))
    return RemoteRestorePlan(offsite, backup, chain, run, history, target_dir, to_time, to_lsn,
                             window)


# ---------------------------------------------------------------------------------------------
# Streaming a volume set into tar extraction


class _Exact:
    """read(n) that returns n bytes unless the body ended (an HTTP body may return fewer)."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def read(self, size: int) -> bytes:
        parts, left = [], size
        while left > 0:
            block = self.body.read(left)
            if not block:
                break
            parts.append(block)
            left -= len(block)
        return b"".join(parts)


class _Plaintext:
    """A read()-able stream of the chain member's volumes, each authenticated as it is
    decrypted and its plaintext hash checked against the manifest at its end."""

    def __init__(self, offsite: Offsite, manifest: RemoteManifest) -> None:
        self.chunks = self._chunks(offsite, manifest)
        self.buffer = b""
        self.offset = 0

    @staticmethod
    def _chunks(offsite: Offsite, manifest: RemoteManifest) -> Iterator[bytes]:
        from aegisctl.backup.crypto import decrypt_stream
        from aegisctl.backup.remote import remote_errors

        prefix = offsite.backup_prefix(manifest.id)
        for volume in manifest.volumes:
            with remote_errors(f"downloading {volume.name} of {manifest.id}", offsite.bucket):
                body = offsite.remote.client.get_object(Bucket=offsite.bucket,
                                                        Key=prefix + volume.name)["Body"]
            digest, size = hashlib.sha256(), 0
            for block in decrypt_stream(_Exact(body), offsite.key,  # type: ignore[arg-type]
                                        f"{manifest.id}/{volume.name}"):
                digest.update(block)
                size += len(block)
                yield block
            if digest.hexdigest() != volume.plain_sha256 or size != volume.plain_size:
                raise OperationFailed(f"{manifest.id}/{volume.name} does not match its "
                                      "manifest")

    def read(self, size: int = -1) -> bytes:
        # An offset into the current chunk: slicing the rest off on every small read would
        # copy each 1 MiB chunk once per tar block.
        parts: list[bytes] = []
        want = size
        while want != 0:
            if self.offset >= len(self.buffer):
                try:
                    self.buffer, self.offset = next(self.chunks), 0
                except StopIteration:
                    break
                continue
            end = len(self.buffer) if want < 0 else min(len(self.buffer), self.offset + want)
            parts.append(self.buffer[self.offset:end])
            if want > 0:
                want -= end - self.offset
            self.offset = end
        return b"".join(parts)


def _extract(offsite: Offsite, manifest: RemoteManifest, dest: Path) -> None:
    dest.mkdir(mode=0o700, parents=True)
    stream = _Plaintext(offsite, manifest)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            tar.extractall(dest, filter="data")
    except tarfile.TarError as exc:
        raise OperationFailed(f"physical backup {manifest.id}: its volumes do not hold a "
                              f"valid archive ({exc})") from None
    # The stream may end before the last volume's hash was checked (tar padding).
    stream.read(-1)


def _fetch_wal(plan: RemoteRestorePlan, folder: Path) -> int:
    from aegisctl.backup.crypto import decrypt_stream
    from aegisctl.backup.remote import remote_errors

    offsite = plan.offsite
    folder.mkdir(mode=0o700)
    names = plan.history + plan.wal
    count = 0
    for name in names:
        with remote_errors(f"downloading WAL {name}", offsite.bucket):
            obj = offsite.remote.client.get_object(Bucket=offsite.bucket,
                                                   Key=offsite.wal_key(name))
        meta = obj.get("Metadata", {})
        compression = str(meta.get("compression", "none"))
        tmp = folder / f".tmp-{name}"
        with open(tmp, "wb") as out:
            plain = decrypt_stream(_Exact(obj["Body"]), offsite.key,  # type: ignore[arg-type]
                                   f"WAL {name}")
            if compression == "none":
                for block in plain:
                    out.write(block)
            elif compression in ("gzip", "bzip2"):
                packed = b"".join(plain)
                out.write(gzip.decompress(packed) if compression == "gzip"
                          else bz2.decompress(packed))
            else:
                raise OperationFailed(f"WAL {name} is compressed with {compression}, which "
                                      "aegisctl cannot read")
        os.replace(tmp, folder / name)
        count += 1
    return count


def _recovery_settings(data_dir: Path, plan: RemoteRestorePlan) -> None:
    lines = ["", "# Written by aegisctl: recovery from the remote store.",
             f"restore_command = 'cp {WAL_DIR}/%f %p'",
             "recovery_target_timeline = 'latest'"]
    if plan.to_time:
        lines += [f"recovery_target_time = '{plan.to_time.isoformat()}'",
                  "recovery_target_action = 'promote'"]
    elif plan.to_lsn:
        lines += [f"recovery_target_lsn = '{plan.to_lsn}'", "recovery_target_action = 'promote'"]
    with open(data_dir / "postgresql.auto.conf", "a") as handle:
        handle.write("\n".join(lines) + "\n")
    (data_dir / "recovery.signal").touch(mode=0o600)


def run_remote_restore(loaded: LoadedConfig, target: Target, plan: RemoteRestorePlan,
                       replay_ledger: bool = True) -> RestoreResult:
    """Download, combine, fetch WAL, set recovery up; then (`replay_ledger`, not for the
    drill, which replays into the copy it starts) the erasure ledger's replay, as every
    restore does (physical/forget_replay.py)."""
    from aegisctl.backup.physical import forget_replay

    # Read and validated before anything is touched: a damaged copy stops the restore here.
    ledger = erasure_ledger(loaded, target, plan.chain[-1]) if replay_ledger else None
    result = _restore(loaded, target, plan)
    if ledger is not None:
        from aegisctl.backup.physical.engine import engine_for

        engine = engine_for(loaded, target, system_id=plan.offsite.system_id)
        result.erasures = forget_replay.replay_restored_dir(
            engine, plan.target_dir, loaded.settings.backup.physical.drill_timeout, *ledger)
    return result


def erasure_ledger(loaded: LoadedConfig, target: Target, manifest: RemoteManifest
                   ) -> tuple[Any, Any]:
    """The erasure ledger to replay and where (physical/forget_replay.py). On a machine with
    only the config and the key there is no embedded database to ask: it is not created just
    to be read (the copies beside the backups and in the store are), and the database and
    user to replay into are the ones the remote manifest recorded."""
    from aegisctl.backup.physical import forget_replay
    from aegisctl.paths import data_dir

    if not target.embedded or \
            (data_dir(loaded.settings.embedded.data_dir) / "global" / "pg_control").exists():
        return forget_replay.newest_ledger(loaded, target)
    from aegisctl.memory.ledger import current_ledger

    current = current_ledger(loaded.settings.backup, target.name)
    current.notes.append("no database on this machine: the ledger copies beside the backups "
                         "and in the remote store were read")
    destination = forget_replay.Destination(manifest.database, manifest.superuser) \
        if manifest.database and manifest.superuser else None
    return current, destination


def _restore(loaded: LoadedConfig, target: Target, plan: RemoteRestorePlan) -> RestoreResult:
    from aegisctl.backup.physical import restore_dir
    from aegisctl.backup.physical.engine import engine_for
    from aegisctl.backup.physical.restore import (
        RestoreResult,
        _check_target_dir,
        _chown_tree,
        _empty_dir,
    )

    engine = engine_for(loaded, target, system_id=plan.offsite.system_id)
    started = time.monotonic()
    target_dir = plan.target_dir
    _check_target_dir(target_dir)
    if target_dir.exists() and restore_dir.leftovers(target_dir) is not None:
        restore_dir.clean(target_dir)  # an interrupted restore's own leftovers
    created = not target_dir.exists()
    target_dir.mkdir(mode=0o700, exist_ok=True)
    restore_dir.write_marker(target_dir, {
        "backup": plan.backup.id, "from": "remote", "pid": os.getpid(), "phase": "recovering",
        "to_time": plan.to_time.isoformat() if plan.to_time else None, "to_lsn": plan.to_lsn,
        "at": dt.datetime.now(dt.UTC).isoformat()})
    staging = target_dir / restore_dir.STAGING
    work = target_dir / CHAIN_DIR
    try:
        for manifest in plan.chain:
            _extract(plan.offsite, manifest, work / manifest.id)
        if len(plan.chain) == 1:
            os.rename(work / plan.chain[0].id / "data", staging)
        else:
            _combine(engine, [work / m.id / "data" for m in plan.chain], staging)
        shutil.rmtree(work)
        _fetch_wal(plan, staging / WAL_DIR)
        _recovery_settings(staging, plan)
    except BaseException:
        _empty_dir(target_dir, remove=created)
        raise
    restore_dir.write_marker(target_dir, {"backup": plan.backup.id, "from": "remote",
                                          "pid": os.getpid(), "phase": "moving"})
    restore_dir.move_up(target_dir)
    owner = engine.server_ids()
    if owner:
        _chown_tree(target_dir, owner)
    return RestoreResult(plan.backup.id, [m.id for m in plan.chain], str(target_dir),
                         plan.to_time, plan.to_lsn, time.monotonic() - started, engine.run_as)


def _combine(engine: Engine, members: list[Path], output: Path) -> None:
    done = subprocess.run([str(engine.bin_dir / "pg_combinebackup"), "-o", str(output),
                           *map(str, members)], capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise OperationFailed(f"pg_combinebackup failed: {lines[-1][:300]}")


# ---------------------------------------------------------------------------------------------
# The drill from the store


def run_remote_drill(loaded: LoadedConfig, target: Target, *, backup_id: str | None = None,
                     to_time: dt.datetime | None = None,
                     system_id: str | None = None) -> DrillReport:
    """Restore from the store alone into a temporary folder, start, promote, check, delete.
    The source is not asked anything: the database, superuser and extensions the checks need
    were recorded in the remote manifest at upload."""
    from aegisctl.backup.physical.engine import engine_for
    from aegisctl.backup.physical.restore import (
        DrillCheck,
        DrillReport,
        _check_restored,
        _drill_dir,
        _replay_ledger,
        _Scratch,
    )

    system = resolve_system(loaded, target, system_id)
    engine = engine_for(loaded, target, system_id=system)
    physical = loaded.settings.backup.physical
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    with _drill_dir(engine) as data_dir:
        plan = plan_remote_restore(loaded, target, backup_id=backup_id, to_time=to_time,
                                   to_lsn=None, target_dir=data_dir, system_id=system)
        newest = plan.chain[-1]
        # Read and validated before anything runs; replayed into the started copy.
        ledger, _ = erasure_ledger(loaded, target, newest)
        report = DrillReport(target.name, plan.backup.id, [m.id for m in plan.chain], to_time,
                             started_at)
        try:
            run_remote_restore(loaded, target, plan, replay_ledger=False)
            report.restore_seconds = time.monotonic() - t0
            scratch = _Scratch(engine, data_dir, physical.drill_timeout,
                               newest.superuser or "postgres")
            report.port = scratch.port
            t1 = time.monotonic()
            try:
                scratch.start()
                scratch.wait_promoted()
                report.promote_seconds = time.monotonic() - t1
                report.checks.append(DrillCheck("promoted", True, "read-write after recovery "
                                                "from the remote store"))
                database = newest.database or _database(loaded, target)
                _check_restored(scratch, database, newest.extensions, None, report)
                _replay_ledger(scratch, database, ledger, report)
            finally:
                report.log_errors = scratch.log_errors()
                scratch.stop()
        except OperationFailed as exc:
            report.checks.append(DrillCheck("restore", False, exc.message))
    report.total_seconds = time.monotonic() - t0
    record: dict[str, Any] = {"at": report.started_at.isoformat(), "backup": report.backup,
                              "ok": report.ok, "seconds": round(report.total_seconds, 1)}
    save_state(engine, {"last_remote_drill" if report.ok else "last_remote_drill_attempt":
                        record})
    return report


def _database(loaded: LoadedConfig, target: Target) -> str:
    if target.embedded:
        return str(loaded.settings.embedded.database)
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(target.dsn).get("dbname") or "postgres")
