"""Retention cleanup on a real database: exactly the expired, non-exempt rows go (property test),
dry runs delete nothing, archives hold exactly the deleted rows, interrupted runs leave a
consistent state, partitions are dropped whole, bad policies are configuration errors."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegisctl.config import load_config
from aegisctl.retention.service import CleanupOptions, run_cleanup
from aegisctl.units import CalendarAge, parse_age, subtract_age

NOW = dt.datetime(2026, 3, 31, 12, 0, tzinfo=dt.UTC)
IMPORTANCE = ["low", "medium", "high", "critical"]


def _archived(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(folder.rglob("*.jsonl.gz")):
        with gzip.open(path, "rt") as handle:
            rows += [json.loads(line) for line in handle if line.strip()]
    return rows


def _config(write_config, dsn: str, tmp_path: Path, policies: dict[str, Any],
            **cleanup: Any) -> Path:
    return write_config({
        "targets": {"primary": {"dsn": dsn}},
        "connection": {"retry": {"attempts": 1}},
        "backup": {"directory": str(tmp_path / "backups")},
        "cleanup": {"archive_dir": str(tmp_path / "archive"), **cleanup,
                    "policies": policies},
    })


EPISODIC = {"table": "episodic_memory", "column": "timestamp", "max_age": "6mo",
            "keep": {"importance": ["high", "critical"]},
            "keep_referenced_by": ["decision_outcomes"], "archive": True}


# ---------------------------------------------------------------------------------------------
# Ages


def test_calendar_months_clamp_like_postgresql(aegis_db: psycopg.Connection[Any]) -> None:
    for moment in (NOW, dt.datetime(2024, 2, 29, 5, tzinfo=dt.UTC),
                   dt.datetime(2026, 1, 31, tzinfo=dt.UTC)):
        for text in ("1mo", "6mo", "13mo", "1y", "30d", "12h"):
            age = parse_age(text)
            row = aegis_db.execute(
                "SELECT (%s::timestamptz AT TIME ZONE 'UTC'"
                " - make_interval(months => %s, secs => %s)) AT TIME ZONE 'UTC'",
                (moment, age.months, age.seconds)).fetchone()
            assert row is not None
            assert subtract_age(moment, age) == row[0], (moment, text)
    assert subtract_age(NOW, CalendarAge(months=13)) == dt.datetime(2025, 2, 28, 12,
                                                                    tzinfo=dt.UTC)
    for bad in ("0d", "-1d", "6 months", "1.5mo", "", "mo"):
        with pytest.raises(ValueError):
            parse_age(bad)


# ---------------------------------------------------------------------------------------------
# The property: exactly the expired, non-exempt rows are deleted, and archived


row_strategy = st.lists(
    st.tuples(st.integers(min_value=0, max_value=400 * 24),  # age in hours
              st.sampled_from([*IMPORTANCE, None]),
              st.booleans()),  # referenced by a decision outcome
    max_size=60)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(rows=row_strategy, batch=st.integers(min_value=1, max_value=9),
       by_index=st.booleans())
def test_exactly_expired_unexempt_rows_are_deleted(aegis_db, tmp_path_factory, rows,
                                                   batch, by_index) -> None:
    """Both batch methods (walking the age index, heap page ranges) on the same property."""
    from unittest.mock import patch

    with patch("aegisctl.retention.batches.choose_index", lambda *a: by_index):
        _check_property(aegis_db, tmp_path_factory, rows, batch)


def _check_property(aegis_db, tmp_path_factory, rows, batch) -> None:
    conn = aegis_db
    conn.autocommit = True
    conn.execute("TRUNCATE decision_outcomes, episodic_memory RESTART IDENTITY CASCADE")
    for n, (hours, importance, _ref) in enumerate(rows):
        conn.execute("INSERT INTO episodic_memory (id, event_type, summary, importance,"
                     " \"timestamp\") VALUES (%s, 'task', %s, %s, %s)",
                     (n + 1, f"event {n}", importance, NOW - dt.timedelta(hours=hours)))
        if _ref:
            conn.execute("INSERT INTO decision_outcomes (decision_id, task_context,"
                         " alternatives, chosen_option, reasoning)"
                         " VALUES (%s, 'x', '[]', 'a', 'b')", (n + 1,))
    # One live row always stays: a policy that would empty the table is refused (its own
    # test is test_cleanup_emptying.py); this property is about which rows go.
    live = len(rows) + 1
    conn.execute("INSERT INTO episodic_memory (id, event_type, summary, importance,"
                 " \"timestamp\") VALUES (%s, 'task', 'live', 'low', %s)", (live, NOW))
    cutoff = subtract_age(NOW, CalendarAge(months=6))
    expected_gone = {n + 1 for n, (hours, importance, ref) in enumerate(rows)
                     if NOW - dt.timedelta(hours=hours) < cutoff
                     and importance not in ("high", "critical") and not ref}
    tmp = tmp_path_factory.mktemp("prop")
    loaded = _loaded(tmp, {"episodic": EPISODIC}, batch_size=batch, min_batch_size=1)
    report = run_cleanup(loaded, "primary", conn, CleanupOptions(now=NOW, dry_run=True))
    assert report.policies[0].expired_rows == len(expected_gone)
    report = run_cleanup(loaded, "primary", conn, CleanupOptions(now=NOW))
    remaining = {r[0] for r in conn.execute("SELECT id FROM episodic_memory").fetchall()}
    assert remaining == set(range(1, live + 1)) - expected_gone
    assert report.policies[0].total_deleted == len(expected_gone)
    assert {r["id"] for r in _archived(tmp / "archive")} == expected_gone
    assert len(_archived(tmp / "archive")) == len(expected_gone)


def _loaded(tmp: Path, policies: dict[str, Any], **cleanup: Any):
    import yaml

    path = tmp / "aegisctl.yaml"
    path.write_text(yaml.safe_dump({
        "backup": {"directory": str(tmp / "backups")},
        "cleanup": {"archive_dir": str(tmp / "archive"), **cleanup, "policies": policies}}))
    return load_config(str(path), env={})


# ---------------------------------------------------------------------------------------------
# Through the CLI


def _fill_metrics(conn: psycopg.Connection[Any], rows: int) -> None:
    """Half the rows older than 30 days, half newer."""
    conn.autocommit = True
    conn.execute(
        "INSERT INTO container_metrics (container_name, cpu_percent, \"timestamp\")"
        " SELECT 'c' || (i %% 7), random() * 100,"
        "        now() - make_interval(hours => (i * 1440 / %s)::int)"
        "   FROM generate_series(1, %s) i", (rows, rows))


def _counts(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    row = conn.execute("SELECT count(*) FILTER (WHERE \"timestamp\" < now() - interval '30 days'),"
                       " count(*) FROM container_metrics").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


METRICS = {"table": "container_metrics", "column": "timestamp", "max_age": "30d"}


def test_dry_run_counts_and_deletes_nothing(cli, aegis_db, aegis_dsn, write_config,
                                            tmp_path) -> None:
    _fill_metrics(aegis_db, 2000)
    expired, total = _counts(aegis_db)
    assert 900 < expired < 1100
    path = _config(write_config, aegis_dsn, tmp_path, {"metrics": METRICS})
    result = cli("--config", str(path), "cleanup", "run", "--dry-run", "-f", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dry_run"] is True
    assert report["policies"][0]["expired_rows"] == expired
    assert _counts(aegis_db) == (expired, total)
    # Without --yes and without a terminal to ask on: usage error, nothing deleted.
    result = cli("--config", str(path), "cleanup", "run")
    assert result.exit_code == 2
    assert _counts(aegis_db) == (expired, total)
    result = cli("--config", str(path), "cleanup", "run", "--yes", "-f", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["policies"][0]["deleted_rows"] == expired
    assert report["policies"][0]["vacuumed"] is True
    assert report["erasure_horizon"]["backups_holding"] == 0
    assert _counts(aegis_db) == (0, total - expired)


@pytest.mark.parametrize("policy, message", [
    ({"table": "no_such_table", "column": "timestamp", "max_age": "30d"},
     "no table public.no_such_table"),
    ({"table": "container_metrics", "column": "created", "max_age": "30d"},
     "has no column 'created'"),
    ({"table": "container_metrics", "column": "cpu_percent", "max_age": "30d"},
     "not a timestamp or date"),
    ({"table": "episodic_memory", "column": "timestamp", "max_age": "6mo",
      "keep": {"importanse": ["high"]}}, "has no column 'importanse'"),
    ({"table": "container_metrics", "column": "timestamp", "max_age": "30d",
      "keep_referenced_by": ["decision_outcomes"]}, "has no foreign key"),
    ({"table": "container_metrics", "column": "timestamp", "max_age": "30 days"},
     "is not an age"),
    ({"table": "container_metrics", "column": "timestamp", "max_age": "0d"},
     "greater than zero"),
    ({"table": "container_metrics", "column": "timestamp; DROP TABLE x", "max_age": "1d"},
     "has no column"),
])
def test_bad_policy_is_a_config_error(cli, aegis_db, aegis_dsn, write_config, tmp_path,
                                      policy, message) -> None:
    _fill_metrics(aegis_db, 100)
    before = _counts(aegis_db)
    path = _config(write_config, aegis_dsn, tmp_path,
                   {"good": METRICS, "bad": policy})
    result = cli("--config", str(path), "cleanup", "run", "--yes")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "cleanup.policies.bad" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _counts(aegis_db) == before  # the good policy did not run either


def test_unknown_policy_name_is_a_usage_error(cli, aegis_dsn, write_config, tmp_path) -> None:
    path = _config(write_config, aegis_dsn, tmp_path, {"metrics": METRICS})
    result = cli("--config", str(path), "cleanup", "run", "--policy", "nope", "--dry-run")
    assert result.exit_code == 2
    assert "unknown cleanup policy nope" in result.stderr


def test_cleanup_waits_for_the_backup_lock(cli, aegis_dsn, write_config, tmp_path) -> None:
    from aegisctl.locks import lock_file_at as target_lock

    path = _config(write_config, aegis_dsn, tmp_path, {"metrics": METRICS})
    lock = tmp_path / "state" / "locks" / "primary.lock"
    with target_lock(lock, "backup create"):
        result = cli("--config", str(path), "cleanup", "run", "--yes")
        assert result.exit_code == 4
        assert "backup create" in result.stderr
        result = cli("--config", str(path), "maint", "vacuum", "--table", "container_metrics")
        assert result.exit_code == 4


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_is_consistent_and_the_rerun_finishes(aegis_db, aegis_dsn,
                                                              write_config, tmp_path,
                                                              clean_env, signum) -> None:
    conn = aegis_db
    conn.autocommit = True
    conn.execute("INSERT INTO episodic_memory (event_type, summary, importance, \"timestamp\")"
                 " SELECT 'task', 'event ' || i, (ARRAY['low','medium','high'])[1 + i % 3]"
                 "::memory_importance, now() - make_interval(days => i % 400)"
                 "  FROM generate_series(1, 3000) i")
    expired = {r[0] for r in conn.execute(
        "SELECT id FROM episodic_memory WHERE \"timestamp\" < now() - interval '6 months'"
        " AND importance NOT IN ('high', 'critical')").fetchall()}
    total = conn.execute("SELECT count(*) FROM episodic_memory").fetchone()[0]
    path = _config(write_config, aegis_dsn, tmp_path, {"episodic": EPISODIC},
                   batch_size=20, min_batch_size=20, pause="0.05s")
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "aegisctl", "--config", str(path), "cleanup",
                             "run", "--yes", "-f", "json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        gone = total - conn.execute("SELECT count(*) FROM episodic_memory").fetchone()[0]
        if gone >= 100:
            break
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] is True
    deleted_first = report["policies"][0]["deleted_rows"]
    remaining = {r[0] for r in conn.execute("SELECT id FROM episodic_memory").fetchall()}
    assert 100 <= deleted_first < len(expired)
    assert total - len(remaining) == deleted_first  # the summary says what was done
    archived = {r["id"] for r in _archived(tmp_path / "archive")}
    assert archived == expired - remaining  # the archive holds exactly what was deleted
    assert not list((tmp_path / "archive").rglob(".tmp-*"))

    proc = subprocess.run([sys.executable, "-m", "aegisctl", "--config", str(path), "cleanup",
                           "run", "--yes", "-f", "json"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    remaining = {r[0] for r in conn.execute("SELECT id FROM episodic_memory").fetchall()}
    assert remaining.isdisjoint(expired)
    assert len(remaining) == total - len(expired)
    rows = _archived(tmp_path / "archive")
    assert {r["id"] for r in rows} == expired and len(rows) == len(expired)
    assert json.loads(proc.stdout)["policies"][0]["reindexed"] == ["public.idx_episodic_embedding"]


# ---------------------------------------------------------------------------------------------
# Partitions


def _partitioned_usage(conn: psycopg.Connection[Any], default: bool) -> int:
    """A monthly range-partitioned copy of api_usage_events, 18 months of rows, one row per
    day at noon UTC; returns the row count."""
    conn.autocommit = True
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute("CREATE TABLE usage_part (LIKE api_usage_events INCLUDING DEFAULTS)"
                 " PARTITION BY RANGE (created_at)")
    conn.execute("ALTER TABLE usage_part ADD PRIMARY KEY (id, created_at)")
    conn.execute("CREATE INDEX ON usage_part (created_at)")
    start = dt.datetime(2024, 9, 1, tzinfo=dt.UTC)
    for month in range(20):
        lo = subtract_age(start, CalendarAge(months=-month))
        hi = subtract_age(start, CalendarAge(months=-(month + 1)))
        conn.execute(f"CREATE TABLE usage_part_{lo:%Y_%m} PARTITION OF usage_part"
                     f" FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')")
    if default:
        conn.execute("CREATE TABLE usage_part_default PARTITION OF usage_part DEFAULT")
    conn.execute("INSERT INTO usage_part (customer_id, endpoint, method, status_code, created_at)"
                 " SELECT 'cust', '/v1/x', 'GET', 200, d + interval '12 hours'"
                 "   FROM generate_series(%s::timestamptz, %s::timestamptz, interval '1 day') d",
                 (dt.datetime(2024, 9, 1, tzinfo=dt.UTC), dt.datetime(2026, 3, 31, tzinfo=dt.UTC)))
    return int(conn.execute("SELECT count(*) FROM usage_part").fetchone()[0])


@pytest.mark.parametrize("default", [False, True])
def test_expired_partitions_are_dropped_and_the_straddling_one_batch_deleted(
        aegis_db, tmp_path, default) -> None:
    conn = aegis_db
    total = _partitioned_usage(conn, default)
    now = dt.datetime(2026, 3, 20, 0, 0, tzinfo=dt.UTC)  # cutoff 2025-02-20: mid-month
    cutoff = subtract_age(now, CalendarAge(months=13))
    expired = int(conn.execute("SELECT count(*) FROM usage_part WHERE created_at < %s",
                               (cutoff,)).fetchone()[0])
    loaded = _loaded(tmp_path, {"usage": {"table": "usage_part", "column": "created_at",
                                          "max_age": "13mo", "archive": True}},
                     batch_size=7, min_batch_size=1)
    dry = run_cleanup(loaded, "primary", conn, CleanupOptions(now=now, dry_run=True))
    assert dry.policies[0].expired_rows == expired
    assert len(dry.policies[0].partitions_dropped) == 5  # 2024-09 .. 2025-01
    report = run_cleanup(loaded, "primary", conn, CleanupOptions(now=now))
    policy = report.policies[0]
    assert policy.status == "done", policy.error
    assert policy.method.startswith("partitions")
    assert sorted(policy.partitions_dropped) == [f"public.usage_part_{m}" for m in (
        "2024_09", "2024_10", "2024_11", "2024_12", "2025_01")]
    assert policy.deleted_rows == 19  # 2025-02-01 .. 2025-02-19 at noon, from the straddler
    assert policy.total_deleted == expired
    left = conn.execute("SELECT count(*), min(created_at) FROM usage_part").fetchone()
    assert left[0] == total - expired and left[1] >= cutoff
    gone = {r[0] for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relname LIKE 'usage\\_part\\_2024%%'").fetchall()}
    assert gone == set()
    rows = _archived(tmp_path / "archive")
    assert len(rows) == expired
    assert all(r["created_at"] < cutoff.isoformat() for r in rows)
    # Nothing expired is left: a second run has nothing to do.
    again = run_cleanup(loaded, "primary", conn, CleanupOptions(now=now))
    assert again.policies[0].total_deleted == 0


def test_a_run_interrupted_after_detach_is_finished_next_time(aegis_db, tmp_path) -> None:
    from aegisctl.retention.partitions import MARK

    conn = aegis_db
    _partitioned_usage(conn, default=False)
    conn.execute(f"COMMENT ON TABLE usage_part_2024_09 IS '{MARK}public.usage_part'")
    conn.execute("ALTER TABLE usage_part DETACH PARTITION usage_part_2024_09")
    loaded = _loaded(tmp_path, {"usage": {"table": "usage_part", "column": "created_at",
                                          "max_age": "13mo"}})
    report = run_cleanup(loaded, "primary", conn,
                         CleanupOptions(now=dt.datetime(2026, 3, 20, tzinfo=dt.UTC)))
    assert "public.usage_part_2024_09" in report.policies[0].partitions_dropped
    assert conn.execute("SELECT to_regclass('usage_part_2024_09')").fetchone()[0] is None


def test_archives_of_the_same_second_never_overwrite(tmp_path) -> None:
    from aegisctl.retention.archive import ArchiveWriter

    first = ArchiveWriter(tmp_path, "../policy", "t", "20260101T000000Z")
    first.write(['{"id": 1}'])
    assert first.close() == tmp_path / "_policy" / "t-20260101T000000Z.jsonl.gz"  # stays inside
    second = ArchiveWriter(tmp_path, "../policy", "t", "20260101T000000Z")
    second.write(['{"id": 2}'])
    assert second.close() == tmp_path / "_policy" / "t-20260101T000000Z-1.jsonl.gz"
    assert sorted(r["id"] for r in _archived(tmp_path)) == [1, 2]
    # A killed run's temporary is kept, renamed as incomplete.
    killed = ArchiveWriter(tmp_path, "_policy", "t", "20260101T000001Z")
    killed.write(['{"id": 3}'])
    assert [p.name for p in ArchiveWriter(tmp_path, "_policy", "t", "x").recover_leftovers()] \
        == ["t-20260101T000001Z.incomplete.jsonl.gz"]


def test_a_batch_whose_commit_fails_is_not_archived(aegis_db, tmp_path) -> None:
    """A deferred trigger fails at COMMIT: the batch's rows stay in the table and out of the
    archive (which holds exactly the committed batches)."""
    conn = aegis_db
    conn.autocommit = True
    conn.execute("CREATE TABLE events (id int PRIMARY KEY, at timestamptz NOT NULL,"
                 " poison bool NOT NULL DEFAULT false)")
    conn.execute("CREATE INDEX ON events (at)")
    conn.execute("CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS"
                 " $$BEGIN IF OLD.poison THEN RAISE EXCEPTION 'poisoned row %', OLD.id; END IF;"
                 " RETURN NULL; END$$")
    conn.execute("CREATE CONSTRAINT TRIGGER refuse AFTER DELETE ON events DEFERRABLE"
                 " INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_poison()")
    for n in range(1, 6):
        conn.execute("INSERT INTO events VALUES (%s, %s, %s)",
                     (n, NOW - dt.timedelta(days=100 - n), n == 3))
    conn.execute("INSERT INTO events VALUES (6, %s, false)", (NOW,))  # live: not emptied
    loaded = _loaded(tmp_path, {"events": {"table": "events", "column": "at", "max_age": "30d",
                                           "archive": True}}, batch_size=1, min_batch_size=1)
    report = run_cleanup(loaded, "primary", conn, CleanupOptions(now=NOW))
    policy = report.policies[0]
    assert policy.status == "failed" and "poisoned row 3" in (policy.error or "")
    assert not report.ok
    assert [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id")] == [3, 4, 5, 6]
    assert sorted(r["id"] for r in _archived(tmp_path / "archive")) == [1, 2]
    assert policy.archived_rows == 2


def test_a_stop_during_the_hnsw_rebuild_cancels_it_and_drops_its_leftover(aegis_db,
                                                                           tmp_path) -> None:
    import threading

    conn = aegis_db
    conn.autocommit = True
    conn.execute("INSERT INTO episodic_memory (event_type, summary, importance, embedding,"
                 " \"timestamp\")"
                 " SELECT 'task', 'e' || i, 'low', ARRAY(SELECT random() FROM"
                 " generate_series(1, 1536) WHERE i > 0)::vector,"
                 " now() - make_interval(days => CASE WHEN i % 2 = 0 THEN 400 ELSE 1 END)"
                 " FROM generate_series(1, 3000) i")
    side = psycopg.connect(conn.info.dsn, autocommit=True)
    stop = threading.Event()
    pid = conn.info.backend_pid

    def cancel_when_building() -> None:
        for _ in range(600):
            if side.execute("SELECT count(*) FROM pg_stat_progress_create_index WHERE pid = %s",
                            (pid,)).fetchone()[0]:
                stop.set()
                conn.cancel_safe()
                return
            time.sleep(0.01)

    def on_phase(phase: str) -> None:
        if phase == "maintenance":
            threading.Thread(target=cancel_when_building, daemon=True).start()

    loaded = _loaded(tmp_path, {"episodic": {**EPISODIC, "archive": False}})
    report = run_cleanup(loaded, "primary", conn, CleanupOptions(), should_stop=stop.is_set,
                         on_phase=on_phase)
    side.close()
    policy = report.policies[0]
    assert policy.total_deleted == 1500  # the deletes are committed
    assert policy.status == "interrupted" and report.interrupted
    assert policy.reindexed == [] and policy.vacuumed is False
    invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()[0]
    assert invalid == 0
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE"
                        " 'idx\\_episodic\\_embedding%%'").fetchone()[0] == 1
