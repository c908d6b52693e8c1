"""`aegisctl local stop` disconnects every session (fast shutdown): when clients are connected it
says how many and which, and asks (or needs --yes); --dry-run stops nothing; with nobody
connected it stops as it always did."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aegisctl.local import EmbeddedServer


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    base = Path(tempfile.mkdtemp(prefix="aegisctl-stop-"))
    base.chmod(0o755)
    server = EmbeddedServer(base / "pgdata")
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


def _client(server: EmbeddedServer, app: str) -> psycopg.Connection[Any]:
    server.ensure_running()
    return psycopg.connect(server.uri(), autocommit=True, application_name=app)


def _alive(conn: psycopg.Connection[Any]) -> bool:
    try:
        return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def _answered(server: EmbeddedServer, answer: bytes) -> subprocess.CompletedProcess[str]:
    """`local stop` with a terminal as stdin, given `answer` to its question."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AEGISCTL_") or k == "AEGISCTL_STATE_DIR"}
    try:
        os.write(master, answer)  # read by the prompt when it asks
        return subprocess.run([sys.executable, "-m", "aegisctl", "--data-dir",
                               str(server.data_dir), "local", "stop"], stdin=slave,
                              capture_output=True, text=True, env=env, timeout=120)
    finally:
        os.close(slave)
        os.close(master)


def test_stop_says_which_sessions_it_would_disconnect_and_needs_yes(
        cli, server: EmbeddedServer) -> None:
    data = str(server.data_dir)
    agent = _client(server, "agent-worker")
    try:
        dry = cli("--data-dir", data, "local", "stop", "--dry-run", "-f", "json")
        assert dry.exit_code == 0, dry.output
        report = json.loads(dry.stdout)
        assert report["dry_run"] is True and report["stopped"] is False
        [session] = report["sessions"]
        assert session["application"] == "agent-worker" and session["user"] == "postgres"
        assert session["client"] == "local socket" and session["database"] == "aegis"
        table = cli("--data-dir", data, "local", "stop", "--dry-run")
        assert "would stop; would disconnect 1 session(s)" in table.stdout
        assert "agent-worker" in table.stdout
        assert server.status().running and _alive(agent)

        # Not a terminal and no --yes: refused before anything stops, naming the sessions.
        refused = cli("--data-dir", data, "local", "stop")
        assert refused.exit_code == 2, refused.output
        assert "1 session(s) connected to the embedded server" in refused.stderr
        assert "agent-worker" in refused.stderr and "--yes" in refused.stderr
        assert server.status().running and _alive(agent)

        # On a terminal: "no" keeps it running, "yes" stops it.
        declined = _answered(server, b"n\n")
        assert declined.returncode == 1, declined.stderr
        assert "Stop the embedded server and disconnect 1 session(s)?" in declined.stderr
        assert "nothing was changed" in declined.stderr
        assert server.status().running and _alive(agent)
        accepted = _answered(server, b"y\n")
        assert accepted.returncode == 0, accepted.stderr
        assert "stopped; disconnected 1 session(s)" in accepted.stdout
        assert not server.status().running and not _alive(agent)
    finally:
        agent.close()

    agent = _client(server, "agent-worker")
    try:
        done = cli("--data-dir", data, "local", "stop", "--yes", "-f", "json")
        assert done.exit_code == 0, done.output
        report = json.loads(done.stdout)
        assert report["stopped"] is True
        assert [s["application"] for s in report["sessions"]] == ["agent-worker"]
        assert not _alive(agent)
    finally:
        agent.close()


def test_stop_with_nobody_connected_does_not_ask(cli, server: EmbeddedServer) -> None:
    server.ensure_running()
    data = str(server.data_dir)
    stopped = cli("--data-dir", data, "local", "stop")
    assert stopped.exit_code == 0, stopped.output
    assert stopped.stdout.strip() == "stopped"
    assert not server.status().running
    again = cli("--data-dir", data, "local", "stop", "--dry-run", "-f", "json")
    assert again.exit_code == 0
    assert json.loads(again.stdout) == {"stopped": False, "data_dir": data, "dry_run": True,
                                        "sessions": []}
