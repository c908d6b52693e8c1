"""`backup restore --latest` means the newest backup one can rely on: never one whose
verification failed."""

# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backup_fixtures import backup_config  # noqa: F401  (fixture)


def _create(cli: Any, cfg: Path) -> str:
    result = cli("--config", str(cfg), "backup", "create", "--format", "json")
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["id"])


def _fail(folder: Path, backup_id: str) -> None:
    path = folder / f"{backup_id}.manifest.json"
    data = json.loads(path.read_text())
    data["verification"]["status"] = "failed"
    data["verification"]["problems"] = ["pg_restore --list: damaged"]
    path.write_text(json.dumps(data))


def _restore_latest(cli: Any, cfg: Path) -> Any:
    return cli("--config", str(cfg), "backup", "restore", "--latest", "--target-db",
               "aegis_latest_here", "--dry-run", "--format", "json")


def test_latest_passes_over_a_backup_whose_verification_failed(cli, aegis_db, backup_config,
                                                               tmp_path) -> None:
    cfg = backup_config()
    older, newer = _create(cli, cfg), _create(cli, cfg)
    folder = tmp_path / "backups" / "primary"
    plan = _restore_latest(cli, cfg)
    assert plan.exit_code == 0 and newer in plan.stdout

    _fail(folder, newer)
    plan = _restore_latest(cli, cfg)
    assert plan.exit_code == 0, plan.output
    assert older in plan.stdout and newer not in plan.stdout
    assert f"passed over {newer} (verification failed); picked {older}" in plan.stderr

    _fail(folder, older)
    refused = _restore_latest(cli, cfg)
    assert refused.exit_code == 2
    assert "every complete backup of target 'primary' failed its verification" in refused.stderr
    # Named on purpose, a failed backup is still the user's to restore.
    by_id = cli("--config", str(cfg), "backup", "restore", newer, "--target-db",
                "aegis_latest_here", "--dry-run", "--format", "json")
    assert by_id.exit_code == 0, by_id.output
