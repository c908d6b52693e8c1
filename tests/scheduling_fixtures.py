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


class LineCollector:
    """Collects a running process's stderr lines in a thread; wait_for() polls them."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import threading

        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def events(self) -> list[dict[str, Any]]:
        import json

        found = []
        for line in list(self.lines):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def wait_for(self, predicate: Any, timeout: float = 60) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            if self.proc.poll() is not None:
                self._thread.join(2)
                if predicate(self):
                    return
                raise AssertionError(f"process ended ({self.proc.returncode}): {self.lines}")
            time.sleep(0.1)
        raise AssertionError(f"timed out; stderr so far: {self.lines}")

    def count(self, name: str, **fields: Any) -> int:
        return sum(1 for e in self.events() if e.get("event") == name
                   and all(e.get(k) == v for k, v in fields.items()))
