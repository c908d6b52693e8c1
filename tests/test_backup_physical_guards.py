"""Guard rails of incremental physical backups: the parent must still be covered by the
server's WAL summaries (from its start LSN to what the summarizer has reached), and
summarize_wal must be on. On a real embedded server, with the summary files removed as the
summarizer's own expiry would. (Refusal while summarize_wal is off: test_backup_physical.)"""
# ruff: noqa: F811  (the fixture imported from physical_fixtures is a parameter here)

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
from physical_fixtures import PhysicalEnv, insert_rows, physical_env  # noqa: F401

from aegisctl.backup.physical.backups import (
    PhysicalBackup,
    _check_parent_summaries,
    _Summaries,
    first_unsummarized,
    parse_lsn,
)
from aegisctl.errors import UsageError

LSN = parse_lsn


def test_summary_coverage_needs_every_lsn_from_the_parent_to_the_summarizer() -> None:
    ranges = [(LSN("0/1000000"), LSN("0/2000000")), (LSN("0/2000000"), LSN("0/3000000"))]
    assert first_unsummarized(ranges, LSN("0/1800000"), LSN("0/3000000")) is None
    # The summarizer has not reached the parent's start yet: the server will wait for it.
    assert first_unsummarized([], LSN("0/5000000"), LSN("0/4000000")) is None
    # The oldest summaries expired: nothing covers the parent's start.
    assert first_unsummarized(ranges[1:], LSN("0/1800000"), LSN("0/3000000")) == \
        LSN("0/1800000")
    # Every summary gone.
    assert first_unsummarized([], LSN("0/1800000"), LSN("0/3000000")) == LSN("0/1800000")
    # A hole in the middle (summarize_wal was off for a while).
    holed = [ranges[0], (LSN("0/2800000"), LSN("0/3000000"))]
    assert first_unsummarized(holed, LSN("0/1800000"), LSN("0/3000000")) == LSN("0/2000000")
    # Ranges of a later timeline continue where the earlier one stopped.
    assert first_unsummarized([(LSN("1/0"), LSN("1/10")), (LSN("1/10"), LSN("1/20"))],
                              LSN("1/5"), LSN("1/20")) is None


def _parent(days_old: float) -> PhysicalBackup:
    begin = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_old)
    return PhysicalBackup(id="20260101T000000", type="full", parent=None, status="DONE",
                          begin_time=begin, end_time=begin, size=1, summarize_wal=True,
                          begin_lsn="0/1000028")


def test_without_the_summary_listing_only_the_age_is_checked() -> None:
    # A role that may not call pg_available_wal_summaries(): ranges unknown.
    blind = _Summaries(enabled=True, keep_seconds=10 * 86400, ranges=None, summarized=None)
    _check_parent_summaries(_parent(3), blind)
    with pytest.raises(UsageError) as refused:
        _check_parent_summaries(_parent(12), blind)
    assert "20260101T000000" in refused.value.message
    assert "12.0 d old" in refused.value.message and "wal_summary_keep_time" in \
        refused.value.message
    # With the listing, coverage decides, whatever the age (kept forever here).
    covered = _Summaries(True, 0, [(LSN("0/1000000"), LSN("0/3000000"))], LSN("0/3000000"))
    _check_parent_summaries(_parent(400), covered)
    gone = _Summaries(True, 0, [(LSN("0/2000000"), LSN("0/3000000"))], LSN("0/3000000"))
    with pytest.raises(UsageError, match="no WAL summary from 0/1000028"):
        _check_parent_summaries(_parent(1), gone)


