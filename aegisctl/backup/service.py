"""What the commands (and the scheduler, and `schema migrate --backup`) call: each operation
under the target's lock, returning a result object (to_json / to_view)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.backup.dump import CreateOptions, Progress, create_backup
from aegisctl.backup.listing import BackupListing, human_size, list_backups
from aegisctl.backup.manifest import BackupManifest, format_time, utcnow
from aegisctl.backup.prune import PrunePlan, PruneResult, apply_prune, plan_prune, prune
from aegisctl.backup.store import BackupStore
from aegisctl.backup.verify import VerifyReport, verify_backup
from aegisctl.config import LoadedConfig
from aegisctl.errors import AegisError, OperationFailed
from aegisctl.locks import target_lock
from aegisctl.targets import Target

if TYPE_CHECKING:
    from aegisctl.memory.ledger import PublishResult
    from aegisctl.output import Block

__all__ = ["BackupListing", "CreateResult", "PrunePlan", "PruneResult", "UploadResult",
           "apply_prune", "create_verified_backup", "download", "list_backups", "plan_prune",
           "prune", "run_create", "set_pinned", "upload"]


def manifest_fields(m: BackupManifest) -> list[tuple[str, Any]]:
    return [
        ("id", m.id), ("label", m.label or "-"), ("target", f"{m.target} ({m.database})"),
        ("format", f"{m.format}, compress {m.compress}, jobs {m.jobs}"),
        ("size", human_size(m.size)), ("sha256", m.sha256),
        ("pg_dump", f"{m.pg_dump_version} ({m.pg_dump_source}: {m.pg_dump_path})"),
        ("server", m.server_version), ("duration", f"{m.duration_seconds:.1f} s"),
        ("tables", f"{len(m.tables)} ({sum(t.rows for t in m.tables)} rows)"),
        ("encrypted", f"yes (key id {m.encryption['key_id']})" if m.encryption else "no"),
        ("verified", f"{m.verified} ({m.verification.level})" if m.verification
         else "unverified"),
        ("remote", m.remote.status), ("path", str(Path(m.files[0].path))),
    ]


@dataclass
class UploadResult:
    """Each backup's upload is its own: uploaded ones, and the error of each that failed."""

    uploaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id -> error
    exit_codes: dict[str, int] = field(default_factory=dict)  # id -> the error's exit code
    aborted: list[str] = field(default_factory=list)  # keys of killed multipart uploads

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        """0; else 2 when any failure is a configuration error (a missing bucket), 3 when the
        store could not be reached, else 1."""
        codes = set(self.exit_codes.values())
        for code in (2, 3, 1):
            if code in codes:
                return code
        return 1 if self.failed else 0

    def to_json(self) -> dict[str, Any]:
        return {"uploaded": self.uploaded, "failed": self.failed, "ok": self.ok,
                "aborted_uploads": self.aborted}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        blocks: list[Block] = [Note(f"uploaded {len(self.uploaded)} backup(s)"
                                    + (": " + ", ".join(self.uploaded) if self.uploaded else ""))]
        blocks += [Note(f"{i}: upload failed, still pending: {e}") for i, e in self.failed.items()]
        if self.aborted:
            blocks.append(Note(f"aborted {len(self.aborted)} incomplete multipart upload(s) "
                               f"left by a killed upload: {', '.join(self.aborted)}"))
        return blocks


@dataclass
class CreateResult:
    manifest: BackupManifest
    verification: VerifyReport | None = None
    uploads: UploadResult = field(default_factory=UploadResult)
    removed_temporaries: list[str] = field(default_factory=list)
    erasure_ledger: PublishResult | None = None  # its copy beside the backups / remote

    @property
    def uploaded(self) -> list[str]:
        return self.uploads.uploaded

    @property
    def upload_error(self) -> str | None:
        """This backup's own upload error (older pending ones are reported apart)."""
        return self.uploads.failed.get(self.manifest.id)

    @property
    def verify_failed(self) -> bool:
        return self.verification is not None and not self.verification.ok

    def to_json(self) -> dict[str, Any]:
        return {**self.manifest.to_dict(), "uploaded_now": self.uploads.uploaded,
                "upload_error": self.upload_error,
                "older_upload_errors": {i: e for i, e in self.uploads.failed.items()
                                        if i != self.manifest.id},
                "erasure_ledger": self.erasure_ledger.to_json() if self.erasure_ledger
                else None}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Fields

        return [Fields(manifest_fields(self.manifest), title="backup created")]


