"""Fault suite, memory forget: the memory tables and the erasure ledger never disagree.

Each batch deletes its memories and writes their ledger rows in one transaction: a forget
killed (`kill -9`) between batches leaves whole, recorded batches, which the next `backup
create` copies beside the backups; a session lost inside a batch (before its commit) deletes
nothing of it and records nothing of it.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import psycopg
import yaml
from conftest import dsn_of
from fault_fixtures import run_aegisctl, start_paused


def _setup(conn: psycopg.Connection[Any], tmp_path: Path) -> Path:
    conn.autocommit = True
    for i in range(10):
        conn.execute("INSERT INTO episodic_memory (event_type, summary, context) "
                     "VALUES ('chat', %s, '{\"agent\": \"alice\"}')", (f"secret {i}",))
    config = tmp_path / "aegisctl.yaml"
    config.write_text(yaml.safe_dump({
        "targets": {"primary": {"dsn": dsn_of(conn)}},
        "connection": {"retry": {"attempts": 1}},
        "backup": {"directory": str(tmp_path / "backups")},
        "cleanup": {"batch_size": 3, "min_batch_size": 3}}))
    return config


def _state(conn: psycopg.Connection[Any]) -> tuple[set[int], set[int]]:
    """(ids still there, ids in the ledger)."""
    left = {r[0] for r in conn.execute("SELECT id FROM episodic_memory")}
    ledger = {r[0] for r in conn.execute("SELECT memory_id FROM aegis_erasures")}
    return left, ledger


FORGET = ("memory", "forget", "--context", "agent=alice", "--reason", "request", "--yes")


def test_a_forget_killed_between_batches_leaves_whole_recorded_batches(
        aegis_db, tmp_path) -> None:
    config = _setup(aegis_db, tmp_path)
    every = _state(aegis_db)[0]
    paused = start_paused("forget.batch-committed", "--config", str(config), *FORGET,
                          tmp_path=tmp_path)
    paused.kill(signal.SIGKILL)  # its first batch committed
    left, ledger = _state(aegis_db)
    assert len(ledger) == 3 and ledger == every - left  # exactly the deleted rows, recorded
    # The next backup copies the database's ledger beside the backups.
    made = run_aegisctl("--config", str(config), "backup", "create", "--format", "json")
    assert made.returncode == 0, made.stderr
    copy = json.loads((tmp_path / "backups" / "primary" / "erasure-ledger.json").read_text())
    assert {e["memory_id"] for e in copy["entries"]} == ledger
    again = run_aegisctl("--config", str(config), *FORGET)
    assert again.returncode == 0, again.stderr
    left, ledger = _state(aegis_db)
    assert left == set() and ledger == every


def test_a_session_lost_inside_a_batch_deletes_and_records_nothing_of_it(
        aegis_db, tmp_path) -> None:
    config = _setup(aegis_db, tmp_path)
    every = _state(aegis_db)[0]
    paused = start_paused("forget.batch-deleted", "--config", str(config), *FORGET,
                          tmp_path=tmp_path)
    aegis_db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE application_name LIKE 'aegisctl memory forget%'")
    _out, err = paused.resume()
    assert paused.proc.returncode != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[0].startswith("forget 10 memories"), err  # what it was about to touch
    assert len(lines) == 2 and lines[1].startswith("aegisctl: error: lost the connection"), err
    assert _state(aegis_db) == (every, set())
