"""Retention for physical backups, by whole chains, with backup.retention's rules.

A chain is a full backup and every incremental built on it; it is kept whole while any member
is needed. Needed: taken within keep_days; in one of the min_keep newest usable chains; the
newest usable backup of a day/week/month tier; and — what point-in-time recovery relies on —
the newest usable backup that ended *before* the keep_days cutoff, without which the oldest
moments of the window could not be recovered. The newest usable chain is never deleted.
Unusable backups (failed, or with a broken chain) older than the cutoff are deleted.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.backup.physical.backups import PhysicalBackup, chain_usable, list_physical
from aegisctl.backup.physical.engine import engine_for
from aegisctl.errors import OperationFailed

if TYPE_CHECKING:
    from aegisctl.backup.settings import RetentionSettings
    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block
    from aegisctl.targets import Target


@dataclass
class PhysicalPrunePlan:
    target: str
    keep: dict[str, list[str]] = field(default_factory=dict)
    delete: dict[str, str] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    dry_run: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "kind": "physical", "dry_run": self.dry_run,
                "keep": self.keep, "delete": self.delete, "deleted": self.deleted}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        rows = [(i, "keep", "; ".join(r)) for i, r in self.keep.items()]
        rows += [(i, "DELETE", why) for i, why in self.delete.items()]
        verb = "would delete" if self.dry_run else "deleted"
        count = len(self.delete) if self.dry_run else len(self.deleted)
        return [Table([Column("id", "id"), "action", Column("why", "text")], list(sorted(rows)),
                      title=f"physical retention of {self.target}",
                      empty="no physical backups"),
                Note(f"{verb} {count} physical backup(s)")]


def _chains(backups: list[PhysicalBackup]) -> dict[str, list[PhysicalBackup]]:
    chains: dict[str, list[PhysicalBackup]] = {}
    for backup in backups:
        chains.setdefault(backup.chain or f"broken:{backup.id}", []).append(backup)
    return chains


def plan_physical_prune(backups: list[PhysicalBackup], retention: RetentionSettings,
                        target: str, now: dt.datetime | None = None) -> PhysicalPrunePlan:
    now = now or dt.datetime.now(dt.UTC)
    by_id = {b.id: b for b in backups}
    cutoff = now - dt.timedelta(days=retention.keep_days)
    usable = [b for b in backups if b.end_time and chain_usable(b, by_id)]
    reasons: dict[str, list[str]] = {}

    def need(backup: PhysicalBackup, why: str) -> None:
        if why not in reasons.setdefault(backup.chain, []):
            reasons[backup.chain].append(why)

    for backup in backups:
        recent = backup.end_time is None or backup.end_time >= cutoff
        if recent and backup.chain and (backup.usable or backup.end_time is None):
            need(backup, f"newer than keep_days ({retention.keep_days})")
    before_cutoff = [b for b in usable if b.end_time and b.end_time < cutoff]
    if before_cutoff:
        need(before_cutoff[-1], f"{before_cutoff[-1].id}: recovery to the start of the "
                                "keep_days window starts from it")
    newest_chains: list[str] = []
    for backup in reversed(usable):
        if backup.chain not in newest_chains:
            newest_chains.append(backup.chain)
    for rank, chain in enumerate(newest_chains[:max(1, retention.min_keep)]):
        reasons.setdefault(chain, []).append(
            "the newest usable chain" if rank == 0 else f"among the {retention.min_keep} "
            "newest usable chains (min_keep)")
    for tier, count, key in (("daily", retention.keep_daily, lambda d: d.date()),
                             ("weekly", retention.keep_weekly,
                              lambda d: tuple(d.isocalendar()[:2])),
                             ("monthly", retention.keep_monthly, lambda d: (d.year, d.month))):
        seen: list[Any] = []
        for backup in reversed(usable):
            assert backup.end_time is not None
            period = key(backup.end_time)
            if period in seen:
                continue
            seen.append(period)
            if len(seen) > count:
                break
            need(backup, f"{tier} ({backup.id})")
    plan = PhysicalPrunePlan(target)
    for chain, members in _chains(backups).items():
        if chain in reasons:
            for member in members:
                plan.keep[member.id] = reasons[chain]
        else:
            for member in members:
                if member.status not in ("DONE", "FAILED"):
                    plan.keep[member.id] = [f"{member.status}: still in progress"]
                elif chain_usable(member, by_id):
                    plan.delete[member.id] = "no member of its chain is needed"
                elif member.begin_time and member.begin_time >= cutoff:
                    plan.keep[member.id] = ["unusable, kept for inspection until keep_days"]
                else:
                    plan.delete[member.id] = "unusable and older than keep_days"
    return plan


def prune_physical(loaded: LoadedConfig, target: Target, *, dry_run: bool) -> PhysicalPrunePlan:
    """Plan with backup.retention; unless dry_run, delete newest-first within each chain (an
    incremental before its parent), each deletion recorded in the audit log."""
    import os

    engine = engine_for(loaded, target)
    backups = list_physical(engine)
    plan = plan_physical_prune(backups, loaded.settings.backup.retention, target.name)
    plan.dry_run = dry_run
    if dry_run:
        return plan
    audit = engine.home / "log" / "audit.log"
    for backup_id in sorted(plan.delete, reverse=True):
        done = engine.run("delete", engine.server, backup_id, what=f"delete {backup_id}",
                          timeout=None, check=False)
        if done.returncode != 0:
            raise OperationFailed(f"cannot delete physical backup {backup_id}: "
                                  f"{engine.explain(done)} (deleted so far: "
                                  f"{', '.join(plan.deleted) or 'none'})")
        plan.deleted.append(backup_id)
        entry = {"at": dt.datetime.now(dt.UTC).isoformat(), "target": target.name,
                 "kind": "physical", "id": backup_id, "why": plan.delete[backup_id],
                 "by": f"uid {os.geteuid()}"}
        with open(audit, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
    return plan
