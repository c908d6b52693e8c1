"""Physical backups through Barman on the embedded binaries: enable, full + incremental,
point-in-time recovery to a moment between a marker insert and a destructive delete, the drill,
the guard rails, and a killed streamer that resumes without a gap."""
# ruff: noqa: F811  (the fixture imported from physical_fixtures is a parameter here)

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from physical_fixtures import PhysicalEnv, fingerprint, insert_rows, physical_env  # noqa: F401

from aegisctl.backup.physical.backups import list_physical
from aegisctl.backup.physical.restore import _Scratch
from aegisctl.backup.physical.walfiles import archived_wals

pytestmark = pytest.mark.slow


def run_json(cli: Any, env: PhysicalEnv, *args: str, code: int = 0) -> Any:
    result = cli("-c", str(env.config), *args, "--format", "json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if code == 0 or result.stdout.strip() else None


def wait_archived(env: PhysicalEnv, segments: int = 1, timeout: float = 60) -> None:
    """Force WAL switches until `segments` more segments are in the archive."""
    before = len(archived_wals(env.engine))
    deadline = time.monotonic() + timeout
    while len(archived_wals(env.engine)) < before + segments:
        assert time.monotonic() < deadline, "WAL was not archived in time"
        with env.connect() as conn:
            conn.execute("SELECT pg_switch_wal()")
        time.sleep(1)


def test_enable_sets_the_server_up_and_status_agrees(
        cli: Any, physical_env: PhysicalEnv) -> None:
    env = physical_env
    with env.connect() as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('summarize_wal', 'max_slot_wal_keep_size', 'wal_level')").fetchall())
        slot = conn.execute("SELECT restart_lsn IS NOT NULL FROM pg_replication_slots "
                            "WHERE slot_name = 'aegisctl_barman'").fetchone()
    assert settings["summarize_wal"] == "on"
    assert settings["wal_level"] == "replica"
    assert settings["max_slot_wal_keep_size"] != "-1"
    assert slot == (True,)  # WAL reserved from the moment the slot was created
    status = run_json(cli, env, "backup", "physical", "status")
    assert status["configured"] and status["slot_exists"]
    assert status["barman"].startswith("3.")
    # A second enable changes nothing and stays quiet about settings.
    again = run_json(cli, env, "backup", "physical", "enable")
    assert again["settings"] == []


def test_full_incremental_and_pitr_between_marker_and_delete(
        cli: Any, physical_env: PhysicalEnv, tmp_path: Path) -> None:
    env = physical_env
    full = run_json(cli, env, "backup", "create", "--physical")
    assert full["type"] == "full" and full["status"] == "DONE" and full["verified"] == "good"

    with env.connect() as conn:
        insert_rows(conn, 30, "after-full")
        conn.execute("UPDATE mem SET note = note || '!' WHERE id % 10 = 0")
    incremental = run_json(cli, env, "backup", "create", "--physical", "--incremental")
    assert incremental["type"] == "incremental"
    assert incremental["parent"] == full["id"] and incremental["chain"] == full["id"]
    assert incremental["size"] < full["size"] / 2

    with env.connect() as conn:
        conn.execute("INSERT INTO mem (note) VALUES ('MARKER')")
        expected = fingerprint(conn)
        time.sleep(1.1)
        moment = dt.datetime.now(dt.UTC)
        time.sleep(1.1)
        conn.execute("DELETE FROM mem WHERE id % 3 = 0")
        conn.execute("INSERT INTO mem (note) VALUES ('after-delete')")
        assert fingerprint(conn) != expected

    listing = run_json(cli, env, "backup", "physical", "list")
    ids = [b["id"] for b in listing["backups"]]
    assert full["id"] in ids and incremental["id"] in ids

    target = env.base / "pitr"
    restored = run_json(cli, env, "backup", "restore", "--physical", "--to-time",
                        moment.isoformat(), "--target-dir", str(target))
    assert restored["chain"] == [full["id"], incremental["id"]]
    scratch = _Scratch(env.engine, target, 120)
    try:
        scratch.start()
        scratch.wait_promoted()
        import psycopg

        with psycopg.connect(scratch.conninfo("aegis"), autocommit=True) as conn:
            assert fingerprint(conn) == expected
    finally:
        scratch.stop()

    drill = run_json(cli, env, "backup", "drill", "--physical", "--to-time", moment.isoformat())
    assert drill["ok"], drill
    assert drill["row_counts"]["public.mem"] == expected[0]
    checks = {c["name"]: c for c in drill["checks"]}
    assert checks["pg_amcheck"]["ok"]
    assert checks["hnsw public.mem_emb_hnsw"]["ok"]
    assert "used by a nearest-neighbour query" in checks["hnsw public.mem_emb_hnsw"]["detail"]
    # The drill cleaned up after itself.
    assert not any((env.engine.home / "drills").iterdir())


def test_guard_rails(cli: Any, physical_env: PhysicalEnv, tmp_path: Path) -> None:
    if os.geteuid() == 0:  # pytest's own tmp folder is 0700: out of the server user's reach
        result = cli("-c", str(physical_env.config), "backup", "restore", "--physical",
                     "--latest", "--target-dir", str(tmp_path / "unreachable"))
        assert result.exit_code == 2 and "cannot enter" in result.stderr
    env = physical_env
    tmp_path = env.base / "guard"  # as root, restored servers' user must reach it
    tmp_path.mkdir()
    if not any(b.usable for b in list_physical(env.engine)):
        run_json(cli, env, "backup", "create", "--physical")
    # --to-time outside the recoverable window: refused with the window in the message.
    result = cli("-c", str(env.config), "backup", "restore", "--physical", "--to-time",
                 "2001-01-01T00:00:00Z", "--target-dir", str(tmp_path / "old"))
    assert result.exit_code == 2
    assert "outside the recoverable window" in result.stderr and " .. " in result.stderr
    assert not (tmp_path / "old").exists()
    # Never into a non-empty directory.
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    result = cli("-c", str(env.config), "backup", "restore", "--physical", "--latest",
                 "--target-dir", str(busy))
    assert result.exit_code == 2 and "not empty" in result.stderr
    assert (busy / "keep.txt").read_text() == "mine"
    # A bad --to-time, an unknown parent.
    result = cli("-c", str(env.config), "backup", "restore", "--physical", "--to-time",
                 "yesterday", "--target-dir", str(tmp_path / "x"))
    assert result.exit_code == 2 and "ISO 8601" in result.stderr
    result = cli("-c", str(env.config), "backup", "create", "--physical", "--incremental",
                 "--parent", "20000101T000000")
    assert result.exit_code == 2 and "no physical backup" in result.stderr
    result = cli("-c", str(env.config), "backup", "restore", "--physical", "--latest",
                 "--to-lsn", "0/1; rm", "--target-dir", str(tmp_path / "y"))
    assert result.exit_code == 2 and "not an LSN" in result.stderr
    result = cli("-c", str(env.config), "backup", "restore", "--latest",
                 "--target-dir", str(tmp_path / "z"))
    assert result.exit_code == 2 and "--physical" in result.stderr
    result = cli("-c", str(env.config), "backup", "drill")
    assert result.exit_code == 2 and "--physical" in result.stderr
    # No incremental while summarize_wal is off.
    with env.connect() as conn:
        conn.execute("ALTER SYSTEM SET summarize_wal = off")
        conn.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)
        result = cli("-c", str(env.config), "backup", "create", "--physical", "--incremental")
        assert result.exit_code == 2 and "summarize_wal" in result.stderr
    finally:
        with env.connect() as conn:
            conn.execute("ALTER SYSTEM SET summarize_wal = on")
            conn.execute("SELECT pg_reload_conf()")


