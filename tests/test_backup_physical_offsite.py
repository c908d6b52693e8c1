"""Physical backups off the machine (issue 26), against moto's S3 server: base backups and WAL
go to the store encrypted (no plaintext object), a machine with only the config and the key
restores to a moment and drills from the store alone, a wrong or missing key is refused in one
line, an object deleted from the bucket is found by verify and sent again, a killed upload
resumes at its next volume, `check` measures the remote WAL lag, remote retention removes
whole chains and only the WAL no kept backup needs."""
# ruff: noqa: F811  (fixtures imported from the fixture modules are parameters here)

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backup_fixtures import s3_endpoint  # noqa: F401
from fault_fixtures import aegisctl_env, start_paused
from offsite_fixtures import PREFIX, OffsiteEnv, offsite_env  # noqa: F401
from physical_fixtures import fingerprint, insert_rows

from aegisctl.backup.crypto import generate_key_file
from aegisctl.backup.physical.backups import list_physical
from aegisctl.backup.physical.engine import Engine
from aegisctl.backup.physical.offsite import RemoteCatalog, RemoteEntry, RemoteManifest, Volume
from aegisctl.backup.physical.offsite_check import plan_remote_physical_prune, remote_wal_lag
from aegisctl.backup.physical.offsite_upload import backup_journal, offsite_lock, sent_wal
from aegisctl.backup.physical.restore import _Scratch
from aegisctl.backup.physical.wal import switch_and_archive
from aegisctl.backup.settings import RetentionSettings

pytestmark = pytest.mark.slow


