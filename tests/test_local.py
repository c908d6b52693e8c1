"""The embedded server: lifecycle through the CLI, left running between commands, retries while
it restarts, and the root/ordinary-user rules."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegisctl import paths
from aegisctl.config import load_config
from aegisctl.db import connect
from aegisctl.errors import ConfigError
from aegisctl.local import EmbeddedServer, is_root
from aegisctl.targets import resolve_target


@pytest.fixture(scope="module")
def spare_dir() -> Iterator[Path]:
    """A folder for a second embedded server that this module starts and stops itself."""
    base = Path(tempfile.mkdtemp(prefix="aegisctl-local-"))
    base.chmod(0o755)
    yield base
    EmbeddedServer(base / "pgdata").stop()
    shutil.rmtree(base, ignore_errors=True)


def test_local_lifecycle_through_cli(cli, spare_dir: Path) -> None:
    data = str(spare_dir / "pgdata")
    status = json.loads(cli("--data-dir", data, "local", "status", "-f", "json").stdout)
    assert status["initialized"] is False and status["running"] is False

    started = cli("--data-dir", data, "local", "start", "-f", "json")
    assert started.exit_code == 0, started.output
    first = json.loads(started.stdout)
    assert first["running"] and first["started_now"]
    assert first["server_version"] == "18"

    # Left running: a second start is a no-op on the same process.
    again = json.loads(cli("--data-dir", data, "local", "start", "-f", "json").stdout)
    assert again["pid"] == first["pid"] and again["started_now"] is False

    uri = cli("--data-dir", data, "local", "uri").stdout.strip()
    assert uri.startswith("postgresql://postgres@/aegis?host=")

    # Commands on the embedded default use it and leave it running.
    health = cli("--data-dir", data, "health", "-f", "json")
    assert health.exit_code == 0, health.output
    report = json.loads(health.stdout)
    assert report["embedded"] and report["database"] == "aegis"
    assert report["server_version"].startswith("18")
    assert json.loads(cli("--data-dir", data, "local", "status", "-f", "json").stdout)["pid"] == \
        first["pid"]

    stopped = cli("--data-dir", data, "local", "stop")
    assert stopped.exit_code == 0 and "stopped" in stopped.stdout
    assert cli("--data-dir", data, "local", "stop").stdout.strip() == "not running"


def test_embedded_server_preloads_pg_stat_statements(cli, spare_dir: Path) -> None:
    server = EmbeddedServer(spare_dir / "pgdata")
    server.ensure_running()
    import psycopg

    with psycopg.connect(server.uri(), autocommit=True) as conn:
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()
        assert preload is not None and "pg_stat_statements" in preload[0]
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
        listen = conn.execute("SHOW listen_addresses").fetchone()
        assert listen == ("",)


def test_socket_dir_private(spare_dir: Path) -> None:
    status = EmbeddedServer(spare_dir / "pgdata").ensure_running()
    assert status.socket_dir is not None
    assert os.stat(status.socket_dir).st_mode & 0o077 == 0


def test_two_servers_with_sibling_data_dirs_both_start(spare_dir: Path) -> None:
    """Data directories that share a parent folder get a socket folder each: the second server
    does not meet the first one's .s.PGSQL.5432.lock."""
    import psycopg

    first = EmbeddedServer(spare_dir / "pgdata")
    second = EmbeddedServer(spare_dir / "pgdata-sibling")
    try:
        first.ensure_running()
        status = second.ensure_running()
        assert status.running and status.socket_dir != first.status().socket_dir
        for server in (first, second):
            with psycopg.connect(server.uri(), autocommit=True) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
                assert row is not None and Path(row[0]) == server.data_dir
    finally:
        second.stop()


def test_connect_retries_while_server_restarts(clean_env, spare_dir: Path, write_config) -> None:
    """Connection refused while the server restarts is transient: retried, then succeeds."""
    server = EmbeddedServer(spare_dir / "pgdata")
    server.ensure_running()
    server.stop()
    path = write_config({"embedded": {"data_dir": str(spare_dir / "pgdata")},
                         "connection": {"retry": {"attempts": 8, "initial_delay": "0.5s",
                                                  "max_delay": "1s"}}})
    loaded = load_config(str(path))
    target = resolve_target(loaded)
    assert target.embedded

    # Point at the stopped server's socket directly (embedded targets would start it).
    socket_dir = paths.socket_dir(spare_dir / "pgdata")
    target.embedded = False
    target.dsn = f"postgresql://postgres@/aegis?host={socket_dir}"
    restarter = threading.Timer(1.0, server.ensure_running)
    restarter.start()
    try:
        with connect(loaded, target, "test") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        restarter.join()


