"""The bucket is a trust boundary too: hostile remote manifests never write outside the
backup folder; uploads are independent and verified whatever checksum flavour the store
returns; boto errors are one documented line; remote prune deletes aged objects and skips
Object-Locked ones (in the dry run too). S3 is moto in server mode, a real HTTP endpoint."""

# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from backup_fixtures import (  # noqa: F401  (fixtures)
    backup_config,
    fill,
    s3_bucket,
    s3_endpoint,
)
from backup_trust_fixtures import aws_env, create, edit_manifest, listing


def _s3(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _remote(endpoint: str, bucket: str, **extra: Any) -> dict[str, Any]:
    return {"endpoint_url": endpoint, "bucket": bucket, "region": "us-east-1",
            "max_attempts": 1, **extra}


@pytest.mark.parametrize("hostile", ["../../planted.txt", "/ABS/planted.txt",
                                     "20200101T000000Z.dir/../../planted.txt"])
def test_download_of_a_hostile_remote_manifest_writes_nothing(cli, aegis_db, backup_config,
                                                             s3_endpoint, s3_bucket, tmp_path,
                                                             hostile) -> None:
    cfg = backup_config(remote=_remote(s3_endpoint, s3_bucket))
    m = create(cli, cfg)
    s3 = _s3(s3_endpoint)
    bad_id = "20200101T000000Z"
    path = hostile.replace("/ABS", str(tmp_path))
    manifest = {**m, "id": bad_id, "files": [{**m["files"][0], "path": path}]}
    for key in ("uploaded_now", "upload_error", "older_upload_errors"):
        manifest.pop(key, None)
    s3.put_object(Bucket=s3_bucket, Key=f"primary/{bad_id}/manifest.json",
                  Body=json.dumps(manifest).encode())
    s3.put_object(Bucket=s3_bucket, Key=f"primary/{bad_id}/{path}", Body=b"planted")
    result = cli("--config", str(cfg), "backup", "download", bad_id)
    assert result.exit_code == 1, result.output
    assert "manifest" in result.stderr and "Traceback" not in result.output
    planted = list(tmp_path.rglob("planted.txt")) + list(Path("/tmp").glob("planted.txt"))
    assert planted == []
    row = {b["id"]: b for b in listing(cli, cfg)["backups"]}[bad_id]
    assert row["state"] == "manifest unreadable" and row["location"] == "remote"


def test_multipart_upload_verifies_on_moto(cli, aegis_db, backup_config, s3_endpoint,
                                           s3_bucket) -> None:
    fill(aegis_db, rows=500)  # ~7 MB uncompressed: two 5 MB parts
    cfg = backup_config(remote=_remote(s3_endpoint, s3_bucket, multipart_threshold="5MiB",
                                       multipart_chunksize="5MiB"))
    m = create(cli, cfg, "--compress", "0")
    assert m["size"] > 5 * 1024 * 1024
    assert m["remote"]["status"] == "uploaded", m["remote"]
    head = _s3(s3_endpoint).head_object(Bucket=s3_bucket, Key=f"primary/{m['id']}/"
                                        f"{m['files'][0]['path']}")
    assert head["ContentLength"] == m["size"]


def test_uploads_are_independent(cli, aegis_db, backup_config, s3_endpoint, s3_bucket,
                                 tmp_path) -> None:
    cfg = backup_config(remote=_remote(s3_endpoint, s3_bucket))
    offline = backup_config(name="offline.yaml",
                            remote=_remote("http://127.0.0.1:9", s3_bucket,
                                           connect_timeout="1s"))
    folder = tmp_path / "backups" / "primary"
    older = cli("--config", str(offline), "backup", "create", "--format", "json")
    assert older.exit_code == 1
    older_id = json.loads(older.stdout)["id"]
    # The older pending backup is damaged since: its upload will fail, every time.
    dump = folder / f"{older_id}.dump"
    damaged = bytearray(dump.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    dump.write_bytes(bytes(damaged))
    newer = cli("--config", str(cfg), "backup", "create", "--format", "json")
    assert newer.exit_code == 0, newer.output  # its own upload worked
    made = json.loads(newer.stdout)
    assert made["remote"]["status"] == "uploaded" and made["upload_error"] is None
    assert older_id in made["older_upload_errors"]
    assert older_id in newer.stderr
    second = cli("--config", str(offline), "backup", "create", "--no-upload",
                 "--format", "json")
    second_id = json.loads(second.stdout)["id"]
    pending = cli("--config", str(cfg), "backup", "upload", "--pending", "--format", "json")
    assert pending.exit_code == 1
    report = json.loads(pending.stdout)
    assert report["uploaded"] == [second_id]  # tried although the older one failed
    assert list(report["failed"]) == [older_id]
    assert older_id in pending.stderr and "no longer matches" in pending.stderr


def test_boto_errors_are_one_documented_line(cli, aegis_db, backup_config, s3_endpoint,
                                             s3_bucket, monkeypatch, tmp_path) -> None:
    cfg = backup_config(remote=_remote(s3_endpoint, f"{s3_bucket}-missing"))
    create_missing = cli("--config", str(cfg), "backup", "create")
    assert create_missing.exit_code == 2
    assert "does not exist" in create_missing.stderr and "unexpected" not in create_missing.stderr
    upload = cli("--config", str(cfg), "backup", "upload", "--pending")
    assert upload.exit_code == 2
    assert "bucket" in upload.stderr and "unexpected" not in upload.stderr
    listed = cli("--config", str(cfg), "backup", "list", "--problems")
    assert listed.exit_code == 1 and "does not exist" in listed.stderr
    # No credentials at all: a configuration error.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                 "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    good = backup_config(name="nocreds.yaml", remote=_remote(s3_endpoint, s3_bucket))
    for command in (["upload", "--pending"], ["download", "20200101T000000Z"],
                    ["prune", "--remote", "--dry-run"]):
        result = cli("--config", str(good), "backup", *command)
        assert result.exit_code == 2, (command, result.output)
        assert "credentials" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def _age_remote(s3: Any, bucket: str, backup_id: str, when: str) -> None:
    key = f"primary/{backup_id}/manifest.json"
    data = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data["finished_at"] = when
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(data).encode())


def test_remote_prune_deletes_aged_objects(cli, aegis_db, backup_config, s3_endpoint,
                                           s3_bucket, tmp_path) -> None:
    cfg = backup_config(remote=_remote(s3_endpoint, s3_bucket,
                                       retention={"keep_days": 7, "min_keep": 1}))
    ids = [create(cli, cfg)["id"] for _ in range(3)]
    s3 = _s3(s3_endpoint)
    for n, backup_id in enumerate(ids[:2]):
        _age_remote(s3, s3_bucket, backup_id, f"2020-01-0{n + 1}T00:00:00Z")
        edit_manifest(tmp_path / "backups" / "primary" / f"{backup_id}.manifest.json",
                      finished_at=f"2020-01-0{n + 1}T00:00:00Z")
    dry = cli("--config", str(cfg), "backup", "prune", "--remote", "--dry-run",
              "--format", "json")
    assert dry.exit_code == 0, dry.output
    assert set(json.loads(dry.stdout)["delete"]) == set(ids[:2])
    done = cli("--config", str(cfg), "backup", "prune", "--remote", "--yes", "--format", "json")
    assert done.exit_code == 0, done.output
    assert sorted(json.loads(done.stdout)["deleted"]) == sorted(ids[:2])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    # By folder: ids made within one second differ only by a suffix (…Z and …Z-1).
    assert not [k for k in keys if f"/{ids[0]}/" in k or f"/{ids[1]}/" in k]
    assert f"primary/{ids[2]}/manifest.json" in keys
    rows = {b["id"]: b for b in listing(cli, cfg)["backups"]}
    assert rows[ids[0]]["location"] == "local" and rows[ids[0]]["uploaded"] == "no"


def test_remote_prune_skips_object_locked_backups(cli, aegis_db, backup_config, s3_endpoint,
                                                  monkeypatch) -> None:
    aws_env(monkeypatch)
    s3 = _s3(s3_endpoint)
    bucket = f"aegis-lock-{random.randrange(1 << 30):x}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    cfg = backup_config(remote=_remote(s3_endpoint, bucket, object_lock_days=3,
                                       retention={"keep_days": 7, "min_keep": 1}))
    ids = [create(cli, cfg)["id"] for _ in range(2)]
    _age_remote(s3, bucket, ids[0], "2020-01-01T00:00:00Z")
    dry = cli("--config", str(cfg), "backup", "prune", "--remote", "--dry-run",
              "--format", "json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert plan["delete"] == {}
    assert "Object Lock" in plan["keep"][ids[0]][0]
    done = cli("--config", str(cfg), "backup", "prune", "--remote", "--yes", "--format", "json")
    assert done.exit_code == 0 and json.loads(done.stdout)["deleted"] == []
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"


def test_remote_prune_never_acts_on_a_hostile_manifest(cli, aegis_db, backup_config,
                                                       s3_endpoint, s3_bucket) -> None:
    cfg = backup_config(remote=_remote(s3_endpoint, s3_bucket,
                                       retention={"keep_days": 1, "min_keep": 1}))
    m = create(cli, cfg)
    s3 = _s3(s3_endpoint)
    bad_id = "20200101T000000Z"
    manifest = {k: v for k, v in m.items()
                if k not in ("uploaded_now", "upload_error", "older_upload_errors")}
    manifest.update(id=bad_id, finished_at="2020-01-01T00:00:00Z",
                    files=[{**m["files"][0], "path": "../other-target/x.dump"}])
    s3.put_object(Bucket=s3_bucket, Key=f"primary/{bad_id}/manifest.json",
                  Body=json.dumps(manifest).encode())
    s3.put_object(Bucket=s3_bucket, Key="other-target/x.dump", Body=b"someone else's")
    dry = cli("--config", str(cfg), "backup", "prune", "--remote", "--dry-run",
              "--format", "json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert bad_id in plan["untouched"] and plan["delete"] == {}
    assert cli("--config", str(cfg), "backup", "prune", "--remote", "--yes").exit_code == 0
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert "other-target/x.dump" in keys and f"primary/{bad_id}/manifest.json" in keys
