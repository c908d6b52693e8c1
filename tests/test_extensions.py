"""ext list / ext install, and their messages, against a real server."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from conftest import dsn_of

from aegisctl.schema.extensions import (
    missing_message,
    pgvector_warning,
    preload_warning,
)


def _installed(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return dict(conn.execute("SELECT extname, extversion FROM pg_extension").fetchall())


def test_install_default_set_then_list(cli, db_config, empty_db) -> None:
    empty_db.autocommit = True
    has_pgcrypto = empty_db.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto'").fetchone() is not None
    result = cli("--config", str(db_config), "ext", "install")
    assert result.exit_code == 0, result.output
    installed = _installed(empty_db)
    assert {"vector", "pg_trgm", "fuzzystrmatch", "pg_stat_statements"} <= set(installed)
    if not has_pgcrypto:
        # in the result's note column (it was a stderr line before the one output contract)
        assert "pgcrypto is not available on this server; skipped" in result.stdout

    listing = cli("--config", str(db_config), "ext", "list", "--format", "json")
    assert listing.exit_code == 0
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    assert rows["vector"]["status"] == "installed"
    assert rows["vector"]["installed_version"] == installed["vector"]
    assert rows["plpgsql"]["configured"] is False  # installed ones are listed too
    table = cli("--config", str(db_config), "ext", "list")
    assert "vector" in table.stdout and installed["vector"] in table.stdout

    again = cli("--config", str(db_config), "ext", "install", "--format", "json")
    assert again.exit_code == 0
    assert {a["action"] for a in json.loads(again.stdout)["actions"]} <= {"present", "skipped"}


def test_unknown_extension_gives_actionable_message(cli, db_config, empty_db) -> None:
    empty_db.autocommit = True
    result = cli("--config", str(db_config), "ext", "install", "vector", "aegis_no_such_ext")
    assert result.exit_code == 1
    assert "aegis_no_such_ext is not available on this server" in result.stderr
    assert "install the package that provides it" in result.stderr
    assert "vector" in _installed(empty_db)  # the others are still installed


def test_explicitly_requested_pgcrypto_is_not_skipped(cli, db_config, empty_db) -> None:
    empty_db.autocommit = True
    if empty_db.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto'"
                        ).fetchone():
        pytest.skip("this server has pgcrypto")
    result = cli("--config", str(db_config), "ext", "install", "pgcrypto")
    assert result.exit_code == 1
    assert "pgcrypto is not available on this server" in result.stderr
    assert "postgresql-contrib" in result.stderr


def test_missing_privilege_message(cli, empty_db, write_config) -> None:
    empty_db.autocommit = True
    empty_db.execute("DROP ROLE IF EXISTS aegis_ext_nopriv")
    empty_db.execute("CREATE ROLE aegis_ext_nopriv LOGIN PASSWORD 'pw-ext'")
    try:
        password = None if empty_db.info.host.startswith("/") else "pw-ext"
        dsn = dsn_of(empty_db, user="aegis_ext_nopriv", password=password)
        path = write_config({"targets": {"primary": {"dsn": dsn}},
                             "connection": {"retry": {"attempts": 1}}})
        result = cli("--config", str(path), "ext", "install", "pg_stat_statements")
        assert result.exit_code == 1
        assert "permission denied to create extension pg_stat_statements" in result.stderr
        assert "superuser or the database owner" in result.stderr
        assert "managed service" in result.stderr
    finally:
        empty_db.execute("DROP ROLE IF EXISTS aegis_ext_nopriv")


def test_message_texts() -> None:
    vector = missing_message("vector", 16)
    assert "pgvector is not installed on this server" in vector
    assert "postgresql-16-pgvector" in vector
    assert "postgresql-contrib" in missing_message("pg_trgm", 17)
    warning = preload_warning("pg_stat_statements", "auto_explain")
    assert warning is not None and "shared_preload_libraries" in warning and "restart" in warning
    assert preload_warning("pg_stat_statements", "auto_explain, pg_stat_statements") is None
    assert preload_warning("pg_trgm", "") is None
    old = pgvector_warning("0.7.4")
    assert old is not None and "older than 0.8" in old and "iterative" in old
    assert pgvector_warning("0.8.0") is None and pgvector_warning("0.10.1") is None


def test_pgvector_version_is_reported(cli, db_config, empty_db) -> None:
    empty_db.autocommit = True
    result = cli("--config", str(db_config), "ext", "install", "vector", "-f", "json")
    assert result.exit_code == 0
    (action,) = json.loads(result.stdout)["actions"]
    version = empty_db.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'"
                               ).fetchone()
    assert version is not None and action["version"] == version[0]