def _store(loaded: LoadedConfig, target: Target) -> BackupStore:
    return BackupStore(loaded.settings.backup, target.name)


def run_create(loaded: LoadedConfig, target: Target, options: CreateOptions, *,
               wait_lock: float = 0.0, verify: str | None = None, upload: bool = True,
               progress: Progress | None = None,
               now: Callable[[], Any] = utcnow) -> CreateResult:
    """Create, verify (quick by default), and upload this and any pending backup."""
    store = _store(loaded, target)
    store.ensure()
    settings = loaded.settings.backup
    with target_lock(loaded.settings, target.name, "backup create", wait_lock):
        leftovers = [p.name for p in store.stale_temporaries()]
        from aegisctl.cluster.dumps import dump_with_fallback

        manifest = dump_with_fallback(target, lambda: create_backup(
            loaded, target, options, now=now, progress=progress))
        result = CreateResult(manifest, removed_temporaries=leftovers)
        level = verify or settings.verify_after_create
        if level != "none":
            # The checksums were computed from the files a moment ago, after fsync: hashing
            # them again would only re-read the page cache.
            result.verification = verify_backup(loaded, target, manifest,
                                                restore_test=level == "restore-test",
                                                fresh=True)
            result.manifest = result.verification.manifest
        if upload and settings.remote is not None:
            result.uploads = _upload_pending(loaded, target, progress, first=manifest.id)
            result.manifest = store.load(manifest.id)
        from aegisctl.memory.ledger import publish_with_backup

        # The ledger outlives the database beside its backups: a restore of this backup, or
        # of an older one, deletes again what it lists.
        result.erasure_ledger = publish_with_backup(loaded, target, remote=upload)
    return result


def create_verified_backup(loaded: LoadedConfig, target: Target, *, label: str,
                           restore_test: bool = False, wait_lock: float = 0.0) -> BackupManifest:
    """A backup that has passed verification, or OperationFailed (for `schema migrate
    --backup`: no migration without a good backup to come back to)."""
    result = run_create(loaded, target, CreateOptions(label=label), wait_lock=wait_lock,
                        verify="restore-test" if restore_test else "quick")
    report = result.verification
    if report is None or not report.ok:
        problems = "; ".join(report.verification.problems) if report else "not verified"
        raise OperationFailed(f"backup {result.manifest.id} did not verify: {problems}")
    return result.manifest


def _upload_pending(loaded: LoadedConfig, target: Target, progress: Progress | None,
                    first: str | None = None) -> UploadResult:
    """Try every pending backup (`first` before the older ones); one failure stops none of
    the others, and each error is recorded in its own manifest."""
    from aegisctl.backup.remote import abort_stale_uploads, open_remote

    store = _store(loaded, target)
    manifests = store.manifests()
    result = UploadResult()
    try:
        remote = open_remote(loaded.settings.backup.remote, target.name)
    except AegisError as exc:
        for manifest in manifests:
            if manifest.remote.status == "pending":
                _record_failure(store, manifest, exc, result)
        return result
    _requeue_missing(store, remote, manifests)
    with contextlib.suppress(AegisError):  # the uploads below say what is wrong with the store
        result.aborted = abort_stale_uploads(remote)
    pending = [m for m in manifests if m.remote.status == "pending"]
    pending.sort(key=lambda m: m.id != first)
    if not pending:
        return result
    for manifest in pending:
        _upload_one(store, manifest, remote, progress, result)
    return result


