"""The erasure horizon: when rows deleted now are gone from the backups too.

Every backup that exists now (local, or listed on the remote when one is configured) was taken
before this cleanup and may hold the deleted rows. Each copy expires under its own retention:
its start time plus the longest of keep_days, keep_daily days, keep_weekly weeks, keep_monthly
months and min_keep days (min_keep newer good backups must exist first: this assumes at least
one backup a day), and for a remote copy not before its S3 Object Lock date. The rows are gone
from backups when the last copy expires. A pinned backup holds them until it is unpinned: then
there is no date. Read-only: nothing here changes a backup.
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


def _remote_manifests(settings: BackupSettings, target: str) -> tuple[list[Any], str | None]:
    from aegisctl.backup.remote import open_remote, remote_manifests
    from aegisctl.errors import AegisError

    if settings.remote is None:
        return [], None
    try:
        return remote_manifests(open_remote(settings.remote, target)), None
    except AegisError as exc:
        return [], f"remote backups not listed ({exc}): horizon from local backups only"


def erasure_horizon(settings: BackupSettings, target: str, now: dt.datetime) -> ErasureHorizon:
    """Each copy of each backup expires under its own retention (local or remote): the rows
    are gone from backups when the last copy holding them expires."""
    local = BackupStore(settings, target).manifests()
    remote, problem = _remote_manifests(settings, target)
    copies: list[tuple[dt.datetime, str, str]] = []  # (expires, backup id, where)
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
    holding = {m.id for m in local} | {m.id for m in remote}
    pinned = sorted({m.id for m in [*local, *remote] if m.pinned})
    if pinned:
        horizon = ErasureHorizon(None, f"pinned backup(s) {', '.join(pinned)} keep them until "
                                       "unpinned (`aegisctl backup unkeep`)", len(holding))
    elif not copies:
        horizon = ErasureHorizon(now, "no backup of this target holds them", 0)
    else:
        date, backup_id, where = max(copies)
        horizon = ErasureHorizon(date, f"when the {where} copy of backup {backup_id}, the last "
                                       f"of {len(holding)} backup(s) holding them, expires under "
                                       f"the {where} backup retention", len(holding))
    if problem:
        horizon.reason += f"; {problem}"
    return horizon
