"""Sending physical backups and WAL to the remote store, resumably.

What is already in the store is recorded locally, beside Barman's catalogue
(`<Barman home>/aegisctl/<server>/offsite/`):

    wal.tsv               one line per WAL file sent and checked: name, object size, sha256,
                          archived-at (fsynced after each upload: a killed run loses nothing)
    backups/<id>.json     a base backup's upload: each volume sent so far (plaintext sha256,
                          object sha256 and size), then its status `uploaded`

Pending = every archived WAL file and every usable backup not recorded as sent. A killed
upload resumes at its next volume: the tar stream of a finished backup is the same bytes
again, and a volume whose plaintext hash matches the journal is not sent twice. `verify
--remote` takes what it finds missing or damaged out of the journal, so it is sent again.

One shipper at a time per target (`<state>/locks/<target>.physical-offsite.lock`): the WAL
streamer's shipping thread skips a round while `backup upload --pending` holds it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.backup.physical.backups import PhysicalBackup, _read_info, list_physical
from aegisctl.backup.physical.offsite import (
    MANIFEST,
    SEGMENT,
    WAL_NAME,
    Offsite,
    RemoteManifest,
    Volume,
    open_offsite,
    put_encrypted_json,
)
from aegisctl.errors import AegisError, LockBusy, OperationFailed
from aegisctl.testhooks import pause_at

if TYPE_CHECKING:
    from aegisctl.backup.physical.engine import Engine
    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block
    from aegisctl.targets import Target

log = logging.getLogger(__name__)
Progress = Callable[[str, int], None]


# ---------------------------------------------------------------------------------------------
# The local journal


def journal_dir(engine: Engine) -> Path:
    return engine.state_dir / "offsite"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class SentWal:
    name: str
    size: int
    sha256: str
    archived_at: float


def sent_wal(engine: Engine) -> dict[str, SentWal]:
    """The WAL files recorded as sent (lines that do not parse are ignored: sent again)."""
    out: dict[str, SentWal] = {}
    try:
        lines = (journal_dir(engine) / "wal.tsv").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 4 or not WAL_NAME.match(parts[0]):
            continue
        try:
            out[parts[0]] = SentWal(parts[0], int(parts[1]), parts[2], float(parts[3]))
        except ValueError:
            continue
    return out


def _record_wal(engine: Engine, sent: SentWal) -> None:
    path = journal_dir(engine) / "wal.tsv"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(f"{sent.name}\t{sent.size}\t{sent.sha256}\t{sent.archived_at}\n")
        handle.flush()
        os.fsync(handle.fileno())


def forget_wal(engine: Engine, names: set[str]) -> None:
    """Take WAL files out of the journal (missing or damaged in the store): sent again."""
    kept = [s for n, s in sent_wal(engine).items() if n not in names]
    _write_atomic(journal_dir(engine) / "wal.tsv", "".join(
        f"{s.name}\t{s.size}\t{s.sha256}\t{s.archived_at}\n" for s in kept))


def _backup_journal_path(engine: Engine, backup_id: str) -> Path:
    return journal_dir(engine) / "backups" / f"{backup_id}.json"


def backup_journal(engine: Engine, backup_id: str) -> dict[str, Any]:
    try:
        data = json.loads(_backup_journal_path(engine, backup_id).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("id") == backup_id else {}


def save_backup_journal(engine: Engine, backup_id: str, data: dict[str, Any]) -> None:
    _write_atomic(_backup_journal_path(engine, backup_id), json.dumps(data, indent=1))


def mark_pruned(engine: Engine, backup_id: str) -> None:
    """Remote retention deleted the backup's copy: not pending, never sent again."""
    save_backup_journal(engine, backup_id, {"id": backup_id, "status": "pruned",
                                            "volumes": []})


def requeue_backup(engine: Engine, backup_id: str, why: str) -> None:
    """A backup whose remote copy is missing or damaged: pending again (its volumes too)."""
    journal = backup_journal(engine, backup_id)
    if journal:
        save_backup_journal(engine, backup_id, {"id": backup_id, "status": "pending",
                                                "error": why, "volumes": []})


