"""Measurements for `aegisctl check`: one core function, no thresholds applied by the caller
needed beyond the ones returned (taken from backup.physical)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.backup.physical.backups import load_state, newest_backup_age
from aegisctl.backup.physical.engine import Engine, engine_for

if TYPE_CHECKING:
    from aegisctl.config import LoadedConfig
    from aegisctl.targets import Target


@dataclass
class PhysicalMeasurements:
    enabled: bool
    streaming: bool | None
    lag_bytes: int | None
    slot_retained_bytes: int | None
    slot_lost: bool
    last_backup_age_seconds: float | None
    last_drill_age_seconds: float | None
    # The thresholds (backup.physical) the check compares against.
    max_lag: int
    max_slot_retained: int
    max_backup_age: float
    max_drill_age: float
    # The WAL archive across timelines (physical/timelines.py): its newest timeline, and the
    # newest gap, named, with whether the newest backup's recovery needs what is missing.
    timeline: int | None = None
    wal_gap: str | None = None
    wal_gap_segments: int = 0  # missing, over every gap
    wal_gap_after_newest_backup: bool = False

    def problems(self) -> list[tuple[str, str]]:
        """(severity, message) pairs: 'critical' or 'warning'. Empty when all is well."""
        if not self.enabled:
            return []
        out: list[tuple[str, str]] = []
        if self.slot_lost:
            out.append(("critical", "the WAL slot lost WAL: point-in-time recovery has a gap"))
        if self.wal_gap and self.wal_gap_after_newest_backup:
            out.append(("critical", f"the WAL archive has a gap: {self.wal_gap}; the newest "
                                    "backup recovers only up to it: take a full backup"))
        elif self.wal_gap:
            out.append(("warning", f"the WAL archive has a gap: {self.wal_gap}; backups "
                                   "older than it recover only up to it"))
        if not self.streaming:
            out.append(("critical", "WAL streaming is down"))
        elif self.lag_bytes is not None and self.lag_bytes > self.max_lag:
            out.append(("warning", f"WAL streaming lags {self.lag_bytes} bytes"))
        if self.slot_retained_bytes is not None and \
                self.slot_retained_bytes > self.max_slot_retained:
            out.append(("warning", f"the WAL slot holds {self.slot_retained_bytes} bytes"))
        if self.last_backup_age_seconds is None:
            out.append(("critical", "no physical backup"))
        elif self.last_backup_age_seconds > self.max_backup_age:
            out.append(("warning", f"newest physical backup is "
                                   f"{self.last_backup_age_seconds / 3600:.0f} h old"))
        if self.last_drill_age_seconds is None or \
                self.last_drill_age_seconds > self.max_drill_age:
            out.append(("warning", "no successful physical drill within "
                                   f"{self.max_drill_age / 86400:.0f} d"))
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "problems": [{"severity": s, "message": m}
                                              for s, m in self.problems()]}


def physical_measurements(loaded: LoadedConfig, target: Target) -> PhysicalMeasurements:
    """WAL streaming up and lag, slot retention, last backup age, last successful drill age.
    `enabled` is False (and nothing else is measured) when physical backups are not set up."""
    from aegisctl.db import connect

    physical = loaded.settings.backup.physical
    engine = engine_for(loaded, target)
    result = PhysicalMeasurements(
        enabled=engine.server_config.exists(), streaming=None, lag_bytes=None,
        slot_retained_bytes=None, slot_lost=False, last_backup_age_seconds=None,
        last_drill_age_seconds=None, max_lag=physical.max_lag,
        max_slot_retained=physical.max_slot_retained, max_backup_age=physical.max_backup_age,
        max_drill_age=physical.max_drill_age)
    if not result.enabled:
        return result
    with connect(loaded, target, "check physical") as conn:
        row = conn.execute(
            "SELECT s.active AND r.state = 'streaming', "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), r.flush_lsn)::bigint, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, s.wal_status "
            "FROM pg_replication_slots s LEFT JOIN pg_stat_replication r "
            "ON r.pid = s.active_pid WHERE s.slot_name = %s", (engine.slot_name,)).fetchone()
    if row is not None:
        result.streaming = bool(row[0])
        result.lag_bytes, result.slot_retained_bytes = row[1], row[2]
        result.slot_lost = row[3] == "lost"
    else:
        result.streaming = False
    result.last_backup_age_seconds = newest_backup_age(engine)
    _measure_archive(engine, result)
    drill = load_state(engine).get("last_drill")
    if isinstance(drill, dict) and isinstance(drill.get("at"), str):
        try:
            at = dt.datetime.fromisoformat(drill["at"])
            result.last_drill_age_seconds = (dt.datetime.now(dt.UTC) - at).total_seconds()
        except ValueError:
            pass
    return result


def _measure_archive(engine: Engine, result: PhysicalMeasurements) -> None:
    from aegisctl.backup.physical.backups import list_physical
    from aegisctl.backup.physical.timelines import archive_gaps, newest_timeline, parse_segment
    from aegisctl.backup.physical.walfiles import archived_wals

    names = [w[0] for w in archived_wals(engine)]
    result.timeline = newest_timeline(names)
    gaps = archive_gaps(engine, names)
    if not gaps:
        return
    gap = gaps[-1]
    result.wal_gap = gap.describe()
    result.wal_gap_segments = sum(g.last - g.first + 1 for g in gaps)
    begins = [parse_segment(b.begin_wal or "") for b in list_physical(engine) if b.usable]
    newest = max((pos[1] for pos in begins if pos), default=None)
    result.wal_gap_after_newest_backup = newest is None or gap.last >= newest
