"""Fault suite, restore tests (issue 18, defects 2, 6 and 10): a restore test that could not run
to completion (pg_restore killed by a signal, the connection lost) is `interrupted`, never
`failed`: the backup keeps its previous verification, the run exits 1 naming the cause, and
prune does not delete the backup because of it. The scratch database never stays behind
unnoticed, and pg_restore dies with aegisctl."""

# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backup_fixtures import backup_config, fill  # noqa: F401  (fixtures)
from conftest import dsn_of
from fault_fixtures import (
    aegisctl_env,
    children_of,
    run_aegisctl,
    small_filesystem,
    start_paused,
    wait_gone,
)

from aegisctl.local import EmbeddedServer


def _manifest(tmp_path: Path, backup_id: str) -> dict[str, Any]:
    path = tmp_path / "backups" / "primary" / f"{backup_id}.manifest.json"
    return dict(json.loads(path.read_text()))


def _tested_backup(cli: Any, aegis_db: psycopg.Connection[Any], cfg: Path) -> str:
    """A backup that passed a restore test."""
    fill(aegis_db, rows=6)
    created = cli("--config", str(cfg), "backup", "create", "--verify", "restore-test",
                  "--format", "json")
    assert created.exit_code == 0, created.output
    return str(json.loads(created.stdout)["id"])


def _scratch_databases(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE 'aegis_verify_%'")]


def test_a_killed_pg_restore_interrupts_the_test_and_condemns_nothing(
        cli, aegis_db, backup_config, tmp_path) -> None:
    cfg = backup_config(retention={"keep_days": 0, "min_keep": 1})
    backup_id = _tested_backup(cli, aegis_db, cfg)
    before = _manifest(tmp_path, backup_id)["verification"]
    assert before["status"] == "ok" and before["level"] == "restore-test"

    paused = start_paused("verify.pg_restore", "--config", str(cfg), "backup", "verify",
                          "--latest", "--restore-test", tmp_path=tmp_path)
    restores = [pid for pid, name in children_of(paused.proc.pid) if name == "pg_restore"]
    assert len(restores) == 1
    os.kill(restores[0], signal.SIGKILL)
    _out, err = paused.resume()
    assert paused.proc.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("aegisctl: error:")]
    assert len(lines) == 1, err
    assert "pg_restore was killed by signal SIGKILL" in lines[0]
    assert f"keeps its previous verification: ok (restore-test, {before['at']})" in lines[0]
    assert "None" not in err
    after = _manifest(tmp_path, backup_id)
    assert after["verification"] == before  # the backup is not condemned
    assert after["interrupted_check"]["status"] == "interrupted"
    assert after["interrupted_check"]["problems"] == ["pg_restore was killed by signal SIGKILL"]
    assert _scratch_databases(aegis_db) == []  # the server was there: dropped at once

    listed = cli("--config", str(cfg), "backup", "list", "--format", "json")
    row = next(b for b in json.loads(listed.stdout)["backups"] if b["id"] == backup_id)
    assert row["verified"] == "ok"
    pruned = cli("--config", str(cfg), "backup", "prune", "--yes", "--format", "json")
    assert pruned.exit_code == 0, pruned.output
    assert (tmp_path / "backups" / "primary" / f"{backup_id}.manifest.json").exists()


def test_a_connection_lost_while_checking_the_restore_is_an_interruption(
        cli, aegis_db, backup_config, tmp_path) -> None:
    cfg = backup_config()
    backup_id = _tested_backup(cli, aegis_db, cfg)
    before = _manifest(tmp_path, backup_id)["verification"]
    paused = start_paused("verify.check-restored", "--config", str(cfg), "backup", "verify",
                          backup_id, "--restore-test", "--format", "json", tmp_path=tmp_path)
    # What a server shutdown does to every session (fast mode): terminate them.
    terminated = aegis_db.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname LIKE 'aegis_verify_%'").fetchone()[0]
    assert terminated >= 1
    out, err = paused.resume()
    assert paused.proc.returncode == 1, err
    report = json.loads(out)
    assert report["status"] == "interrupted"
    assert "lost the connection to the server while checking the restored database" in err
    assert "terminating connection due to administrator command" in err
    assert "error ignored in rollback" not in err
    assert _manifest(tmp_path, backup_id)["verification"] == before
    assert _scratch_databases(aegis_db) == []


def test_pg_restore_dies_with_aegisctl(cli, aegis_db, backup_config, tmp_path) -> None:
    """kill -9 of aegisctl mid-restore-test: the pg_restore it started dies too (no orphan
    goes on writing), and the scratch database it leaves is dropped by the next verify."""
    cfg = backup_config()
    backup_id = _tested_backup(cli, aegis_db, cfg)
    before = _manifest(tmp_path, backup_id)["verification"]
    paused = start_paused("verify.pg_restore", "--config", str(cfg), "backup", "verify",
                          backup_id, "--restore-test", tmp_path=tmp_path)
    restores = [pid for pid, name in children_of(paused.proc.pid) if name == "pg_restore"]
    assert len(restores) == 1
    paused.kill(signal.SIGKILL)
    os.kill(restores[0], signal.SIGCONT)  # the pause hook had stopped it: let it run on
    assert wait_gone(restores[0]), "pg_restore outlived aegisctl"
    assert _manifest(tmp_path, backup_id)["verification"] == before
    left = _scratch_databases(aegis_db)
    assert len(left) == 1  # killed before it could drop it: marked as ours
    with psycopg.connect(dsn_of(aegis_db, left[0])) as scratch:
        restored = scratch.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                                   ).fetchone()[0]
    assert restored == 0, "the orphaned pg_restore went on and restored the backup"
    comment = aegis_db.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                               " WHERE datname = %s", (left[0],)).fetchone()[0]
    assert comment.startswith("aegisctl restore-test scratch database (target primary, "
                              f"backup {backup_id},")
    checked = cli("--config", str(cfg), "check", "--only", "scratch_databases")
    assert checked.exit_code == 1, checked.output  # WARNING, naming it
    assert left[0] in checked.stdout
    done = run_aegisctl("--config", str(cfg), "backup", "verify", backup_id, "--restore-test",
                        env=aegisctl_env())
    assert done.returncode == 0, done.stderr
    assert _scratch_databases(aegis_db) == []
    assert cli("--config", str(cfg), "check", "--only", "scratch_databases").exit_code == 0


