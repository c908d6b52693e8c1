"""The rendered units' sandbox, for real: each service's ExecStart runs with its Environment= and
EnvironmentFile= inside a read-only root where only its ReadWritePaths= are writable (Debian's
bubblewrap builds that without systemd), and the job succeeds. A unit missing a folder its
command writes (the lock, an archive folder) fails here.

PrivateTmp= is a fresh /tmp, into which the test's own folder (config, environment file) and
the test server's socket folder are mounted read-only. Not emulated: User= (the test runs as
whoever runs the suite; root cannot write to a read-only mount either)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

BWRAP = shutil.which("bwrap")
pytestmark = pytest.mark.skipif(BWRAP is None,
                                reason="bubblewrap is not installed (Debian: bubblewrap)")


def _service(content: str) -> dict[str, Any]:
    unit: dict[str, Any] = {"env": {}, "rw": [], "env_file": None}
    for line in content.splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            unit["argv"] = value.split()
        elif key == "Environment":
            name, _, val = value.partition("=")
            unit["env"][name] = val
        elif key == "EnvironmentFile":
            unit["env_file"] = value.removeprefix("-")
        elif key == "ReadWritePaths":
            unit["rw"] = [p.removeprefix("-") for p in value.split()]
    return unit


def _run_sandboxed(unit: dict[str, Any], visible: list[str]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "HOME": unit["env"]["AEGISCTL_STATE_DIR"], **unit["env"]}
    if unit["env_file"] and Path(unit["env_file"]).exists():
        for line in Path(unit["env_file"]).read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                name, _, value = line.partition("=")
                env[name.strip()] = value.strip()
    argv = [BWRAP, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--die-with-parent"]
    for path in visible:
        argv += ["--ro-bind", path, path]
    for path in unit["rw"]:
        os.makedirs(path, mode=0o700, exist_ok=True)  # what `systemd install` prints
        argv += ["--bind", path, path]
    argv += ["--clearenv"]
    for name, value in env.items():
        argv += ["--setenv", name, value]
    return subprocess.run([*argv, "--", *unit["argv"]], capture_output=True, text=True,
                          timeout=300)


def test_each_unit_runs_with_only_its_read_write_paths_writable(
        cli, aegis_db: psycopg.Connection[Any], aegis_dsn: str, write_config,
        tmp_path: Path) -> None:
    aegis_db.execute("INSERT INTO container_metrics (container_name, cpu_percent, \"timestamp\")"
                     " SELECT 'c', 1, now() - interval '90 days' FROM generate_series(1, 50)")
    # One live row: a policy that would empty its table is refused without --allow-emptying.
    aegis_db.execute("INSERT INTO container_metrics (container_name, cpu_percent) VALUES"
                     " ('live', 1)")
    aegis_db.commit()
    env_file = tmp_path / "aegisctl.env"
    env_file.write_text("AEGIS_UNUSED_SECRET=x\n")
    config = write_config({
        "targets": {"primary": {"dsn": aegis_dsn}},
        "connection": {"retry": {"attempts": 1}},
        "backup": {"directory": str(tmp_path / "backups"), "verify_after_create": "none"},
        "cleanup": {"archive_dir": str(tmp_path / "archive"), "policies": {
            "metrics": {"table": "container_metrics", "column": "timestamp", "max_age": "30d",
                        "archive": True}}},
        "schedule": {"backup": {"command": "backup create", "at": "02:00"},
                     "cleanup": {"command": "cleanup run --yes", "at": "03:00"},
                     "vacuum": {"command": "maint vacuum --table container_metrics",
                                "at": "04:00"}},
        "scheduler": {"state_dir": str(tmp_path / "state"),
                      "systemd": {"environment_file": str(env_file)}},
    })
    rendered = cli("--config", str(config), "systemd", "render", "-f", "json")
    assert rendered.exit_code == 0, rendered.output
    units = {u["name"]: _service(u["content"]) for u in json.loads(rendered.stdout)["units"]
             if u["name"].endswith(".service")}
    assert units["aegisctl-vacuum.service"]["rw"] == [str(tmp_path / "state")]
    assert str(tmp_path / "archive") in units["aegisctl-cleanup.service"]["rw"]
    assert str(tmp_path / "backups") not in units["aegisctl-cleanup.service"]["rw"]

    socket_dir = aegis_db.info.host  # the test server's Unix socket folder (or a host name)
    visible = [str(tmp_path)] + ([socket_dir] if socket_dir.startswith("/") else [])
    # aegisctl itself must stay reachable under PrivateTmp's fresh /tmp: a checkout and venv
    # under /tmp (as in CI) are mounted read-only, as a real install outside /tmp would be seen.
    import aegisctl

    for installed in (Path(sys.prefix), Path(aegisctl.__file__).resolve().parents[1]):
        if installed.is_relative_to("/tmp"):
            visible.append(str(installed))
    for name in ("aegisctl-backup.service", "aegisctl-cleanup.service",
                 "aegisctl-vacuum.service"):
        done = _run_sandboxed(units[name], visible)
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
    statuses = aegis_db.execute("SELECT job, status FROM aegis_job_runs ORDER BY job").fetchall()
    assert statuses == [("backup", "succeeded"), ("cleanup", "succeeded"),
                        ("vacuum", "succeeded")]
    assert list((tmp_path / "archive").rglob("*.jsonl.gz"))
    assert aegis_db.execute("SELECT container_name FROM container_metrics").fetchall() == [
        ("live",)]


def test_units_carry_the_data_dir_secrets_and_the_running_aegisctl(cli, write_config,
                                                                   tmp_path: Path) -> None:
    env_file = tmp_path / "secrets.env"
    config = write_config({
        "backup": {"directory": str(tmp_path / "backups"),
                   "physical": {"directory": str(tmp_path / "barman")}},
        "schedule": {"health": {"command": "health", "every": "5m"}},
        "scheduler": {"state_dir": str(tmp_path / "state"),
                      "systemd": {"environment_file": str(env_file)}},
    })
    data_dir = tmp_path / "pgdata"
    rendered = cli("--config", str(config), "--data-dir", str(data_dir), "systemd", "render",
                   "--wal-stream", "-f", "json")
    assert rendered.exit_code == 0, rendered.output
    units = {u["name"]: u["content"] for u in json.loads(rendered.stdout)["units"]}
    running = str(Path(sys.executable).parent / "aegisctl")
    for name in ("aegisctl-health.service", "aegisctl-wal-stream.service"):
        lines = units[name].splitlines()
        assert f"Environment=AEGISCTL_DATA_DIR={data_dir}" in lines, name
        assert f"EnvironmentFile=-{env_file}" in lines, name
        assert next(ln for ln in lines if ln.startswith("ExecStart=")).startswith(
            f"ExecStart={running} "), name


@pytest.mark.skipif(os.geteuid() != 0, reason="the printed steps chown to root")
def test_printed_install_steps_are_safe_to_paste_twice(cli, write_config,
                                                       tmp_path: Path) -> None:
    env_file = tmp_path / "etc" / "aegisctl.env"
    config = write_config({
        "backup": {"directory": str(tmp_path / "backups")},
        "schedule": {"backup": {"command": "backup create", "at": "02:00"}},
        "scheduler": {"state_dir": str(tmp_path / "state"),
                      "systemd": {"environment_file": str(env_file)}},
    })
    dry = cli("--config", str(config), "systemd", "install", "--unit-dir",
              str(tmp_path / "units"), "--dry-run", "-f", "json")
    assert dry.exit_code == 0, dry.output
    [step] = [c for c in json.loads(dry.stdout)["commands"] if str(env_file) in c]
    subprocess.run(["bash", "-c", step], check=True)
    assert env_file.stat().st_mode & 0o777 == 0o600
    env_file.write_text("AEGIS_DB_PASSWORD=secret\n")
    subprocess.run(["bash", "-c", step], check=True)  # pasted again
    assert env_file.read_text() == "AEGIS_DB_PASSWORD=secret\n"
