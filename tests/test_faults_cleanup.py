# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)
"""Fault suite, cleanup: a full archive folder never costs a row (issue 18, defect 1).

The archive folder is on a real small filesystem (tests/fault_fixtures.py): a batch is deleted
only once its rows are in the archive, fsynced and read back; the write that fails stops the run
with one line naming the folder and its free space; after the user makes room, the next run
finishes and every expired row is archived exactly once.
"""

from __future__ import annotations

import gzip
import json
import signal
from pathlib import Path
from typing import Any

import psycopg
import yaml
from backup_fixtures import s3_bucket, s3_endpoint  # noqa: F401  (fixtures)
from conftest import dsn_of
from fault_fixtures import SmallFs, aegisctl_env, run_aegisctl, start_paused

POLICY = {"table": "container_metrics", "column": "timestamp", "max_age": "30d",
          "archive": True}


def _fill(conn: psycopg.Connection[Any], expired: int, fresh: int) -> None:
    """Rows with random measurements (they compress poorly, like real metrics)."""
    conn.autocommit = True
    conn.execute(
        "INSERT INTO container_metrics (container_name, cpu_percent, mem_usage_mb, mem_percent,"
        " net_io_mb, block_io_mb, \"timestamp\")"
        " SELECT 'c' || (i %% 7), random() * 100, random() * 4096, random() * 100,"
        "        random() * 1e6, random() * 1e6,"
        "        CASE WHEN i <= %s THEN now() - interval '40 days' - make_interval(secs => i)"
        "             ELSE now() - make_interval(secs => i) END"
        "   FROM generate_series(1, %s) i", (expired, expired + fresh))


def _ids(conn: psycopg.Connection[Any]) -> set[int]:
    return {r[0] for r in conn.execute("SELECT id FROM container_metrics")}


def _archived_ids(folder: Path) -> list[int]:
    """Every row in the archives under their final names; each must read back whole
    (gzip integrity: a cut member raises here)."""
    ids: list[int] = []
    for path in sorted(folder.rglob("*.jsonl.gz")):
        assert not path.name.startswith(".tmp-"), path
        with gzip.open(path, "rt") as handle:
            ids += [json.loads(line)["id"] for line in handle if line.strip()]
    return ids


def test_a_full_archive_folder_stops_the_run_and_loses_no_row(aegis_db, tmp_path,
                                                              small_fs: SmallFs) -> None:
    conn = aegis_db
    _fill(conn, expired=20000, fresh=500)
    before = _ids(conn)
    expired = {r[0] for r in conn.execute(
        "SELECT id FROM container_metrics WHERE \"timestamp\" < now() - interval '30 days'")}
    archive_dir = small_fs.path / "archive"
    config = tmp_path / "aegisctl.yaml"
    config.write_text(yaml.safe_dump({
        "targets": {"primary": {"dsn": dsn_of(conn)}},
        "connection": {"retry": {"attempts": 1}},
        "backup": {"directory": str(tmp_path / "backups")},
        "cleanup": {"archive_dir": str(archive_dir), "batch_size": 1000,
                    "min_batch_size": 1000, "vacuum": False,
                    "policies": {"metrics": POLICY, "metrics_again": POLICY}}}))
    small_fs.fill(leave=150_000)  # room for a few batches, not for 20k rows
    proc = run_aegisctl("--config", str(config), "cleanup", "run", "--yes", "-f", "json",
                        env=aegisctl_env(), preexec=small_fs.preexec)
    assert proc.returncode == 1, proc.stderr
    folder = archive_dir / "primary" / "metrics"
    assert proc.stderr.startswith(f"aegisctl: error: cannot write the cleanup archive in "
                                  f"{folder} ("), proc.stderr
    assert " free)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    report = json.loads(proc.stdout)
    first, second = report["policies"]
    assert first["status"] == "failed" and second["status"] == "skipped"  # the run stopped

    deleted = before - _ids(conn)
    assert deleted, "some batches fit: they must have been deleted"
    assert deleted < expired
    archived = _archived_ids(archive_dir)
    assert sorted(archived) == sorted(deleted)  # every deleted row, exactly once
    assert first["deleted_rows"] == first["archived_rows"] == len(deleted)

    small_fs.make_room()
    proc = run_aegisctl("--config", str(config), "cleanup", "run", "--yes", "-f", "json",
                        env=aegisctl_env(), preexec=small_fs.preexec)
    assert proc.returncode == 0, proc.stderr
    assert _ids(conn) == before - expired
    archived = _archived_ids(archive_dir)
    assert sorted(archived) == sorted(expired)


