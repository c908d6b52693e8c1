"""Fault suite, messages (issue 18, defect 13): what aegisctl says when something goes wrong
must be true and complete: signal kills named the one way, no heading with nothing after it,
durations as configured, no privilege advice to a role that has the privilege."""

from __future__ import annotations

import logging
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import dsn_of


def test_max_age_is_printed_as_configured(cli, write_config, tmp_path) -> None:
    cfg = write_config({"backup": {"directory": str(tmp_path / "b"), "max_age": "36h"}})
    listed = cli("--config", str(cfg), "backup", "list", "--local")
    assert "backup.max_age is 36h" in listed.stderr, listed.stderr


def test_signal_kills_are_named_one_way() -> None:
    from aegisctl.backup.physical.engine import last_line
    from aegisctl.backup.tools import restore_error
    from aegisctl.children import exit_cause

    killed = subprocess.run(["sh", "-c", "echo started >&2; kill -9 $$"], capture_output=True,
                            text=True)
    assert exit_cause(killed.returncode) == "killed by signal SIGKILL"
    assert restore_error(killed.stderr, killed.returncode) == "killed by signal SIGKILL"
    assert last_line(killed) == "killed by signal SIGKILL"
    assert exit_cause(3) == "exit code 3"


def test_a_heading_is_never_shown_without_what_follows_it() -> None:
    from aegisctl.backup.physical.engine import last_line

    # What Barman prints when pg_basebackup fails: the reason is on the line after the heading.
    barman = subprocess.run(
        ["sh", "-c", "echo 'ERROR: Backup failed copying files.' >&2;"
                     "echo 'DETAILS: data transfer failure' >&2; echo 'pg_basebackup error:' >&2;"
                     "echo 'pg_basebackup: could not connect to server: Connection refused' >&2;"
                     "exit 1"], capture_output=True, text=True)
    line = last_line(barman)
    assert not line.endswith(":"), line
    assert "Connection refused" in line


@pytest.fixture
def wal_receiver(aegis_db: psycopg.Connection[Any], tmp_path: Path) -> Any:
    """A real pg_receivewal streaming from the test server (what Barman runs): a walsender
    that never replays."""
    from aegisctl.local import bundled_bin_dir

    aegis_db.autocommit = True
    folder = tmp_path / "wal"
    folder.mkdir()
    info = aegis_db.info
    proc = subprocess.Popen([str(bundled_bin_dir() / "pg_receivewal"), "-D", str(folder),
                             "-h", info.host, "-p", str(info.port), "-U", info.user, "-n",
                             "--status-interval=1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = aegis_db.execute("SELECT count(*) FROM pg_stat_replication"
                                   " WHERE sent_lsn IS NOT NULL").fetchone()
            if row and row[0]:
                break
            if proc.poll() is not None:
                pytest.fail(f"pg_receivewal ended: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.1)
        else:
            states = aegis_db.execute("SELECT state, sent_lsn FROM pg_stat_replication"
                                      ).fetchall()
            pytest.fail(f"pg_receivewal did not start streaming: {states}")
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_no_pg_monitor_advice_while_barman_streams(aegis_db, wal_receiver, caplog) -> None:
    from aegisctl.retention.batches import Pacer
    from aegisctl.retention.settings import CleanupSettings

    caplog.set_level(logging.WARNING, logger="aegisctl")
    pacer = Pacer(CleanupSettings(), aegis_db, lambda: False)
    assert pacer.lag() == (0, 0.0)  # a WAL receiver has no replay lag to wait for
    assert "pg_monitor" not in caplog.text  # a superuser sees everything

    # A role that cannot see the walsenders' positions is still told (the advice is true).
    role = f"aegis_probe_{secrets.token_hex(3)}"
    aegis_db.execute(f"CREATE ROLE {role} LOGIN")
    try:
        with psycopg.connect(dsn_of(aegis_db, user=role), autocommit=True) as probe:
            Pacer(CleanupSettings(), probe, lambda: False).lag()
        assert "grant pg_monitor" in caplog.text
    finally:
        aegis_db.execute(f"DROP ROLE {role}")


def test_no_rollback_noise_when_the_server_ended_the_session(aegis_db, aegis_dsn) -> None:
    """A command fails while the server has already ended its session (a shutdown): psycopg
    would add "error ignored in rollback on <Connection ...>" under the real error; aegisctl
    reports the error once and keeps the driver's noise for --debug. (A child process: under
    pytest the logging module's last-resort output to stderr is captured away.)"""
    import sys

    script = f"""
import time, psycopg
from aegisctl.cli.context import AppState, setup_logging
setup_logging(AppState())
conn = psycopg.connect({aegis_dsn!r})
print(conn.execute("SELECT pg_backend_pid()").fetchone()[0], flush=True)
time.sleep(2)  # meanwhile the test ends the session, as a server shutdown does
try:
    with conn:
        raise RuntimeError("the real error")
except RuntimeError:
    pass
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    pid = int(child.stdout.readline())
    aegis_db.autocommit = True
    aegis_db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    _out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "error ignored" not in err, err
