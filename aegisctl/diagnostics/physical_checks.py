"""`aegisctl check`: physical backups and WAL streaming (when `backup physical enable` was
run for the target): streaming up and its lag, gaps in the archived WAL, WAL the slot holds
back, the newest physical backup's age, the newest successful drill's age. Thresholds: `backup.physical`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    Status,
    grade,
    register_check,
)

if TYPE_CHECKING:
    from aegisctl.backup.physical.check import PhysicalMeasurements


@register_check("physical_backups", "WAL streaming, slot retention, physical backup and "
                "drill age", needs_db=False)
def physical_backups(ctx: CheckContext) -> list[CheckResult]:
    from aegisctl.backup.physical import hooks
    from aegisctl.backup.physical.check import physical_measurements

    on, problem = hooks.physical_state(ctx.loaded, ctx.target)
    if not on:
        raise CheckSkipped(f"physical backups are not enabled for this database: {problem}"
                           if problem else "physical backups are not enabled for this target")
    m = physical_measurements(ctx.loaded, ctx.target)
    if m.slot_lost:
        streaming = CheckResult("wal_streaming", Status.CRITICAL, m.lag_bytes, m.max_lag, None,
                                "B", "the WAL slot lost WAL: point-in-time recovery has a gap")
    elif not m.streaming:
        streaming = CheckResult("wal_streaming", Status.CRITICAL, None, m.max_lag, None, "B",
                                "WAL streaming is down (aegisctl backup wal stream)")
    else:
        behind = f"{m.lag_bytes} bytes behind" if m.lag_bytes is not None else \
            "its lag unknown"
        streaming = grade("wal_streaming", m.lag_bytes, m.max_lag, None, unit="B",
                          message=f"streaming, {behind}", minimum=0)
    return [
        streaming,
        _archive_gaps(m),
        grade("wal_slot_retained", m.slot_retained_bytes, m.max_slot_retained, None, unit="B",
              message=f"the slot holds {m.slot_retained_bytes} bytes of WAL"
              if m.slot_retained_bytes is not None else "no WAL slot to measure", minimum=0),
        _age("physical_backup_age", m.last_backup_age_seconds, m.max_backup_age,
             "newest physical backup", critical_when_missing=True),
        _age("physical_drill_age", m.last_drill_age_seconds, m.max_drill_age,
             "newest successful physical drill", critical_when_missing=False),
    ]


def _archive_gaps(m: PhysicalMeasurements) -> CheckResult:
    """The WAL archive across timelines (a failover's switch included): a missing segment is
    named; CRITICAL when the newest backup's recovery needs it."""
    if not m.wal_gap:
        where = f" (timeline {m.timeline})" if m.timeline else ""
        return CheckResult("wal_archive_gaps", Status.OK, 0, None, None, "",
                           f"no gap in the archived WAL{where}")
    if m.wal_gap_after_newest_backup:
        return CheckResult("wal_archive_gaps", Status.CRITICAL, m.wal_gap_segments, None, None,
                           "",
                           f"{m.wal_gap}: the newest backup recovers only up to it; take a "
                           "full backup (aegisctl backup physical create)")
    return CheckResult("wal_archive_gaps", Status.WARNING, m.wal_gap_segments, None, None, "",
                       f"{m.wal_gap}: backups older than it recover only up to it")


def _age(name: str, age: float | None, limit: float, what: str, *,
         critical_when_missing: bool) -> CheckResult:
    if age is None:
        status = Status.CRITICAL if critical_when_missing else Status.WARNING
        return CheckResult(name, status, None, limit, None, "s", f"no {what} yet")
    return grade(name, round(age), limit, None, unit="s",
                 message=f"{what} {round(age)}s ago", minimum=0)