def _requeue_missing(store: BackupStore, remote: Any, manifests: list[BackupManifest]) -> None:
    """A backup the manifest calls uploaded whose remote copy is gone (or has files of
    another size) is pending again. When the store cannot be listed nothing changes: the
    pending uploads that follow say why."""
    from aegisctl.backup.remote_check import missing_copies

    try:
        missing = missing_copies(remote, manifests)
    except AegisError:
        return
    for manifest in manifests:
        if manifest.id in missing:
            manifest.remote.status = "pending"
            manifest.remote.error = "remote copy missing: " + "; ".join(missing[manifest.id][:3])
            store.save(manifest)


def _upload_one(store: BackupStore, manifest: BackupManifest, remote: Any,
                progress: Progress | None, result: UploadResult) -> None:
    from aegisctl.backup.remote import upload_backup

    try:
        upload_backup(store, manifest, remote, progress)
        result.uploaded.append(manifest.id)
    except AegisError as exc:
        _record_failure(store, manifest, exc, result)


def _record_failure(store: BackupStore, manifest: BackupManifest, exc: AegisError,
                    result: UploadResult) -> None:
    result.failed[manifest.id] = exc.message
    result.exit_codes[manifest.id] = int(exc.exit_code)
    manifest.remote.status = "pending"
    manifest.remote.error = exc.message
    store.save(manifest)


def upload(loaded: LoadedConfig, target: Target, backup_id: str | None, *,
           wait_lock: float = 0.0, progress: Progress | None = None) -> UploadResult:
    """Upload one backup, or (backup_id None) every pending one. A configuration problem
    (no credentials, no bucket) raises; a failure of one backup is in the result."""
    from aegisctl.backup.remote import open_remote

    store = _store(loaded, target)
    with target_lock(loaded.settings, target.name, "backup upload", wait_lock):
        if backup_id is None:
            open_remote(loaded.settings.backup.remote, target.name)  # config errors: exit 2
            return _upload_pending(loaded, target, progress)
        manifest = store.load(backup_id)
        result = UploadResult()
        remote = open_remote(loaded.settings.backup.remote, target.name)
        _upload_one(store, manifest, remote, progress, result)
        return result


@dataclass
class BackupMessage:
    """A short result about one backup (download, keep, unkeep)."""

    text: str
    manifest: BackupManifest
    action: str

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "id": self.manifest.id, "label": self.manifest.label,
                "pinned": self.manifest.pinned, "size": self.manifest.size,
                "message": self.text}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        return [Note(self.text)]


def download(loaded: LoadedConfig, target: Target, backup_id: str, *,
             wait_lock: float = 0.0) -> BackupMessage:
    from aegisctl.backup.manifest import BACKUP_ID
    from aegisctl.backup.remote import download_backup, open_remote
    from aegisctl.errors import UsageError

    if not BACKUP_ID.match(backup_id):
        raise UsageError(f"'{backup_id}' is not a backup id (like 20260101T020000Z)")
    store = _store(loaded, target)
    store.ensure()
    with target_lock(loaded.settings, target.name, "backup download", wait_lock):
        manifest = download_backup(
            store, open_remote(loaded.settings.backup.remote, target.name), backup_id)
    return BackupMessage(f"downloaded backup {manifest.id} ({human_size(manifest.size)})",
                         manifest, "download")


def set_pinned(loaded: LoadedConfig, target: Target, backup_id: str,
               pinned: bool, *, wait_lock: float = 0.0) -> BackupMessage:
    store = _store(loaded, target)
    with target_lock(loaded.settings, target.name, "backup keep" if pinned else "backup unkeep",
                     wait_lock):
        manifest = store.load(backup_id)
        manifest.pinned = pinned
        manifest.pinned_at = format_time(utcnow()) if pinned else None
        store.save(manifest)
    text = f"backup {backup_id} is pinned" if pinned else \
        f"backup {backup_id} is no longer pinned"
    return BackupMessage(text, manifest, "keep" if pinned else "unkeep")
