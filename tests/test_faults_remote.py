"""Remote copies under faults (issue 18): the S3 endpoint (moto's server, as its own process)
stopped, restarted empty, and an object overwritten with garbage of the same size. Nothing
untrue is said about the remote copy, and what is gone is sent again."""
# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)

from __future__ import annotations

import datetime as dt
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from backup_fixtures import backup_config, fill  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


class MotoProcess:
    """moto's S3 server as a child process on a fixed port: stop it, start it again empty."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(30)
            self.proc = None

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")


@pytest.fixture
def moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoProcess]:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = MotoProcess(tmp_path / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _json(result: Any, code: int = 0) -> Any:
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def test_a_vanished_or_rotten_remote_copy_is_reported_and_sent_again(
        cli: Any, aegis_db: Any, backup_config: Callable[..., Path], moto: MotoProcess,
        tmp_path: Path) -> None:
    fill(aegis_db, rows=5)
    bucket = f"aegis-{random.randrange(1 << 30):x}"
    moto.client().create_bucket(Bucket=bucket)
    cfg = backup_config(remote={"endpoint_url": moto.url, "bucket": bucket, "prefix": "prod/",
                                "region": "us-east-1", "max_attempts": 1,
                                "connect_timeout": "2s"})
    c = ("--config", str(cfg))
    made = _json(cli(*c, "backup", "create", "--format", "json"))
    backup_id = made["id"]
    assert made["remote"]["status"] == "uploaded"
    checked = _json(cli(*c, "backup", "verify", "--remote", "--latest", "--format", "json"))
    assert checked["ok"] and checked["status"] == "ok" and checked["objects"] >= 2

    def row() -> dict[str, Any]:
        listed = cli(*c, "backup", "list", "--format", "json")
        rows = [b for b in json.loads(listed.stdout)["backups"] if b["id"] == backup_id]
        return rows[0]

    # The store stopped: the remote state is unknown, never "no"; verify records nothing.
    moto.stop()
    assert row()["uploaded"] == "unknown"
    down = cli(*c, "backup", "verify", "--remote", backup_id)
    assert down.exit_code == 3, down.output
    manifest = tmp_path / "backups" / "primary" / f"{backup_id}.manifest.json"
    assert json.loads(manifest.read_text())["remote_check"]["status"] == "ok"

    # Restarted empty (the bucket recreated): list says the copy is missing (exit 1 with
    # --problems), and upload --pending sends it again.
    moto.start()
    moto.client().create_bucket(Bucket=bucket)
    assert row()["uploaded"] == "missing"
    problems = cli(*c, "backup", "list", "--problems")
    assert problems.exit_code == 1 and f"{backup_id}: remote copy missing" in problems.output
    sent = _json(cli(*c, "backup", "upload", "--pending", "--format", "json"))
    assert sent["uploaded"] == [backup_id]
    assert row()["uploaded"] == "uploaded"
    assert cli(*c, "backup", "list", "--problems").exit_code == 0

    # One object overwritten with garbage of the same size: list cannot see it (same size),
    # verify --remote does; check then reports it; upload --pending repairs it.
    s3 = moto.client()
    key = next(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]
               if o["Key"].endswith(".dump"))
    size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(random.randrange(256) for _ in range(size)))
    rotten = _json(cli(*c, "backup", "verify", "--remote", backup_id, "--format", "json"),
                   code=1)
    assert rotten["status"] == "damaged" and rotten["requeued"], rotten
    assert row()["uploaded"] == "pending"
    problems = cli(*c, "backup", "list", "--problems")
    assert problems.exit_code == 1 and "remote copy damaged" in problems.output
    health = _json(cli(*c, "check", "--only", "backup_remote_copies", "--format", "json"),
                   code=2)
    assert health["targets"][0]["checks"][-1]["status"] == "CRITICAL"
    assert _json(cli(*c, "backup", "upload", "--pending", "--format", "json"))["uploaded"] \
        == [backup_id]
    deep = _json(cli(*c, "backup", "verify", "--remote", backup_id, "--deep", "--format",
                     "json"))
    assert deep["ok"] and deep["level"] == "deep"
    health = _json(cli(*c, "check", "--only", "backup_remote_copies,backup_remote_verify_age",
                       "--format", "json"))
    assert {r["status"] for r in health["targets"][0]["checks"]} == {"OK"}, health


def test_only_the_targets_uploads_older_than_the_bound_are_stale() -> None:
    from aegisctl.backup.remote import stale_uploads

    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    uploads = [{"Key": "prod/primary/a", "UploadId": "1", "Initiated": now - dt.timedelta(2)},
               {"Key": "prod/primary/b", "UploadId": "2", "Initiated": now},
               {"Key": "prod/primaryx/c", "UploadId": "3", "Initiated": now - dt.timedelta(2)},
               {"Key": "prod/primary/d", "UploadId": "4"}]
    cutoff = now - dt.timedelta(days=1)
    assert [u["Key"] for u in stale_uploads(uploads, "prod/primary/", cutoff)] == \
        ["prod/primary/a"]


def test_a_killed_multipart_upload_is_aborted_at_the_next_upload_and_prune(
        cli: Any, aegis_db: Any, backup_config: Callable[..., Path], moto: MotoProcess) -> None:
    """What a kill -9 in the middle of a multipart upload leaves: an upload started, a part
    stored, never completed nor aborted. (moto reports a fixed start date in 2010 for every
    multipart upload, so the age bound is tested above.)"""
    fill(aegis_db, rows=5)
    bucket = f"aegis-{random.randrange(1 << 30):x}"
    s3 = moto.client()
    s3.create_bucket(Bucket=bucket)
    cfg = backup_config(remote={"endpoint_url": moto.url, "bucket": bucket, "prefix": "prod/",
                                "region": "us-east-1"})
    c = ("--config", str(cfg))

    def killed_upload(key: str) -> None:
        started = s3.create_multipart_upload(Bucket=bucket, Key=key)
        s3.upload_part(Bucket=bucket, Key=key, UploadId=started["UploadId"], PartNumber=1,
                       Body=b"x" * (5 * 1024 * 1024))

    def incomplete() -> list[str]:
        return sorted(u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket)
                      .get("Uploads", []))

    ours = "prod/primary/20260101T020000Z/20260101T020000Z.dump"
    others = "prod/other-target/20260101T020000Z/20260101T020000Z.dump"
    killed_upload(ours)
    killed_upload(others)
    made = _json(cli(*c, "backup", "create", "--no-upload", "--format", "json"))
    sent = _json(cli(*c, "backup", "upload", "--pending", "--format", "json"))
    assert sent["uploaded"] == [made["id"]] and sent["aborted_uploads"] == [ours], sent
    assert incomplete() == [others]  # another target's prefix is not ours to touch
    again = "prod/primary/20260102T020000Z/20260102T020000Z.dump"
    killed_upload(again)
    pruned = cli(*c, "backup", "prune", "--remote", "--yes")
    assert pruned.exit_code == 0, pruned.output
    assert f"aborted 1 incomplete multipart upload(s) left by a killed upload: {again}" \
        in pruned.output
    assert incomplete() == [others]
