"""The one progress helper (aegisctl.cli.progress): progress shows on a terminal only, never
with --quiet and never with --log-format json (stderr is read by a machine then); the result
on stdout is the same either way."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest


def _on_a_terminal(argv: list[str]) -> tuple[int, str, str]:
    """stderr on a pseudo-terminal (a person watching), stdout on a pipe."""
    main, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AEGISCTL_") or k == "AEGISCTL_STATE_DIR"}
    env.update(NO_COLOR="1", COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "aegisctl", *argv], stdout=subprocess.PIPE,
                            stderr=secondary, stdin=subprocess.DEVNULL, env=env)
    os.close(secondary)
    err = b""
    while True:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            err += chunk
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    return proc.wait(timeout=120), out, err.decode(errors="replace").replace("\r\n", "\n")


@pytest.fixture
def config(aegis_dsn: str, write_config, tmp_path: Path) -> Path:
    return write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                         "connection": {"retry": {"attempts": 1}},
                         "backup": {"directory": str(tmp_path / "backups"),
                                    "verify_after_create": "none"},
                         "scheduler": {"state_dir": str(tmp_path / "state")}})  # its own lock


def test_progress_on_a_terminal_only_and_never_quiet_or_json_logs(config: Path) -> None:
    # backup create's one-line spinner ("dumping: 1.2 MB") and maint's status lines share
    # the helper; the spinner is the one a timer's log must never get.
    command = ["--config", str(config), "backup", "create", "-f", "json"]
    code, out, err = _on_a_terminal(command)
    assert code == 0, err
    assert "checksumming: " in err or "dumping: " in err, err
    result = json.loads(out)

    code, quiet_out, quiet_err = _on_a_terminal(["--quiet", *command])
    assert code == 0, quiet_err
    assert quiet_err.strip() == ""
    assert json.loads(quiet_out).keys() == result.keys()

    code, json_out, json_err = _on_a_terminal(["--log-format", "json", *command])
    assert code == 0, json_err
    assert "dumping" not in json_err and "checksumming" not in json_err
    for line in json_err.splitlines():  # whatever is logged is one JSON object per line
        if line.strip():
            json.loads(line)
    assert json.loads(json_out).keys() == result.keys()

    # Not a terminal (a timer): nothing on stderr either.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AEGISCTL_") or k == "AEGISCTL_STATE_DIR"}
    timer = subprocess.run([sys.executable, "-m", "aegisctl", *command], capture_output=True,
                           text=True, env=env, timeout=120)
    assert timer.returncode == 0, timer.stderr
    assert timer.stderr == ""
