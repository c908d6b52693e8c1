"""The backup facts monitoring needs (`aegisctl check`): how old the newest good backup and the
last successful restore test are, and how many uploads are pending. Local only: it never asks
the remote store, so a check stays fast and works when the store is down."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from aegisctl.backup.listing import restore_tested_at
from aegisctl.backup.manifest import parse_time, utcnow
from aegisctl.backup.settings import BackupSettings
from aegisctl.backup.store import OK, BackupStore


@dataclass
class BackupHealth:
    target: str
    backups: int  # backup-like entries in the folder
    problems: int  # entries whose state is not ok (missing files, no manifest, unreadable)
    last_good_id: str | None
    last_good_at: dt.datetime | None  # finished_at of the newest verified-good backup
    last_restore_test_at: dt.datetime | None  # newest successful restore test of any backup
    pending_uploads: int  # backups whose off-site copy is still to be made
    max_age_seconds: float  # backup.max_age
    uploaded: int = 0  # backups with a remote copy, says their manifest
    # Backups whose remote copy the last `verify --remote` found missing or damaged (and
    # not sent again since), and when a remote copy was last found whole by it.
    remote_copy_problems: int = 0
    last_remote_check_at: dt.datetime | None = None

    def age_seconds(self, moment: dt.datetime | None, now: dt.datetime | None = None
                    ) -> float | None:
        if moment is None:
            return None
        return ((now or utcnow()) - moment).total_seconds()

    def to_json(self) -> dict[str, Any]:
        now = utcnow()
        return {
            "target": self.target, "backups": self.backups, "problems": self.problems,
            "last_good_id": self.last_good_id,
            "last_good_at": self.last_good_at.isoformat() if self.last_good_at else None,
            "last_good_age_seconds": self.age_seconds(self.last_good_at, now),
            "last_restore_test_at": self.last_restore_test_at.isoformat()
            if self.last_restore_test_at else None,
            "last_restore_test_age_seconds": self.age_seconds(self.last_restore_test_at, now),
            "pending_uploads": self.pending_uploads, "max_age_seconds": self.max_age_seconds,
            "uploaded": self.uploaded, "remote_copy_problems": self.remote_copy_problems,
            "last_remote_check_at": self.last_remote_check_at.isoformat()
            if self.last_remote_check_at else None,
        }


def backup_health(settings: BackupSettings, target_name: str) -> BackupHealth:
    """Reads the target's backup folder (no lock, no database, no network)."""
    store = BackupStore(settings, target_name)
    entries = store.scan()
    good = [e for e in entries if e.state == OK and e.manifest is not None and e.manifest.good]
    newest = good[-1].manifest if good else None
    tests = [parse_time(at) for e in entries if e.manifest is not None
             and (at := restore_tested_at(e.manifest))]
    pending = sum(1 for e in entries if e.manifest is not None
                  and e.manifest.remote.status == "pending")
    manifests = [e.manifest for e in entries if e.manifest is not None]
    checks = [m.remote_check for m in manifests if m.remote_check is not None]
    checked_ok = [parse_time(c.at) for c in checks if c.status == "ok"]
    return BackupHealth(
        uploaded=sum(1 for m in manifests if m.remote.status == "uploaded"),
        remote_copy_problems=sum(1 for m in manifests if m.remote_check is not None
                                 and m.remote_check.status != "ok"
                                 and m.remote.status == "pending"),
        last_remote_check_at=max(checked_ok) if checked_ok else None,
        target=target_name, backups=len(entries),
        problems=sum(1 for e in entries if e.state != OK),
        last_good_id=newest.id if newest else None,
        last_good_at=newest.created if newest else None,
        last_restore_test_at=max(tests) if tests else None,
        pending_uploads=pending, max_age_seconds=settings.max_age)
