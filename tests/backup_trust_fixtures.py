"""Helpers for the trust-boundary backup tests: making backups through the CLI and editing
their manifests the way an attacker (or a bad disk) would."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def create(cli: Any, cfg: Path, *args: str) -> dict[str, Any]:
    result = cli("--config", str(cfg), "backup", "create", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def listing(cli: Any, cfg: Path, *args: str) -> dict[str, Any]:
    result = cli("--config", str(cfg), "backup", "list", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def edit_manifest(path: Path, **changes: Any) -> dict[str, Any]:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return data


def hostile_copy(folder: Path, source_id: str, new_id: str, paths: list[str],
                 finished_at: str = "2020-01-01T00:00:00Z") -> Path:
    """A manifest for `new_id`, copied from a real one, whose files point elsewhere."""
    data = json.loads((folder / f"{source_id}.manifest.json").read_text())
    real = data["files"][0]
    data["id"] = new_id
    data["finished_at"] = data["started_at"] = finished_at
    data["files"] = [{**real, "path": p} for p in paths]
    path = folder / f"{new_id}.manifest.json"
    path.write_text(json.dumps(data))
    return path


def age(path: Path, days: float) -> None:
    moment = path.stat().st_mtime - days * 86400
    os.utime(path, (moment, moment), follow_symlinks=False)


def aws_env(monkeypatch: Any) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
