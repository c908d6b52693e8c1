"""backup create / verify / restore / prune / remote against the real PostgreSQL and a real
S3 endpoint (moto in server mode)."""

# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backup_fixtures import (  # noqa: F401  (fixtures)
    backup_config,
    fill,
    free_port,
    s3_bucket,
    s3_endpoint,
    snapshot,
)
from conftest import dsn_of

from aegisctl.locks import lock_file_at as target_lock
from aegisctl.resources import migrations_dir


def _create(cli: Any, cfg: Path, *args: str) -> dict[str, Any]:
    result = cli("--config", str(cfg), "backup", "create", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def _list(cli: Any, cfg: Path) -> dict[str, Any]:
    result = cli("--config", str(cfg), "backup", "list", "--format", "json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_round_trip_preserves_rows_and_vectors(cli, aegis_db, backup_config, tmp_path) -> None:
    fill(aegis_db)
    cfg = backup_config()
    m = _create(cli, cfg, "--label", "first")
    assert m["label"] == "first" and m["format"] == "custom"
    assert int(m["pg_dump_version"].split(".")[0]) >= m["server_version_num"] // 10000
    assert m["compress"] == "gzip:1"
    counts = {t["name"]: t["rows"] for t in m["tables"]}
    assert counts["episodic_memory"] == 40 and counts["semantic_memory"] == 20
    assert all(t["exact"] for t in m["tables"])
    assert m["schema_version"] is not None
    assert m["vector_columns"]["public.episodic_memory.embedding"] == 1536
    assert m["verification"]["status"] == "ok"
    folder = tmp_path / "backups" / "primary"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():
        if path.is_file() and path.name != ".lock":
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "password" not in (folder / f"{m['id']}.manifest.json").read_text()

    verify = cli("--config", str(cfg), "backup", "verify", "--latest", "--restore-test",
                 "--format", "json")
    assert verify.exit_code == 0, verify.output
    report = json.loads(verify.stdout)
    assert report["ok"] and report["level"] == "restore-test"
    with psycopg.connect(dsn_of(aegis_db), autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'aegis_verify%'")
        assert left.fetchone() == (0,)

    new_db = f"restored_{os.getpid()}"
    restore = cli("--config", str(cfg), "backup", "restore", m["id"], "--target-db", new_db)
    assert restore.exit_code == 0, restore.output
    try:
        with psycopg.connect(dsn_of(aegis_db, new_db)) as restored:
            assert snapshot(restored) == snapshot(aegis_db)
    finally:
        aegis_db.execute(f'DROP DATABASE IF EXISTS "{new_db}" WITH (FORCE)')


def test_directory_format_parallel_with_globals(cli, aegis_db, backup_config) -> None:
    fill(aegis_db, rows=10)
    cfg = backup_config()
    m = _create(cli, cfg, "--dump-format", "directory", "--jobs", "2", "--globals")
    assert m["format"] == "directory" and m["jobs"] == 2 and m["globals_file"]
    verify = cli("--config", str(cfg), "backup", "verify", m["id"], "--restore-test",
                 "--jobs", "2")
    assert verify.exit_code == 0, verify.output


def _pg_dump_children(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"pg_dump" in cmdline and marker.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def test_killed_pg_dump_leaves_no_backup(cli, aegis_db, backup_config, tmp_path) -> None:
    from aegisctl.backup.dump import CreateOptions
    from aegisctl.backup.service import run_create
    from aegisctl.config import load_config
    from aegisctl.errors import OperationFailed
    from aegisctl.targets import resolve_target

    fill(aegis_db, rows=5)
    cfg = backup_config()
    first = _create(cli, cfg)
    loaded = load_config(str(cfg), env={})
    target = resolve_target(loaded, env={})
    outcome: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            run_create(loaded, target, CreateOptions())
            outcome["error"] = None
        except BaseException as exc:
            outcome["error"] = exc

    blocker = psycopg.connect(dsn_of(aegis_db))
    blocker.execute("LOCK TABLE episodic_memory IN ACCESS EXCLUSIVE MODE")
    thread = threading.Thread(target=run)
    thread.start()
    folder = str(tmp_path / "backups" / "primary")
    try:
        for _ in range(600):
            pids = _pg_dump_children(folder)
            if pids:
                break
            thread.join(0.05)
        assert pids, "pg_dump never started"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    finally:
        blocker.rollback()
        blocker.close()
        thread.join(120)
    assert isinstance(outcome["error"], OperationFailed)
    assert "SIGKILL" in str(outcome["error"])
    assert [b["id"] for b in _list(cli, cfg)["backups"]] == [first["id"]]
    assert not [p for p in Path(folder).iterdir() if p.name.startswith(".tmp-")]
    assert cli("--config", str(cfg), "backup", "verify", first["id"]).exit_code == 0


def test_corrupted_backup_fails_verify(cli, aegis_db, backup_config, tmp_path) -> None:
    fill(aegis_db, rows=5)
    cfg = backup_config()
    m = _create(cli, cfg)
    path = tmp_path / "backups" / "primary" / m["files"][0]["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = cli("--config", str(cfg), "backup", "verify", m["id"])
    assert result.exit_code == 1
    assert "sha256" in result.stdout
    listed = _list(cli, cfg)
    assert listed["backups"][0]["verified"] == "failed"
    assert listed["stale"] is True  # no good backup left


def test_concurrent_runs_are_locked(cli, aegis_db, backup_config, tmp_path) -> None:
    cfg = backup_config()
    lock = tmp_path / "state" / "locks" / "primary.lock"
    with target_lock(lock, "test"):
        result = cli("--config", str(cfg), "backup", "create")
        assert result.exit_code == 4
        assert "lock" in result.stderr
        assert cli("--config", str(cfg), "backup", "prune", "--yes").exit_code == 4
    assert cli("--config", str(cfg), "backup", "create").exit_code == 0


def test_restore_over_data_refused_without_force(cli, aegis_db, backup_config) -> None:
    fill(aegis_db, rows=6)
    cfg = backup_config()
    m = _create(cli, cfg)
    aegis_db.execute("DELETE FROM container_metrics WHERE id > 3")
    refused = cli("--config", str(cfg), "backup", "restore", m["id"], "--clean")
    assert refused.exit_code == 1
    assert "refusing" in refused.stderr and "container_metrics" in refused.stderr
    assert aegis_db.execute("SELECT count(*) FROM container_metrics").fetchone() == (3,)
    dry = cli("--config", str(cfg), "backup", "restore", m["id"], "--table",
              "container_metrics", "--force", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "replace every row of: public.container_metrics" in dry.stderr
    assert aegis_db.execute("SELECT count(*) FROM container_metrics").fetchone() == (3,)
    no_yes = cli("--config", str(cfg), "backup", "restore", m["id"], "--table",
                 "container_metrics", "--force")
    assert no_yes.exit_code == 2  # not a terminal and no --yes
    done = cli("--config", str(cfg), "backup", "restore", m["id"], "--table",
               "container_metrics", "--force", "--yes")
    assert done.exit_code == 0, done.output
    assert aegis_db.execute("SELECT count(*) FROM container_metrics").fetchone() == (6,)


def test_encryption_round_trip_and_wrong_key(cli, aegis_db, backup_config, tmp_path) -> None:
    fill(aegis_db, rows=5)
    right, wrong = tmp_path / "right.key", tmp_path / "wrong.key"
    for key in (right, wrong):
        assert cli("backup", "key-generate", str(key)).exit_code == 0
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cfg = backup_config(encryption={"key_file": str(right)})
    m = _create(cli, cfg)
    assert m["encryption"]["algorithm"] == "AES-256-GCM"
    stored = tmp_path / "backups" / "primary" / m["files"][0]["path"]
    assert stored.read_bytes().startswith(b"AEGISBK1")
    assert right.read_text().strip() not in json.dumps(m)
    ok = cli("--config", str(cfg), "backup", "verify", m["id"], "--restore-test")
    assert ok.exit_code == 0, ok.output
    bad_cfg = backup_config(name="bad.yaml", encryption={"key_file": str(wrong)})
    for command in (["verify", m["id"]], ["restore", m["id"], "--target-db", "never_made"]):
        bad = cli("--config", str(bad_cfg), "backup", *command)
        assert bad.exit_code == 2, bad.output
        assert "wrong encryption key" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    assert _list(cli, cfg)["backups"][0]["verified"] == "ok"  # a wrong key blames no backup


def test_missing_pg_dump_is_one_line(cli, aegis_db, backup_config) -> None:
    cfg = backup_config(pg_dump_path="/nonexistent/bin/pg_dump")
    result = cli("--config", str(cfg), "backup", "create")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pg_dump_path" in lines[0] and "Traceback" not in result.output


def test_prune_keeps_last_good_and_audits(cli, aegis_db, backup_config, tmp_path) -> None:
    cfg = backup_config(retention={"keep_days": 7, "min_keep": 1})
    ids = [_create(cli, cfg)["id"] for _ in range(3)]
    folder = tmp_path / "backups" / "primary"
    for n, backup_id in enumerate(ids):  # age them: 30, 29, 28 days old
        path = folder / f"{backup_id}.manifest.json"
        data = json.loads(path.read_text())
        data["finished_at"] = f"2020-01-{1 + n:02d}T00:00:00Z"
        if n == 2:
            data["verification"]["status"] = "failed"
        path.write_text(json.dumps(data))
    dry = cli("--config", str(cfg), "backup", "prune", "--dry-run", "--format", "json")
    plan = json.loads(dry.stdout)
    assert set(plan["delete"]) == {ids[0], ids[2]} and ids[1] in plan["keep"]
    assert len(list(folder.glob("*.manifest.json"))) == 3
    done = cli("--config", str(cfg), "backup", "prune", "--yes")
    assert done.exit_code == 0, done.output
    assert [b["id"] for b in _list(cli, cfg)["backups"]] == [ids[1]]
    audit = [json.loads(line) for line in (tmp_path / "backups" / "audit.log").open()]
    assert {a["id"] for a in audit} == {ids[0], ids[2]}
    assert all(a["action"] == "delete" and a["reason"] for a in audit)
    # Pinned backups are exempt.
    assert cli("--config", str(cfg), "backup", "keep", ids[1]).exit_code == 0


def test_remote_unreachable_then_uploaded(cli, aegis_db, backup_config, s3_endpoint,
                                          s3_bucket, tmp_path) -> None:
    fill(aegis_db, rows=5)
    down = backup_config(name="down.yaml", remote={
        "endpoint_url": f"http://127.0.0.1:{free_port()}", "bucket": s3_bucket,
        "region": "us-east-1", "max_attempts": 1, "connect_timeout": "2s"})
    result = cli("--config", str(down), "backup", "create")
    assert result.exit_code == 1
    assert "pending" in result.stderr
    listed = _list(cli, down)
    assert listed["remote_error"] and listed["backups"][0]["uploaded"] == "pending"
    backup_id = listed["backups"][0]["id"]

    up = backup_config(name="up.yaml", remote={
        "endpoint_url": s3_endpoint, "bucket": s3_bucket, "prefix": "prod/",
        "region": "us-east-1", "multipart_threshold": "5MB", "multipart_chunksize": "5MB",
        "server_side_encryption": "AES256", "storage_class": "STANDARD"})
    sent = cli("--config", str(up), "backup", "upload", "--pending")
    assert sent.exit_code == 0, sent.output
    row = _list(cli, up)["backups"][0]
    assert row["uploaded"] == "uploaded" and row["location"] == "local+remote"

    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert f"prod/primary/{backup_id}/manifest.json" in keys

    # Lose the local copy, fetch it back, verify it.
    for path in (tmp_path / "backups" / "primary").glob(f"{backup_id}*"):
        path.unlink()
    assert _list(cli, up)["backups"][0]["location"] == "remote"
    got = cli("--config", str(up), "backup", "download", backup_id)
    assert got.exit_code == 0, got.output
    assert cli("--config", str(up), "backup", "verify", backup_id).exit_code == 0

    # Remote retention with everything old: the newest good one stays.
    second = _create(cli, up)
    assert second["remote"]["status"] == "uploaded"
    pruned = cli("--config", str(up), "backup", "prune", "--remote", "--dry-run",
                 "--format", "json")
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(pruned.stdout)["delete"] == {}


def test_schema_migrate_backup_takes_a_verified_backup(cli, aegis_db, backup_config, tmp_path,
                                                       monkeypatch) -> None:
    cfg = backup_config()
    # Nothing pending: nothing to protect, no backup.
    idle = cli("--config", str(cfg), "schema", "migrate", "--backup")
    assert idle.exit_code == 0, idle.output
    assert "no backup needed" in idle.stderr
    assert _list(cli, cfg)["backups"] == []
    # A pending migration: a verified backup first, then the migration.
    sql_dir = tmp_path / "sql"
    shutil.copytree(migrations_dir(), sql_dir / "migrations")
    (sql_dir / "migrations" / "0999_extra.sql").write_text(
        "CREATE TABLE aegis_extra_note (id serial PRIMARY KEY, note text);\n")
    monkeypatch.setenv("AEGISCTL_SQL_DIR", str(sql_dir))
    result = cli("--config", str(cfg), "schema", "migrate", "--backup")
    assert result.exit_code == 0, result.output
    backups = _list(cli, cfg)["backups"]
    assert [(b["label"], b["verified"]) for b in backups] == [("before-migration", "ok")]
    assert aegis_db.execute("SELECT to_regclass('aegis_extra_note')").fetchone() == (
        "aegis_extra_note",)


def test_directory_backup_remote_round_trip_with_object_lock(cli, aegis_db, backup_config,
                                                            s3_endpoint, tmp_path,
                                                            monkeypatch) -> None:
    """A directory-format backup goes up file by file under Object Lock (the bucket refuses
    to let them be deleted early), comes back, and verifies."""
    import boto3

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"aegis-locked-{os.getpid()}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    fill(aegis_db, rows=6)
    cfg = backup_config(name="locked.yaml", remote={
        "endpoint_url": s3_endpoint, "bucket": bucket, "region": "us-east-1",
        "object_lock_days": 7, "object_lock_mode": "GOVERNANCE"})
    made = cli("--config", str(cfg), "backup", "create", "--dump-format", "directory",
               "--jobs", "2", "--format", "json")
    assert made.exit_code == 0, made.output
    listed = _list(cli, cfg)["backups"][0]
    backup_id = listed["id"]
    assert listed["uploaded"] == "uploaded"

    objects = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    data_files = [k for k in objects if "/" in k and k.endswith(".dat.gz")]
    assert data_files, objects
    head = s3.head_object(Bucket=bucket, Key=data_files[0])  # moto's GetObjectRetention 500s
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert head["ObjectLockRetainUntilDate"].timestamp() > time.time() + 6 * 86400
    version = s3.list_object_versions(Bucket=bucket, Prefix=data_files[0])["Versions"][0]
    with pytest.raises(Exception, match="AccessDenied"):
        s3.delete_object(Bucket=bucket, Key=data_files[0], VersionId=version["VersionId"])

    shutil.rmtree(tmp_path / "backups" / "primary" / f"{backup_id}.dir")
    got = cli("--config", str(cfg), "backup", "download", backup_id)
    assert got.exit_code == 0, got.output
    verified = cli("--config", str(cfg), "backup", "verify", backup_id, "--format", "json")
    assert verified.exit_code == 0, verified.output
    again = cli("--config", str(cfg), "backup", "download", backup_id)
    assert again.exit_code == 1
    assert "already here, complete" in again.stderr


def test_table_names_with_spaces_and_quotes_verify(cli, aegis_db, backup_config) -> None:
    """pg_restore --list prints names unquoted: a name with a space must not make a good
    backup 'failed (no TABLE DATA entry)'."""
    aegis_db.execute('CREATE TABLE "wéird ""name"" x" (id int)')
    aegis_db.execute('INSERT INTO "wéird ""name"" x" VALUES (1)')
    aegis_db.commit()
    m = _create(cli, backup_config())
    assert m["verification"]["status"] == "ok", m["verification"]
