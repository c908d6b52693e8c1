"""The remote physical backups over time: `backup verify --remote` (is every object still
there and the same, does every backup's WAL run unbroken), remote retention by whole chains
(never the WAL a kept backup needs), and the WAL lag `check` reports (the RPO if the host
dies now)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.backup.physical.offsite import (
    MANIFEST,
    SEGMENT,
    Offsite,
    RemoteCatalog,
    contiguous_from,
    read_catalog,
    segment_number,
)

if TYPE_CHECKING:
    from aegisctl.backup.physical.engine import Engine
    from aegisctl.backup.physical.prune import PhysicalPrunePlan
    from aegisctl.backup.settings import RetentionSettings
    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block
    from aegisctl.targets import Target


def offsite_for(loaded: LoadedConfig, target: Target) -> tuple[Offsite, Engine | None]:
    """The store of this database's physical backups, and the local Barman engine when
    physical backups are enabled here (None on a machine with only the config and key)."""
    from aegisctl.backup.physical import hooks
    from aegisctl.backup.physical.engine import engine_for
    from aegisctl.backup.physical.offsite import open_offsite
    from aegisctl.backup.physical.offsite_restore import resolve_system

    engine = engine_for(loaded, target) if hooks.enabled(loaded, target) else None
    system = engine.system_id if engine and engine.system_id else \
        resolve_system(loaded, target, None)
    return open_offsite(loaded, target, system), engine


# ---------------------------------------------------------------------------------------------
# verify --remote


@dataclass
class PhysicalRemoteReport:
    bucket: str
    prefix: str
    level: str  # head | deep
    backups: dict[str, str] = field(default_factory=dict)  # id -> ok | missing | damaged
    wal_files: int = 0
    problems: list[str] = field(default_factory=list)
    requeued_backups: list[str] = field(default_factory=list)
    requeued_wal: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"kind": "physical", "remote": True, "ok": self.ok, "level": self.level,
                "bucket": self.bucket, "prefix": self.prefix, "backups": self.backups,
                "wal_files": self.wal_files, "problems": self.problems,
                "requeued_backups": self.requeued_backups, "requeued_wal": self.requeued_wal}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        blocks: list[Block] = [Note(f"PROBLEM {p}", "red") for p in self.problems]
        blocks.append(Note(f"physical: {len(self.backups)} remote backup(s), "
                           f"{self.wal_files} WAL file(s) checked ({self.level}) at "
                           f"s3://{self.bucket}/{self.prefix}: "
                           + ("ok" if self.ok else f"{len(self.problems)} problem(s)")))
        if self.requeued_backups or self.requeued_wal:
            blocks.append(Note(f"marked pending: {len(self.requeued_backups)} backup(s), "
                               f"{len(self.requeued_wal)} WAL file(s); the next `aegisctl "
                               "backup upload --pending` sends them again"))
        return blocks


def _head(offsite: Offsite, key: str) -> dict[str, Any] | None:
    from aegisctl.backup.remote_check import _head as head

    return head(offsite.remote, key)


def _decrypts(offsite: Offsite, key: str, what: str) -> str:
    """The SHA-256 of the plaintext of an object (authenticated as it is decrypted)."""
    from aegisctl.backup.crypto import decrypt_stream
    from aegisctl.backup.physical.offsite_restore import _Exact

    body = offsite.remote.client.get_object(Bucket=offsite.bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for block in decrypt_stream(_Exact(body), offsite.key, what):  # type: ignore[arg-type]
        digest.update(block)
    return digest.hexdigest()


def verify_physical_remote(loaded: LoadedConfig, target: Target, *,
                           deep: bool = False) -> PhysicalRemoteReport:
    """Every remote physical backup's objects (HEAD: size, sha256 metadata, the checksum
    recorded at upload; deep: download and decrypt), every backup's WAL run, and what this
    host recorded as sent. What is missing or damaged is marked pending here."""
    from aegisctl.backup.physical.offsite_upload import offsite_lock

    offsite, engine = offsite_for(loaded, target)
    # Nothing is shipped while the store is listed and compared with the journal (else a
    # file sent in between would look lost).
    held = offsite_lock(loaded, target, 600) if engine is not None \
        else contextlib.nullcontext()
    with held:
        return _verify(loaded, target, offsite, engine, deep)


def _verify(loaded: LoadedConfig, target: Target, offsite: Offsite, engine: Engine | None,
            deep: bool) -> PhysicalRemoteReport:
    from aegisctl.backup.remote import recorded_checksum, remote_errors

    report = PhysicalRemoteReport(offsite.bucket, offsite.base, "deep" if deep else "head")
    bad_backups: set[str] = set()
    with remote_errors("checking the remote physical backups", offsite.bucket):
        catalog = read_catalog(offsite)
        for entry in catalog.entries:
            problems = list(entry.problems)
            if entry.manifest is not None and not problems:
                prefix = offsite.backup_prefix(entry.id)
                for volume in entry.manifest.volumes:
                    head = _head(offsite, prefix + volume.name)
                    if head is None:
                        problems.append(f"{volume.name}: missing")
                    elif head.get("Metadata", {}).get("sha256") != volume.sha256 or \
                            (volume.checksum and recorded_checksum(head) != volume.checksum):
                        problems.append(f"{volume.name}: not the object uploaded (replaced)")
                    elif deep and _decrypts(offsite, prefix + volume.name,
                                            f"{entry.id}/{volume.name}") != volume.plain_sha256:
                        problems.append(f"{volume.name}: its content does not match")
            report.backups[entry.id] = "ok" if not problems else \
                "missing" if any("missing" in p for p in problems) else "damaged"
            if problems:
                bad_backups.add(entry.id)
                report.problems += [f"physical backup {entry.id}: {p}" for p in problems[:5]]
        for manifest in catalog.usable():
            run = contiguous_from(list(catalog.wals), manifest.begin_wal)
            if manifest.end_wal not in run:
                after = run[-1] if run else "its start"
                report.problems.append(f"physical backup {manifest.id}: its WAL breaks after "
                                       f"{after} (needs {manifest.begin_wal}..{manifest.end_wal})")
        report.wal_files = len(catalog.wals)
        if engine is not None:
            _check_journal(loaded, target, offsite, engine, catalog, bad_backups, deep, report)
    return report


def _check_journal(loaded: LoadedConfig, target: Target, offsite: Offsite, engine: Engine,
                   catalog: RemoteCatalog, bad_backups: set[str], deep: bool,
                   report: PhysicalRemoteReport) -> None:
    """What this host recorded as sent, against the store (the caller holds the shipping
    lock: nothing is sent between the listing and this, and the journal is ours to change)."""
    from aegisctl.backup.physical.offsite_upload import (
        backup_journal,
        forget_wal,
        requeue_backup,
        sent_wal,
    )

    lost_wal: set[str] = set()
    # WAL older than every remote backup went with remote retention: not a loss.
    starts = [segment_number(m.begin_wal) for m in catalog.usable()]
    floor = min(starts) if starts else 0
    for name, sent in sent_wal(engine).items():
        if SEGMENT.match(name[:24]) and segment_number(name[:24]) < floor:
            continue
        size = catalog.wals.get(name)
        if size is None:
            lost_wal.add(name)
            report.problems.append(f"WAL {name}: sent, but missing from the store")
        elif size != sent.size:
            lost_wal.add(name)
            report.problems.append(f"WAL {name}: size {size} in the store, "
                                   f"{sent.size} sent")
        elif deep:
            _decrypts(offsite, offsite.wal_key(name), f"WAL {name}")
    for backup_id in sorted(bad_backups | _sent_but_absent(engine, catalog)):
        if backup_journal(engine, backup_id).get("status") == "uploaded":
            if backup_id not in bad_backups:
                report.problems.append(f"physical backup {backup_id}: sent, but "
                                       "absent from the store")
            requeue_backup(engine, backup_id, "remote copy missing or damaged")
            report.requeued_backups.append(backup_id)
    if lost_wal:
        forget_wal(engine, lost_wal)
        report.requeued_wal = sorted(lost_wal)


def _sent_but_absent(engine: Engine, catalog: RemoteCatalog) -> set[str]:
    from aegisctl.backup.physical.backups import list_physical
    from aegisctl.backup.physical.offsite_upload import backup_journal

    present = {e.id for e in catalog.entries}
    return {b.id for b in list_physical(engine)
            if b.id not in present and backup_journal(engine, b.id).get("status") == "uploaded"}


# ---------------------------------------------------------------------------------------------
# Remote retention


@dataclass
class RemotePhysicalPrune:
    plan: PhysicalPrunePlan
    wal_delete: list[str]
    deleted_wal: int = 0
    dry_run: bool = True

    @property
    def delete(self) -> dict[str, str]:
        return self.plan.delete

    def to_json(self) -> dict[str, Any]:
        return {**self.plan.to_json(), "where": "remote", "wal_delete": len(self.wal_delete),
                "wal_deleted": self.deleted_wal}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        verb = "would delete" if self.dry_run else "deleted"
        count = len(self.wal_delete) if self.dry_run else self.deleted_wal
        return [*self.plan.to_view(),
                Note(f"remote physical WAL: {verb} {count} file(s) older than every kept "
                     "backup")]


def plan_remote_physical_prune(catalog: RemoteCatalog, retention: RetentionSettings,
                               target: str, now: dt.datetime | None = None
                               ) -> RemotePhysicalPrune:
    """Whole chains by backup.remote.retention (the rules of the local prune); a chain whose
    objects are still under Object Lock is kept; WAL goes only when it is older than the
    start of every kept backup (history files stay)."""
    from aegisctl.backup.physical.prune import plan_physical_prune

    now = now or dt.datetime.now(dt.UTC)
    backups = catalog.backups()
    plan = plan_physical_prune(backups, retention, target, now)
    plan.target = f"{target} (remote)"
    manifests = {m.id: m for m in catalog.usable()}
    locked = {m.id for m in manifests.values() if m.object_lock_until
              and _parse(m.object_lock_until) > now}
    chains: dict[str, list[str]] = {}
    for backup in backups:
        chains.setdefault(backup.chain or backup.id, []).append(backup.id)
    for members in chains.values():
        if any(m in locked for m in members):
            for member in members:
                if member in plan.delete:
                    del plan.delete[member]
                    plan.keep[member] = ["under Object Lock"]
    kept = [manifests[i] for i in plan.keep if i in manifests]
    if not kept:
        return RemotePhysicalPrune(plan, [])
    floor = min(segment_number(m.begin_wal) for m in kept)
    wal_delete = sorted(n for n in catalog.wals if not n.endswith(".history")
                        and segment_number(n[:24]) < floor and SEGMENT.match(n[:24]))
    return RemotePhysicalPrune(plan, wal_delete)


def _parse(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return dt.datetime.max.replace(tzinfo=dt.UTC)  # unreadable: treat as locked
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def remote_physical_prune(loaded: LoadedConfig, target: Target) -> RemotePhysicalPrune:
    offsite, _ = offsite_for(loaded, target)
    catalog = read_catalog(offsite)
    retention = loaded.settings.backup.remote.retention if loaded.settings.backup.remote \
        else loaded.settings.backup.retention
    result = plan_remote_physical_prune(catalog, retention, target.name)
    lock_days = loaded.settings.backup.remote.object_lock_days \
        if loaded.settings.backup.remote else 0
    if lock_days > 0:
        # A WAL object is locked for object_lock_days from when it was stored (unknown: kept).
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=lock_days)
        result.wal_delete = [n for n in result.wal_delete
                             if n in catalog.wal_modified and catalog.wal_modified[n] < cutoff]
    return result


def apply_remote_physical_prune(loaded: LoadedConfig, target: Target) -> RemotePhysicalPrune:
    """Plan again and delete: each chain newest member first, manifest before volumes (an
    interrupted delete leaves an incomplete backup, never a listed one), then the WAL."""
    from aegisctl.backup.physical.offsite_upload import mark_pruned
    from aegisctl.backup.remote import remote_errors
    from aegisctl.backup.store import BackupStore

    result = remote_physical_prune(loaded, target)
    result.dry_run = False
    offsite, engine = offsite_for(loaded, target)
    store = BackupStore(loaded.settings.backup, target.name)
    client, bucket = offsite.remote.client, offsite.bucket
    with remote_errors("deleting remote physical backups", bucket):
        for backup_id in sorted(result.plan.delete, reverse=True):
            prefix = offsite.backup_prefix(backup_id)
            keys = [str(o["Key"]) for page in client.get_paginator("list_objects_v2")
                    .paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
            keys = sorted((k for k in keys if k.startswith(prefix)),
                          key=lambda k: not k.endswith(MANIFEST))
            for key in keys:
                client.delete_object(Bucket=bucket, Key=key)
            result.plan.deleted.append(backup_id)
            if engine is not None:
                mark_pruned(engine, backup_id)
            store.audit({"action": "delete", "where": "remote", "kind": "physical",
                         "target": target.name, "id": backup_id, "bucket": bucket,
                         "keys": len(keys), "reason": result.plan.delete[backup_id],
                         "command": "backup prune --remote"})
        names = list(result.wal_delete)
        for start in range(0, len(names), 1000):
            batch = [{"Key": offsite.wal_key(n)} for n in names[start:start + 1000]]
            client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            result.deleted_wal += len(batch)
        if names:
            store.audit({"action": "delete", "where": "remote", "kind": "physical WAL",
                         "target": target.name, "bucket": bucket, "files": len(names),
                         "first": names[0], "last": names[-1],
                         "command": "backup prune --remote"})
    return result


# ---------------------------------------------------------------------------------------------
# The WAL gap rule (check)


@dataclass
class RemoteWalLag:
    lag_seconds: float
    lag_bytes: int
    pending_files: int
    pending_backups: int
    newest_local: str | None
    newest_remote: str | None
    max_seconds: float
    max_bytes: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def remote_wal_lag(loaded: LoadedConfig, engine: Engine, now: float | None = None
                   ) -> RemoteWalLag:
    """How far the store's WAL is behind the local archive, from this host's journal of
    what was sent and checked (no request to the store: `verify --remote` finds losses).
    Seconds: the newest local WAL's archive time minus that of the newest one sent before
    the first unsent file, or how long that file has waited, whichever is more."""
    from aegisctl.backup.physical.offsite_upload import local_wal, pending_backups, sent_wal

    now = time.time() if now is None else now
    settings = loaded.settings.backup.physical.remote
    local = [w for w in local_wal(engine) if SEGMENT.match(w[0])]
    sent = sent_wal(engine)
    pending = [w for w in local if w[0] not in sent]
    newest_sent = max((w for w in local if w[0] in sent), key=lambda w: w[0], default=None)
    lag_seconds = 0.0
    if pending:
        first = pending[0]
        before = [w for w in local if w[0] < first[0] and w[0] in sent]
        base = before[-1][2] if before else local[0][2]
        lag_seconds = max(local[-1][2] - base, now - first[2], 0.0)
    return RemoteWalLag(
        lag_seconds=lag_seconds, lag_bytes=sum(w[1] for w in pending),
        pending_files=len(pending), pending_backups=len(pending_backups(engine)),
        newest_local=local[-1][0] if local else None,
        newest_remote=newest_sent[0] if newest_sent else None,
        max_seconds=settings.max_wal_lag, max_bytes=settings.max_wal_lag_bytes)