@pytest.fixture
def own_server() -> Iterator[EmbeddedServer]:
    """A server of this test's own, to stop and start again under a restore test."""
    base = Path(tempfile.mkdtemp(prefix="aegisctl-restart-"))
    base.chmod(0o755)
    server = EmbeddedServer(base / "pgdata", database="aegis")
    try:
        server.ensure_running()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_server_stopped_during_the_restore_test(cli, own_server, write_config,
                                                  tmp_path) -> None:
    """The issue's case: the server goes away under `verify --restore-test`. The test is
    interrupted (the backup keeps its verification), the scratch database that could not be
    dropped is reported by `check` once the server is back, and the next verify drops it."""
    with psycopg.connect(own_server.uri(), autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 500) i")
    cfg = write_config({"targets": {"primary": {"dsn": own_server.uri()}},
                        "connection": {"retry": {"attempts": 1}},
                        "backup": {"directory": str(tmp_path / "backups")}})
    created = cli("--config", str(cfg), "backup", "create", "--verify", "restore-test",
                  "--format", "json")
    assert created.exit_code == 0, created.output
    backup_id = json.loads(created.stdout)["id"]
    before = _manifest(tmp_path, backup_id)["verification"]

    paused = start_paused("verify.pg_restore", "--config", str(cfg), "backup", "verify",
                          "--latest", "--restore-test", tmp_path=tmp_path)
    own_server.stop()
    _out, err = paused.resume()
    assert paused.proc.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("aegisctl: error:")]
    assert len(lines) == 1 and "pg_restore lost its connection to the server" in lines[0], err
    assert "keeps its previous verification: ok (restore-test" in lines[0]
    assert "error ignored" not in err and "None" not in err
    assert _manifest(tmp_path, backup_id)["verification"] == before

    own_server.ensure_running()
    with psycopg.connect(own_server.uri(), autocommit=True) as conn:
        assert len(_scratch_databases(conn)) == 1  # it could not be dropped: still marked
    checked = cli("--config", str(cfg), "check", "--only", "scratch_databases")
    assert checked.exit_code == 1, checked.output
    again = cli("--config", str(cfg), "backup", "verify", "--latest", "--restore-test")
    assert again.exit_code == 0, again.output
    with psycopg.connect(own_server.uri(), autocommit=True) as conn:
        assert _scratch_databases(conn) == []


def test_the_scratch_side_running_out_of_disk_is_an_interruption(
        cli, own_server, write_config, tmp_path) -> None:
    """The server's disk fills while the restore test builds an index (its temporary files go
    to a small tmpfs, as `temp_tablespaces` says): the test could not run to its end, the
    backup is not condemned."""
    # Where the server's own user can reach it (pytest's folders are 0700).
    small = small_filesystem(own_server.data_dir.parent, size=256 * 1024)
    fs = small.__enter__()
    try:
        if fs.kind == "rlimit":
            pytest.skip("the server's disk cannot be bounded without a small filesystem")
        ids = own_server._service_uid()
        if ids:
            os.chown(fs.path, *ids)
        with psycopg.connect(own_server.uri(), autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            conn.execute("INSERT INTO notes SELECT i, md5(i::text) || md5((i * 7)::text)"
                         " FROM generate_series(1, 60000) i")
            conn.execute("CREATE INDEX notes_body ON notes (body)")
        cfg = write_config({"targets": {"primary": {"dsn": own_server.uri()}},
                            "connection": {"retry": {"attempts": 1}},
                            "backup": {"directory": str(tmp_path / "backups")}})
        created = cli("--config", str(cfg), "backup", "create", "--verify", "restore-test",
                      "--format", "json")
        assert created.exit_code == 0, created.output
        backup_id = json.loads(created.stdout)["id"]
        before = _manifest(tmp_path, backup_id)["verification"]
        with psycopg.connect(own_server.uri(), autocommit=True) as conn:
            conn.execute(f"CREATE TABLESPACE small LOCATION '{fs.path}'")
            conn.execute("ALTER SYSTEM SET temp_tablespaces = 'small'")
            conn.execute("ALTER SYSTEM SET maintenance_work_mem = '1MB'")
            conn.execute("SELECT pg_reload_conf()")
        done = cli("--config", str(cfg), "backup", "verify", backup_id, "--restore-test")
        assert done.exit_code == 1, done.output
        assert "pg_restore ran out of disk space on the server" in done.stderr, done.stderr
        assert "No space left on device" in done.stderr
        assert _manifest(tmp_path, backup_id)["verification"] == before
        with psycopg.connect(own_server.uri(), autocommit=True) as conn:
            assert _scratch_databases(conn) == []
            conn.execute("ALTER SYSTEM RESET temp_tablespaces")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("DROP TABLESPACE small")
    finally:
        small.__exit__(None, None, None)