# ---------------------------------------------------------------------------------------------
# What is pending


def local_wal_path(engine: Engine, name: str) -> Path:
    """Where Barman keeps an archived WAL file (history files at the top of wals/)."""
    wals = engine.server_dir / "wals"
    return wals / name if name.endswith(".history") else wals / name[:16] / name


def local_wal(engine: Engine) -> list[tuple[str, int, float, str]]:
    """(name, size, archived at, compression) of every archived WAL file, from xlog.db."""
    xlog = engine.server_dir / "wals" / f"{engine.server}-xlog.db"
    out = []
    try:
        text = xlog.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not WAL_NAME.match(parts[0]):
            continue
        try:
            size, at = int(parts[1]), float(parts[2])
        except ValueError:
            continue
        compression = parts[3] if len(parts) > 3 and parts[3] not in ("", "None") else "none"
        out.append((parts[0], size, at, compression))
    return sorted(out)


def pending_wal(engine: Engine) -> list[tuple[str, int, float, str]]:
    sent = sent_wal(engine)
    return [w for w in local_wal(engine) if w[0] not in sent]


def pending_backups(engine: Engine) -> list[PhysicalBackup]:
    """Usable local backups not recorded as uploaded, oldest first (parents before children)."""
    return [b for b in list_physical(engine) if b.usable and
            backup_journal(engine, b.id).get("status") not in ("uploaded", "pruned")]


# ---------------------------------------------------------------------------------------------
# Sending one file


def _staging(engine: Engine) -> Path:
    folder = journal_dir(engine) / "staging"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def _clean_staging(engine: Engine) -> None:
    """Only under the offsite lock: every file there is a killed run's leftover."""
    for path in _staging(engine).glob(".tmp-*"):
        path.unlink(missing_ok=True)


