"""backup verify takes the target's backup lock: a prune cannot delete the backup it reads, and
a busy lock is exit 4 (or a wait with --wait-lock)."""

# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from backup_fixtures import backup_config, fill  # noqa: F401  (fixtures)

from aegisctl.errors import LockBusy
from aegisctl.locks import lock_file_at as target_lock


def _create(cli: Any, cfg: Path) -> dict[str, Any]:
    result = cli("--config", str(cfg), "backup", "create", "--verify", "none", "--format",
                 "json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def _manifest(tmp_path: Path, backup_id: str) -> dict[str, Any]:
    path = tmp_path / "backups" / "primary" / f"{backup_id}.manifest.json"
    return dict(json.loads(path.read_text()))


def test_verify_exits_4_while_another_run_holds_the_lock(cli, aegis_db, backup_config,
                                                         tmp_path) -> None:
    fill(aegis_db, rows=4)
    cfg = backup_config()
    backup = _create(cli, cfg)
    lock = tmp_path / "state" / "locks" / "primary.lock"
    with target_lock(lock, "backup prune"):
        busy = cli("--config", str(cfg), "backup", "verify", backup["id"])
        assert busy.exit_code == 4, busy.output
        assert "backup prune" in busy.stderr and "--wait-lock" in busy.stderr
        assert cli("--config", str(cfg), "backup", "verify", "--latest").exit_code == 4
    assert _manifest(tmp_path, backup["id"]).get("verification") is None  # nothing recorded

    # Usage errors are not hidden behind the lock.
    with target_lock(lock, "backup prune"):
        assert cli("--config", str(cfg), "backup", "verify", "nonsense").exit_code == 2

    # --wait-lock waits for the holder, then verifies.
    release = threading.Event()

    def hold() -> None:
        with target_lock(lock, "backup create"):
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.3)
    threading.Timer(1.0, release.set).start()
    waited = cli("--config", str(cfg), "backup", "verify", backup["id"], "--wait-lock", "20",
                 "--format", "json")
    holder.join()
    assert waited.exit_code == 0, waited.output
    assert json.loads(waited.stdout)["ok"] is True
    assert _manifest(tmp_path, backup["id"])["verification"]["status"] == "ok"


def test_prune_cannot_run_while_verify_reads(aegis_db, backup_config, cli, tmp_path) -> None:
    """A real `backup verify --restore-test` process holds the lock from start to end: every
    attempt to take it meanwhile (what prune does before deleting) is refused, naming verify."""
    fill(aegis_db, rows=20)
    cfg = backup_config()
    backup = _create(cli, cfg)
    lock = tmp_path / "state" / "locks" / "primary.lock"
    proc = subprocess.Popen([sys.executable, "-m", "aegisctl", "--config", str(cfg), "backup",
                             "verify", backup["id"], "--restore-test", "--wait-lock", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    refusals: list[str] = []
    while proc.poll() is None:
        try:
            with target_lock(lock, "test"):
                pass
        except LockBusy as exc:
            refusals.append(exc.message)
        time.sleep(0.02)
    _out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert refusals, "verify never held the backup lock"
    assert all("backup verify" in r for r in refusals)
    assert _manifest(tmp_path, backup["id"])["restore_test"]["status"] == "ok"
