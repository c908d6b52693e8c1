"""Physical backups under faults (issue 18): two databases on one host never share Barman's
home or server; an interrupted restore is marked, resumable and cleaned only by its own re-run;
the erasure horizon counts the base backups and WAL still holding deleted rows.

Two embedded servers (two data directories, two configs) on one host: `a` has physical
backups enabled, WAL streamed and one base backup; `b` is the second database."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from aegisctl.backup.physical.backups import list_physical
from aegisctl.backup.physical.engine import Engine, engine_for
from aegisctl.backup.physical.setup import enable_physical
from aegisctl.backup.physical.wal import stream_wal
from aegisctl.config import load_config
from aegisctl.local import EmbeddedServer
from aegisctl.targets import resolve_target

pytestmark = pytest.mark.slow


@dataclass
class Database:
    name: str
    data_dir: Path
    server: EmbeddedServer

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.server.uri(), autocommit=True)

    def system_id(self) -> str:
        with self.connect() as conn:
            row = conn.execute("SELECT system_identifier::text FROM pg_control_system()")\
                .fetchone()
        assert row is not None
        return str(row[0])


@dataclass
class TwoDatabases:
    base: Path
    a: Database
    b: Database
    a_config: Path
    engine: Engine  # a's

    def config(self, name: str, db: Database, **backup: Any) -> Path:
        """Another config file for `db` (its own data directory) with these backup settings."""
        path = self.base / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "embedded": {"data_dir": str(db.data_dir), "database": "aegis"},
            "backup": backup, "connection": {"retry": {"attempts": 1}}}))
        return path


def _physical(**more: Any) -> dict[str, Any]:
    return {"archive_interval": "2s", "max_slot_wal_keep_size": "2GB", **more}


@pytest.fixture(scope="module")
def two_databases() -> Iterator[TwoDatabases]:
    base = Path(tempfile.mkdtemp(prefix="aegisctl-faults-physical-"))
    base.chmod(0o755)
    dbs = {name: Database(name, base / name / "pgdata",
                          EmbeddedServer(base / name / "pgdata", database="aegis"))
           for name in ("a", "b")}
    stop = threading.Event()
    thread = None
    try:
        for db in dbs.values():
            (base / db.name).mkdir()
            (base / db.name).chmod(0o755)
            db.server.ensure_running()
        env = TwoDatabases(base, dbs["a"], dbs["b"], base / "unused", None)  # type: ignore[arg-type]
        # The situation: both keep their backups in the same (default-like) folder,
        # and neither names a Barman home: a's is the default one.
        env.a_config = env.config("a", env.a, directory=str(base / "backups"),
                                  physical=_physical())
        loaded = load_config(str(env.a_config))
        target = resolve_target(loaded, env={})
        env.engine = engine_for(loaded, target)
        # Never set up a Barman home outside this test's folder (a shared default one).
        assert env.engine.home == base / "backups" / "embedded" / "barman", env.engine.home
        assert enable_physical(loaded, target).configured
        with env.a.connect() as conn:
            conn.execute("CREATE TABLE mem (id bigserial PRIMARY KEY, note text NOT NULL)")
            conn.execute("INSERT INTO mem (note) SELECT 'a' || g FROM generate_series(1, 500) g")
            # Rows a cleanup policy deletes later: in the base backup taken below.
            conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, "
                         "created_at timestamptz NOT NULL)")
            conn.execute("INSERT INTO events (created_at) SELECT now() - interval '90 days' "
                         "FROM generate_series(1, 200)")
        thread = threading.Thread(target=stream_wal, args=(loaded, target),
                                  kwargs={"stop": stop}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while True:
            with env.a.connect() as conn:
                row = conn.execute("SELECT active FROM pg_replication_slots "
                                   "WHERE slot_name = 'aegisctl_barman'").fetchone()
            if row == (True,):
                break
            assert time.monotonic() < deadline, "the WAL streamer did not connect"
            time.sleep(0.3)
        from aegisctl.backup.physical.backups import create_physical

        create_physical(loaded, target, verify=False)
        yield env
    finally:
        stop.set()
        if thread is not None:
            thread.join(120)
        for db in dbs.values():
            db.server.stop()
        shutil.rmtree(base, ignore_errors=True)


def run(cli: Any, config: Path, *args: str) -> Any:
    return cli("-c", str(config), *args)


def one_line(result: Any) -> str:
    """The one error line (a progress line before it is allowed)."""
    lines = [ln for ln in result.output.splitlines() if ln.startswith("aegisctl: error")]
    assert len(lines) == 1 and not result.stdout.strip(), result.output
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Defect 11: physical backups keyed by a name two databases share


def test_the_default_barman_home_is_the_targets_and_the_server_names_its_system(
        two_databases: TwoDatabases) -> None:
    env = two_databases
    assert env.engine.home == env.base / "backups" / "embedded" / "barman"
    assert env.engine.server == f"embedded-{env.a.system_id()}"
    backups = list_physical(env.engine)
    assert len(backups) == 1 and backups[0].usable


def test_a_second_database_never_sees_or_acts_on_the_first_ones_physical_backups(
        cli: Any, two_databases: TwoDatabases, tmp_path: Path) -> None:
    env = two_databases
    a_id, b_id = env.a.system_id(), env.b.system_id()
    assert a_id != b_id
    # b shares a's backup folder, so the default Barman home is the same folder.
    shared = env.config("b-shared", env.b, directory=str(env.base / "backups"),
                        physical=_physical())
    for args in (("backup", "physical", "status"), ("backup", "physical", "list"),
                 ("backup", "physical", "enable"), ("backup", "physical", "prune", "--dry-run"),
                 ("backup", "create", "--physical"), ("backup", "wal", "status"),
                 ("backup", "restore", "--physical", "--latest", "--target-dir",
                  str(tmp_path / "restored"))):
        result = run(cli, shared, *args)
        assert result.exit_code == 2, (args, result.output)
        line = one_line(result)
        assert a_id in line and b_id in line and "backup.physical.directory" in line, line
    assert not (tmp_path / "restored").exists()
    # The same when b names a's home explicitly.
    named = env.config("b-named", env.b, directory=str(env.base / "b-backups"),
                       physical=_physical(directory=str(env.engine.home)))
    result = run(cli, named, "backup", "physical", "status")
    assert result.exit_code == 2 and a_id in one_line(result)
    # What is not a physical command keeps working for b, and says nothing untrue.
    listed = run(cli, shared, "backup", "list", "--format", "json")
    assert listed.exit_code == 0, listed.output
    assert "physical" not in json.loads(listed.stdout)
    assert "physical backups not listed" in listed.stderr and a_id in listed.stderr
    checked = run(cli, shared, "check", "--format", "json")
    body = json.loads(checked.stdout)["targets"][0]
    names = {c["name"] for c in body["checks"]}
    assert not names & {"wal_streaming", "wal_slot_retained", "physical_backup_age"}, body
    skipped = [s for s in body["skipped"] if "physical_backups" in json.dumps(s)]
    assert skipped and a_id in json.dumps(skipped), body["skipped"]
    # a's own backups and streaming were never touched.
    status = run(cli, env.a_config, "backup", "physical", "status", "--format", "json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["system_id"] == a_id
    assert len(list_physical(env.engine)) == 1


def test_a_database_with_its_own_folder_gets_its_own_barman_server(
        cli: Any, two_databases: TwoDatabases) -> None:
    env = two_databases
    b_id = env.b.system_id()
    # Barman is already installed in a's home: b uses that executable (no second install).
    own = env.config("b-own", env.b, directory=str(env.base / "b-backups"),
                     physical=_physical(barman_path=str(env.engine.executable())))
    before = run(cli, own, "backup", "physical", "status", "--format", "json")
    assert before.exit_code in (0, 1), before.output
    assert json.loads(before.stdout)["configured"] is False
    enabled = run(cli, own, "backup", "physical", "enable", "--format", "json")
    body = json.loads(enabled.stdout)
    assert body["server"] == f"embedded-{b_id}" and body["configured"], enabled.output
    assert body["directory"] == str(env.base / "b-backups" / "embedded" / "barman")
    listed = run(cli, own, "backup", "physical", "list", "--format", "json")
    assert listed.exit_code == 0 and json.loads(listed.stdout)["backups"] == []
    assert len(list_physical(env.engine)) == 1  # a's, still its own


def test_a_home_an_earlier_release_left_is_used_in_place_only_by_its_own_database(
        cli: Any, two_databases: TwoDatabases, monkeypatch: pytest.MonkeyPatch) -> None:
    """Earlier releases: one home per user (/var/lib/aegisctl/barman as root), the server
    named after the target alone. Made here from a's real home, renamed the old way."""
    from aegisctl.backup.physical import identity

    env = two_databases
    a_id = env.a.system_id()
    old = env.base / "old-default-home"
    (old / "data").mkdir(parents=True)
    (old / "barman.d").mkdir()
    shutil.copytree(env.engine.server_dir, old / "data" / "embedded", symlinks=True)
    config = env.engine.server_config.read_text().replace(f"[{env.engine.server}]",
                                                          "[embedded]")
    (old / "barman.d" / "embedded.conf").write_text(config)
    monkeypatch.setattr(identity, "legacy_default_home", lambda env=None: old)
    a_moved = env.config("a-upgraded", env.a, directory=str(env.base / "a-new-backups"),
                         physical=_physical())
    listed = run(cli, a_moved, "backup", "physical", "list", "--format", "json")
    assert listed.exit_code == 0, listed.output
    assert [b["id"] for b in json.loads(listed.stdout)["backups"]] == \
        [b.id for b in list_physical(env.engine)]
    # b, with a folder of its own, ignores the old home: those are a's backups.
    b_fresh = env.config("b-fresh", env.b, directory=str(env.base / "b-fresh-backups"),
                         physical=_physical())
    listed = run(cli, b_fresh, "backup", "physical", "list", "--format", "json")
    assert listed.exit_code == 0 and json.loads(listed.stdout)["backups"] == []
    # b pointed at the old home itself: refused, naming a's system.
    b_old = env.config("b-old", env.b, directory=str(env.base / "b-fresh-backups"),
                       physical=_physical(directory=str(old)))
    refused = run(cli, b_old, "backup", "physical", "list")
    assert refused.exit_code == 2 and a_id in one_line(refused)


