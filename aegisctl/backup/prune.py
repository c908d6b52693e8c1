"""`backup prune`: plan under the lock, show the plan, then delete exactly what was shown.

`plan_prune` applies the retention policy to every backup-like entry (retention.py decides,
from facts only); `apply_prune` takes the confirmed plan, plans again under the lock and
deletes only what is in both: nothing the user did not see, nothing the policy now keeps.
Entries whose manifest cannot be trusted are never touched (listed as `untouched`); a dump
without a manifest, or a remote upload that never finished, is pruned like a failed backup
once older than keep_days. Remote entries under S3 Object Lock (asked of the store) are kept,
in the dry run too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.backup.manifest import BackupManifest, format_time, utcnow
from aegisctl.backup.retention import BackupFacts, plan_retention
from aegisctl.backup.settings import RetentionSettings
from aegisctl.backup.store import MANIFEST_UNREADABLE, NO_MANIFEST, OK, BackupStore
from aegisctl.config import LoadedConfig
from aegisctl.errors import AegisError
from aegisctl.locks import target_lock
from aegisctl.targets import Target

if TYPE_CHECKING:
    from aegisctl.backup.remote import Remote
    from aegisctl.output import Block


@dataclass
class PruneCandidate:
    id: str
    type: str  # logical; other kinds of backup add theirs
    created: dt.datetime
    status: str  # ok | failed | unverified (what retention counts)
    pinned: bool
    state: str  # the listing state


@dataclass
class PrunePlan:
    where: str  # local | remote
    target: str
    keep: dict[str, list[str]] = field(default_factory=dict)  # id -> reasons
    delete: dict[str, str] = field(default_factory=dict)  # id -> why
    untouched: dict[str, str] = field(default_factory=dict)  # id -> why never acted on
    types: dict[str, str] = field(default_factory=dict)  # id -> type


@dataclass
class PruneResult:
    plan: PrunePlan
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # confirmed, but not deleted: why
    aborted: list[str] = field(default_factory=list)  # killed multipart uploads (remote)

    @property
    def where(self) -> str:
        return self.plan.where

    def to_json(self) -> dict[str, Any]:
        return {"where": self.plan.where, "target": self.plan.target, "dry_run": self.dry_run,
                "keep": self.plan.keep, "delete": self.plan.delete,
                "untouched": self.plan.untouched, "deleted": self.deleted,
                "skipped": self.skipped, "aborted_uploads": self.aborted}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        if self.dry_run or (not self.plan.delete and not self.skipped):
            blocks = plan_view(self.plan)
        else:  # the plan was shown before the question
            blocks = [Note(f"deleted {i}: {self.plan.delete[i]}") for i in self.deleted]
        for backup_id, why in self.skipped.items():
            blocks.append(Note(f"{backup_id}: not deleted: {why}"))
        count = len(self.plan.delete) if self.dry_run else len(self.deleted)
        blocks.append(Note(f"{'would delete' if self.dry_run else 'deleted'} {count} "
                           f"{self.plan.where} backup(s)"))
        if self.aborted:
            blocks.append(Note(f"aborted {len(self.aborted)} incomplete multipart upload(s) "
                               f"left by a killed upload: {', '.join(self.aborted)}"))
        return blocks


@dataclass
class PrunePreview:
    """The plan as shown before the question."""

    plan: PrunePlan

    def to_json(self) -> dict[str, Any]:
        return PruneResult(self.plan, dry_run=True).to_json()

    def to_view(self) -> list[Block]:
        return plan_view(self.plan)


def plan_view(plan: PrunePlan) -> list[Block]:
    from aegisctl.output import Column, Table

    rows = [(i, plan.types.get(i, "logical"), "keep", "; ".join(r))
            for i, r in plan.keep.items()]
    rows += [(i, plan.types.get(i, "logical"), "DELETE", why) for i, why in plan.delete.items()]
    rows += [(i, plan.types.get(i, "logical"), "untouched", why)
             for i, why in plan.untouched.items()]
    shown: list[Sequence[Any]] = list(sorted(rows))
    return [Table([Column("id", "id"), "type", "action", Column("why", "text")], shown,
                  title=f"{plan.where} retention of {plan.target}", empty="no backups")]


def _status(manifest: BackupManifest | None, state: str) -> str:
    if manifest is None or state != OK:
        return "failed"  # cannot be restored as it is: never counts toward min_keep
    return manifest.verified


def _local_candidates(store: BackupStore) -> tuple[list[PruneCandidate], dict[str, str],
                                                     dict[str, str | None]]:
    candidates, untouched, owners = [], {}, {}
    for entry in store.scan():
        if entry.state == MANIFEST_UNREADABLE:
            untouched[entry.id] = "; ".join(entry.problems) + " (look at it by hand)"
            continue
        m = entry.manifest
        owners[entry.id] = m.system_id if m else None
        candidates.append(PruneCandidate(entry.id, "logical", entry.created,
                                         _status(m, entry.state), bool(m and m.pinned),
                                         entry.state))
    return candidates, untouched, owners


def _remote_candidates(store: BackupStore, remote: Remote
                       ) -> tuple[list[PruneCandidate], dict[str, str], dict[str, str | None]]:
    from aegisctl.backup.remote import scan_remote

    # Pins and verification results live in the local manifests when we have them.
    local = {m.id: m for m in store.manifests()}
    candidates, untouched, owners = [], {}, {}
    for group in scan_remote(remote):
        if group.state == MANIFEST_UNREADABLE:
            untouched[group.id] = "; ".join(group.problems) + " (look at it by hand)"
            continue
        m = local.get(group.id, group.manifest) if group.manifest else None
        owners[group.id] = m.system_id if m else None
        candidates.append(PruneCandidate(group.id, "logical", group.created,
                                         _status(m, group.state), bool(m and m.pinned),
                                         group.state))
    return candidates, untouched, owners


def _own(loaded: LoadedConfig, target: Target, plan: PrunePlan,
         candidates: list[PruneCandidate], owners: dict[str, str | None]
         ) -> list[PruneCandidate]:
    """The candidates of the target's own database system; another system's backups in the
    same folder go to `untouched` and do not count toward this one's policy (systems.py)."""
    from aegisctl.backup.systems import foreign_backups

    foreign = foreign_backups(loaded, target, owners)
    plan.untouched.update(foreign)
    return [c for c in candidates if c.id not in foreign]


