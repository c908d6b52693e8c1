"""The local backup folder of one target: ids, manifests, atomic writes, the audit log.

Layout (folders 0700, files 0600):

    <directory>/<target>/<id>.dump            custom archive (".dump.enc" when encrypted)
    <directory>/<target>/<id>.dir/            directory format
    <directory>/<target>/<id>.globals.sql     roles, with --globals (".enc" when encrypted)
    <directory>/<target>/<id>.manifest.json   the manifest, written last: no manifest, no backup
    <directory>/audit.log                     every deletion, one JSON object per line

Work in progress lives under names starting with ".tmp-" and is renamed into place when
complete; a leftover one (a killed run) is never listed and is removed by the next locked run.

What a backup owns on disk is decided by the folder, not by its manifest: the direct children
named `<id>` plus one of the known suffixes. `scan` lists them all, with or without a (valid)
manifest, and `delete` removes only those children; a manifest's file paths are proven to name
the same children (manifest.load_manifest) and are opened through `file_path`, which refuses a
symlink anywhere on the way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegisctl.backup.manifest import (
    BACKUP_ID,
    OWN_SUFFIXES,
    BackupManifest,
    ManifestError,
    directory_digest,
    format_time,
    load_manifest,
    utcnow,
)
from aegisctl.backup.settings import BackupSettings
from aegisctl.errors import OperationFailed, UsageError
from aegisctl.paths import configured_or_default, default_backup_dir

TMP_PREFIX = ".tmp-"
MANIFEST_SUFFIX = ".manifest.json"
_ID = BACKUP_ID
_OWNED = re.compile(r"^(\d{8}T\d{6}Z(?:-\d{1,6})?)("
                    + "|".join(re.escape(s) for s in (*OWN_SUFFIXES, MANIFEST_SUFFIX)) + r")$")
_TARGET = re.compile(r"^[A-Za-z0-9_.-]+$")
_STAGED_MANIFEST = re.compile(r"^" + re.escape(TMP_PREFIX) + r"(\d{8}T\d{6}Z(?:-\d{1,6})?)"
                              + re.escape(MANIFEST_SUFFIX) + r"$")
CHUNK = 1024 * 1024


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder."""
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                fsync_file(child)
        for folder in [path, *(p for p in path.rglob("*") if p.is_dir())]:
            fsync_dir(folder)
    else:
        fsync_file(path)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def free_space(folder: Path) -> str:
    """The free space of the filesystem holding `folder`, for a disk-full message."""
    from aegisctl.units import format_bytes

    try:
        return format_bytes(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown"


def os_error(what: str, path: Path, exc: OSError) -> OperationFailed:
    """One line for a filesystem failure (permission, read-only, full disk...)."""
    import errno

    reason = exc.strerror or type(exc).__name__
    hint = None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += f" ({free_space(path.parent)} free)"
    if isinstance(exc, PermissionError):
        hint = "check the owner and mode of the backup folder (aegisctl needs to own it)"
    return OperationFailed(f"{what} {path}: {reason}", hint=hint)


# State of a stored backup, as `backup list` shows it.
OK = "ok"
MISSING_FILES = "missing files"
NO_MANIFEST = "no manifest"
MANIFEST_UNREADABLE = "manifest unreadable"


@dataclass
class StoredBackup:
    """A backup-like object in the folder: every child named after one id."""

    id: str
    names: list[str] = field(default_factory=list)  # direct children of the folder
    manifest: BackupManifest | None = None
    state: str = OK
    problems: list[str] = field(default_factory=list)
    mtime: float = 0.0  # newest of its children: the age of a backup without a manifest

    @property
    def created(self) -> dt.datetime:
        if self.manifest is not None:
            return self.manifest.created
        return dt.datetime.fromtimestamp(self.mtime, dt.UTC)


class BackupStore:
    def __init__(self, settings: BackupSettings, target: str) -> None:
        if not _TARGET.match(target):
            raise UsageError(f"target name '{target}' cannot be used as a folder name")
        self.settings = settings
        self.target = target
        self.root = configured_or_default(settings.directory, default_backup_dir)
        self.folder = self.root / target

    # -- folders -------------------------------------------------------------------------

    def ensure(self) -> Path:
        for folder in (self.root, self.folder):
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise OperationFailed(
                    f"cannot create the backup folder {folder}: {exc.strerror}",
                    hint="set backup.directory to a writable place",
                ) from None
        if self.folder.is_symlink() or not self.folder.is_dir():
            raise OperationFailed(f"the backup folder {self.folder} is not a folder "
                                  "(or is a symlink)")
        try:
            # Owner-only, except "pass through" (o+x) where `backup physical enable` set it
            # so that Barman's user reaches its home inside this folder (files are 0600).
            self.folder.chmod(0o700 | (self.folder.stat().st_mode & 0o001))
            probe = self.folder / f"{TMP_PREFIX}probe.{os.getpid()}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as exc:
            raise OperationFailed(
                f"cannot write to the backup folder {self.folder}: {exc.strerror}",
                hint="it must belong to the user running aegisctl (chown it, or set "
                     "backup.directory)") from None
        return self.folder

    def file_path(self, relative: str) -> Path:
        """The path of a (validated) manifest file, proven to stay in the folder: no
        symlink on the way, resolved inside the folder."""
        path = self.folder / relative
        current = self.folder
        for part in Path(relative).parts:
            current = current / part
            if current.is_symlink():
                raise OperationFailed(f"{relative}: {current.name} is a symlink; refusing to "
                                      "follow it out of the backup folder")
        if not path.resolve().is_relative_to(self.folder.resolve()):
            raise OperationFailed(f"{relative} resolves outside the backup folder")
        return path

    @property
    def audit_path(self) -> Path:
        if self.settings.audit_log:
            return Path(self.settings.audit_log).expanduser()
        return self.root / "audit.log"

    def new_id(self, now: dt.datetime | None = None) -> str:
        base = (now or utcnow()).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        candidate, n = base, 1
        while self.manifest_path(candidate).exists() or any(self.folder.glob(f"{candidate}.*")):
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    def manifest_path(self, backup_id: str) -> Path:
        return self.folder / f"{backup_id}{MANIFEST_SUFFIX}"

    # -- manifests -----------------------------------------------------------------------

    def save(self, manifest: BackupManifest) -> None:
        data = json.dumps(manifest.to_dict(), indent=2, sort_keys=False).encode() + b"\n"
        path = self.manifest_path(manifest.id)
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise os_error("cannot write the manifest", path, exc) from None

    def staged_manifest_path(self, backup_id: str) -> Path:
        return self.folder / f"{TMP_PREFIX}{backup_id}{MANIFEST_SUFFIX}"

    def stage_manifest(self, manifest: BackupManifest) -> Path:
        """A new backup's manifest, complete and fsynced under its temporary name (the caller
        renames it into place after the backup's files): its path."""
        data = json.dumps(manifest.to_dict(), indent=2, sort_keys=False).encode() + b"\n"
        path = self.staged_manifest_path(manifest.id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise os_error("cannot write the manifest", path, exc) from None
        return path

    def load(self, backup_id: str) -> BackupManifest:
        if not _ID.match(backup_id):
            raise UsageError(f"'{backup_id}' is not a backup id (like 20260101T020000Z)")
        path = self.manifest_path(backup_id)
        if not path.is_file():
            raise UsageError(
                f"no local backup {backup_id} for target '{self.target}' in {self.folder}",
                hint="see `aegisctl backup list`",
            )
        return self._read(path)

    def _read(self, path: Path) -> BackupManifest:
        backup_id = path.name.removesuffix(MANIFEST_SUFFIX)
        try:
            if path.is_symlink():
                raise ManifestError("it is a symlink")
            return load_manifest(path.read_bytes(), expected_id=backup_id)
        except ManifestError as exc:
            raise ManifestError(f"manifest {path.name} is unusable: {exc.message}") from None
        except OSError as exc:
            raise ManifestError(f"manifest {path.name} is unreadable: "
                                f"{exc.strerror or exc}") from None

    def scan(self, check: bool = True) -> list[StoredBackup]:
        """Every backup-like object in the folder, oldest first, each with an honest state.
        `check`: stat every file a valid manifest lists (a missing one -> 'missing files')."""
        if not self.folder.is_dir():
            return []
        found: dict[str, StoredBackup] = {}
        try:
            children = sorted(os.scandir(self.folder), key=lambda e: e.name)
        except OSError as exc:
            raise os_error("cannot read the backup folder", self.folder, exc) from None
        for child in children:
            match = _OWNED.match(child.name)
            if not match:
                continue
            entry = found.setdefault(match.group(1), StoredBackup(match.group(1)))
            entry.names.append(child.name)
            with contextlib.suppress(OSError):
                entry.mtime = max(entry.mtime, child.stat(follow_symlinks=False).st_mtime)
        for entry in found.values():
            manifest_name = f"{entry.id}{MANIFEST_SUFFIX}"
            if manifest_name not in entry.names:
                entry.state = NO_MANIFEST
                entry.problems.append("cannot be verified or restored by aegisctl (a lost "
                                      "manifest, or a copy made by hand)")
                continue
            try:
                entry.manifest = self._read(self.folder / manifest_name)
            except ManifestError as exc:
                entry.state = MANIFEST_UNREADABLE
                entry.problems.append(exc.message)
                continue
            if check:
                problems = check_files(self, entry.manifest, checksum=False)
                if problems:
                    entry.state = MISSING_FILES
                    entry.problems += problems
        return sorted(found.values(), key=lambda e: (e.created, e.id))

    def manifests(self) -> list[BackupManifest]:
        """Every local backup with a valid manifest, oldest first."""
        return [e.manifest for e in self.scan(check=False) if e.manifest is not None]

    def latest(self, good_only: bool = False,
               exclude: set[str] | None = None) -> BackupManifest:
        """The newest local backup whose files are all there (`--latest`); a newer one with
        missing files is passed over, as `backup list` shows. `exclude`: ids not to pick
        (another database system's, in a shared folder)."""
        candidates = [e.manifest for e in self.scan() if e.manifest is not None
                      and e.state == OK and (e.manifest.good or not good_only)
                      and e.id not in (exclude or set())]
        if not candidates:
            raise UsageError(f"target '{self.target}' has no complete local backup in "
                             f"{self.folder}", hint="see `aegisctl backup list`")
        return candidates[-1]

    def owned_names(self, backup_id: str) -> list[str]:
        """The direct children of the folder that belong to this backup id."""
        if not _ID.match(backup_id):
            raise UsageError(f"'{backup_id}' is not a backup id")
        try:
            names = [e.name for e in os.scandir(self.folder)]
        except FileNotFoundError:
            return []
        owned = [n for n in names if (m := _OWNED.match(n)) and m.group(1) == backup_id]
        # Manifest first, so a half-deleted backup is listed as 'no manifest', never as good.
        return sorted(owned, key=lambda n: (not n.endswith(MANIFEST_SUFFIX), n))

    def delete(self, backup_id: str, reason: str, command: str) -> list[str]:
        """Remove a backup: only the folder's own children named after its id (a symlink
        among them is removed, never followed)."""
        names = self.owned_names(backup_id)
        for name in names:
            path = self.folder / name
            try:
                mode = os.lstat(path).st_mode
                if stat.S_ISDIR(mode):
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise os_error("cannot delete", path, exc) from None
        fsync_dir(self.folder)
        self.audit({"action": "delete", "where": "local", "target": self.target,
                    "id": backup_id, "paths": names, "reason": reason, "command": command})
        return names

    def stale_temporaries(self) -> Iterator[Path]:
        if self.folder.is_dir():
            yield from self.folder.glob(f"{TMP_PREFIX}*")

    def remove_stale_temporaries(self) -> list[str]:
        """Only call while holding the lock: then every temporary is a killed run's leftover.
        A create killed between renaming its files and its manifest (see dump.create_backup)
        leaves files under final names beside a staged manifest: they go too."""
        removed = []
        for path in list(self.stale_temporaries()):
            staged = _STAGED_MANIFEST.match(path.name)
            if staged and not self.manifest_path(staged.group(1)).exists():
                for name in self.owned_names(staged.group(1)):
                    remove_path(self.folder / name)
                    removed.append(name)
            remove_path(path)
            removed.append(path.name)
        return removed

    # -- audit -----------------------------------------------------------------------------

    def audit(self, event: dict[str, Any]) -> None:
        record = {"at": format_time(utcnow()), **event}
        path = self.audit_path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, sort_keys=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise os_error("cannot append to the audit log", path, exc) from None


def check_files(store: BackupStore, manifest: BackupManifest, checksum: bool = True) -> list[str]:
    """What is wrong with a backup's files against its manifest (missing, size, sha256 unless
    checksum is off, the directory digest); empty when nothing is."""
    problems = []
    for item in manifest.all_files:
        try:
            path = store.file_path(item.path)
        except OperationFailed as exc:
            problems.append(exc.message)
            continue
        if not path.is_file():
            problems.append(f"{item.path}: missing")
        elif path.stat().st_size != item.size:
            problems.append(f"{item.path}: size {path.stat().st_size}, manifest says {item.size}")
        elif checksum and sha256_file(path) != item.sha256:
            problems.append(f"{item.path}: sha256 differs from the manifest")
    if manifest.format == "directory" and not problems and \
            directory_digest(manifest.files) != manifest.sha256:
        problems.append("the manifest's file list does not match its digest")
    return problems
