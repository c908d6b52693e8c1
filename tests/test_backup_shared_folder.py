"""Two databases whose logical backups share one folder (every embedded database is the target
`embedded`): prune and --latest act on the target's own database system only."""

# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backup_fixtures import backup_config  # noqa: F401  (fixture)

OTHER_SYSTEM = "7000000000000000001"


def _create(cli: Any, cfg: Path) -> str:
    result = cli("--config", str(cfg), "backup", "create", "--format", "json")
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["id"])


def _rewrite(folder: Path, backup_id: str, **fields: Any) -> None:
    path = folder / f"{backup_id}.manifest.json"
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def test_prune_and_latest_leave_another_systems_backups_alone(cli, aegis_db, backup_config,
                                                             tmp_path) -> None:
    cfg = backup_config(retention={"keep_days": 7, "min_keep": 1})
    ids = [_create(cli, cfg) for _ in range(4)]
    folder = tmp_path / "backups" / "primary"
    own = json.loads((folder / f"{ids[0]}.manifest.json").read_text())["system_id"]
    assert own and own.isdigit() and own != OTHER_SYSTEM
    # The two oldest and the newest come from another database with the same target name.
    for n, backup_id in enumerate(ids):
        fields: dict[str, Any] = {"finished_at": f"2020-01-{1 + n:02d}T00:00:00Z"}
        if n in (0, 1, 3):
            fields["system_id"] = OTHER_SYSTEM
        _rewrite(folder, backup_id, **fields)

    dry = cli("--config", str(cfg), "backup", "prune", "--dry-run", "--format", "json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    # Only ids[2] is ours: the policy keeps it (min_keep 1) and touches none of the others.
    assert plan["delete"] == {} and ids[2] in plan["keep"]
    assert set(plan["untouched"]) == {ids[0], ids[1], ids[3]}
    assert all(OTHER_SYSTEM in why for why in plan["untouched"].values())
    done = cli("--config", str(cfg), "backup", "prune", "--yes")
    assert done.exit_code == 0, done.output
    assert len(list(folder.glob("*.manifest.json"))) == 4

    # --latest is the newest of our own, not the other database's newer dump.
    plan = cli("--config", str(cfg), "backup", "restore", "--latest", "--target-db",
               "aegis_restored_here", "--dry-run", "--format", "json")
    assert plan.exit_code == 0, plan.output
    assert ids[2] in plan.stdout and ids[3] not in plan.stdout

    # A single database system in the folder (ours gone): the policy applies as before.
    _rewrite(folder, ids[2], system_id=OTHER_SYSTEM)
    again = cli("--config", str(cfg), "backup", "prune", "--dry-run", "--format", "json")
    assert set(json.loads(again.stdout)["delete"]) == {ids[0], ids[1], ids[2]}

    # The next backup says the folder is shared.
    made = cli("--config", str(cfg), "backup", "create")
    assert made.exit_code == 0, made.output
    assert f"also holds backups of another database system (system identifier {OTHER_SYSTEM})" \
        in made.stderr


def test_a_system_id_that_is_not_one_makes_the_manifest_untrusted(cli, aegis_db, backup_config,
                                                                 tmp_path) -> None:
    cfg = backup_config()
    backup_id = _create(cli, cfg)
    _rewrite(tmp_path / "backups" / "primary", backup_id, system_id="../../etc")
    listed = cli("--config", str(cfg), "backup", "list", "--format", "json")
    row = json.loads(listed.stdout)["backups"][0]
    assert row["id"] == backup_id and row["state"] == "manifest unreadable"
    assert "system_id is not a database system identifier" in row["problems"][0]


def test_latest_with_only_other_systems_backups_says_so(cli, aegis_db, backup_config,
                                                       tmp_path) -> None:
    """A fresh database beside a folder of two other databases' dumps: --latest names why it
    picks none and how to restore one anyway, instead of "no complete local backup"."""
    cfg = backup_config()
    ids = [_create(cli, cfg) for _ in range(2)]
    folder = tmp_path / "backups" / "primary"
    _rewrite(folder, ids[0], system_id=OTHER_SYSTEM)
    _rewrite(folder, ids[1], system_id="7000000000000000002")
    plan = cli("--config", str(cfg), "backup", "restore", "--latest", "--target-db",
               "aegis_restored_here", "--dry-run")
    assert plan.exit_code == 2, plan.output
    assert "2 backup(s)" in plan.stderr and "other database systems" in plan.stderr
    assert "backup restore ID" in plan.stderr, plan.stderr
