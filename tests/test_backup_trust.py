"""The backup folder is a trust boundary: hostile or damaged manifests are reported and never
acted on, `backup list` tells the truth, prune deletes exactly what it showed, pins hold, and
filesystem failures are one line. Real PostgreSQL, real files, the CLI as a user runs it."""

# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from backup_fixtures import backup_config, fill  # noqa: F401  (fixtures)
from backup_trust_fixtures import age, create, edit_manifest, hostile_copy, listing

OLD_ID = "20200101T000000Z"


def _folder(tmp_path: Path) -> Path:
    return tmp_path / "backups" / "primary"


@pytest.mark.parametrize("hostile", ["../../outside.dump", "/ABS/outside.dump",
                                     "20200101T000000Z.dir/../../../outside.dump"])
def test_verify_refuses_a_manifest_pointing_outside(cli, aegis_db, backup_config, tmp_path,
                                                    hostile) -> None:
    cfg = backup_config()
    m = create(cli, cfg)
    folder = _folder(tmp_path)
    outside = tmp_path / "outside.dump"
    shutil.copy(folder / m["files"][0]["path"], outside)  # a perfect copy: it would "verify"
    path = hostile.replace("/ABS", str(tmp_path))
    hostile_copy(folder, m["id"], OLD_ID, [path])
    result = cli("--config", str(cfg), "backup", "verify", OLD_ID)
    assert result.exit_code == 1, result.output
    assert "manifest" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    for command in (["restore", OLD_ID, "--target-db", "never_created", "--yes"],
                    ["keep", OLD_ID]):
        refused = cli("--config", str(cfg), "backup", *command)
        assert refused.exit_code != 0, refused.output
    row = {b["id"]: b for b in listing(cli, cfg)["backups"]}[OLD_ID]
    assert row["state"] == "manifest unreadable"
    assert outside.exists()