def test_killed_streamer_resumes_without_a_gap(cli: Any, physical_env: PhysicalEnv) -> None:
    env = physical_env
    run_json(cli, env, "backup", "create", "--physical")  # recovery starts before the outage
    env.stop_streaming()
    streamer = subprocess.Popen(
        [sys.executable, "-m", "aegisctl", "-c", str(env.config), "backup", "wal", "stream"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            with env.connect() as conn:
                active = conn.execute("SELECT active FROM pg_replication_slots "
                                      "WHERE slot_name = 'aegisctl_barman'").fetchone()
            if active == (True,):
                break
            assert time.monotonic() < deadline, "the streamer did not connect"
            time.sleep(0.5)
        os.kill(streamer.pid, signal.SIGKILL)
        streamer.wait(30)
    finally:
        if streamer.poll() is None:
            os.killpg(streamer.pid, signal.SIGKILL)
        if streamer.stderr:
            streamer.stderr.close()
    # While nobody streams, the slot keeps the WAL: write across several segments.
    deadline = time.monotonic() + 30
    while True:  # the orphaned receiver got SIGTERM with its parent's death
        with env.connect() as conn:
            active = conn.execute("SELECT active FROM pg_replication_slots "
                                  "WHERE slot_name = 'aegisctl_barman'").fetchone()
        if active == (False,):
            break
        assert time.monotonic() < deadline, "the receiver outlived its supervisor"
        time.sleep(0.5)
    status = run_json(cli, env, "backup", "wal", "status", code=1)
    assert status is not None and status["streaming"] is False
    refused = cli("-c", str(env.config), "backup", "create", "--physical")
    assert refused.exit_code == 1 and "WAL streaming is not running" in refused.stderr
    with env.connect() as conn:
        insert_rows(conn, 20, "while-down")
        for _ in range(3):
            conn.execute("SELECT pg_switch_wal()")
            insert_rows(conn, 1, "segment")
        expected = fingerprint(conn)
    env.start_streaming()
    wait_archived(env, segments=4)
    names = sorted(w[0] for w in archived_wals(env.engine) if len(w[0]) == 24)
    numbers = [int(n[8:16], 16) * 256 + int(n[16:], 16) for n in names]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "gap in the archive"
    drill = run_json(cli, env, "backup", "drill", "--physical")
    assert drill["ok"], drill
    assert drill["row_counts"]["public.mem"] == expected[0]
    status = run_json(cli, env, "backup", "wal", "status")
    assert status["streaming"] and status["recoverable_window"]["start"]


def test_prune_keeps_recent_chains_and_list_shows_them(
        cli: Any, physical_env: PhysicalEnv) -> None:
    env = physical_env
    if not any(b.usable for b in list_physical(env.engine)):
        run_json(cli, env, "backup", "create", "--physical")
    plan = run_json(cli, env, "backup", "physical", "prune", "--dry-run")
    assert plan["delete"] == {} and plan["keep"]
    result = cli("-c", str(env.config), "backup", "physical", "prune")
    assert result.exit_code == 0  # nothing to delete: no confirmation needed
    listing = run_json(cli, env, "backup", "physical", "list")
    assert all(b["kind"] == "physical" for b in listing["backups"])
    assert listing["recoverable_window"]["start"] is not None
    # The same backups in `backup list` and `backup prune`, beside the logical ones.
    both = run_json(cli, env, "backup", "list", "--local")
    assert [b["id"] for b in both["physical"]["backups"]] == \
        [b["id"] for b in listing["backups"]]
    assert "backups" in both  # the logical listing keeps its shape
    pruned = run_json(cli, env, "backup", "prune", "--dry-run")
    assert pruned["physical"]["delete"] == {} and pruned["physical"]["keep"]


def test_check_measurements_see_streaming_backups_and_the_drill(
        cli: Any, physical_env: PhysicalEnv) -> None:
    from aegisctl.backup.physical.check import physical_measurements

    env = physical_env
    if not any(b.usable for b in list_physical(env.engine)):
        run_json(cli, env, "backup", "create", "--physical")
    run_json(cli, env, "backup", "drill", "--physical")
    measured = physical_measurements(env.loaded, env.target)
    assert measured.enabled and measured.streaming
    assert measured.slot_retained_bytes is not None and not measured.slot_lost
    assert measured.last_backup_age_seconds is not None
    assert measured.last_drill_age_seconds is not None and measured.last_drill_age_seconds < 600
    assert measured.problems() == []
    assert measured.to_json()["problems"] == []
    checked = cli("-c", str(env.config), "check", "--only", "physical_backups", "--format",
                  "json")
    results = {r["name"]: r for r in json.loads(checked.stdout)["targets"][0]["checks"]}
    assert {results[n]["status"] for n in ("wal_streaming", "wal_slot_retained",
                                           "physical_backup_age", "physical_drill_age")} \
        == {"OK"}, results


def test_physical_restore_and_drill_replay_the_erasure_ledger(
        cli: Any, physical_env: PhysicalEnv) -> None:
    """forget after a physical backup; a point-in-time restore and a drill to a moment before
    the forget delete the forgotten memories again and say so."""
    import psycopg

    env = physical_env
    assert cli("-c", str(env.config), "schema", "init").exit_code == 0
    with env.connect() as conn:
        for i in range(6):
            conn.execute("INSERT INTO episodic_memory (event_type, summary, context) "
                         "VALUES ('chat', %s, %s::jsonb)",
                         (f"talk {i}", json.dumps({"agent": "alice" if i % 2 else "bob"})))
    run_json(cli, env, "backup", "create", "--physical")
    time.sleep(1.1)
    moment = dt.datetime.now(dt.UTC)
    time.sleep(1.1)
    forgot = run_json(cli, env, "memory", "forget", "--context", "agent=alice", "--reason",
                      "request", "--yes")
    assert forgot["deleted"]["episodic"] == 3

    drill = run_json(cli, env, "backup", "drill", "--physical", "--to-time", moment.isoformat())
    assert drill["ok"], drill
    assert drill["erasures"]["rows_removed"] == 3
    assert {c["name"]: c for c in drill["checks"]}["erasure ledger"]["ok"]

    target = env.base / "pitr-forget"
    restored = run_json(cli, env, "backup", "restore", "--physical", "--to-time",
                        moment.isoformat(), "--target-dir", str(target))
    assert restored["erasures"]["rows_removed"] == 3
    scratch = _Scratch(env.engine, target, 120)
    try:
        scratch.start()
        with psycopg.connect(scratch.conninfo("aegis"), autocommit=True) as conn:
            left = conn.execute("SELECT count(*) FILTER (WHERE context->>'agent' = 'alice'), "
                                "count(*) FROM episodic_memory").fetchone()
            assert left == (0, 3)
            assert conn.execute("SELECT count(*) FROM aegis_erasures").fetchone() == (3,)
    finally:
        scratch.stop()
