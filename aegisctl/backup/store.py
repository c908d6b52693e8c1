"""The local backup folder of one target: ids, manifests, atomic writes, the audit log.

Layout (folders 0700, files 0600):

    <directory>/<target>/<id>.dump            custom archive (".dump.enc" when encrypted)
    <directory>/<target>/<id>.dir/            directory format
    <directory>/<target>/<id>.globals.sql     roles, with --globals (".enc" when encrypted)
    <directory>/<target>/<id>.manifest.json   the manifest, written last: no manifest, no backup
    <directory>/<target>/.lock                one backup, prune or restore at a time
    <directory>/audit.log                     every deletion, one JSON object per line

Work in progress lives under names starting with ".tmp-" and is renamed into place when
complete; a leftover one (a killed run) is never listed and is removed by the next locked run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aegisctl.backup.manifest import BackupManifest, format_time, utcnow
from aegisctl.backup.settings import BackupSettings
from aegisctl.errors import OperationFailed, UsageError

TMP_PREFIX = ".tmp-"
MANIFEST_SUFFIX = ".manifest.json"
_ID = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
_TARGET = re.compile(r"^[A-Za-z0-9_.-]+$")
CHUNK = 1024 * 1024


def default_directory(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if os.geteuid() == 0:
        return Path("/var/backups/aegisctl")
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")) / ".local" / "share")
    return Path(base).expanduser() / "aegisctl" / "backups"


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


class BackupStore:
    def __init__(self, settings: BackupSettings, target: str) -> None:
        if not _TARGET.match(target):
            raise UsageError(f"target name '{target}' cannot be used as a folder name")
        self.settings = settings
        self.target = target
        self.root = Path(settings.directory).expanduser() if settings.directory \
            else default_directory()
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
        self.folder.chmod(0o700)
        return self.folder

    @property
    def lock_path(self) -> Path:
        return self.folder / ".lock"

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
        write_atomic(self.manifest_path(manifest.id), data)

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
        try:
            return BackupManifest.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise OperationFailed(f"manifest {path} is unreadable: {exc}") from None

    def manifests(self) -> list[BackupManifest]:
        """Every complete local backup, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.glob(f"*{MANIFEST_SUFFIX}"):
            if path.name.startswith(TMP_PREFIX):
                continue
            try:
                found.append(self._read(path))
            except OperationFailed:
                continue
        return sorted(found, key=lambda m: (m.finished_at, m.id))

    def latest(self, good_only: bool = False) -> BackupManifest:
        candidates = [m for m in self.manifests() if m.good or not good_only]
        if not candidates:
            raise UsageError(f"target '{self.target}' has no local backups in {self.folder}")
        return candidates[-1]

    def data_paths(self, manifest: BackupManifest) -> list[Path]:
        """The top-level paths a backup occupies (archive or folder, globals, manifest)."""
        tops = {self.folder / Path(f.path).parts[0] for f in manifest.files}
        if manifest.globals_file:
            tops.add(self.folder / manifest.globals_file.path)
        return sorted(tops)

    def delete(self, manifest: BackupManifest, reason: str, command: str) -> list[str]:
        """Remove a backup: manifest first (so a half-deleted one is never listed)."""
        paths = [self.manifest_path(manifest.id), *self.data_paths(manifest)]
        for path in paths:
            remove_path(path)
        fsync_dir(self.folder)
        names = [p.name for p in paths]
        self.audit({"action": "delete", "where": "local", "target": self.target,
                    "id": manifest.id, "paths": names, "reason": reason, "command": command})
        return names

    def stale_temporaries(self) -> Iterator[Path]:
        if self.folder.is_dir():
            yield from self.folder.glob(f"{TMP_PREFIX}*")

    def remove_stale_temporaries(self) -> list[str]:
        """Only call while holding the lock: then every temporary is a killed run's leftover."""
        removed = []
        for path in list(self.stale_temporaries()):
            remove_path(path)
            removed.append(path.name)
        return removed

    # -- audit -----------------------------------------------------------------------------

    def audit(self, event: dict[str, Any]) -> None:
        record = {"at": format_time(utcnow()), **event}
        path = self.audit_path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
