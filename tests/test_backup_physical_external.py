"""Physical backups of an external target: a separate PostgreSQL server reached over TCP with a
SCRAM password (a `targets:` DSN + password_file), not the embedded one. First it runs with
wal_level = minimal (enable says a restart is needed), then its pg_hba.conf refuses replication
connections, and every command says so in one line with the fix; once the
line is added, enable, the background WAL streamer, full and incremental backups and the drill
work."""
# ruff: noqa: F811  (the fixture imported from the fixtures module is a parameter here)

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from physical_external_fixtures import (  # noqa: F401
    REPLICATION_HBA,
    ROLE,
    ExternalEnv,
    external_env,
)

pytestmark = pytest.mark.slow


def _slot_active(env: ExternalEnv) -> bool:
    with env.as_role() as conn:
        row = conn.execute("SELECT active FROM pg_replication_slots "
                           "WHERE slot_name = 'aegisctl_barman'").fetchone()
    return row == (True,)


def _wait(condition: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_external_target_over_tcp_with_a_password(
        cli: Any, external_env: ExternalEnv, tmp_path: Path) -> None:
    env = external_env
    c = ("-c", str(env.config))
    hba_fix = f"host replication {ROLE} 127.0.0.1/32 scram-sha-256"

    # wal_level = minimal: enable sets what it can, and says a restart is needed, first.
    enabled = cli(*c, "backup", "physical", "enable", "--format", "json")
    assert enabled.exit_code == 1, enabled.output
    report = json.loads(enabled.stdout)
    assert set(report["restart_needed"]) == {"wal_level", "max_wal_senders"}
    assert not report["slot_exists"]  # a slot cannot exist before the restart
    error = [ln for ln in enabled.stderr.splitlines() if ln.startswith("aegisctl: error:")]
    assert len(error) == 1 and "restart of the server is needed for wal_level" in error[0]
    assert "service manager" in error[0]
    refused = cli(*c, "backup", "physical", "enable", "--restart")
    assert refused.exit_code == 2 and "only restarts the embedded server" in refused.stderr
    env.restart()  # as the DBA would

    # pg_hba.conf refuses replication: enable does all it can, then says what to add.
    enabled = cli(*c, "backup", "physical", "enable", "--format", "json")
    assert enabled.exit_code == 1, enabled.output
    report = json.loads(enabled.stdout)
    assert report["configured"] and report["slot_exists"]
    assert any(hba_fix in p for p in report["problems"]), report["problems"]
    error = [ln for ln in enabled.stderr.splitlines() if ln.startswith("aegisctl: error:")]
    assert len(error) == 1 and hba_fix in error[0] and "pg_hba.conf" in error[0]
    assert env.password not in enabled.output  # never printed
    barman_conf = (env.base / "barman" / "barman.d" / f"{report['server']}.conf").read_text()
    assert report["server"] == f"ext-{report['system_id']}"
    assert env.password not in barman_conf and "passfile" in barman_conf

    streamer_log = tmp_path / "stream.log"
    with open(streamer_log, "w") as log_handle:
        streamer = subprocess.Popen(
            [sys.executable, "-m", "aegisctl", *c, "-v", "backup", "wal", "stream"],
            stdout=subprocess.DEVNULL, stderr=log_handle, start_new_session=True)
    try:
        # The streamer keeps retrying, and says why in aegisctl's words, not "check the log".
        _wait(lambda: hba_fix in streamer_log.read_text(), "the streamer to explain itself", 60)
        refused = cli(*c, "backup", "create", "--physical")
        assert refused.exit_code == 1 and hba_fix in refused.stderr, refused.output
        status = cli(*c, "backup", "wal", "status", "--format", "json")
        assert status.exit_code == 1
        assert any(hba_fix in p for p in json.loads(status.stdout)["problems"])

        env.set_hba(REPLICATION_HBA)
        _wait(lambda: _slot_active(env), "the streamer to connect after the pg_hba fix")
        again = cli(*c, "backup", "physical", "enable", "--format", "json")
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["problems"] == []
        assert cli(*c, "backup", "physical", "status").exit_code == 0

        full = cli(*c, "backup", "create", "--physical", "--format", "json")
        assert full.exit_code == 0, full.output
        full_json = json.loads(full.stdout)
        assert full_json["type"] == "full" and full_json["verified"] == "good"
        with env.as_role() as conn:
            conn.execute("INSERT INTO mem (note) SELECT 'later' || g "
                         "FROM generate_series(1, 50) g")
            expected = conn.execute("SELECT count(*) FROM mem").fetchone()
        incremental = cli(*c, "backup", "create", "--physical", "--incremental",
                          "--format", "json")
        assert incremental.exit_code == 0, incremental.output
        inc_json = json.loads(incremental.stdout)
        assert inc_json["parent"] == full_json["id"] and inc_json["verified"] == "good"
        assert inc_json["size"] < full_json["size"]

        drill = cli(*c, "backup", "drill", "--physical", "--format", "json")
        assert drill.exit_code == 0, drill.output
        drilled = json.loads(drill.stdout)
        assert drilled["ok"] and drilled["chain"] == [full_json["id"], inc_json["id"]]
        assert expected is not None and drilled["row_counts"]["public.mem"] == expected[0]
        checks = {x["name"]: x for x in drilled["checks"]}
        assert checks["hnsw public.mem_emb_hnsw"]["ok"]
        # `check` sees the external target's streaming, slot, backups and drill.
        checked = cli(*c, "check", "--only", "physical_backups", "--format", "json")
        results = {r["name"]: r["status"]
                   for r in json.loads(checked.stdout)["targets"][0]["checks"]}
        assert {results[n] for n in ("wal_streaming", "wal_slot_retained",
                                     "physical_backup_age", "physical_drill_age")} == {"OK"}, \
            results
    finally:
        streamer.send_signal(signal.SIGTERM)
        try:
            code = streamer.wait(60)
        except subprocess.TimeoutExpired:
            streamer.kill()
            code = streamer.wait()
    assert code == 0, streamer_log.read_text()[-2000:]
    assert env.password not in streamer_log.read_text()
