"""Backups as part of health: age of the newest good backup, of the newest good restore test, and
backups still waiting for their upload. They read the backup store on disk, so they run even when
the database is down.

`backup_facts` is the one place that reads the backups: it uses the backup module's own summary
(`aegisctl.backup.status.backup_health`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    Status,
    grade,
    register_check,
)
from aegisctl.diagnostics.result import format_seconds

if TYPE_CHECKING:
    from aegisctl.config import LoadedConfig
    from aegisctl.targets import Target


@dataclass
class BackupFacts:
    configured: bool  # a backup: section in the config, or backups on disk for the target
    remote: bool  # backup.remote is configured
    backups: int
    last_good_at: dt.datetime | None
    last_good_id: str | None
    last_restore_test_at: dt.datetime | None
    last_restore_test_id: str | None
    pending_uploads: int
    uploaded: int = 0
    remote_copy_problems: int = 0
    last_remote_check_at: dt.datetime | None = None


def backup_facts(loaded: LoadedConfig, target: Target) -> BackupFacts:
    """What the backup checks need, from the backup module's own summary (it also knows a
    restore test that a later quick verify recorded over)."""
    from aegisctl.backup.status import backup_health

    settings = loaded.settings.backup
    configured = any(key == "backup" or key.startswith("backup.") for key in loaded.sources)
    health = backup_health(settings, target.name)
    return BackupFacts(
        configured=configured or health.backups > 0,
        remote=settings.remote is not None,
        backups=health.backups,
        last_good_at=health.last_good_at,
        last_good_id=health.last_good_id,
        last_restore_test_at=health.last_restore_test_at,
        last_restore_test_id=None,
        pending_uploads=health.pending_uploads,
        uploaded=health.uploaded,
        remote_copy_problems=health.remote_copy_problems,
        last_remote_check_at=health.last_remote_check_at,
    )


def _facts(ctx: CheckContext) -> BackupFacts:
    if "backup_facts" not in ctx.memo:
        ctx.memo["backup_facts"] = backup_facts(ctx.loaded, ctx.target)
    facts: BackupFacts = ctx.memo["backup_facts"]
    if not facts.configured:
        raise CheckSkipped("no backups configured for this target (no backup: section, "
                           "no local backups)")
    return facts


def _age(moment: dt.datetime) -> float:
    return round(max(0.0, (dt.datetime.now(dt.UTC) - moment).total_seconds()), 0)


@register_check("backup_age", "age of the newest verified-good backup", needs_db=False)
def backup_age(ctx: CheckContext) -> CheckResult:
    facts = _facts(ctx)
    t = ctx.settings.backup_age
    if facts.last_good_at is None:
        return CheckResult("backup_age", Status.CRITICAL, None, t.warning, t.critical, "s",
                           f"no verified-good backup ({facts.backups} backup(s) in the store): "
                           "aegisctl backup create")
    age = _age(facts.last_good_at)
    return grade("backup_age", age, t.warning, t.critical, unit="s", minimum=0,
                 message=f"newest good backup {facts.last_good_id}, {format_seconds(age)} old")


@register_check("restore_test_age", "age of the newest successful restore test", needs_db=False)
def restore_test_age(ctx: CheckContext) -> CheckResult:
    facts = _facts(ctx)
    t = ctx.settings.restore_test_age
    if facts.last_restore_test_at is None:
        return CheckResult("restore_test_age", Status.CRITICAL, None, t.warning, t.critical, "s",
                           "no backup was ever restore-tested: aegisctl backup verify "
                           "--restore-test")
    age = _age(facts.last_restore_test_at)
    which = f"backup {facts.last_restore_test_id}" if facts.last_restore_test_id else "a backup"
    return grade("restore_test_age", age, t.warning, t.critical, unit="s", minimum=0,
                 message=f"{which} restored and checked {format_seconds(age)} ago")


@register_check("backup_pending_uploads", "local backups still waiting for their upload",
                needs_db=False)
def backup_pending_uploads(ctx: CheckContext) -> CheckResult:
    facts = _facts(ctx)
    if not facts.remote:
        raise CheckSkipped("backup.remote is not configured")
    t = ctx.settings.backup_pending_uploads
    return grade("backup_pending_uploads", facts.pending_uploads, t.warning, t.critical,
                 minimum=0, message=f"{facts.pending_uploads} backup(s) waiting for upload "
                                    "(aegisctl backup upload)")


@register_check("backup_remote_copies", "remote copies found missing or damaged by backup "
                "verify --remote", needs_db=False)
def backup_remote_copies(ctx: CheckContext) -> CheckResult:
    facts = _facts(ctx)
    if not facts.remote:
        raise CheckSkipped("backup.remote is not configured")
    t = ctx.settings.backup_remote_copies
    return grade("backup_remote_copies", facts.remote_copy_problems, t.warning, t.critical,
                 minimum=0, message=f"{facts.remote_copy_problems} remote cop(y/ies) missing "
                 "or damaged (aegisctl backup upload --pending sends them again)")


@register_check("backup_remote_verify_age", "age of the last check of a remote copy "
                "(backup verify --remote)", needs_db=False)
def backup_remote_verify_age(ctx: CheckContext) -> CheckResult:
    facts = _facts(ctx)
    if not facts.remote:
        raise CheckSkipped("backup.remote is not configured")
    t = ctx.settings.backup_remote_verify_age
    if facts.last_remote_check_at is None:
        if not facts.uploaded:
            raise CheckSkipped("no backup was uploaded yet")
        return CheckResult("backup_remote_verify_age", Status.WARNING, None, t.warning,
                           t.critical, "s", "no remote copy was ever checked: aegisctl backup "
                           "verify --remote --all")
    age = _age(facts.last_remote_check_at)
    return grade("backup_remote_verify_age", age, t.warning, t.critical, unit="s", minimum=0,
                 message=f"a remote copy was last found whole {format_seconds(age)} ago")