# ---------------------------------------------------------------------------------------------
# Defect 9: an interrupted physical restore


def test_a_killed_restore_never_looks_like_a_data_directory_and_a_rerun_finishes(
        cli: Any, two_databases: TwoDatabases, tmp_path: Path) -> None:
    from fault_fixtures import aegisctl_env, start_paused

    from aegisctl.backup.physical.restore_dir import MARKER, STAGING

    env = two_databases
    # As root, restored servers run as the server's user: it must reach the folder.
    target = env.base / "restored"
    target.mkdir()
    args = ("-c", str(env.a_config), "backup", "restore", "--physical", "--latest",
            "--target-dir", str(target))
    # Killed once Barman has recovered every file, before they are in place.
    paused = start_paused("physical restore: recovered", *args, tmp_path=tmp_path,
                          env=aegisctl_env())
    paused.kill()
    assert not (target / "PG_VERSION").exists()  # not a data directory for PostgreSQL
    assert (target / MARKER).exists() and (target / STAGING / "PG_VERSION").exists()
    # Something that is not a restore's own is never touched: refused as before.
    stranger = env.base / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    refused = run(cli, env.a_config, "backup", "restore", "--physical", "--latest",
                  "--target-dir", str(stranger))
    assert refused.exit_code == 2 and "not empty" in refused.output
    assert (stranger / "notes.txt").read_text() == "mine"
    # The re-run cleans its own leftovers (proven by the marker) and restores.
    again = run(cli, env.a_config, *args[2:], "--format", "json")
    assert again.exit_code == 0, again.output
    assert (target / "PG_VERSION").exists() and (target / "global" / "pg_control").exists()
    assert not (target / MARKER).exists() and not (target / STAGING).exists()
    auto = (target / "postgresql.auto.conf").read_text()
    assert STAGING not in auto  # Barman's recovery settings point at the final place