def run_json(cli: Any, env: PhysicalEnv, *args: str) -> Any:
    result = cli("-c", str(env.config), *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _summaries(env: PhysicalEnv) -> list[tuple[str, str]]:
    with env.connect() as conn:
        return [(str(a), str(b)) for a, b in conn.execute(
            "SELECT start_lsn, end_lsn FROM pg_available_wal_summaries() ORDER BY start_lsn")]


def _wait_summarized(env: PhysicalEnv, timeout: float = 60) -> None:
    """Until the summarizer has caught up with the WAL written so far."""
    with env.connect() as conn:
        target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout
        while True:
            reached = conn.execute(
                "SELECT summarized_lsn >= %s::pg_lsn FROM pg_get_wal_summarizer_state()",
                (target,)).fetchone()
            if reached == (True,):
                return
            assert time.monotonic() < deadline, "the WAL summarizer did not catch up"
            conn.execute("CHECKPOINT")  # a summary file ends at a checkpoint's redo point
            time.sleep(0.5)


@pytest.mark.slow
def test_an_incremental_is_refused_when_summaries_no_longer_cover_the_parent(
        cli: Any, physical_env: PhysicalEnv) -> None:
    env = physical_env
    full = run_json(cli, env, "backup", "create", "--physical")
    with env.connect() as conn:
        for _ in range(3):
            insert_rows(conn, 10, "more")
            conn.execute("SELECT pg_switch_wal()")
    _wait_summarized(env)
    begin = LSN(next(b["begin_lsn"] for b in run_json(cli, env, "backup", "physical", "list")
                     ["backups"] if b["id"] == full["id"]))
    # A healthy chain first: the guard lets a covered parent through.
    incremental = run_json(cli, env, "backup", "create", "--physical", "--incremental")
    assert incremental["parent"] == full["id"]

    # Expire the summaries that cover the full backup's start, as the summarizer does after
    # wal_summary_keep_time (the files, removed from pg_wal/summaries).
    folder = env.server.data_dir / "pg_wal" / "summaries"
    removed = []
    for path in sorted(folder.glob("*.summary")):
        if int(path.name[8:24], 16) <= begin:
            path.unlink()
            removed.append(path.name)
    assert removed, _summaries(env)
    assert all(LSN(start) > begin for start, _ in _summaries(env))
    result = cli("-c", str(env.config), "backup", "create", "--physical", "--incremental",
                 "--parent", full["id"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    message = lines[0]
    assert full["id"] in message and "WAL summary" in message, result.stderr
    assert "wal_summary_keep_time" in message
    assert "full backup" in result.stderr  # the hint says what to do
    # A full backup still works, and it can be a parent again.
    fresh = run_json(cli, env, "backup", "create", "--physical")
    assert fresh["type"] == "full" and fresh["status"] == "DONE"
    with env.connect() as conn:
        insert_rows(conn, 5, "after-fresh")
    again = run_json(cli, env, "backup", "create", "--physical", "--incremental")
    assert again["parent"] == fresh["id"] and again["status"] == "DONE"



def test_replication_refusals_are_explained_with_the_fix() -> None:
    from aegisctl.backup.physical.setup import explain_replication_error

    hba = ('connection to server at "10.0.0.9", port 5432 failed: FATAL:  no pg_hba.conf entry '
           'for replication connection from host "10.0.0.5", user "bk", no encryption')
    assert "`host replication bk 10.0.0.5/32 scram-sha-256`" in \
        explain_replication_error(hba, "bk")
    six = hba.replace("10.0.0.5", "fd00::5")
    assert "fd00::5/128" in explain_replication_error(six, "bk")
    attribute = ("connection to server at \"db\", port 5432 failed: FATAL:  permission denied to "
                 "start WAL sender\nDETAIL:  Only roles with the REPLICATION attribute may "
                 "start a WAL sender process.")
    assert "ALTER ROLE bk REPLICATION" in explain_replication_error(attribute, "bk")
    senders = ('connection to server at "db", port 5432 failed: FATAL:  number of requested '
               'standby connections exceeds "max_wal_senders" (currently 0)')
    assert "raise max_wal_senders" in explain_replication_error(senders, "bk")
    other = 'connection to server at "db", port 5432 failed: Connection refused'
    assert explain_replication_error(other, "bk") == \
        "replication connection failed: Connection refused"


def test_a_backup_never_starts_in_the_second_that_names_an_existing_one() -> None:
    """Barman names a backup after its starting second: a second backup in that second would
    overwrite the first one's record (seen as a full backup 'failed: exit 0' right after an
    incremental on a small database)."""
    from aegisctl.backup.physical.backups import _wait_for_a_free_id

    for _ in range(3):
        taken = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        _wait_for_a_free_id({taken, "20200101T000000"})
        assert dt.datetime.now().strftime("%Y%m%dT%H%M%S") != taken
