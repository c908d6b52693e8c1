"""Retention as a pure function: property test over random backup histories."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from aegisctl.backup.retention import BackupFacts, plan_retention
from aegisctl.backup.settings import RetentionSettings

NOW = dt.datetime(2026, 6, 1, 2, 0, tzinfo=dt.UTC)

histories = st.lists(
    st.tuples(st.integers(0, 400 * 24), st.sampled_from(["ok", "failed", "unverified"]),
              st.booleans()),
    max_size=40,
)
policies = st.builds(RetentionSettings, keep_days=st.integers(0, 30), min_keep=st.integers(0, 5),
                     keep_daily=st.integers(0, 7), keep_weekly=st.integers(0, 4),
                     keep_monthly=st.integers(0, 12))


@settings(max_examples=400, deadline=None)
@given(histories, policies)
def test_prune_never_deletes_the_last_good_backup(history, policy) -> None:
    backups = [BackupFacts(f"b{i:03d}", NOW - dt.timedelta(hours=hours), status, pinned and i % 5 == 0)
               for i, (hours, status, pinned) in enumerate(history)]
    plan = plan_retention(backups, policy, NOW)
    assert set(plan.keep) | set(plan.delete) == {b.id for b in backups}
    assert not set(plan.keep) & set(plan.delete)
    good = sorted((b for b in backups if b.good), key=lambda b: (b.created, b.id), reverse=True)
    if good:
        assert good[0].id in plan.keep
    kept_good = [b for b in good if b.id in plan.keep]
    assert len(kept_good) >= min(policy.min_keep, len(good))
    assert all(b.id in plan.keep for b in good[: policy.min_keep])
    cutoff = NOW - dt.timedelta(days=policy.keep_days)
    for b in backups:
        if b.pinned or b.created > cutoff:
            assert b.id in plan.keep


def test_failed_backups_do_not_count_toward_min_keep() -> None:
    old = [BackupFacts(f"g{i}", NOW - dt.timedelta(days=100 + i), "ok") for i in range(4)]
    failed = [BackupFacts(f"f{i}", NOW - dt.timedelta(days=50 + i), "failed") for i in range(5)]
    plan = plan_retention(old + failed, RetentionSettings(keep_days=14, min_keep=3), NOW)
    assert set(plan.keep) == {"g0", "g1", "g2"}
    assert set(plan.delete) == {"g3", *(f.id for f in failed)}


def test_tiers_keep_one_per_period() -> None:
    daily = [BackupFacts(f"d{i}", NOW - dt.timedelta(days=20 + i), "ok") for i in range(60)]
    plan = plan_retention(daily, RetentionSettings(keep_days=1, min_keep=1, keep_weekly=3,
                                                   keep_monthly=2), NOW)
    kept = [b for b in daily if b.id in plan.keep]
    assert 3 <= len(kept) <= 6