def _decide(plan: PrunePlan, candidates: list[PruneCandidate], policy: Any,
            now: dt.datetime) -> None:
    for kind in sorted({c.type for c in candidates}):
        facts = [BackupFacts(c.id, c.created, c.status, c.pinned)
                 for c in candidates if c.type == kind]
        decided = plan_retention(facts, policy, now)
        plan.keep.update(decided.keep)
        plan.delete.update(decided.delete)
    for c in candidates:
        plan.types[c.id] = c.type
        if c.state == NO_MANIFEST and c.id in plan.delete:
            plan.delete[c.id] = f"no manifest, {(now - c.created).days} days old"


def _object_lock(plan: PrunePlan, remote: Remote, now: dt.datetime) -> None:
    from aegisctl.backup.remote import object_lock_until, scan_remote

    if not plan.delete:
        return
    groups = {g.id: g for g in scan_remote(remote)}
    for backup_id in list(plan.delete):
        group = groups.get(backup_id)
        if group is None:
            continue
        until = object_lock_until(remote, group)
        if until is not None and until > now:
            plan.keep[backup_id] = [f"S3 Object Lock until {format_time(until)}"]
            del plan.delete[backup_id]


@dataclass
class PruneKind:
    """Another kind of local backup prune handles beside the built-in logical (pg_dump)
    ones, e.g. physical backups: its entries, its policy, and how to delete one entry (the
    deleter must prove the paths it removes are its own). Register it in EXTRA_KINDS."""

    type: str
    candidates: Callable[[LoadedConfig, Target], tuple[list[PruneCandidate], dict[str, str]]]
    policy: Callable[[LoadedConfig], RetentionSettings]
    delete: Callable[[LoadedConfig, Target, str, str], None]  # (loaded, target, id, why)


EXTRA_KINDS: list[PruneKind] = []


