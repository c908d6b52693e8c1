"""`aegisctl check`: backups that still hold forgotten memories beyond the erasure horizon.

A backup taken before a `memory forget` still holds the forgotten rows (every restore deletes
them again, but the copy is there). Each copy should be gone by the date cleanup's erasure
horizon gives it (aegisctl.retention.horizon.expiry: its start plus the longest retention
rule; a remote copy not before its Object Lock date; a physical base backup as the horizon
counts it). A copy still there after that date (prune not running, a pinned backup) is the only
copy left of what was forgotten: WARNING, naming it.

It reads the ledger beside the backups and the database's own (when reachable), the local
manifests (with what they record of their remote copies) and, when enabled, the physical
backups: no remote listing, so it stays cheap at every check run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    Status,
    register_check,
)

NAME = "erased_rows_in_backups"


@dataclass
class HeldCopy:
    backup: str
    where: str  # local | remote | physical
    taken: dt.datetime
    expires: dt.datetime | None  # None: pinned, held until unpinned
    rows: int  # ledger entries erased after it was taken


def _parse(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def held_copies(ctx: CheckContext, erased: list[dt.datetime], now: dt.datetime
                ) -> list[HeldCopy]:
    """Every backup copy taken before at least one erasure, with its horizon date."""
    from aegisctl.backup.store import BackupStore
    from aegisctl.retention.horizon import expiry, physical_holding

    settings = ctx.loaded.settings.backup

    def rows_after(taken: dt.datetime) -> int:
        return sum(1 for at in erased if at > taken)

    copies: list[HeldCopy] = []
    for m in BackupStore(settings, ctx.target.name).manifests():
        taken = _parse(m.started_at)
        rows = rows_after(taken)
        if not rows:
            continue
        copies.append(HeldCopy(m.id, "local", taken, None if m.pinned
                               else expiry(taken, settings.retention), rows))
        if m.remote.status == "uploaded" and settings.remote is not None:
            until = None if m.pinned else expiry(taken, settings.remote.retention)
            if until is not None and m.remote.object_lock_until:
                until = max(until, _parse(m.remote.object_lock_until))
            copies.append(HeldCopy(m.id, "remote", taken, until, rows))
    physical = physical_holding(ctx.loaded, ctx.target.name, now)
    for until, backup_id in physical.copies:
        begin = physical.begins.get(backup_id)
        if begin is not None and rows_after(begin):
            copies.append(HeldCopy(backup_id, "physical", begin, until, rows_after(begin)))
    return copies


@register_check(NAME, "backups still holding forgotten memories (memory forget) after their "
                "erasure horizon: the only copies left", needs_db=False)
def erased_rows_in_backups(ctx: CheckContext) -> CheckResult:
    from aegisctl.memory.ledger import LedgerError, read_db_ledger, read_local

    settings = ctx.loaded.settings.backup
    try:
        ledger = read_local(settings, ctx.target.name)
    except LedgerError as exc:
        return CheckResult(NAME, Status.UNKNOWN, None, 0, None, message=exc.message)
    if ctx.conn is not None:
        db = read_db_ledger(ctx.conn)
        ledger = db.merged(ledger) if db is not None else ledger
    if ledger is None or not ledger.entries:
        raise CheckSkipped("no memory was ever forgotten (the erasure ledger is empty)")
    now = dt.datetime.now(dt.UTC)
    copies = held_copies(ctx, [e.erased_at for e in ledger.entries], now)
    overdue = [c for c in copies if c.expires is None or c.expires < now]
    if not overdue:
        if not copies:
            message = "no backup holds a forgotten memory"
        else:
            last = max(c.expires for c in copies if c.expires is not None)
            message = (f"{len(copies)} backup cop(y/ies) hold forgotten memories until "
                       f"{last:%Y-%m-%d %H:%M} UTC at the latest (the erasure horizon); every "
                       "restore deletes them again")
        return CheckResult(NAME, Status.OK, 0, 0, None, message=message, minimum=0)
    worst = sorted(overdue, key=lambda c: (c.expires is not None, c.expires or now))[0]
    why = (f"pinned (`aegisctl backup unkeep {worst.backup}`)" if worst.expires is None
           else f"past its erasure horizon {worst.expires:%Y-%m-%d %H:%M} UTC (is "
                "`backup prune` running?)")
    return CheckResult(
        NAME, Status.WARNING, len(overdue), 0, None, minimum=0,
        message=f"{len(overdue)} backup cop(y/ies) still hold forgotten memories, the only "
                f"copies left of them: e.g. the {worst.where} copy of backup {worst.backup} "
                f"({worst.rows} forgotten row(s)), {why}")
