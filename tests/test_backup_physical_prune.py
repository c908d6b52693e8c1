"""Physical retention by whole chains (the planner is a pure function of the catalog)."""

from __future__ import annotations

import datetime as dt

from aegisctl.backup.physical.backups import PhysicalBackup
from aegisctl.backup.physical.prune import plan_physical_prune
from aegisctl.backup.settings import RetentionSettings

NOW = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


def backup(days_ago: float, parent: PhysicalBackup | None = None,
           status: str = "DONE") -> PhysicalBackup:
    end = NOW - dt.timedelta(days=days_ago)
    b = PhysicalBackup(id=end.strftime("%Y%m%dT%H%M%S"), type="incremental" if parent else "full",
                       parent=parent.id if parent else None, status=status,
                       begin_time=end - dt.timedelta(minutes=5), end_time=end, size=1)
    b.chain = parent.chain if parent else b.id
    return b


def test_a_chain_is_kept_whole_while_any_member_is_needed() -> None:
    old_full = backup(30)
    old_inc = backup(29, old_full)
    full = backup(20)
    inc1 = backup(12, full)
    inc2 = backup(2, inc1)  # needed (recent): its whole chain stays
    plan = plan_physical_prune([old_full, old_inc, full, inc1, inc2],
                               RetentionSettings(keep_days=7, min_keep=1), "t", NOW)
    assert set(plan.keep) == {full.id, inc1.id, inc2.id}
    assert set(plan.delete) == {old_full.id, old_inc.id}


def test_the_backup_before_the_cutoff_is_kept_for_the_window_start() -> None:
    older = backup(40)
    before_cutoff = backup(10)
    recent = backup(1)
    plan = plan_physical_prune([older, before_cutoff, recent],
                               RetentionSettings(keep_days=7, min_keep=1), "t", NOW)
    assert before_cutoff.id in plan.keep and recent.id in plan.keep
    assert list(plan.delete) == [older.id]


def test_the_newest_usable_chain_survives_even_when_old() -> None:
    a = backup(100)
    b = backup(90)
    failed = backup(50, status="FAILED")
    plan = plan_physical_prune([a, b, failed], RetentionSettings(keep_days=7, min_keep=1),
                               "t", NOW)
    assert b.id in plan.keep
    assert failed.id in plan.delete and a.id in plan.delete


def test_an_incremental_whose_parent_failed_is_not_counted_usable() -> None:
    full = backup(30, status="FAILED")
    inc = backup(29, full)
    good = backup(20)
    plan = plan_physical_prune([full, inc, good], RetentionSettings(keep_days=7, min_keep=1),
                               "t", NOW)
    assert good.id in plan.keep
    assert {full.id, inc.id} <= set(plan.delete)


def test_the_wal_stream_unit_is_valid_for_systemd(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil
    import subprocess

    import pytest

    from aegisctl.backup.physical.units import wal_stream_unit

    text = wal_stream_unit("/usr/bin/true", "/etc/aegisctl/config.yaml", "primary")
    assert "Type=simple" in text and "backup wal stream" in text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "aegisctl-wal-stream.service"
    unit.write_text(text)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    problems = [ln for ln in done.stderr.splitlines() if str(unit.name) in ln
                and "network-online" not in ln and "postgresql.service" not in ln]
    assert not problems, done.stderr


def test_a_gap_in_the_archive_moves_the_window_start_past_it() -> None:
    from aegisctl.backup.physical.backups import last_gap, recoverable_window

    old = backup(10)
    old.begin_wal = "000000010000000000000002"
    new = backup(2)
    new.begin_wal = "000000010000000000000009"
    wals = [(f"0000000100000000000000{n:02X}", 16, NOW.timestamp() - 3600) for n in
            (2, 3, 4, 8, 9, 10)]
    assert last_gap(wals) == "000000010000000000000008"
    start, _, oldest = recoverable_window(None, [old, new], wals)  # type: ignore[arg-type]
    assert oldest == new.id and start == new.end_time
    continuous = [w for w in wals if w[0] != "000000010000000000000008"] + [
        (f"0000000100000000000000{n:02X}", 16, 0.0) for n in (5, 6, 7, 8)]
    assert last_gap(continuous) is None
    assert recoverable_window(None, [old, new], continuous)[2] == old.id  # type: ignore[arg-type]