@pytest.mark.skipif(not is_root(), reason="root-only rule")
def test_root_refuses_data_dir_its_user_cannot_reach(tmp_path: Path) -> None:
    private = Path(tempfile.mkdtemp(prefix="aegisctl-private-"))  # 0700, owned by root
    try:
        with pytest.raises(ConfigError, match="cannot enter"):
            EmbeddedServer(private / "deep" / "pgdata").ensure_running()
        # and nothing was widened
        assert private.stat().st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _python_for(user: str, env: dict[str, str]) -> str | None:
    """A Python of this version that `user` can run with this environment's packages (the
    environment's own interpreter may live under /root, which other users cannot enter)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/python{version}",
                      f"/usr/local/bin/python{version}"):
        if not Path(candidate).exists():
            continue
        probe = subprocess.run(
            ["runuser", "-m", "-u", user, "--", candidate, "-c", "import aegisctl, psycopg, typer"],
            capture_output=True, cwd="/", env=env)
        if probe.returncode == 0:
            return candidate
    return None


@pytest.mark.skipif(not is_root(), reason="needs root to switch to an ordinary user")
def test_works_as_an_ordinary_user(tmp_path: Path) -> None:
    """As an unprivileged user the server runs as that user, data under XDG_DATA_HOME."""
    user = "nobody"
    try:
        pwd.getpwnam(user)
    except KeyError:
        pytest.skip("no 'nobody' user")
    home = Path(tempfile.mkdtemp(prefix="aegisctl-user-"))
    os.chown(home, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    home.chmod(0o700)
    site_packages = sysconfig.get_paths()["purelib"]
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_COLOR": "1",
           "PYTHONPATH": f"{Path(__file__).parent.parent}:{site_packages}"}
    python = _python_for(user, env)
    if python is None:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip("no Python with this environment's packages is readable by an ordinary user")
    aegisctl = [python, "-m", "aegisctl"]
    try:
        done = subprocess.run(["runuser", "-m", "-u", user, "--", *aegisctl, "health", "-f", "json"],
                              capture_output=True, text=True, env=env, cwd="/", timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["embedded"] is True
        status = json.loads(subprocess.run(
            ["runuser", "-m", "-u", user, "--", *aegisctl, "local", "status", "-f", "json"],
            capture_output=True, text=True, env=env, cwd="/", timeout=60, check=True).stdout)
        assert status["data_dir"] == str(home / ".local" / "share" / "aegisctl" / "pgdata")
        assert status["run_as"] is None
        owner = pwd.getpwuid(os.stat(status["data_dir"]).st_uid).pw_name
        assert owner == user
        # A HOME the user cannot write to is a one-line configuration error, not a traceback.
        bad = subprocess.run(["runuser", "-m", "-u", user, "--", *aegisctl, "local", "start"],
                             capture_output=True, text=True, cwd="/", timeout=60,
                             env={**env, "HOME": "/nonexistent", "XDG_DATA_HOME": ""})
        assert bad.returncode == 2, bad.stderr
        assert "cannot create /nonexistent/.local/share/aegisctl" in bad.stderr
    finally:
        subprocess.run(["runuser", "-m", "-u", user, "--", *aegisctl, "local", "stop"],
                       env=env, cwd="/", capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)
        time.sleep(0.1)


def test_health_reports_a_standby(cli, spare_dir: Path, write_config) -> None:
    """A real streaming standby of an embedded server answers health as role 'standby'."""
    primary = EmbeddedServer(spare_dir / "pgdata")
    status = primary.ensure_running()
    standby_parent = spare_dir / "standby"
    standby_parent.mkdir(mode=0o755, exist_ok=True)
    standby_dir = standby_parent / "pgdata"
    ids = primary._service_uid()
    if ids:
        os.chown(standby_parent, *ids)
    primary._run([primary._bin("pg_basebackup"), "-D", str(standby_dir), "-R", "-X", "stream", "-c", "fast",
                  "-h", str(status.socket_dir), "-U", "postgres"], "clone a standby")
    standby = EmbeddedServer(standby_dir)
    try:
        standby_status = standby.ensure_running()
        path = write_config({"targets": {
            "primary": {"dsn": primary.uri()},
            "replica": {"dsn": standby.uri(), "role": "replica"},
        }})
        result = cli("--config", str(path), "--target", "replica", "health", "-f", "json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["role"] == "standby"
        assert standby_status.socket_dir != status.socket_dir
        primary_report = json.loads(cli("--config", str(path), "health", "-f", "json").stdout)
        assert primary_report["role"] == "primary"
    finally:
        standby.stop()
