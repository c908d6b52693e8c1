"""What the commands (and the scheduler, and `schema migrate --backup`) call: each operation
under the target's lock, returning a result object."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aegisctl.backup.dump import CreateOptions, Progress, create_backup
from aegisctl.backup.lock import target_lock
from aegisctl.backup.manifest import BackupManifest, format_time, utcnow
from aegisctl.backup.retention import BackupFacts, RetentionPlan, plan_retention
from aegisctl.backup.store import BackupStore
from aegisctl.backup.verify import VerifyReport, verify_backup
from aegisctl.config import LoadedConfig
from aegisctl.errors import AegisError, OperationFailed
from aegisctl.targets import Target


@dataclass
class CreateResult:
    manifest: BackupManifest
    verification: VerifyReport | None = None
    uploaded: list[str] = field(default_factory=list)
    upload_error: str | None = None
    removed_temporaries: list[str] = field(default_factory=list)


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
    with target_lock(store.lock_path, "backup create", wait_lock):
        leftovers = [p.name for p in store.stale_temporaries()]
        manifest = create_backup(loaded, target, options, now=now, progress=progress)
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
            result.uploaded, result.upload_error = _upload_pending(loaded, target, progress)
            result.manifest = store.load(manifest.id)
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


def _upload_pending(loaded: LoadedConfig, target: Target,
                    progress: Progress | None) -> tuple[list[str], str | None]:
    from aegisctl.backup.remote import open_remote, upload_backup

    store = _store(loaded, target)
    pending = [m for m in store.manifests() if m.remote.status == "pending"]
    done: list[str] = []
    if not pending:
        return done, None
    remote = open_remote(loaded.settings.backup.remote, target.name)
    for manifest in pending:
        try:
            upload_backup(store, manifest, remote, progress)
            done.append(manifest.id)
        except AegisError as exc:
            manifest.remote.error = exc.message
            store.save(manifest)
            return done, exc.message
    return done, None


def upload(loaded: LoadedConfig, target: Target, backup_id: str | None, *,
           wait_lock: float = 0.0, progress: Progress | None = None) -> list[str]:
    """Upload one backup, or (backup_id None) every pending one."""
    from aegisctl.backup.remote import open_remote, upload_backup

    store = _store(loaded, target)
    with target_lock(store.lock_path, "backup upload", wait_lock):
        if backup_id is None:
            done, error = _upload_pending(loaded, target, progress)
            if error:
                raise OperationFailed(f"uploaded {len(done)}, then: {error}")
            return done
        manifest = store.load(backup_id)
        upload_backup(store, manifest, open_remote(loaded.settings.backup.remote, target.name),
                      progress)
        return [backup_id]


def download(loaded: LoadedConfig, target: Target, backup_id: str, *,
             wait_lock: float = 0.0) -> BackupManifest:
    from aegisctl.backup.remote import download_backup, open_remote

    store = _store(loaded, target)
    store.ensure()
    with target_lock(store.lock_path, "backup download", wait_lock):
        return download_backup(store, open_remote(loaded.settings.backup.remote, target.name),
                               backup_id)


def set_pinned(loaded: LoadedConfig, target: Target, backup_id: str,
               pinned: bool) -> BackupManifest:
    store = _store(loaded, target)
    manifest = store.load(backup_id)
    manifest.pinned = pinned
    manifest.pinned_at = format_time(utcnow()) if pinned else None
    store.save(manifest)
    return manifest


# -- listing -------------------------------------------------------------------------------


@dataclass
class ListedBackup:
    id: str
    label: str | None
    location: str  # local | remote | local+remote
    created_at: str
    age_seconds: int
    size: int
    format: str
    encrypted: bool
    verified: str  # ok | failed | unverified
    verified_at: str | None
    verify_level: str | None
    uploaded: str  # uploaded | pending | no
    pinned: bool


@dataclass
class BackupListing:
    target: str
    directory: str
    backups: list[ListedBackup]
    newest_good: str | None
    newest_good_age_seconds: int | None
    max_age_seconds: int
    stale: bool
    remote_error: str | None = None


def list_backups(loaded: LoadedConfig, target: Target, *, remote: bool = True,
                 now: dt.datetime | None = None) -> BackupListing:
    now = now or utcnow()
    store = _store(loaded, target)
    local = {m.id: m for m in store.manifests()}
    remote_ones: dict[str, BackupManifest] = {}
    remote_error = None
    if remote and loaded.settings.backup.remote is not None:
        from aegisctl.backup.remote import open_remote, remote_manifests

        try:
            remote_ones = {m.id: m for m in remote_manifests(
                open_remote(loaded.settings.backup.remote, target.name))}
        except AegisError as exc:
            remote_error = exc.message
    rows = []
    for backup_id in sorted(set(local) | set(remote_ones)):
        m = local.get(backup_id) or remote_ones[backup_id]
        where = "+".join(w for w, d in (("local", local), ("remote", remote_ones))
                         if backup_id in d)
        uploaded = "uploaded" if backup_id in remote_ones else (
            "pending" if m.remote.status == "pending" else "no")
        rows.append(ListedBackup(
            id=m.id, label=m.label, location=where, created_at=m.finished_at,
            age_seconds=int((now - m.created).total_seconds()), size=m.size, format=m.format,
            encrypted=bool(m.encryption), verified=m.verified,
            verified_at=m.verification.at if m.verification else None,
            verify_level=m.verification.level if m.verification else None,
            uploaded=uploaded, pinned=m.pinned))
    rows.sort(key=lambda r: (r.created_at, r.id))
    good = [r for r in rows if r.verified == "ok"]
    newest = good[-1] if good else None
    max_age = int(loaded.settings.backup.max_age)
    return BackupListing(
        target=target.name, directory=str(store.folder), backups=rows,
        newest_good=newest.id if newest else None,
        newest_good_age_seconds=newest.age_seconds if newest else None,
        max_age_seconds=max_age, stale=newest is None or newest.age_seconds > max_age,
        remote_error=remote_error)


# -- prune ---------------------------------------------------------------------------------


@dataclass
class PruneResult:
    where: str  # local | remote
    dry_run: bool
    plan: RetentionPlan
    deleted: list[str] = field(default_factory=list)


def facts(manifests: list[BackupManifest]) -> list[BackupFacts]:
    return [BackupFacts(m.id, m.created, m.verified, m.pinned) for m in manifests]


def prune(loaded: LoadedConfig, target: Target, *, dry_run: bool, remote: bool = False,
          now: dt.datetime | None = None, wait_lock: float = 0.0) -> PruneResult:
    now = now or utcnow()
    settings = loaded.settings.backup
    store = _store(loaded, target)
    store.ensure()
    with target_lock(store.lock_path, "backup prune", wait_lock):
        if not remote:
            manifests = store.manifests()
            plan = plan_retention(facts(manifests), settings.retention, now)
            result = PruneResult("local", dry_run, plan)
            if not dry_run:
                store.remove_stale_temporaries()
                for m in manifests:
                    if m.id in plan.delete:
                        store.delete(m, plan.delete[m.id], "backup prune")
                        result.deleted.append(m.id)
            return result
        from aegisctl.backup.remote import delete_remote, open_remote, remote_manifests

        handle = open_remote(settings.remote, target.name)
        assert settings.remote is not None
        manifests = remote_manifests(handle)
        # Pins and verification results live in the local manifests when we have them.
        local = {m.id: m for m in store.manifests()}
        merged = [local.get(m.id, m) for m in manifests]
        plan = plan_retention(facts(merged), settings.remote.retention, now)
        result = PruneResult("remote", dry_run, plan)
        for m in merged:
            if m.id not in plan.delete or dry_run:
                continue
            lock_until = m.remote.object_lock_until
            if lock_until and lock_until > format_time(now):
                plan.keep[m.id] = [f"S3 Object Lock until {lock_until}"]
                del plan.delete[m.id]
                continue
            delete_remote(store, handle, m.id, plan.delete[m.id], "backup prune --remote")
            result.deleted.append(m.id)
            if m.id in local:
                local[m.id].remote.status = "none"
                store.save(local[m.id])
        return result
