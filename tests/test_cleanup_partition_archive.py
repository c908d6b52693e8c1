"""A cleanup run killed between detaching a partition and dropping it does not archive the
partition twice: the next run finds the finished archive and only drops the partition, or
finds a half-written one and writes it again in full. Each row is in the archives exactly
once, whatever was left behind."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from backup_fixtures import s3_bucket, s3_endpoint  # noqa: F401  (fixtures)
from psycopg import sql

from aegisctl.config import load_config
from aegisctl.retention.partitions import mark_comment
from aegisctl.retention.service import CleanupOptions, run_cleanup

MONTHS = 8


def _partitioned(conn: psycopg.Connection[Any]) -> dt.datetime:
    """events_part: monthly range partitions from MONTHS months ago to next month, one row
    every 12 hours; returns the first month's start."""
    conn.autocommit = True
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute("CREATE TABLE events_part (id bigint GENERATED ALWAYS AS IDENTITY,"
                 " at timestamptz NOT NULL, note text) PARTITION BY RANGE (at)")
    conn.execute("CREATE INDEX ON events_part (at)")
    first = conn.execute("SELECT date_trunc('month', now()) - make_interval(months => %s)",
                         (MONTHS,)).fetchone()[0]
    for month in range(MONTHS + 2):
        statement = conn.execute(
            "SELECT format('CREATE TABLE %%I PARTITION OF events_part FOR VALUES FROM (%%L)"
            " TO (%%L)', 'events_part_' || to_char(lo, 'YYYY_MM'), lo, lo + interval '1 month')"
            " FROM (SELECT %s::timestamptz + make_interval(months => %s) AS lo) m",
            (first, month)).fetchone()[0]
        conn.execute(statement)
    conn.execute("INSERT INTO events_part (at, note) SELECT t, 'n' || t"
                 "  FROM generate_series(%s::timestamptz, now(), interval '12 hours') t",
                 (first,))
    return first


def _config(tmp_path: Path, dsn: str, remote: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "aegisctl.yaml"
    backup: dict[str, Any] = {"directory": str(tmp_path / "backups")}
    if remote:
        backup["remote"] = remote
    path.write_text(yaml.safe_dump({
        "targets": {"primary": {"dsn": dsn}},
        "connection": {"retry": {"attempts": 1}},
        "backup": backup,
        "maintenance": {"lock_timeout": "0.2s", "lock_attempts": 50, "lock_max_delay": "0.5s"},
        "cleanup": {"archive_dir": str(tmp_path / "archive"), "policies": {
            "events": {"table": "events_part", "column": "at", "max_age": "90d",
                       "archive": True}}}}))
    return path


def _archived_ids(folder: Path) -> Counter[int]:
    """Every row id in every archive file, finished, incomplete or temporary."""
    ids: Counter[int] = Counter()
    for path in folder.rglob("*.jsonl.gz"):
        with gzip.open(path, "rt") as handle:
            ids.update(json.loads(line)["id"] for line in handle if line.strip())
    return ids


def _expired_ids(conn: psycopg.Connection[Any]) -> set[int]:
    return {r[0] for r in conn.execute(
        "SELECT id FROM events_part WHERE at < now() - interval '90 days'").fetchall()}


def _superuser(conn: psycopg.Connection[Any]) -> bool:
    return conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                        ).fetchone() == (True,)