# ---------------------------------------------------------------------------------------------
# Defect 12: the erasure horizon counts physical base backups and the WAL archive


def test_the_erasure_horizon_counts_physical_base_backups_and_wal(
        cli: Any, two_databases: TwoDatabases) -> None:
    import datetime as dt

    env = two_databases
    config = yaml.safe_load(env.a_config.read_text())
    config["cleanup"] = {"policies": {"old_events": {
        "table": "events", "column": "created_at", "max_age": "30d"}}}
    path = env.base / "a-cleanup.yaml"
    path.write_text(yaml.safe_dump(config))
    with env.a.connect() as conn:  # one live row: a policy that would empty it is refused
        conn.execute("INSERT INTO events (created_at) VALUES (now())")
    before = dt.datetime.now(dt.UTC)
    result = run(cli, path, "cleanup", "run", "--yes", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["policies"][0]["deleted_rows"] == 200
    horizon = report["erasure_horizon"]
    base_backups = [b.id for b in list_physical(env.engine)]
    assert horizon["backups_holding"] == len(base_backups) >= 1, horizon
    assert f"physical base backup {base_backups[-1]}" in horizon["reason"], horizon
    assert "WAL segment(s) archived before now" in horizon["reason"]
    # The newest base backup is kept until a later one is past keep_days (14 d by default).
    date = dt.datetime.fromisoformat(horizon["date"])
    assert before + dt.timedelta(days=14) <= date <= before + dt.timedelta(days=14, hours=1)