def _plan(loaded: LoadedConfig, target: Target, store: BackupStore, remote: bool,
          now: dt.datetime) -> tuple[PrunePlan, Remote | None]:
    settings = loaded.settings.backup
    if not remote:
        plan = PrunePlan("local", target.name)
        candidates, plan.untouched, owners = _local_candidates(store)
        _decide(plan, _own(loaded, target, plan, candidates, owners), settings.retention, now)
        for kind in EXTRA_KINDS:
            found, untouched = kind.candidates(loaded, target)
            plan.untouched.update(untouched)
            _decide(plan, [c for c in found if c.type == kind.type], kind.policy(loaded), now)
        return plan, None
    from aegisctl.backup.remote import open_remote

    handle = open_remote(settings.remote, target.name)
    assert settings.remote is not None
    plan = PrunePlan("remote", target.name)
    candidates, plan.untouched, owners = _remote_candidates(store, handle)
    _decide(plan, _own(loaded, target, plan, candidates, owners), settings.remote.retention,
            now)
    _object_lock(plan, handle, now)
    return plan, handle


def plan_prune(loaded: LoadedConfig, target: Target, *, remote: bool = False,
               now: dt.datetime | None = None, wait_lock: float = 0.0) -> PrunePlan:
    """What the policy would delete and keep, and why. Deletes nothing."""
    store = BackupStore(loaded.settings.backup, target.name)
    store.ensure()
    with target_lock(loaded.settings, target.name, "backup prune", wait_lock):
        return _plan(loaded, target, store, remote, now or utcnow())[0]


def apply_prune(loaded: LoadedConfig, target: Target, confirmed: PrunePlan, *,
                now: dt.datetime | None = None, wait_lock: float = 0.0) -> PruneResult:
    """Delete the confirmed plan's backups that the policy, asked again under the lock,
    still deletes; the others are reported as skipped."""
    now = now or utcnow()
    store = BackupStore(loaded.settings.backup, target.name)
    store.ensure()
    remote = confirmed.where == "remote"
    with target_lock(loaded.settings, target.name, "backup prune", wait_lock):
        fresh, handle = _plan(loaded, target, store, remote, now)
        result = PruneResult(fresh, dry_run=False)
        fresh.delete = {i: why for i, why in fresh.delete.items() if i in confirmed.delete}
        for backup_id in confirmed.delete:
            if backup_id not in fresh.delete:
                kept = fresh.keep.get(backup_id)
                result.skipped[backup_id] = ("the policy keeps it now: " + "; ".join(kept)
                                             if kept else "no longer there")
        if not remote:
            store.remove_stale_temporaries()
        extra = {kind.type: kind for kind in EXTRA_KINDS}
        for backup_id, why in fresh.delete.items():
            kind = extra.get(fresh.types.get(backup_id, "logical"))
            if kind is not None and not remote:
                kind.delete(loaded, target, backup_id, why)
            else:
                _delete(store, handle, backup_id, why)
            result.deleted.append(backup_id)
        if handle is not None:
            from aegisctl.backup.remote import abort_stale_uploads

            result.aborted = abort_stale_uploads(handle)
        return result


def _delete(store: BackupStore, remote: Remote | None, backup_id: str, why: str) -> None:
    if remote is None:
        store.delete(backup_id, why, "backup prune")
        return
    from aegisctl.backup.remote import delete_remote

    delete_remote(store, remote, backup_id, why, "backup prune --remote")
    try:
        local = store.load(backup_id)
    except AegisError:  # no local copy, or one we do not touch
        return
    local.remote.status = "none"
    store.save(local)


def prune(loaded: LoadedConfig, target: Target, *, dry_run: bool, remote: bool = False,
          now: dt.datetime | None = None, wait_lock: float = 0.0) -> PruneResult:
    """Plan and (unless dry_run) apply at once: for timers and the scheduler, where the plan
    is not shown to anyone first."""
    plan = plan_prune(loaded, target, remote=remote, now=now, wait_lock=wait_lock)
    if dry_run:
        return PruneResult(plan, dry_run=True)
    return apply_prune(loaded, target, plan, now=now, wait_lock=wait_lock)
