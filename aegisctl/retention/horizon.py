"""The erasure horizon: when rows deleted now are gone from the backups too.

Every backup that exists now was taken before this cleanup and may hold the deleted rows. They
are gone from backups when the newest of those backups expires under the backup retention
(local, and remote when configured): its creation time plus the longest of keep_days,
keep_daily days, keep_weekly weeks, keep_monthly months and min_keep days (min_keep newer good
backups must exist first: this assumes at least one backup a day), or the S3 Object Lock date
if later. A pinned backup holds the rows until it is unpinned: then there is no horizon.
Read-only: nothing here changes a backup.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
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


def erasure_horizon(settings: BackupSettings, target: str, now: dt.datetime) -> ErasureHorizon:
    manifests = BackupStore(settings, target).manifests()
    if not manifests:
        return ErasureHorizon(now, "no backup of this target holds them", 0)
    pinned = [m.id for m in manifests if m.pinned]
    if pinned:
        return ErasureHorizon(None, f"pinned backup(s) {', '.join(pinned)} keep them until "
                                    "unpinned (`aegisctl backup unkeep`)", len(manifests))
    newest = manifests[-1]
    created = _parse(newest.started_at)
    date = expiry(created, settings.retention)
    where = "local"
    if settings.remote is not None:
        remote_date = expiry(created, settings.remote.retention)
        lock = newest.remote.object_lock_until
        if lock:
            remote_date = max(remote_date, _parse(lock))
        if remote_date > date:
            date, where = remote_date, "remote"
    return ErasureHorizon(date, f"when backup {newest.id}, the newest of {len(manifests)} "
                                f"holding them, expires under the {where} backup retention",
                          len(manifests))
