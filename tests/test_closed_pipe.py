"""`aegisctl ... | head`: a reader that goes away ends the command quietly (exit 0, nothing on
stderr), whichever output path was writing (rich tables, JSON)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("args", [["config", "show"], ["--format", "json", "config", "show"],
                                  ["config", "validate"]])
def test_closed_pipe_exits_quietly(args: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AEGISCTL_", "PG"))}
    env["HOME"] = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "aegisctl", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # no reader at all: the first write meets a closed pipe
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert stderr == ""
