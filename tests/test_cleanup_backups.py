"""Cleanup next to backups: the shipped policies are valid on the Aegis schema, archives go to
the backup remote, and the erasure horizon follows the backups and their retention."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path
from typing import Any

import boto3
import yaml
from backup_fixtures import (  # noqa: F401  (fixtures)
    s3_bucket,
    s3_endpoint,
)

EXAMPLE = Path(__file__).parent.parent / "config.example.yaml"


def test_shipped_policies_are_valid_on_the_aegis_schema(cli, aegis_db, aegis_dsn,
                                                        write_config, tmp_path) -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    path = write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                         "backup": {"directory": str(tmp_path / "backups")},
                         "cleanup": example["cleanup"]})
    result = cli("--config", str(path), "cleanup", "run", "--dry-run", "-f", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [p["policy"] for p in report["policies"]] == [
        "container_metrics", "api_usage_events", "episodic_memory", "infra_anomaly_alerts",
        "claude_sessions"]
    assert all(p["expired_rows"] == 0 for p in report["policies"])
    text = cli("--config", str(path), "cleanup", "run", "--dry-run")
    assert "nothing deleted" in text.stdout and "episodic_memory" in text.stdout


def _ages(conn: Any) -> None:
    conn.autocommit = True
    conn.execute("INSERT INTO container_metrics (container_name, \"timestamp\")"
                 " SELECT 'c', now() - make_interval(days => i) + interval '12 hours'"
                 " FROM generate_series(1, 60) i")


def test_archive_uploaded_and_horizon_follows_backup_retention(
        cli, aegis_db, aegis_dsn, write_config, tmp_path,
        s3_endpoint, s3_bucket) -> None:  # noqa: F811  (fixtures)
    _ages(aegis_db)
    remote = {"endpoint_url": s3_endpoint, "bucket": s3_bucket, "region": "us-east-1",
              "prefix": "prod/", "retention": {"keep_days": 90, "min_keep": 3}}
    config: dict[str, Any] = {
        "targets": {"primary": {"dsn": aegis_dsn}},
        "backup": {"directory": str(tmp_path / "backups"), "remote": remote,
                   "retention": {"keep_days": 14, "min_keep": 3}},
        "cleanup": {"policies": {"metrics": {"table": "container_metrics",
                                             "column": "timestamp", "max_age": "30d",
                                             "archive": True}}}}
    path = write_config(config)
    created = cli("--config", str(path), "backup", "create", "-f", "json")
    assert created.exit_code == 0, created.output
    backup = json.loads(created.stdout)
    result = cli("--config", str(path), "cleanup", "run", "--yes", "-f", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    policy = report["policies"][0]
    assert policy["deleted_rows"] == 30
    # The archive: in the backup folder by default, and on the remote.
    archive = Path(policy["archive"])
    assert archive.parent == tmp_path / "backups" / "primary" / "cleanup-archive" / "metrics"
    with gzip.open(archive, "rt") as handle:
        assert len([json.loads(line) for line in handle]) == 30
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    assert policy["uploaded"] == f"prod/primary/cleanup-archive/metrics/{archive.name}"
    body = s3.get_object(Bucket=s3_bucket, Key=policy["uploaded"])["Body"].read()
    assert body == archive.read_bytes()
    # backup list still sees exactly one remote backup (the archive is not mistaken for one).
    listed = json.loads(cli("--config", str(path), "backup", "list", "-f", "json").stdout)
    assert [b["id"] for b in listed["backups"]] == [backup["id"]]
    # The horizon: the backup's start + 90 days (remote retention beats local 14 days).
    horizon = report["erasure_horizon"]
    started = dt.datetime.fromisoformat(backup["started_at"].replace("Z", "+00:00"))
    assert dt.datetime.fromisoformat(horizon["date"]) == started + dt.timedelta(days=90)
    assert "remote" in horizon["reason"] and backup["id"] in horizon["reason"]
    assert "from backups by" in cli("--config", str(path), "cleanup", "run",
                                    "--dry-run").stdout
    # A pinned backup holds the rows: no date.
    assert cli("--config", str(path), "backup", "keep", backup["id"]).exit_code == 0
    report = json.loads(cli("--config", str(path), "cleanup", "run", "--yes", "-f",
                            "json").stdout)
    assert report["erasure_horizon"]["date"] is None
    assert "pinned" in report["erasure_horizon"]["reason"]


def test_local_only_horizon(cli, aegis_db, aegis_dsn, write_config, tmp_path) -> None:
    _ages(aegis_db)
    path = write_config({
        "targets": {"primary": {"dsn": aegis_dsn}},
        "backup": {"directory": str(tmp_path / "backups"),
                   "retention": {"keep_days": 7, "min_keep": 3, "keep_monthly": 2}},
        "cleanup": {"policies": {"metrics": {"table": "container_metrics",
                                             "column": "timestamp", "max_age": "30d"}}}})
    backup = json.loads(cli("--config", str(path), "backup", "create", "-f", "json").stdout)
    report = json.loads(cli("--config", str(path), "cleanup", "run", "--yes", "-f",
                            "json").stdout)
    started = dt.datetime.fromisoformat(backup["started_at"].replace("Z", "+00:00"))
    from aegisctl.units import CalendarAge, subtract_age

    expected = subtract_age(started.astimezone(dt.UTC), CalendarAge(months=-2))
    assert dt.datetime.fromisoformat(report["erasure_horizon"]["date"]) == expected
