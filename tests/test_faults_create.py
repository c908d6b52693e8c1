"""Fault suite, `backup create` (issue 18, defects 7, 8 and 10): a full disk leaves nothing
under a final name and nothing behind; a kill at any step leaves only what the next create
sweeps; an upload killed midway leaves the local backup exactly as it is (complete, verified,
counted as the newest good one; the upload pending); pg_dump dies with aegisctl."""

# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import yaml
from backup_fixtures import backup_config, fill, s3_bucket, s3_endpoint  # noqa: F401
from conftest import dsn_of
from fault_fixtures import (
    SmallFs,
    aegisctl_env,
    children_of,
    pending_signals,
    run_aegisctl,
    start_paused,
    wait_gone,
)


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} - {".lock", "audit.log"}


def _create(cfg: Path, fs: SmallFs | None = None) -> subprocess.CompletedProcess[str]:
    return run_aegisctl("--config", str(cfg), "backup", "create", "--verify", "quick",
                        "--format", "json", env=aegisctl_env(),
                        preexec=fs.preexec if fs else None)


def test_a_full_disk_during_create_leaves_nothing_under_a_final_name(
        aegis_db, tmp_path, small_fs: SmallFs) -> None:
    fill(aegis_db, rows=40)
    cfg = tmp_path / "aegisctl.yaml"
    cfg.write_text(yaml.safe_dump({
        "targets": {"primary": {"dsn": dsn_of(aegis_db)}},
        "connection": {"retry": {"attempts": 1}},
        "backup": {"directory": str(small_fs.path / "backups")}}))
    first = _create(cfg, small_fs)
    assert first.returncode == 0, first.stderr
    size = json.loads(first.stdout)["size"]
    folder = small_fs.path / "backups" / "primary"
    before = _names(folder)
    page = 4096
    outcomes = []
    # The dump does not fit; it fits to the page but its manifest does not; all fits.
    for leave in (size // 2, -(-size // page) * page, -(-size // page) * page + 8 * page):
        small_fs.make_room()
        small_fs.fill(leave)
        done = _create(cfg, small_fs)
        if done.returncode == 0:
            created = json.loads(done.stdout)["id"]
            assert _names(folder) - before == {f"{created}.dump", f"{created}.manifest.json"}
            outcomes.append("created")
            continue
        assert done.returncode == 1, done.stderr
        errors = [ln for ln in done.stderr.splitlines() if ln.strip()]
        assert len(errors) == 1 and errors[0].startswith("aegisctl: error: "), done.stderr
        if small_fs.kind != "rlimit":
            assert "No space left on device" in errors[0] and " free" in errors[0], errors
        # Nothing under a final name, nothing left behind to keep the disk full.
        assert _names(folder) == before, done.stderr
        outcomes.append("manifest" if "cannot write the manifest" in errors[0] else "dump")
    assert outcomes[0] == "dump" and outcomes[-1] == "created"
    if small_fs.kind == "tmpfs":
        assert outcomes[1] == "manifest"  # the case of the issue: the dump fit, not its manifest
    listed = run_aegisctl("--config", str(cfg), "backup", "list", "--problems", "--format",
                          "json", env=aegisctl_env())
    assert listed.returncode == 0, listed.stdout


def test_a_create_killed_at_any_step_is_swept_by_the_next(cli, aegis_db, backup_config,
                                                           tmp_path) -> None:
    fill(aegis_db, rows=6)
    cfg = backup_config()
    folder = tmp_path / "backups" / "primary"
    for step in ("create.pg_dump", "create.before-rename", "create.before-manifest"):
        paused = start_paused(step, "--config", str(cfg), "backup", "create", "--globals",
                              tmp_path=tmp_path)
        paused.kill(signal.SIGKILL)
        listed = cli("--config", str(cfg), "backup", "list", "--format", "json")
        assert json.loads(listed.stdout)["newest_good"] is None  # nothing pretends to be good
        done = cli("--config", str(cfg), "backup", "create", "--globals", "--format", "json")
        assert done.exit_code == 0, done.output
        created = json.loads(done.stdout)["id"]
        assert _names(folder) == {f"{created}.dump", f"{created}.globals.sql",
                                  f"{created}.manifest.json"}, step
        for name in list(folder.iterdir()):
            if name.name.startswith(created):
                name.unlink()


def test_an_upload_killed_inside_create_leaves_the_local_backup_exact(
        cli, aegis_db, backup_config, tmp_path, s3_endpoint, s3_bucket) -> None:
    fill(aegis_db, rows=6)
    cfg = backup_config(remote={"endpoint_url": s3_endpoint, "bucket": s3_bucket,
                                "region": "us-east-1"})
    paused = start_paused("upload.before-manifest", "--config", str(cfg), "backup", "create",
                          "--format", "json", tmp_path=tmp_path)
    paused.kill(signal.SIGKILL)
    listed = cli("--config", str(cfg), "backup", "list", "--format", "json")
    listing = json.loads(listed.stdout)
    (row,) = listing["backups"]
    assert row["state"] == "ok" and row["verified"] == "ok", row
    assert row["uploaded"] == "pending"
    assert listing["newest_good"] == row["id"]
    sent = cli("--config", str(cfg), "backup", "upload", "--pending")
    assert sent.exit_code == 0, sent.output
    (row,) = json.loads(cli("--config", str(cfg), "backup", "list", "--format",
                            "json").stdout)["backups"]
    assert row["uploaded"] == "uploaded" and row["location"] == "local+remote"
    assert row["problems"] == []


def test_pg_dump_dies_with_aegisctl(cli, aegis_db, backup_config, tmp_path) -> None:
    fill(aegis_db, rows=6)
    cfg = backup_config()
    paused = start_paused("create.pg_dump", "--config", str(cfg), "backup", "create",
                          tmp_path=tmp_path)
    dumps = [pid for pid, name in children_of(paused.proc.pid) if name == "pg_dump"]
    assert len(dumps) == 1
    told: list[set[int]] = []
    # The kernel signals the child the moment aegisctl dies (the hook keeps it stopped, so
    # the signal is still pending when we look).
    paused.kill(signal.SIGKILL, while_stopped=lambda _c: told.append(pending_signals(dumps[0])))
    assert signal.SIGTERM in told[0], "pg_dump was not told that aegisctl died"
    assert wait_gone(dumps[0]), "pg_dump outlived aegisctl"


def test_the_server_gone_during_create_is_one_line(cli, aegis_db, backup_config,
                                                   tmp_path) -> None:
    """aegisctl's session ends under it (as when the server stops) while pg_dump works: one
    line says why, no driver noise ("error ignored in rollback"), nothing is listed."""
    fill(aegis_db, rows=6)
    cfg = backup_config()
    paused = start_paused("create.pg_dump", "--config", str(cfg), "backup", "create",
                          tmp_path=tmp_path)
    aegis_db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE application_name = 'aegisctl backup create'")
    _out, err = paused.resume()
    assert paused.proc.returncode == 3, err  # cannot reach the database
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["aegisctl: error: lost the connection to the database: terminating "
                     "connection due to administrator command"], err
    assert _names(tmp_path / "backups" / "primary") == set()