def test_prune_never_follows_a_hostile_manifest(cli, aegis_db, backup_config,
                                                tmp_path) -> None:
    cfg = backup_config(retention={"keep_days": 7, "min_keep": 1})
    ids = [create(cli, cfg)["id"] for _ in range(2)]
    folder = _folder(tmp_path)
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("must survive")
    hostile_copy(folder, ids[0], OLD_ID, [".."])
    hostile_copy(folder, ids[0], "20200102T000000Z", [str(sentinel)])
    hostile_copy(folder, ids[0], "20200103T000000Z", ["../../sentinel.txt"])
    dry = cli("--config", str(cfg), "backup", "prune", "--dry-run", "--format", "json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert set(plan["untouched"]) == {OLD_ID, "20200102T000000Z", "20200103T000000Z"}
    assert plan["delete"] == {}
    done = cli("--config", str(cfg), "backup", "prune", "--yes")
    assert done.exit_code == 0, done.output
    assert sentinel.read_text() == "must survive"
    for backup_id in ids:
        assert (folder / f"{backup_id}.dump").is_file()
        assert (folder / f"{backup_id}.manifest.json").is_file()
    listed = listing(cli, cfg)
    assert listed["newest_good"] == ids[-1]


def test_symlinked_dump_is_not_followed(cli, aegis_db, backup_config, tmp_path) -> None:
    cfg = backup_config(retention={"keep_days": 0, "min_keep": 1})
    first = create(cli, cfg)
    create(cli, cfg)
    folder = _folder(tmp_path)
    dump = folder / f"{first['id']}.dump"
    outside = tmp_path / "elsewhere.dump"
    shutil.move(dump, outside)
    dump.symlink_to(outside)
    verify = cli("--config", str(cfg), "backup", "verify", first["id"])
    assert verify.exit_code == 1
    assert "symlink" in verify.stdout
    edit_manifest(folder / f"{first['id']}.manifest.json", finished_at="2020-01-01T00:00:00Z")
    done = cli("--config", str(cfg), "backup", "prune", "--yes", "--format", "json")
    assert done.exit_code == 0, done.output
    assert first["id"] in json.loads(done.stdout)["deleted"]
    assert not dump.is_symlink() and outside.is_file()  # the link went, never its target


def test_list_tells_the_truth_and_problems_exit_1(cli, aegis_db, backup_config,
                                                  tmp_path) -> None:
    cfg = backup_config()
    ids = [create(cli, cfg)["id"] for _ in range(4)]
    folder = _folder(tmp_path)
    assert cli("--config", str(cfg), "backup", "list", "--problems").exit_code == 0
    (folder / f"{ids[0]}.dump").unlink()  # dump gone, manifest says ok
    (folder / f"{ids[1]}.manifest.json").unlink()  # manifest gone, dump left
    (folder / f"{ids[2]}.manifest.json").write_text("{not json")
    rows = {b["id"]: b for b in listing(cli, cfg)["backups"]}
    assert rows[ids[0]]["state"] == "missing files" and rows[ids[0]]["problems"]
    assert rows[ids[1]]["state"] == "no manifest"
    assert rows[ids[2]]["state"] == "manifest unreadable"
    assert rows[ids[3]]["state"] == "ok"
    assert all(b["type"] == "logical" for b in rows.values())
    result = cli("--config", str(cfg), "backup", "list", "--problems")
    assert result.exit_code == 1
    for backup_id in ids[:3]:
        assert backup_id in result.stderr
    # The dump without its manifest is not leaked forever: prune removes it once old.
    cfg2 = backup_config(name="prune.yaml", retention={"keep_days": 7, "min_keep": 1})
    age(folder / f"{ids[1]}.dump", 30)
    plan = json.loads(cli("--config", str(cfg2), "backup", "prune", "--dry-run",
                          "--format", "json").stdout)
    assert ids[1] in plan["delete"] and ids[2] in plan["untouched"]
    assert cli("--config", str(cfg2), "backup", "prune", "--yes").exit_code == 0
    assert not (folder / f"{ids[1]}.dump").exists()
    assert (folder / f"{ids[2]}.manifest.json").exists()


def test_missing_dump_is_not_a_good_backup(cli, aegis_db, backup_config, tmp_path) -> None:
    cfg = backup_config()
    m = create(cli, cfg)
    (_folder(tmp_path) / m["files"][0]["path"]).unlink()
    listed = listing(cli, cfg)
    assert listed["newest_good"] is None and listed["stale"] is True


def test_pinned_backup_survives_prune_and_unkeep_releases_it(cli, aegis_db, backup_config,
                                                            tmp_path) -> None:
    cfg = backup_config(retention={"keep_days": 7, "min_keep": 1})
    ids = [create(cli, cfg)["id"] for _ in range(3)]
    folder = _folder(tmp_path)
    for n, backup_id in enumerate(ids[:2]):
        edit_manifest(folder / f"{backup_id}.manifest.json",
                      finished_at=f"2020-01-0{n + 1}T00:00:00Z")
    pinned = cli("--config", str(cfg), "backup", "keep", ids[0], "--format", "json")
    assert pinned.exit_code == 0 and json.loads(pinned.stdout)["pinned"] is True
    done = cli("--config", str(cfg), "backup", "prune", "--yes", "--format", "json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["deleted"] == [ids[1]]
    assert [b["id"] for b in listing(cli, cfg)["backups"]] == [ids[0], ids[2]]
    assert cli("--config", str(cfg), "backup", "unkeep", ids[0]).exit_code == 0
    again = cli("--config", str(cfg), "backup", "prune", "--yes", "--format", "json")
    assert json.loads(again.stdout)["deleted"] == [ids[0]]
    assert [b["id"] for b in listing(cli, cfg)["backups"]] == [ids[2]]


def test_prune_deletes_only_the_confirmed_plan(aegis_db, backup_config, tmp_path) -> None:
    from aegisctl.backup.dump import CreateOptions
    from aegisctl.backup.prune import apply_prune, plan_prune
    from aegisctl.backup.service import run_create, set_pinned
    from aegisctl.config import load_config
    from aegisctl.targets import resolve_target

    cfg = backup_config(retention={"keep_days": 7, "min_keep": 1})
    loaded = load_config(str(cfg), env={})
    target = resolve_target(loaded, env={})
    ids = [run_create(loaded, target, CreateOptions()).manifest.id for _ in range(4)]
    folder = _folder(tmp_path)
    for n, backup_id in enumerate(ids[:2]):
        edit_manifest(folder / f"{backup_id}.manifest.json",
                      finished_at=f"2020-01-0{n + 1}T00:00:00Z")
    plan = plan_prune(loaded, target)
    assert set(plan.delete) == {ids[0], ids[1]}
    # Between the question and the answer: one is pinned, another becomes deletable.
    set_pinned(loaded, target, ids[0], True)
    edit_manifest(folder / f"{ids[2]}.manifest.json", finished_at="2020-01-03T00:00:00Z")
    result = apply_prune(loaded, target, plan)
    assert result.deleted == [ids[1]]
    assert "pinned" in result.skipped[ids[0]]
    assert (folder / f"{ids[2]}.manifest.json").exists()  # never shown, never deleted


def test_labels_are_printed_inert_and_ids_never_truncated(cli, aegis_db, backup_config,
                                                          monkeypatch) -> None:
    cfg = backup_config()
    m = create(cli, cfg, "--label", "[pre-upgrade] nightly")
    create(cli, cfg, "--label", "[bold red]x[/] \x1b[31mred " + "long words " * 40)
    monkeypatch.setenv("COLUMNS", "80")
    table = cli("--config", str(cfg), "backup", "list")
    assert table.exit_code == 0, table.output
    assert "[pre-upgrade] nightly" in table.stdout
    assert "[bold red]x[/]" in table.stdout and "\x1b" not in table.stdout
    assert "\\x1b[31m" in table.stdout
    assert m["id"] in table.stdout
    for command in (["keep", m["id"]], ["unkeep", m["id"]], ["verify", m["id"]]):
        out = cli("--config", str(cfg), "backup", *command, "--format", "json")
        assert out.exit_code == 0, out.output
        json.loads(out.stdout)


def test_key_generate_into_a_missing_folder_is_one_line(cli, tmp_path) -> None:
    result = cli("backup", "key-generate", str(tmp_path / "nope" / "backup.key"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr and "unexpected" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    made = cli("backup", "key-generate", str(tmp_path / "k.key"), "--format", "json")
    assert made.exit_code == 0 and len(json.loads(made.stdout)["key_id"]) == 16
    again = cli("backup", "key-generate", str(tmp_path / "k.key"))
    assert again.exit_code == 1 and "refusing to overwrite" in again.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to hand the folder to another user")
def test_folder_owned_by_someone_else_is_one_line(aegis_db, backup_config, tmp_path) -> None:
    """As root without CAP_FOWNER/CAP_DAC_OVERRIDE (what a plain user sees): the target's
    folder belongs to another user."""
    cfg = backup_config()
    folder = _folder(tmp_path)
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    os.chown(folder, 65534, 65534)
    os.chown(folder.parent, 65534, 65534)
    exe = Path(sys.executable).with_name("aegisctl")
    done = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", str(exe),
                           "--config", str(cfg), "backup", "create"], capture_output=True,
                          text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr
    assert "backup folder" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# -- encrypted files: every kind of tampering is rejected ----------------------------------


def _encrypted(tmp_path: Path, chunks: int = 4, size: int = 64) -> tuple[Path, object, bytes]:
    from aegisctl.backup import crypto

    key = crypto.BackupKey(os.urandom(32), "test")
    plain = os.urandom(size * chunks - 7)
    path = tmp_path / "sample.enc"
    with open(path, "wb") as out:
        writer = crypto.EncryptingWriter(out, key, chunk_size=size)
        writer.write(plain)
        writer.close()
    return path, key, plain


def _chunks(data: bytes) -> tuple[bytes, list[bytes]]:
    header, rest, chunks = data[:28], data[28:], []
    while rest:
        length = struct.unpack(">I", rest[1:5])[0]
        chunks.append(rest[: 5 + length])
        rest = rest[5 + length:]
    return header, chunks


def _decrypts(path: Path, key: object) -> bytes:
    from aegisctl.backup import crypto

    with open(path, "rb") as handle:
        return b"".join(crypto.decrypt_stream(handle, key, path.name))  # type: ignore[arg-type]


def test_intact_encrypted_file_round_trips(tmp_path) -> None:
    path, key, plain = _encrypted(tmp_path)
    assert _decrypts(path, key) == plain
    assert len(_chunks(path.read_bytes())[1]) == 4


@pytest.mark.parametrize("tamper", ["flip", "drop", "reorder", "append", "header",
                                    "truncate", "drop-final"])
def test_tampered_encrypted_file_is_rejected(tmp_path, tamper) -> None:
    from aegisctl.errors import AegisError

    path, key, _ = _encrypted(tmp_path)
    data = path.read_bytes()
    header, chunks = _chunks(data)
    if tamper == "flip":
        changed = bytearray(data)
        changed[len(data) // 2] ^= 0x01
        data = bytes(changed)
    elif tamper == "drop":
        data = header + b"".join(chunks[:1] + chunks[2:])
    elif tamper == "reorder":
        data = header + b"".join([chunks[1], chunks[0], *chunks[2:]])
    elif tamper == "append":
        data = data + chunks[-1]
    elif tamper == "header":
        data = header[:16] + bytes(8) + header[24:] + b"".join(chunks)  # nonce prefix
    elif tamper == "truncate":
        data = data[:-10]
    elif tamper == "drop-final":
        data = header + b"".join(chunks[:-1])
    path.write_bytes(data)
    with pytest.raises(AegisError):
        _decrypts(path, key)


def test_backup_health_for_check(aegis_db, backup_config, cli, tmp_path) -> None:
    from aegisctl.backup.status import backup_health
    from aegisctl.config import load_config

    cfg = backup_config()
    loaded = load_config(str(cfg), env={})
    empty = backup_health(loaded.settings.backup, "primary")
    assert empty.last_good_at is None and empty.backups == 0
    m = create(cli, cfg)
    assert cli("--config", str(cfg), "backup", "verify", m["id"], "--restore-test").exit_code == 0
    assert cli("--config", str(cfg), "backup", "verify", m["id"]).exit_code == 0  # quick again
    health = backup_health(loaded.settings.backup, "primary")
    assert health.last_good_id == m["id"] and health.problems == 0
    assert health.last_restore_test_at is not None  # kept through the later quick verify
    assert (dt.datetime.now(dt.UTC) - health.last_restore_test_at).total_seconds() < 600
    assert health.pending_uploads == 0
    assert json.loads(json.dumps(health.to_json()))["last_good_id"] == m["id"]


def test_latest_passes_over_a_backup_with_missing_files(cli, aegis_db, backup_config,
                                                       tmp_path) -> None:
    cfg = backup_config()
    ids = [create(cli, cfg)["id"] for _ in range(2)]
    (_folder(tmp_path) / f"{ids[1]}.dump").unlink()
    result = cli("--config", str(cfg), "backup", "verify", "--latest", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == ids[0]


def test_another_kind_of_backup_joins_prune(aegis_db, backup_config, monkeypatch) -> None:
    """The hook physical backups use: their own entries, policy and deleter."""
    from aegisctl.backup import prune as prune_module
    from aegisctl.backup.settings import RetentionSettings
    from aegisctl.config import load_config
    from aegisctl.targets import resolve_target

    old = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    entries = [prune_module.PruneCandidate(f"phys-{n}", "physical", old + dt.timedelta(days=n),
                                           "ok", False, "ok") for n in range(3)]
    deleted: list[str] = []
    monkeypatch.setattr(prune_module, "EXTRA_KINDS", [prune_module.PruneKind(
        "physical", lambda loaded, target: (entries, {"phys-bad": "unreadable"}),
        lambda loaded: RetentionSettings(keep_days=1, min_keep=1),
        lambda loaded, target, backup_id, why: deleted.append(backup_id))])
    loaded = load_config(str(backup_config()), env={})
    target = resolve_target(loaded, env={})
    plan = prune_module.plan_prune(loaded, target)
    assert set(plan.delete) == {"phys-0", "phys-1"} and "phys-2" in plan.keep
    assert plan.types["phys-0"] == "physical" and "phys-bad" in plan.untouched
    result = prune_module.apply_prune(loaded, target, plan)
    assert sorted(deleted) == ["phys-0", "phys-1"] == sorted(result.deleted)
