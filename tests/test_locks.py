"""The one per-target lock: it lives in the state folder, names its holder, and every command
that changes the database or its backups takes it (with --wait-lock)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from backup_fixtures import fill
from memory_fixtures import episodic, jsonl

from aegisctl.locks import lock_file_at

GOOD = [episodic(f"memory number {i} about billing") for i in range(5)]


def _lock(tmp_path: Path) -> Path:
    return tmp_path / "state" / "locks" / "primary.lock"


def test_lock_lives_in_the_state_folder_and_names_its_holder(cli, aegis_db, aegis_dsn,
                                                             write_config, tmp_path) -> None:
    fill(aegis_db, rows=4)
    cfg = write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                        "connection": {"retry": {"attempts": 1}},
                        "backup": {"directory": str(tmp_path / "backups")}})
    created = cli("--config", str(cfg), "backup", "create", "--verify", "none", "--format",
                  "json")
    assert created.exit_code == 0, created.output
    backup_id = json.loads(created.stdout)["id"]
    assert _lock(tmp_path).is_file()
    assert not (tmp_path / "backups" / "primary" / ".lock").exists()

    with lock_file_at(_lock(tmp_path), "backup prune"):
        for args in (["backup", "keep", backup_id], ["backup", "unkeep", backup_id],
                     ["backup", "create", "--physical"], ["backup", "drill", "--physical"]):
            busy = cli("--config", str(cfg), *args)
            assert busy.exit_code == 4, (args, busy.output)
            assert "backup prune, pid" in busy.stderr and "--wait-lock" in busy.stderr

    # keep waits with --wait-lock, then pins the backup.
    release = threading.Event()

    def hold() -> None:
        with lock_file_at(_lock(tmp_path), "backup create"):
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.3)
    threading.Timer(1.0, release.set).start()
    kept = cli("--config", str(cfg), "backup", "keep", backup_id, "--wait-lock", "20")
    holder.join()
    assert kept.exit_code == 0, kept.output
    manifest = tmp_path / "backups" / "primary" / f"{backup_id}.manifest.json"
    assert json.loads(manifest.read_text())["pinned"] is True


def test_memory_reembed_takes_the_lock(cli, make_config, tmp_path: Path, memory_db: Any) -> None:
    config = make_config(embedding={"provider": "none"})
    source = tmp_path / "m.jsonl"
    source.write_text(jsonl(GOOD))
    assert cli("--config", str(config), "memory", "import", str(source)).exit_code == 0
    config = make_config()
    with lock_file_at(_lock(tmp_path), "maint vacuum"):
        busy = cli("--config", str(config), "memory", "reembed", "--missing")
        assert busy.exit_code == 4, busy.output
        assert "maint vacuum" in busy.stderr
    done = cli("--config", str(config), "memory", "reembed", "--missing", "-f", "json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["updated"]["episodic"] == 5


def test_a_busy_lock_never_names_the_previous_holder(tmp_path: Path) -> None:
    """Between taking the flock and writing its description, a new holder's file must not
    still name the run before it: the leaving run clears it, and a reader that finds it empty
    waits for the new description."""
    import fcntl
    import os

    from aegisctl.errors import LockBusy

    path = tmp_path / "locks" / "t.lock"
    with lock_file_at(path, "backup prune"):
        pass
    assert path.read_text() == ""  # the leaving run cleared its description

    # A new holder that has the flock but has not written yet, then writes 50 ms later.
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def describe_late() -> None:
        time.sleep(0.05)
        os.pwrite(fd, (json.dumps({"command": "backup verify", "pid": os.getpid(),
                                   "host": "h", "user": "u", "started_at": "now"}) + "\n"
                       ).encode(), 0)

    writer = threading.Thread(target=describe_late)
    writer.start()
    try:
        with lock_file_at(path, "test"):
            raise AssertionError("the lock was free")
    except LockBusy as exc:
        assert "backup verify" in exc.message and "backup prune" not in exc.message
    finally:
        writer.join()
        os.close(fd)