def _put_file(offsite: Offsite, path: Path, key: str, progress: Progress | None,
              metadata: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Upload an encrypted file and check it: (size, sha256, the store's checksum)."""
    from aegisctl.backup.manifest import BackupFile
    from aegisctl.backup.remote import _upload_file, file_digests, remote_errors

    digests = file_digests(path, offsite.remote.settings)
    with remote_errors(f"uploading {key.rsplit('/', 1)[-1]}", offsite.bucket):
        checksum = _upload_file(offsite.remote, path, key,
                                BackupFile(key, digests.size, digests.sha256), digests,
                                progress, metadata)
    return digests.size, digests.sha256, checksum


def _encrypt_file(offsite: Offsite, source: Path, dest: Path) -> None:
    from aegisctl.backup.crypto import EncryptingWriter

    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
        writer = EncryptingWriter(out, offsite.key)
        for block in iter(lambda: src.read(1024 * 1024), b""):
            writer.write(block)
        writer.close()


def ship_wal_file(offsite: Offsite, engine: Engine, wal: tuple[str, int, float, str]) -> int:
    """Encrypt, upload, check and record one archived WAL file; returns bytes sent."""
    name, _, archived_at, compression = wal
    source = local_wal_path(engine, name)
    tmp = _staging(engine) / f".tmp-{name}.enc"
    try:
        try:
            _encrypt_file(offsite, source, tmp)
        except FileNotFoundError:
            raise OperationFailed(f"WAL file {name} is in Barman's catalogue but not on disk "
                                  f"({source})") from None
        size, sha256, _ = _put_file(offsite, tmp, offsite.wal_key(name), None, {
            "archived-at": repr(archived_at), "compression": compression})
    finally:
        tmp.unlink(missing_ok=True)
    _record_wal(engine, SentWal(name, size, sha256, archived_at))
    return size


# ---------------------------------------------------------------------------------------------
# Sending a base backup as encrypted tar volumes


class _VolumeSink:
    """The tar stream's file object: cuts it into volumes of `volume_size` plaintext bytes,
    each encrypted into a staging file and handed to `done(index, path, sha256, size)`."""

    def __init__(self, offsite: Offsite, folder: Path, volume_size: int,
                 done: Callable[[int, Path, str, int], None]) -> None:
        self.offsite, self.folder, self.volume_size, self.done = offsite, folder, volume_size, done
        self.index = 0
        self._open()

    def _open(self) -> None:
        from aegisctl.backup.crypto import EncryptingWriter

        self.path = self.folder / f".tmp-vol-{self.index:05d}"
        self.handle = open(self.path, "wb")  # noqa: SIM115 (closed in _finish)
        os.chmod(self.path, 0o600)
        self.writer = EncryptingWriter(self.handle, self.offsite.key)
        self.plain = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            part = view[: self.volume_size - self.count]
            self.writer.write(bytes(part))
            self.plain.update(part)
            self.count += len(part)
            view = view[len(part):]
            if self.count == self.volume_size:
                self._finish()
                self._open()
        return len(data)

    def _finish(self) -> None:
        self.writer.close()
        self.handle.close()
        self.done(self.index, self.path, self.plain.hexdigest(), self.count)
        self.index += 1

    def close(self) -> None:
        if self.count or self.index == 0:
            self._finish()
        else:
            self.handle.close()
            self.path.unlink(missing_ok=True)


def _files(folder: Path) -> Iterator[Path]:
    """Every path under `folder`, sorted: the same tar stream each time for the same files."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        base = Path(root)
        if base != folder:
            yield base
        for name in sorted(files):
            yield base / name


def _source_facts(loaded: LoadedConfig, target: Target) -> dict[str, Any]:
    """The database name, bootstrap superuser and extensions, for a drill from the store
    (which cannot ask the source). Best effort: the upload does not need the server."""
    from aegisctl.db import connect

    try:
        with connect(loaded, target, "backup upload --physical") as conn:
            row = conn.execute("SELECT current_database(), (SELECT rolname FROM pg_roles "
                               "WHERE oid = 10)").fetchone()
            extensions = dict(conn.execute("SELECT extname, extversion FROM pg_extension"
                                           ).fetchall())
    except AegisError as exc:
        log.info("source facts unavailable for the remote manifest: %s", exc.message)
        return {}
    return {"database": row[0], "superuser": row[1], "extensions": extensions} if row else {}


def ship_backup(offsite: Offsite, engine: Engine, backup: PhysicalBackup,
                facts: dict[str, Any], progress: Progress | None = None) -> RemoteManifest:
    """Send a base backup's volumes (resuming after those already sent), then its manifest."""
    from aegisctl.backup.manifest import format_time, utcnow

    info = _read_info(engine.server_dir / "meta" / f"{backup.id}-backup.info")
    folder = engine.server_dir / "base" / backup.id
    if not folder.is_dir() or folder.is_symlink():
        raise OperationFailed(f"physical backup {backup.id}: its folder {folder} is missing")
    for field_name in ("begin_wal", "end_wal"):
        if not SEGMENT.match(info.get(field_name, "")):
            raise OperationFailed(f"physical backup {backup.id}: Barman's backup.info has no "
                                  f"valid {field_name}")
    journal = backup_journal(engine, backup.id)
    if journal.get("volume_size") != offsite.settings.volume_size:
        journal = {"id": backup.id, "volume_size": offsite.settings.volume_size, "volumes": []}
    journal["status"] = "partial"
    volumes: list[dict[str, Any]] = list(journal.get("volumes") or [])
    resumed = len(volumes)

    def done(index: int, path: Path, plain_sha: str, plain_size: int) -> None:
        nonlocal volumes
        try:
            if index < len(volumes) and volumes[index].get("plain_sha256") == plain_sha \
                    and volumes[index].get("plain_size") == plain_size:
                return  # sent by an earlier, interrupted run
            del volumes[index:]  # the stream differs from here on: what follows is stale
            name = f"vol-{index:05d}.tar.enc"
            size, sha256, checksum = _put_file(offsite, path,
                                               offsite.backup_prefix(backup.id) + name, progress)
            volumes.append(Volume(name, size, sha256, plain_size, plain_sha, checksum).to_json())
            journal["volumes"] = volumes
            save_backup_journal(engine, backup.id, journal)
            pause_at("physical-offsite.volume-sent")
        finally:
            path.unlink(missing_ok=True)

    sink = _VolumeSink(offsite, _staging(engine), offsite.settings.volume_size, done)
    try:
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for path in _files(folder):
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
        sink.close()
    except OSError as exc:
        raise OperationFailed(f"physical backup {backup.id}: cannot read {folder}: "
                              f"{exc.strerror or exc}") from None
    count = sink.index
    del volumes[count:]
    lock_days = offsite.remote.settings.object_lock_days
    manifest = RemoteManifest(
        id=backup.id, parent=backup.parent, begin_wal=info["begin_wal"],
        end_wal=info["end_wal"], begin_time=backup.begin_time or utcnow(),
        end_time=backup.end_time or utcnow(), timeline=backup.timeline or 1, size=backup.size,
        volumes=[Volume(**v) for v in volumes], uploaded_at=format_time(utcnow()),
        object_lock_until=format_time(utcnow() + dt.timedelta(days=lock_days))
        if lock_days > 0 else None, begin_lsn=backup.begin_lsn,
        summarize_wal=backup.summarize_wal, database=facts.get("database"),
        superuser=facts.get("superuser"), extensions=facts.get("extensions") or {},
        tablespaces=info.get("tablespaces", "None") not in ("None", "", "[]"))
    from aegisctl.backup.remote import remote_errors

    with remote_errors(f"uploading the manifest of {backup.id}", offsite.bucket):
        put_encrypted_json(offsite, offsite.backup_prefix(backup.id) + MANIFEST,
                           manifest.to_json())
    journal.update({"status": "uploaded", "uploaded_at": manifest.uploaded_at,
                    "volumes": volumes, "resumed_at_volume": resumed, "error": None})
    save_backup_journal(engine, backup.id, journal)
    return manifest


# ---------------------------------------------------------------------------------------------
# One round: every pending WAL file, then every pending backup


@dataclass
class ShipResult:
    target: str
    backups: list[str] = field(default_factory=list)
    resumed: dict[str, int] = field(default_factory=dict)  # backup id -> volumes skipped
    wal_files: int = 0
    bytes_sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    pending_backups: list[str] = field(default_factory=list)
    pending_wal: int = 0
    skipped: str | None = None  # another shipper held the lock
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "uploaded_backups": self.backups,
                "resumed": self.resumed, "uploaded_wal_files": self.wal_files,
                "bytes_sent": self.bytes_sent, "failed": self.failed,
                "pending_backups": self.pending_backups, "pending_wal_files": self.pending_wal,
                "skipped": self.skipped, "ok": self.ok}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        blocks: list[Block] = []
        for backup_id in self.backups:
            extra = f" (resumed after {self.resumed[backup_id]} volume(s) already sent)" \
                if self.resumed.get(backup_id) else ""
            blocks.append(Note(f"physical backup {backup_id} uploaded{extra}"))
        blocks.append(Note(f"{self.wal_files} WAL file(s) uploaded; pending: "
                           f"{len(self.pending_backups)} physical backup(s), "
                           f"{self.pending_wal} WAL file(s)"))
        if self.skipped:
            blocks.append(Note(self.skipped, "yellow"))
        blocks += [Note(f"upload of {what} failed: {why}", "red")
                   for what, why in self.failed.items()]
        return blocks


@contextlib.contextmanager
def offsite_lock(loaded: LoadedConfig, target: Target, wait: float) -> Iterator[None]:
    from aegisctl.locks import Holder, hold, safe_name
    from aegisctl.paths import locks_dir, state_dir

    path = locks_dir(state_dir(loaded.settings)) / f"{safe_name(target.name)}.physical-offsite.lock"

    def busy(holder: Holder | None) -> LockBusy:
        return LockBusy(f"another run is sending physical backups of '{target.name}' to the "
                        f"store ({holder.describe() if holder else 'holder unknown'})")

    with hold(path, Holder.me("physical offsite upload"), wait_seconds=wait, busy=busy):
        yield


def ship(loaded: LoadedConfig, target: Target, *, engine: Engine | None = None,
         backups: bool = True, wait: float = 600.0,
         progress: Progress | None = None) -> ShipResult:
    """Send every pending WAL file (oldest first; the first failure stops the WAL: the store
    keeps no gap it does not know about) and, with `backups`, every pending base backup."""
    from aegisctl.backup.physical.engine import engine_for

    engine = engine or engine_for(loaded, target)
    result = ShipResult(target.name)
    if not engine.system_id:
        raise OperationFailed("cannot tell which database system the physical backups "
                              "belong to", hint="start the server")
    offsite = open_offsite(loaded, target, engine.system_id)
    try:
        with offsite_lock(loaded, target, wait):
            _clean_staging(engine)
            _ship_wal(offsite, engine, result)
            if backups:
                facts: dict[str, Any] | None = None
                for backup in pending_backups(engine):
                    if facts is None:
                        facts = _source_facts(loaded, target)
                    resumed = len(backup_journal(engine, backup.id).get("volumes") or [])
                    try:
                        sent = ship_backup(offsite, engine, backup, facts, progress)
                    except AegisError as exc:
                        result.failed[backup.id] = exc.message
                        result.exit_code = result.exit_code or int(exc.exit_code)
                        journal = backup_journal(engine, backup.id) or {"id": backup.id}
                        journal.update({"status": "pending", "error": exc.message})
                        save_backup_journal(engine, backup.id, journal)
                        continue
                    result.backups.append(backup.id)
                    result.bytes_sent += sum(v.size for v in sent.volumes[resumed:])
                    if resumed:
                        result.resumed[backup.id] = resumed
                    # WAL archived meanwhile (the backup's own end) goes too.
                    _ship_wal(offsite, engine, result)
    except LockBusy as exc:
        result.skipped = exc.message
    result.pending_backups = [b.id for b in pending_backups(engine)]
    result.pending_wal = len(pending_wal(engine))
    return result


def _ship_wal(offsite: Offsite, engine: Engine, result: ShipResult) -> None:
    for wal in pending_wal(engine):
        try:
            result.bytes_sent += ship_wal_file(offsite, engine, wal)
        except AegisError as exc:
            result.failed[f"WAL {wal[0]}"] = exc.message
            result.exit_code = result.exit_code or int(exc.exit_code)
            return
        result.wal_files += 1


# ---------------------------------------------------------------------------------------------
# Continuous WAL shipping beside `backup wal stream`


class WalShipper:
    """A thread of `backup wal stream` that sends newly archived WAL every archive_interval
    (a round already running elsewhere — `backup upload --pending` — is left to finish)."""

    def __init__(self, loaded: LoadedConfig, target: Target, engine: Engine,
                 say: Callable[[str], None]) -> None:
        import threading

        self.loaded, self.target, self.engine, self.say = loaded, target, engine, say
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="aegisctl-wal-shipper",
                                       daemon=True)
        self.last_error: str | None = None

    def _run(self) -> None:
        interval = self.loaded.settings.backup.physical.archive_interval
        while not self.stop.wait(interval):
            self.round()

    def round(self) -> None:
        try:
            result = ship(self.loaded, self.target, engine=self.engine, backups=False, wait=0)
        except AegisError as exc:
            error: str | None = exc.message
        except Exception as exc:  # the shipper must never stop the streamer
            error = f"{type(exc).__name__}: {exc}"
        else:
            error = "; ".join(result.failed.values()) or None
        if error != self.last_error:
            self.say(f"WAL upload to the remote store failed: {error}" if error
                     else "WAL upload to the remote store works again")
            self.last_error = error

    def close(self) -> None:
        self.stop.set()
        self.thread.join(120)
        self.round()  # what the streamer archived last


def start_wal_shipper(loaded: LoadedConfig, target: Target, engine: Engine,
                      say: Callable[[str], None]) -> WalShipper | None:
    """A started shipper when physical backups go to a remote store, else None."""
    from aegisctl.backup.physical.offsite import remote_configured

    if not remote_configured(loaded):
        return None
    shipper = WalShipper(loaded, target, engine, say)
    shipper.last_error = None
    shipper.thread.start()
    say("shipping archived WAL to the remote store every "
        f"{loaded.settings.backup.physical.archive_interval:g} s")
    return shipper