def run_json(cli: Any, config: Path, *args: str, code: int = 0) -> Any:
    result = cli("-c", str(config), *args, "--format", "json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if result.stdout.strip() else None


def when(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def results(check: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in check["targets"][0]["checks"]}


def ship(cli: Any, env: OffsiteEnv) -> dict[str, Any]:
    """Close the current WAL segment, archive it, send everything pending."""
    switch_and_archive(env.engine)
    return run_json(cli, env.config, "backup", "physical", "upload")  # type: ignore[no-any-return]


def test_create_uploads_encrypted_and_a_fresh_machine_restores_to_a_moment(
        cli: Any, offsite_env: OffsiteEnv) -> None:
    env = offsite_env
    full = run_json(cli, env.config, "backup", "physical", "create")
    assert full["upload"]["ok"] and full["id"] in full["upload"]["uploaded_backups"]
    with env.connect() as conn:
        insert_rows(conn, 30, "after-full")
    incremental = run_json(cli, env.config, "backup", "physical", "create", "--incremental")
    assert incremental["parent"] == full["id"]
    assert incremental["id"] in incremental["upload"]["uploaded_backups"]
    with env.connect() as conn:
        conn.execute("INSERT INTO mem (note) VALUES ('MARKER-OFFSITE')")
        expected = fingerprint(conn)
        time.sleep(1.1)
        moment = dt.datetime.now(dt.UTC)
        time.sleep(1.1)
        conn.execute("DELETE FROM mem WHERE id % 3 = 0")
        conn.execute("INSERT INTO mem (note) VALUES ('after-delete')")
    shipped = ship(cli, env)
    assert shipped["ok"] and shipped["pending_wal_files"] == 0

    # Nothing readable in the bucket: every object is aegisctl-encrypted, and neither the
    # rows' text nor a data directory's file names appear in any of them.
    objects = env.objects()
    assert any("/physical/" in k and "/wal/" in k for k in objects)
    assert sum("/vol-" in k for k in objects) > 2  # 2 MB volumes
    s3 = env.s3()
    for key in objects:
        body = s3.get_object(Bucket=env.bucket, Key=key)["Body"].read()
        assert body.startswith(b"AEGISBK1"), key
        assert b"MARKER-OFFSITE" not in body and b"PG_VERSION" not in body, key

    # The remote window, in `wal status` and `list`.
    status = run_json(cli, env.config, "backup", "wal", "status")
    window = status["remote"]["recoverable_window"]
    assert when(window["start"]) <= moment <= when(window["end"])
    assert set(window["restorable"]) == {full["id"], incremental["id"]}
    listing = run_json(cli, env.config, "backup", "list")
    assert listing["remote"]["recoverable_window"]["end"] == window["end"]

    # A machine with only the config and the key: new, empty folders; no Barman there.
    fresh = env.fresh_machine("fresh")
    target_dir = env.base / "fresh" / "pitr"
    restored = run_json(cli, fresh, "backup", "restore", "--physical", "--from-remote",
                        "--to-time", moment.isoformat(), "--target-dir", str(target_dir))
    assert restored["chain"] == [full["id"], incremental["id"]]
    assert not list((env.base / "fresh").rglob("barman*"))  # no Barman installed or used
    scratch = _Scratch(env.engine, target_dir, 120)
    try:
        scratch.start()
        scratch.wait_promoted()
        with psycopg.connect(scratch.conninfo("aegis"), autocommit=True) as conn:
            assert fingerprint(conn) == expected
    finally:
        scratch.stop()

    # The drill from the store alone, on the same fresh machine.
    drill = run_json(cli, fresh, "backup", "physical", "drill", "--from-remote")
    assert drill["ok"], drill
    checks = {c["name"]: c for c in drill["checks"]}
    assert checks["pg_amcheck"]["ok"] and checks["extensions"]["ok"]
    # Nothing was created on that machine to do it: no database, no Barman.
    assert not (env.base / "fresh" / "pgdata").exists()
    assert "used by a nearest-neighbour query" in checks["hnsw public.mem_emb_hnsw"]["detail"]
    # Outside the remote window: refused before anything is written.
    result = cli("-c", str(fresh), "backup", "restore", "--physical", "--from-remote",
                 "--to-time", "2001-01-01T00:00:00Z", "--target-dir", str(env.base / "old"))
    assert result.exit_code == 2 and "outside the remote recoverable window" in result.stderr
    assert not (env.base / "old").exists()


def test_a_wrong_or_missing_key_is_refused_in_one_line(
        cli: Any, offsite_env: OffsiteEnv) -> None:
    env = offsite_env
    if not any("manifest.json.enc" in k for k in env.objects()):
        run_json(cli, env.config, "backup", "physical", "create")
    other = env.base / "other.key"
    generate_key_file(other)
    wrong = env.fresh_machine("wrong-key", key=other)
    target_dir = env.base / "wrong-key" / "restored"
    result = cli("-c", str(wrong), "backup", "restore", "--physical", "--from-remote",
                 "--latest", "--target-dir", str(target_dir))
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("aegisctl: error")]
    assert len(errors) == 1 and "wrong encryption key" in errors[0], result.stderr
    assert not target_dir.exists()
    keyless = env.variant("keyless.yaml", **{"backup.encryption": None})
    for args in (("backup", "restore", "--physical", "--from-remote", "--latest",
                  "--target-dir", str(target_dir)), ("backup", "physical", "upload")):
        result = cli("-c", str(keyless), *args)
        assert result.exit_code == 2 and "encrypted only" in result.stderr, result.output
    assert not target_dir.exists()


def test_an_object_deleted_from_the_bucket_is_found_by_verify_and_sent_again(
        cli: Any, offsite_env: OffsiteEnv) -> None:
    env = offsite_env
    if not any("manifest.json.enc" in k for k in env.objects()):
        run_json(cli, env.config, "backup", "physical", "create")
    ship(cli, env)
    assert run_json(cli, env.config, "backup", "verify", "--remote", "--physical")["ok"]
    objects = env.objects()
    volume = sorted(k for k in objects if k.endswith("vol-00001.tar.enc"))[-1]
    backup_id = volume.split("/")[-2]
    wal = sorted(k for k in objects if "/wal/" in k and not k.endswith(".history.enc"))[-1]
    s3 = env.s3()
    s3.delete_object(Bucket=env.bucket, Key=volume)
    s3.delete_object(Bucket=env.bucket, Key=wal)

    report = run_json(cli, env.config, "backup", "verify", "--remote", "--physical", code=1)
    assert not report["ok"]
    assert any("vol-00001.tar.enc: missing" in p for p in report["problems"])
    wal_name = wal.rsplit("/", 1)[-1].removesuffix(".enc")
    assert report["requeued_backups"] == [backup_id] and report["requeued_wal"] == [wal_name]
    # `check` sees it pending; the next upload sends both again.
    check = run_json(cli, env.config, "check", "--only", "physical_offsite", code=2)
    assert results(check)["physical_upload_pending"]["status"] == "WARNING", check
    assert results(check)["remote_wal_lag_bytes"]["value"] >= 16 * 1024 * 1024  # > 2 x 8 MB
    sent = run_json(cli, env.config, "backup", "upload", "--pending")
    assert backup_id in sent["physical"]["uploaded_backups"]
    assert volume in env.objects() and wal in env.objects()
    assert run_json(cli, env.config, "backup", "verify", "--remote", "--physical",
                    "--deep")["ok"]


def test_a_killed_upload_resumes_at_its_next_volume(
        cli: Any, offsite_env: OffsiteEnv) -> None:
    env = offsite_env
    local_only = env.variant("local-only.yaml", **{"backup.physical.remote.upload": False})
    created = run_json(cli, local_only, "backup", "physical", "create")
    assert "upload" not in created
    paused = start_paused("physical-offsite.volume-sent", "-c", str(env.config), "backup",
                          "physical", "upload", tmp_path=env.base, env=aegisctl_env())
    paused.kill()  # kill -9 after the first volume was sent and recorded
    journal = backup_journal(env.engine, created["id"])
    assert journal["status"] == "partial" and len(journal["volumes"]) == 1
    first = env.s3().head_object(Bucket=env.bucket, Key=next(
        k for k in env.objects() if created["id"] in k and k.endswith("vol-00000.tar.enc")))
    assert not any(created["id"] in k and k.endswith("manifest.json.enc") for k in env.objects())

    resumed = run_json(cli, env.config, "backup", "upload", "--pending")
    assert resumed["physical"]["resumed"] == {created["id"]: 1}
    assert created["id"] in resumed["physical"]["uploaded_backups"]
    again = env.s3().head_object(Bucket=env.bucket, Key=next(
        k for k in env.objects() if created["id"] in k and k.endswith("vol-00000.tar.enc")))
    assert again["ETag"] == first["ETag"] and again["LastModified"] == first["LastModified"]
    report = run_json(cli, env.config, "backup", "verify", "--remote", "--physical")
    assert report["backups"][created["id"]] == "ok"


def test_check_says_how_far_the_remote_wal_lags(cli: Any, offsite_env: OffsiteEnv) -> None:
    env = offsite_env
    ship(cli, env)
    check = run_json(cli, env.config, "check", "--only", "physical_offsite")
    assert results(check)["remote_wal_lag_bytes"]["status"] == "OK"
    # While another uploader holds the shipping lock, the streamer's shipper skips its
    # rounds: the local archive grows, the store's does not.
    with offsite_lock(env.loaded, env.target, 0):
        for _ in range(2):  # two more 16 MB segments in the local archive
            with env.connect() as conn:
                conn.execute("INSERT INTO mem (note) VALUES ('unsent')")
            switch_and_archive(env.engine)
        check = run_json(cli, env.config, "check", "--only", "physical_offsite", code=2)
        lag = results(check)
        assert lag["remote_wal_lag_bytes"]["status"] == "CRITICAL"  # > 2 x 8 MB
        assert lag["remote_wal_lag_bytes"]["value"] >= 16 * 1024 * 1024
        assert " s and " in lag["remote_wal_lag_seconds"]["message"]
    ship(cli, env)
    check = run_json(cli, env.config, "check", "--only", "physical_offsite")
    assert results(check)["remote_wal_lag_bytes"]["status"] == "OK"


def test_remote_retention_deletes_whole_chains_and_only_unneeded_wal(
        cli: Any, offsite_env: OffsiteEnv) -> None:
    env = offsite_env
    if len({b.chain for b in list_physical(env.engine)}) < 2:
        run_json(cli, env.config, "backup", "physical", "create")  # the newest chain: kept
    ship(cli, env)
    plan = run_json(cli, env.config, "backup", "prune", "--remote", "--dry-run")["physical"]
    remote = [b.id for b in list_physical(env.engine)]
    newest = remote[-1]
    assert newest in plan["keep"] and plan["delete"]
    assert all(i not in plan["delete"] for i in plan["keep"])
    done = run_json(cli, env.config, "backup", "prune", "--remote", "--yes")["physical"]
    assert sorted(done["deleted"]) == sorted(plan["delete"])
    listing = run_json(cli, env.config, "backup", "wal", "status")["remote"]
    assert [b["id"] for b in listing["backups"]] == [newest]
    assert listing["recoverable_window"]["restorable"] == [newest]
    report = run_json(cli, env.config, "backup", "verify", "--remote", "--physical")
    assert report["ok"], report  # the kept backup's WAL is all there
    # What retention removed is not pending: never sent again.
    assert run_json(cli, env.config, "backup", "physical", "upload")["uploaded_backups"] == []


# ---------------------------------------------------------------------------------------------
# The rules on their own


def _manifest(backup_id: str, parent: str | None, begin: int, end: int) -> RemoteManifest:
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=begin)
    return RemoteManifest(backup_id, parent, f"00000001000000000000{begin:04X}",
                          f"00000001000000000000{end:04X}", at, at, 1, 100,
                          [Volume("vol-00000.tar.enc", 10, "0" * 64, 5, "0" * 64)], "")