def test_killed_after_archiving_before_drop(aegis_db, aegis_dsn, tmp_path) -> None:
    """A real run, SIGKILLed while its DROP of the first expired partition waits (an event
    trigger makes DROP TABLE wait for an advisory lock the test holds): its archive is
    finished, the partition detached but not dropped. The next run drops it without
    archiving it again."""
    conn = aegis_db
    conn.autocommit = True
    if not _superuser(conn):
        pytest.skip("an event trigger needs a superuser")
    first = _partitioned(conn)
    expired = _expired_ids(conn)
    oldest = f"events_part_{first:%Y_%m}"
    conn.execute("CREATE FUNCTION hold_drop() RETURNS event_trigger LANGUAGE plpgsql AS"
                 " $$BEGIN PERFORM pg_advisory_xact_lock(424242); END$$")
    conn.execute("CREATE EVENT TRIGGER hold_drop ON ddl_command_start"
                 " WHEN TAG IN ('DROP TABLE') EXECUTE FUNCTION hold_drop()")
    config = _config(tmp_path, aegis_dsn)
    argv = [sys.executable, "-m", "aegisctl", "--config", str(config), "cleanup", "run",
            "--yes", "--format", "json"]
    env = {**os.environ, "NO_COLOR": "1"}
    archive = tmp_path / "archive" / "primary" / "events"
    with psycopg.connect(aegis_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(424242)")
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            detached = conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = %s::regclass)",
                (oldest,)).fetchone()[0]
            if detached and list(archive.glob(f"{oldest}-*.partition.jsonl.gz")):
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            raise AssertionError("the run never got to the DROP")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        # Its server backend, waiting in the DROP, notices the client is gone at its next lock
        # timeout; release the lock only then, or the orphaned DROP would still go through.
        deadline = time.monotonic() + 30
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name"
                           " LIKE 'aegisctl cleanup%%'").fetchone()[0]:
            assert time.monotonic() < deadline, "the killed run's backend stayed"
            time.sleep(0.1)
    conn.execute("DROP EVENT TRIGGER hold_drop")
    assert conn.execute("SELECT to_regclass(%s)", (oldest,)).fetchone()[0] is not None
    (finished,) = archive.glob(f"{oldest}-*.partition.jsonl.gz")

    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    policy = json.loads(done.stdout)["policies"][0]
    assert f"public.{oldest}" in policy["partitions_dropped"]
    reused = [a for a in policy["partition_archives"] if a["partition"] == f"public.{oldest}"]
    assert reused == [{"partition": f"public.{oldest}", "archive": str(finished),
                       "rows": reused[0]["rows"], "written_by": "an interrupted run",
                       "uploaded": None}]
    assert conn.execute("SELECT to_regclass(%s)", (oldest,)).fetchone()[0] is None
    ids = _archived_ids(tmp_path / "archive")
    assert set(ids) == expired
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]
    assert not _expired_ids(conn)


def test_killed_while_writing_the_archive(aegis_db, aegis_dsn, tmp_path) -> None:
    """The state a kill during the archive's writing leaves: the partition marked and
    detached, a half-written temporary archive. The next run discards it and writes the whole
    partition once (and does not keep the fragment as an 'incomplete' archive)."""
    conn = aegis_db
    first = _partitioned(conn)
    expired = _expired_ids(conn)
    oldest = f"events_part_{first:%Y_%m}"
    run = "20260101T000000Z"
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
        sql.Identifier(oldest), sql.Literal(mark_comment(_parent(conn), run))))
    conn.execute(f"ALTER TABLE events_part DETACH PARTITION {oldest}")
    in_partition = {r[0] for r in conn.execute(f"SELECT id FROM {oldest}").fetchall()}
    folder = tmp_path / "archive" / "primary" / "events"
    folder.mkdir(parents=True)
    some = sorted(in_partition)[:5]
    (folder / f".tmp-{oldest}-{run}.partition.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps({"id": i}) + "\n" for i in some).encode())[:-7])

    loaded = load_config(str(_config(tmp_path, aegis_dsn)), env={})
    report = run_cleanup(loaded, "primary", conn, CleanupOptions())
    policy = report.policies[0]
    assert policy.status == "done", policy.error
    (entry,) = [a for a in policy.partition_archives if a.partition == f"public.{oldest}"]
    assert entry.written and entry.rows == len(in_partition)
    assert Path(entry.archive).name == f"{oldest}-{run}.partition.jsonl.gz"
    assert not list(folder.glob(".tmp-*")) and not list(folder.glob("*.incomplete.*"))
    ids = _archived_ids(tmp_path / "archive")
    assert set(ids) == expired and max(ids.values()) == 1
    assert policy.archived_rows == len(expired)

    # A third run has nothing to do and writes nothing.
    files = sorted(p.name for p in folder.iterdir())
    again = run_cleanup(loaded, "primary", conn, CleanupOptions())
    assert again.policies[0].total_deleted == 0
    assert sorted(p.name for p in folder.iterdir()) == files


def test_an_interrupted_runs_partition_archive_is_uploaded_by_the_next(
        aegis_db, aegis_dsn, tmp_path, s3_endpoint, s3_bucket,  # noqa: F811
        capsys) -> None:
    """Killed after finishing the archive but before the DROP (and so before the upload): the
    next run uploads that archive with the ones it writes itself."""
    import boto3

    conn = aegis_db
    first = _partitioned(conn)
    oldest = f"events_part_{first:%Y_%m}"
    run = "20260101T000000Z"
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
        sql.Identifier(oldest), sql.Literal(mark_comment(_parent(conn), run))))
    conn.execute(f"ALTER TABLE events_part DETACH PARTITION {oldest}")
    folder = tmp_path / "archive" / "primary" / "events"
    folder.mkdir(parents=True)
    finished = folder / f"{oldest}-{run}.partition.jsonl.gz"
    rows = [r[0] for r in conn.execute(f"SELECT to_jsonb(t)::text FROM {oldest} t")]
    finished.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))

    remote = {"endpoint_url": s3_endpoint, "bucket": s3_bucket, "region": "us-east-1",
              "prefix": "prod/"}
    loaded = load_config(str(_config(tmp_path, aegis_dsn, remote)), env={})
    report = run_cleanup(loaded, "primary", conn, CleanupOptions())
    policy = report.policies[0]
    assert policy.status == "done", policy.error
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    assert len(policy.partition_archives) >= 2
    for entry in policy.partition_archives:
        assert entry.uploaded == f"prod/primary/cleanup-archive/events/{Path(entry.archive).name}"
        body = s3.get_object(Bucket=s3_bucket, Key=entry.uploaded)["Body"].read()
        assert body == Path(entry.archive).read_bytes()
    (reused,) = [a for a in policy.partition_archives if not a.written]
    assert reused.archive == str(finished) and reused.rows == len(rows)
    from aegisctl import output

    output.render(report, "table")
    shown = " ".join(capsys.readouterr().out.split())
    assert f"partition public.{oldest}: its archive {finished} was completed by an " \
        "interrupted run; not written again (uploaded: prod/" in shown
    ids = _archived_ids(tmp_path / "archive")
    assert max(ids.values()) == 1


