"""aegisctl check: the checks check_postgres has and aegisctl lacked (issue 19): table and index
bloat, sequence exhaustion, disk space, a vanished standby, tables never vacuumed or analyzed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest


def run_check(cli: Any, config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("--config", str(config), "check", *args, "-f", "json")
    return result.exit_code, json.loads(result.stdout)


def checks_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["targets"][0]["checks"]}


def exec_(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_table_bloat_estimated_measured_and_statistics_missing(cli, write_config, db_dsn) -> None:
    exec_(db_dsn,
          "CREATE TABLE events (id bigint, body text) WITH (autovacuum_enabled = false)",
          "INSERT INTO events SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g",
          "DELETE FROM events WHERE id % 10 <> 0",  # 90 % dead rows
          "VACUUM events", "ANALYZE events",  # reusable free space: still bloat on disk
          "CREATE TABLE fresh (id bigint, body text) WITH (autovacuum_enabled = false)",
          "INSERT INTO fresh SELECT g, repeat('y', 200) FROM generate_series(1, 20000) g")
    config = write_config({"targets": {"primary": {"dsn": db_dsn}},
                           "checks": {"table_bloat": {"warning": "4MB", "critical": "1GB",
                                                      "min_ratio": 0.5}}})
    code, report = run_check(cli, config, "--only", "table_bloat")
    check = checks_of(report)["table_bloat"]
    assert (code, check["status"]) == (1, "WARNING"), check
    assert check["unit"] == "B" and check["value"] > 4 * 1024 * 1024
    message = check["message"]
    assert "public.events" in message and "(estimated)" in message
    assert "aegisctl maint vacuum --table public.events" in message
    assert "--full" in message and "ACCESS EXCLUSIVE" in message
    assert "statistics missing (never analyzed), not estimated: public.fresh" in message
    # With pgstattuple the large tables are measured, and need no statistics.
    exec_(db_dsn, "CREATE EXTENSION pgstattuple")
    code, report = run_check(cli, config, "--only", "table_bloat")
    message = checks_of(report)["table_bloat"]["message"]
    assert code == 1 and "public.events" in message and "(measured)" in message
    # VACUUM FULL gives the space back: the alert clears.
    exec_(db_dsn, "VACUUM FULL events", "ANALYZE events")
    code, report = run_check(cli, config, "--only", "table_bloat")
    assert (code, checks_of(report)["table_bloat"]["status"]) == (0, "OK"), report


def test_index_bloat_after_mass_delete(cli, write_config, db_dsn) -> None:
    exec_(db_dsn,
          "CREATE TABLE k (id bigint, code text) WITH (autovacuum_enabled = false)",
          "INSERT INTO k SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
          "CREATE INDEX k_code ON k (code)",
          "DELETE FROM k WHERE id % 20 <> 0", "VACUUM k", "ANALYZE k")
    config = write_config({"targets": {"primary": {"dsn": db_dsn}},
                           "checks": {"index_bloat": {"warning": "2MB", "critical": "1GB"}}})
    code, report = run_check(cli, config, "--only", "index_bloat")
    check = checks_of(report)["index_bloat"]
    assert (code, check["status"]) == (1, "WARNING"), check
    assert "public.k_code" in check["message"]
    assert "aegisctl maint reindex --index public.k_code" in check["message"]


def test_sequences_against_their_type_and_their_column(cli, write_config, db_dsn) -> None:
    exec_(db_dsn, "CREATE SEQUENCE small AS smallint", "SELECT setval('small', 20000)")
    config = write_config({"targets": {"primary": {"dsn": db_dsn}}})
    code, report = run_check(cli, config, "--only", "sequences")
    check = checks_of(report)["sequences"]
    assert (code, check["status"]) == (0, "OK") and 60 < check["value"] < 62  # 20000 of 32767
    # A bigint sequence feeding an integer column runs out at the column's limit.
    exec_(db_dsn, "CREATE SEQUENCE big", "CREATE TABLE t (id int DEFAULT nextval('big'))",
          "SELECT setval('big', 1700000000)")
    code, report = run_check(cli, config, "--only", "sequences")
    check = checks_of(report)["sequences"]
    assert (code, check["status"]) == (1, "WARNING"), check
    assert "public.big (t.id)" in check["message"] and "its column's integer range" in check["message"]
    assert "bigint" in check["message"]
    # Identity columns too.
    exec_(db_dsn, "CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY)",
          "SELECT setval(pg_get_serial_sequence('ident', 'id'), 2100000000)")
    code, report = run_check(cli, config, "--only", "sequences")
    check = checks_of(report)["sequences"]
    assert (code, check["status"]) == (2, "CRITICAL") and "ident.id" in check["message"]


def test_aegis_serial_ids_are_covered(cli, aegis_config) -> None:
    code, report = run_check(cli, aegis_config, "--only", "sequences")
    check = checks_of(report)["sequences"]
    assert check["status"] == "OK" and check["value"] == 0
    assert code == 0


def test_tables_never_vacuumed_or_analyzed(cli, write_config, db_dsn) -> None:
    exec_(db_dsn, "CREATE TABLE bulk (id bigint, body text) WITH (autovacuum_enabled = false)",
          "INSERT INTO bulk SELECT g, repeat('z', 100) FROM generate_series(1, 20000) g")
    config = write_config({"targets": {"primary": {"dsn": db_dsn}},
                           "checks": {"unmaintained_tables": {"min_size": "1MB"}}})
    code, report = run_check(cli, config, "--only", "unmaintained_tables")
    check = checks_of(report)["unmaintained_tables"]
    assert (code, check["status"], check["value"]) == (1, "WARNING", 1)
    assert "never vacuumed: public.bulk" in check["message"]
    assert "never analyzed: public.bulk" in check["message"]
    exec_(db_dsn, "VACUUM ANALYZE bulk")
    code, report = run_check(cli, config, "--only", "unmaintained_tables")
    assert (code, checks_of(report)["unmaintained_tables"]["status"]) == (0, "OK")


def test_vanished_standby_is_critical_without_all_targets(cli, write_config, db_dsn) -> None:
    config = write_config({"targets": {"primary": {"dsn": db_dsn, "expected_replicas": 1}}})
    code, report = run_check(cli, config, "--skip", "slow_statements,vector_recall")
    check = checks_of(report)["replica_count"]
    assert (code, check["status"], check["value"]) == (2, "CRITICAL", 0)
    assert "0 of 1 expected standby(s) streaming" in check["message"]
    none_expected = write_config({"targets": {"primary": {"dsn": db_dsn}}}, name="plain.yaml")
    _, report = run_check(cli, none_expected, "--skip", "slow_statements,vector_recall")
    assert "replica_count" in {s["name"] for s in report["targets"][0]["skipped"]}


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A real 2 MB filesystem (tmpfs; needs root, as CI has)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_space_of_the_backup_folder(cli, write_config, db_dsn, small_disk: Path) -> None:
    backups = small_disk / "backups"
    config = write_config({"targets": {"primary": {"dsn": db_dsn}},
                           "backup": {"directory": str(backups)}})
    code, report = run_check(cli, config, "--only", "disk_space")
    check = checks_of(report)["disk_space"]
    # The folder does not exist yet: judged on the filesystem it will be created on.
    assert check["status"] == "OK" and f"backups {backups}" in check["message"]
    # The test server's data directory is on this machine (Unix socket): watched too.
    assert "data directory" in check["message"] and "WAL" in check["message"]
    backups.mkdir()
    (backups / "filler").write_bytes(b"\0" * (1900 * 1024))
    code, report = run_check(cli, config, "--only", "disk_space")
    check = checks_of(report)["disk_space"]
    assert (code, check["status"]) == (2, "CRITICAL"), check
    assert check["value"] > 90 and f"backups {backups}: " in check["message"]
    # needs no database: reported when the server is down too.
    down = write_config({"targets": {"primary": {"dsn": "postgresql://x@127.0.0.1:1/x"}},
                         "connection": {"retry": {"attempts": 1}},
                         "backup": {"directory": str(backups)}}, name="down.yaml")
    _, report = run_check(cli, down, "--only", "disk_space")
    assert checks_of(report)["disk_space"]["status"] == "CRITICAL"
