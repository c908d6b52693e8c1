"""Retention: which backups a policy keeps and why. Pure functions of (backups, policy, now).

Rules, in order (a backup kept by any rule is kept):
  pinned (`backup keep ID`) | newer than keep_days | among the min_keep newest verified-good |
  the newest good backup of each of the last keep_daily days / keep_weekly ISO weeks /
  keep_monthly months | the newest good backup of all (whatever min_keep says) |
  an unverified backup newer than the min_keep-th newest good one (it may yet prove good).
Failed or unverified backups never count toward min_keep.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from aegisctl.backup.settings import RetentionSettings


@dataclass(frozen=True)
class BackupFacts:
    id: str
    created: dt.datetime
    status: str  # ok | failed | unverified
    pinned: bool = False

    @property
    def good(self) -> bool:
        return self.status == "ok"


@dataclass
class RetentionPlan:
    keep: dict[str, list[str]] = field(default_factory=dict)  # id -> reasons
    delete: dict[str, str] = field(default_factory=dict)  # id -> why


def plan_retention(backups: list[BackupFacts], policy: RetentionSettings,
                   now: dt.datetime) -> RetentionPlan:
    newest_first = sorted(backups, key=lambda b: (b.created, b.id), reverse=True)
    good = [b for b in newest_first if b.good]
    reasons: dict[str, list[str]] = {b.id: [] for b in newest_first}
    cutoff = now - dt.timedelta(days=policy.keep_days)

    for b in newest_first:
        if b.pinned:
            reasons[b.id].append("pinned")
        if b.created > cutoff:
            reasons[b.id].append(f"newer than {policy.keep_days} days")
    for b in good[: max(policy.min_keep, 0)]:
        reasons[b.id].append(f"one of the {policy.min_keep} newest good backups")
    if good:
        reasons[good[0].id].append("the newest good backup")
    tiers = (("daily", policy.keep_daily, lambda d: d.date().isoformat()),
             ("weekly", policy.keep_weekly, lambda d: f"{d.isocalendar()[0]}-W{d.isocalendar()[1]:02d}"),
             ("monthly", policy.keep_monthly, lambda d: d.strftime("%Y-%m")))
    for name, count, bucket in tiers:
        seen: list[str] = []
        for b in good:
            period = bucket(b.created.astimezone(dt.UTC))
            if period in seen:
                continue
            if len(seen) >= count:
                break
            seen.append(period)
            reasons[b.id].append(f"newest good backup of {name} period {period}")
    floor = good[max(policy.min_keep, 1) - 1].created if len(good) >= max(policy.min_keep, 1) \
        else None
    for b in newest_first:
        if b.status == "unverified" and (floor is None or b.created > floor):
            reasons[b.id].append("unverified, newer than the good backups min_keep counts")

    plan = RetentionPlan()
    for b in newest_first:
        if reasons[b.id]:
            plan.keep[b.id] = reasons[b.id]
        else:
            age = (now - b.created).days
            plan.delete[b.id] = (f"{b.status}, {age} days old (> keep_days "
                                 f"{policy.keep_days}), not needed for min_keep "
                                 f"{policy.min_keep}")
    return plan