def test_archives_of_interrupted_runs_reach_the_remote(aegis_db, tmp_path, s3_endpoint,
                                                       s3_bucket) -> None:
    """A run killed mid-batch leaves an archive (kept as incomplete by the next run) that
    never reached S3 before; every later run uploads every archive not yet uploaded, and
    `check` flags them until then (issue 18, defect 5)."""
    import boto3

    conn = aegis_db
    _fill(conn, expired=3000, fresh=100)
    config = tmp_path / "aegisctl.yaml"
    config.write_text(yaml.safe_dump({
        "targets": {"primary": {"dsn": dsn_of(conn)}},
        "connection": {"retry": {"attempts": 1}},
        "backup": {"directory": str(tmp_path / "backups"),
                   "remote": {"endpoint_url": s3_endpoint, "bucket": s3_bucket,
                              "region": "us-east-1"}},
        "cleanup": {"archive_dir": str(tmp_path / "archive"), "batch_size": 500,
                    "min_batch_size": 500, "vacuum": False, "policies": {"metrics": POLICY}}}))
    args = ("--config", str(config))
    paused = start_paused("cleanup.batch-archived", *args, "cleanup", "run", "--yes",
                          tmp_path=tmp_path)
    paused.kill(signal.SIGKILL)  # its first batch archived, not committed
    pending = run_aegisctl(*args, "check", "--only", "cleanup_archives_pending")
    assert pending.returncode == 1, pending.stdout  # WARNING: one archive not uploaded
    assert "1 cleanup archive(s) not yet uploaded" in pending.stdout

    done = run_aegisctl(*args, "cleanup", "run", "--yes", "-f", "json")
    assert done.returncode == 0, done.stderr
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"])
    local = sorted(p.name for p in (tmp_path / "archive").rglob("*.jsonl.gz"))
    assert len(local) == 2 and any(".incomplete." in name for name in local)
    assert keys == sorted(f"primary/cleanup-archive/metrics/{name}" for name in local)
    assert sorted(json.loads(done.stdout)["uploaded_archives"]) == keys
    assert run_aegisctl(*args, "check", "--only", "cleanup_archives_pending").returncode == 0
    again = run_aegisctl(*args, "cleanup", "run", "--yes", "-f", "json")
    assert json.loads(again.stdout)["uploaded_archives"] == []  # each archive uploaded once


def test_the_server_gone_mid_batch_is_one_line_and_the_archive_stays_exact(
        aegis_db, tmp_path) -> None:
    """The session is terminated (as a server shutdown does) after a batch was archived, before
    it committed: the batch is cut off the archive again, one line says what happened (no
    driver noise such as "error ignored in rollback"), and the archive holds exactly the rows
    that are gone."""
    conn = aegis_db
    _fill(conn, expired=3000, fresh=100)
    before = _ids(conn)
    config = tmp_path / "aegisctl.yaml"
    config.write_text(yaml.safe_dump({
        "targets": {"primary": {"dsn": dsn_of(conn)}},
        "connection": {"retry": {"attempts": 1}},
        "backup": {"directory": str(tmp_path / "backups")},
        "cleanup": {"archive_dir": str(tmp_path / "archive"), "batch_size": 500,
                    "min_batch_size": 500, "vacuum": False, "policies": {"metrics": POLICY}}}))
    paused = start_paused("cleanup.batch-archived", "--config", str(config), "cleanup", "run",
                          "--yes", tmp_path=tmp_path)
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                 " WHERE application_name LIKE 'aegisctl cleanup%'")
    _out, err = paused.resume()
    assert paused.proc.returncode != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("aegisctl: error: "), err
    assert "terminating connection due to administrator command" in lines[0]
    assert "None" not in lines[0]
    deleted = before - _ids(conn)
    assert sorted(_archived_ids(tmp_path / "archive")) == sorted(deleted)
