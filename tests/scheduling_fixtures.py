"""Helpers for the scheduling tests: a config with a schedule against the test database, and
aegisctl run as a real subprocess (the way systemd and cron start it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parent.parent


def schedule_config(path: Path, dsn: str, jobs: dict[str, Any], state_dir: Path,
                    **scheduler: Any) -> Path:
    path.write_text(yaml.safe_dump({
        "targets": {"primary": {"dsn": dsn}},
        "connection": {"retry": {"attempts": 1}},
        "schedule": jobs,
        "scheduler": {"state_dir": str(state_dir), **scheduler},
    }, sort_keys=False))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AEGISCTL_", "PG")) and k != "NO_COLOR"}
    env.update(NO_COLOR="1", **extra)
    return env


def aegisctl(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
             **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aegisctl", *args], capture_output=True,
                          text=True, timeout=timeout, env=env or clean_env(), **kwargs)


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "aegisctl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or clean_env())