def _parent(conn: psycopg.Connection[Any]) -> Any:
    from aegisctl.maintenance.catalog import Relation

    oid = conn.execute("SELECT 'events_part'::regclass::oid").fetchone()[0]
    return Relation(int(oid), "public", "events_part", "p", 0)


def test_a_half_done_concurrent_detach_is_finished_and_dropped_in_one_run(
        aegis_db, aegis_dsn, tmp_path) -> None:
    """A run killed during DETACH ... CONCURRENTLY leaves the partition 'detach pending':
    the next run finalizes the detach and then drops (and archives once) that partition in the
    same run, not one run later."""
    import threading

    conn = aegis_db
    first = _partitioned(conn)
    expired = _expired_ids(conn)
    oldest = f"events_part_{first:%Y_%m}"
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
        sql.Identifier(oldest), sql.Literal(mark_comment(_parent(conn), "20260101T000000Z"))))
    with psycopg.connect(aegis_dsn) as reader, \
            psycopg.connect(aegis_dsn, autocommit=True) as detacher:
        reader.execute("SELECT count(*) FROM events_part")  # holds the detach's second phase
        pid = detacher.info.backend_pid
        failed: list[BaseException] = []

        def detach() -> None:
            try:
                detacher.execute(f"ALTER TABLE events_part DETACH PARTITION {oldest}"
                                 " CONCURRENTLY")
            except psycopg.Error as exc:
                failed.append(exc)

        thread = threading.Thread(target=detach)
        thread.start()
        deadline = time.monotonic() + 30
        while not conn.execute("SELECT inhdetachpending FROM pg_inherits"
                               " WHERE inhrelid = %s::regclass", (oldest,)).fetchone()[0]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        conn.execute("SELECT pg_cancel_backend(%s)", (pid,))
        thread.join(30)
        assert failed and isinstance(failed[0], psycopg.errors.QueryCanceled)
        reader.rollback()

    loaded = load_config(str(_config(tmp_path, aegis_dsn)), env={})
    report = run_cleanup(loaded, "primary", conn, CleanupOptions())
    policy = report.policies[0]
    assert policy.status == "done", policy.error
    assert f"public.{oldest}" in policy.partitions_dropped
    assert conn.execute("SELECT to_regclass(%s)", (oldest,)).fetchone()[0] is None
    ids = _archived_ids(tmp_path / "archive")
    assert set(ids) == expired and max(ids.values()) == 1
    assert not _expired_ids(conn)