def test_remote_retention_plan_keeps_chains_whole_and_the_wal_they_need() -> None:
    manifests = [_manifest("20260101T010000", None, 0x10, 0x10),
                 _manifest("20260101T020000", "20260101T010000", 0x12, 0x12),
                 _manifest("20260101T050000", None, 0x20, 0x21),
                 _manifest("20260101T060000", "20260101T050000", 0x24, 0x24)]
    wals = {f"00000001000000000000{n:04X}": 16 for n in range(0x10, 0x26)}
    wals["00000002.history"] = 40
    catalog = RemoteCatalog("7", [RemoteEntry(m.id, {}, m) for m in manifests], wals)
    plan = plan_remote_physical_prune(catalog, RetentionSettings(keep_days=0, min_keep=1),
                                      "t", now=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    assert set(plan.delete) == {"20260101T010000", "20260101T020000"}  # a whole chain
    assert set(plan.plan.keep) == {"20260101T050000", "20260101T060000"}
    assert plan.wal_delete == [f"00000001000000000000{n:04X}" for n in range(0x10, 0x20)]
    # Under Object Lock, a chain stays whole.
    manifests[1].object_lock_until = "2026-06-01T00:00:00+00:00"
    locked = plan_remote_physical_prune(catalog, RetentionSettings(keep_days=0, min_keep=1),
                                        "t", now=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    assert not locked.delete and locked.wal_delete == []


def test_the_remote_wal_lag_counts_what_was_not_sent(tmp_path: Path) -> None:
    engine = Engine(home=tmp_path, server="s-1", run_as=None, barman_path=None, version="3",
                    slot_name="x", bin_dir=tmp_path)
    wals = engine.server_dir / "wals"
    wals.mkdir(parents=True)
    seg = 16 * 1024 * 1024
    (wals / "s-1-xlog.db").write_text("".join(
        f"00000001000000000000000{n}\t{seg}\t{1000.0 + 60 * n}\tNone\tNone\n"
        for n in range(1, 6)))
    journal = engine.state_dir / "offsite"
    journal.mkdir(parents=True)
    (journal / "wal.tsv").write_text("".join(
        f"00000001000000000000000{n}\t{seg + 40}\t{'0' * 64}\t{1000.0 + 60 * n}\n"
        for n in range(1, 3)))
    from aegisctl.config import Settings

    class Loaded:
        settings = Settings()

    assert set(sent_wal(engine)) == {"000000010000000000000001", "000000010000000000000002"}
    lag = remote_wal_lag(Loaded(), engine, now=1000.0 + 60 * 5 + 1)  # type: ignore[arg-type]
    assert lag.pending_files == 3 and lag.lag_bytes == 3 * seg
    # The newest local segment (archived at 1300) against the newest one sent before the
    # first gap (1120).
    assert lag.lag_seconds == 180.0
    assert lag.newest_remote == "000000010000000000000002"
