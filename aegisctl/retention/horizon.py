"""The erasure horizon: when rows deleted now are gone from the backups too.

Every backup that exists now (local, or listed on the remote when one is configured) was taken
before this cleanup and may hold the deleted rows. Each copy expires under its own retention:
its start time plus the longest of keep_days, keep_daily days, keep_weekly weeks, keep_monthly
months and min_keep days (min_keep newer good backups must exist first: this assumes at least
one backup a day), and for a remote copy not before its S3 Object Lock date. The rows are gone
from backups when the last copy expires. A pinned backup holds them until it is unpinned: then
there is no date. Read-only: nothing here changes a backup.

Physical backups (when enabled) hold them too: every base backup taken before now, and the
WAL archived before now (Barman keeps a segment while a base backup that needs it exists).
Physical retention (backup.retention, whole chains) keeps a base backup until the next one has
aged past the cutoff (recovery to the start of the window starts from it), so each expires as
if it were taken when its successor was, and the newest as if taken now (a new base backup is
assumed at least daily). The pre-deletion WAL goes with the last of those base backups.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from aegisctl.backup.settings import BackupSettings, RetentionSettings
from aegisctl.backup.store import BackupStore
from aegisctl.units import CalendarAge, subtract_age


@dataclass
class ErasureHorizon:
    date: dt.datetime | None  # None: a pinned backup holds the rows (no horizon)
    reason: str
    backups_holding: int

    def to_json(self) -> dict[str, Any]:
        return {"date": self.date, "reason": self.reason, "backups_holding": self.backups_holding}

    @property
    def sentence(self) -> str:
        if self.date is None:
            return f"deleted rows are gone from the tables now; {self.reason}"
        return (f"deleted rows are gone from the tables now, and from backups by "
                f"{self.date.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC ({self.reason})")


def _parse(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def expiry(created: dt.datetime, policy: RetentionSettings) -> dt.datetime:
    spans = [created + dt.timedelta(days=policy.keep_days),
             created + dt.timedelta(days=policy.keep_daily),
             created + dt.timedelta(weeks=policy.keep_weekly),
             created + dt.timedelta(days=max(policy.min_keep, 0))]
    if policy.keep_monthly:
        # subtract a negative age = add calendar months
        months_later = subtract_age(created, CalendarAge(months=-policy.keep_monthly))
        spans.append(months_later)
    return max(spans)


def _remote_manifests(settings: BackupSettings, target: str) -> tuple[list[Any], str | None]:
    from aegisctl.backup.remote import open_remote, remote_manifests
    from aegisctl.errors import AegisError

    if settings.remote is None:
        return [], None
    try:
        return remote_manifests(open_remote(settings.remote, target)), None
    except AegisError as exc:
        return [], f"remote backups not listed ({exc}): horizon from local backups only"


@dataclass
class PhysicalHolding:
    """The physical copies that hold rows deleted now: base backups and archived WAL."""

    copies: list[tuple[dt.datetime, str]]  # (expires, base backup id)
    wal_segments: int  # archived WAL segments written before now
    problem: str | None = None
    begins: dict[str, dt.datetime] = field(default_factory=dict)  # base backup id -> start


def physical_holding(loaded: Any, target_name: str, now: dt.datetime) -> PhysicalHolding:
    """Empty when physical backups are not enabled for the target."""
    from aegisctl.backup.physical import hooks
    from aegisctl.errors import AegisError
    from aegisctl.targets import resolve_target

    try:
        target = resolve_target(loaded, target_name)
        if not hooks.enabled(loaded, target):
            return PhysicalHolding([], 0)
    except AegisError:  # a target only the environment names: no physical backups for it
        return PhysicalHolding([], 0)
    try:
        from aegisctl.backup.physical.backups import list_physical
        from aegisctl.backup.physical.engine import engine_for
        from aegisctl.backup.physical.walfiles import archived_wals

        engine = engine_for(loaded, target)
        backups = [b for b in list_physical(engine)
                   if b.begin_time is not None and b.begin_time <= now]
        wals = [w for w in archived_wals(engine) if w[2] <= now.timestamp()]
    except AegisError as exc:
        return PhysicalHolding([], 0, f"physical backups not counted ({exc})")
    policy = loaded.settings.backup.retention
    starts = [b.begin_time for b in backups if b.begin_time is not None]
    copies = []
    for i, backup in enumerate(backups):
        successor = starts[i + 1] if i + 1 < len(starts) else now
        copies.append((expiry(successor, policy), backup.id))
    return PhysicalHolding(copies, len(wals) if copies else 0,
                           begins={b.id: b.begin_time for b in backups
                                   if b.begin_time is not None})


def erasure_horizon(settings: BackupSettings, target: str, now: dt.datetime,
                    physical: PhysicalHolding | None = None) -> ErasureHorizon:
    """Each copy of each backup expires under its own retention (local or remote): the rows
    are gone from backups when the last copy holding them expires."""
    local = BackupStore(settings, target).manifests()
    remote, problem = _remote_manifests(settings, target)
    copies: list[tuple[dt.datetime, str, str]] = []  # (expires, backup id, where)
    physical = physical or PhysicalHolding([], 0)
    for date, backup_id in physical.copies:
        copies.append((date, backup_id, "physical"))
    if physical.problem:
        problem = f"{problem}; {physical.problem}" if problem else physical.problem
    for m in local:
        copies.append((expiry(_parse(m.started_at), settings.retention), m.id, "local"))
    remote_ids = {m.id for m in remote} | {m.id for m in local if m.remote.status == "uploaded"}
    for m in [*remote, *local]:
        if m.id in remote_ids and settings.remote is not None:
            date = expiry(_parse(m.started_at), settings.remote.retention)
            if m.remote.object_lock_until:
                date = max(date, _parse(m.remote.object_lock_until))
            copies.append((date, m.id, "remote"))
            remote_ids.discard(m.id)
    holding = {m.id for m in local} | {m.id for m in remote} | \
        {backup_id for _, backup_id in physical.copies}
    pinned = sorted({m.id for m in [*local, *remote] if m.pinned})
    if pinned:
        horizon = ErasureHorizon(None, f"pinned backup(s) {', '.join(pinned)} keep them until "
                                       "unpinned (`aegisctl backup unkeep`)", len(holding))
    elif not copies:
        horizon = ErasureHorizon(now, "no backup of this target holds them", 0)
    else:
        date, backup_id, where = max(copies)
        if where == "physical":
            what = (f"when physical base backup {backup_id}, the last of {len(holding)} "
                    f"backup(s) holding them, expires under backup.retention (with the "
                    f"{physical.wal_segments} WAL segment(s) archived before now)")
        else:
            what = (f"when the {where} copy of backup {backup_id}, the last of "
                    f"{len(holding)} backup(s) holding them, expires under the {where} backup "
                    "retention")
        if physical.copies and where != "physical":
            what += (f"; {len(physical.copies)} physical base backup(s) and "
                     f"{physical.wal_segments} archived WAL segment(s) hold them until earlier")
        horizon = ErasureHorizon(date, what, len(holding))
    if problem:
        horizon.reason += f"; {problem}"
    return horizon
