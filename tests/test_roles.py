"""roles apply: the roles are tested by connecting as them."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import dsn_of
from psycopg import sql

from aegisctl.schema import database_embedding_dim

SECRET = "s3cret-app-pw"


@pytest.fixture
def role_names(aegis_db: psycopg.Connection[Any]) -> Iterator[tuple[str, str]]:
    """Unique role names for this test; the roles are dropped afterwards (they are
    cluster-wide)."""
    suffix = secrets.token_hex(3)
    names = (f"aegis_app_{suffix}", f"aegis_ro_{suffix}")
    yield names
    aegis_db.rollback()
    aegis_db.autocommit = True
    for name in names:
        if aegis_db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            aegis_db.execute(f'DROP OWNED BY "{name}"')
            aegis_db.execute(f'DROP ROLE "{name}"')


@pytest.fixture
def roles_config(write_config, aegis_dsn: str, role_names: tuple[str, str],
                 monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AEGIS_TEST_APP_PASSWORD", SECRET)
    app, readonly = role_names
    return write_config({
        "targets": {"primary": {"dsn": aegis_dsn}},
        "connection": {"retry": {"attempts": 1}},
        "roles": {"app": {"name": app, "password_env": "AEGIS_TEST_APP_PASSWORD"},
                  "readonly": {"name": readonly}},
    })


def connect_as(conn: psycopg.Connection[Any], role: str,
               password: str | None = None) -> psycopg.Connection[Any]:
    """The same database as `conn`, as another role. The embedded server trusts its socket;
    over TCP (AEGISCTL_TEST_DSN) a role without a password gets a test-only one."""
    if not conn.info.host.startswith("/") and password is None:
        password = "test-only-" + secrets.token_hex(4)
        conn.autocommit = True
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
    return psycopg.connect(dsn_of(conn, user=role, password=password), autocommit=True)


def _role_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def test_dry_run_shows_statements_changes_nothing(cli, roles_config, role_names,
                                                  aegis_db) -> None:
    aegis_db.autocommit = True
    result = cli("--config", str(roles_config), "roles", "apply", "--dry-run")
    assert result.exit_code == 0, result.output
    app, readonly = role_names
    assert f"CREATE ROLE \"{app}\" WITH LOGIN NOSUPERUSER" in result.stdout.replace(
        f"CREATE ROLE {app} ", f"CREATE ROLE \"{app}\" ")
    assert "PASSWORD '***'" in result.stdout
    assert SECRET not in result.output
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE" in result.stdout
    assert "GRANT USAGE, SELECT ON SEQUENCE" in result.stdout
    assert "nothing was changed" in result.stderr
    assert not _role_exists(aegis_db, app) and not _role_exists(aegis_db, readonly)


def test_roles_can_do_what_they_should_and_nothing_else(cli, roles_config, role_names,
                                                        aegis_db) -> None:
    aegis_db.autocommit = True
    app, readonly = role_names
    result = cli("--config", str(roles_config), "roles", "apply", "--format", "json")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    report = json.loads(result.stdout)
    assert [(r["name"], r["created"], r["password_set"]) for r in report["roles"]] == [
        (app, True, True), (readonly, True, False)]

    with connect_as(aegis_db, app, SECRET) as conn:
        new_id = conn.execute(
            "INSERT INTO episodic_memory (event_type, summary) VALUES ('learning', 'x')"
            " RETURNING id").fetchone()
        assert new_id is not None
        conn.execute("UPDATE episodic_memory SET summary = 'y' WHERE id = %s", new_id)
        conn.execute("INSERT INTO container_metrics (container_name) VALUES ('c1')")
        conn.execute("DELETE FROM container_metrics")
        conn.execute("INSERT INTO api_keys (customer_id, key_hash, key_prefix)"
                     " VALUES ('c', 'h', 'p')")
        assert database_embedding_dim(conn) == 1536
        for forbidden in (
            "CREATE TABLE sneaky (id int)",
            "DROP TABLE episodic_memory",
            "ALTER TABLE episodic_memory ADD COLUMN x int",
            "TRUNCATE container_metrics",
            "INSERT INTO aegis_schema_migrations (version, name, sha256, duration)"
            " VALUES (99, 'x', 'x', '1s')",
            "DELETE FROM aegis_metadata",
            "SELECT * FROM aegis_schema_migrations",
            "CREATE INDEX sneaky_idx ON episodic_memory (summary)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)
        conn.execute("DELETE FROM episodic_memory WHERE id = %s", new_id)

    with connect_as(aegis_db, readonly) as conn:
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (1,)
        conn.execute("SELECT id FROM semantic_memory LIMIT 1")
        assert database_embedding_dim(conn) == 1536
        for forbidden in (
            "INSERT INTO episodic_memory (event_type, summary) VALUES ('a', 'b')",
            "UPDATE api_keys SET enabled = false",
            "DELETE FROM api_keys",
            "CREATE TABLE sneaky (id int)",
            "SELECT nextval('episodic_memory_id_seq')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)

    # The password reached the server only as a SCRAM verifier of the configured secret.
    stored = aegis_db.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                              (app,)).fetchone()
    assert stored is not None and stored[0].startswith("SCRAM-SHA-256$4096:")
    # That the verifier is right is proven by logging in with it over TCP: test_roles_scram.py.


def test_apply_is_idempotent_and_undoes_drift(cli, roles_config, role_names,
                                              aegis_db) -> None:
    aegis_db.autocommit = True
    app, readonly = role_names
    assert cli("--config", str(roles_config), "roles", "apply").exit_code == 0

    def privileges() -> list[tuple[Any, ...]]:
        return aegis_db.execute(
            "SELECT grantee, table_name, privilege_type FROM information_schema.table_privileges"
            " WHERE grantee = ANY(%s) ORDER BY 1, 2, 3", ([app, readonly],)).fetchall()

    before = privileges()
    assert ("aegis_ro_" in before[-1][0]) and before
    aegis_db.execute(f'GRANT INSERT ON episodic_memory TO "{readonly}"')
    aegis_db.execute(f'GRANT ALL ON aegis_schema_migrations TO "{app}"')
    again = cli("--config", str(roles_config), "roles", "apply")
    assert again.exit_code == 0, again.output
    assert "updated" in again.stderr
    assert privileges() == before
    with connect_as(aegis_db, readonly) as conn, pytest.raises(
            psycopg.errors.InsufficientPrivilege):
        conn.execute("INSERT INTO episodic_memory (event_type, summary) VALUES ('a', 'b')")


def test_refuses_to_downgrade_the_connecting_role(cli, write_config, aegis_dsn,
                                                  aegis_db) -> None:
    me = aegis_db.info.user
    path = write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                         "roles": {"app": {"name": me}}})
    result = cli("--config", str(path), "roles", "apply", "--dry-run")
    assert result.exit_code == 2
    assert "refusing to turn it into a least-privilege role" in result.stderr


def test_roles_need_the_schema(cli, db_config) -> None:
    result = cli("--config", str(db_config), "roles", "apply", "--dry-run")
    assert result.exit_code == 1
    assert "aegisctl schema init" in result.stderr


def test_missing_password_env_is_a_config_error(cli, write_config, aegis_dsn,
                                                role_names) -> None:
    app, readonly = role_names
    path = write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                         "roles": {"app": {"name": app, "password_env": "AEGIS_NOT_SET_PW"},
                                   "readonly": {"name": readonly}}})
    result = cli("--config", str(path), "roles", "apply")
    assert result.exit_code == 2
    assert "AEGIS_NOT_SET_PW" in result.stderr
