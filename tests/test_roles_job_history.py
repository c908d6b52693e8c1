"""roles apply and the job history (aegis_job_runs): the read-only role may read it, the
application role may not touch it, and a job run as the read-only role records its run in the
local file with the reason instead of failing on the table."""

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
from scheduling_fixtures import aegisctl, schedule_config


@pytest.fixture
def roles(aegis_db: psycopg.Connection[Any]) -> Iterator[dict[str, str]]:
    """kind (app, readonly) -> a unique role name; the roles are dropped afterwards."""
    suffix = secrets.token_hex(3)
    names = {"app": f"aegis_app_{suffix}", "readonly": f"aegis_ro_{suffix}"}
    yield names
    aegis_db.rollback()
    aegis_db.autocommit = True
    for name in names.values():
        if aegis_db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            aegis_db.execute(f'DROP OWNED BY "{name}"')
            aegis_db.execute(f'DROP ROLE "{name}"')


def _dsn_as(conn: psycopg.Connection[Any], role: str) -> str:
    """A DSN logging in as `role`; over TCP the role gets a test-only password first."""
    password = None
    if not conn.info.host.startswith("/"):
        password = "test-only-" + secrets.token_hex(4)
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
    return dsn_of(conn, user=role, password=password)


def _apply(cli, write_config, aegis_dsn: str, roles: dict[str, str]) -> None:
    path = write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                         "connection": {"retry": {"attempts": 1}},
                         "roles": {"app": {"name": roles["app"]},
                                   "readonly": {"name": roles["readonly"]}}})
    result = cli("--config", str(path), "roles", "apply")
    assert result.exit_code == 0, result.output


def _insert_run(conn: psycopg.Connection[Any], job: str) -> None:
    conn.execute("INSERT INTO aegis_job_runs (id, job, target, trigger, command, host,"
                 " started_at, finished_at, status, exit_code) VALUES (gen_random_uuid(), %s,"
                 " 'primary', 'timer', 'health', 'h', now() - interval '1 hour',"
                 " now() - interval '59 minutes', 'succeeded', 0)", (job,))


def test_readonly_reads_job_history_app_cannot_touch_it(cli, write_config, aegis_dsn, aegis_db,
                                                        roles) -> None:
    aegis_db.autocommit = True
    dry = cli("--config", str(write_config({
        "targets": {"primary": {"dsn": aegis_dsn}},
        "roles": {"app": {"name": roles["app"]}, "readonly": {"name": roles["readonly"]}}})),
        "roles", "apply", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "aegis_job_runs" in dry.stdout
    _apply(cli, write_config, aegis_dsn, roles)
    _insert_run(aegis_db, "nightly")

    with psycopg.connect(_dsn_as(aegis_db, roles["readonly"]), autocommit=True) as conn:
        assert conn.execute("SELECT job, status FROM aegis_job_runs").fetchall() == [
            ("nightly", "succeeded")]
        for forbidden in (
            "INSERT INTO aegis_job_runs (id, job, target, trigger, command, host, started_at,"
            " status) VALUES (gen_random_uuid(), 'x', 'p', 'manual', 'c', 'h', now(), 'running')",
            "UPDATE aegis_job_runs SET status = 'failed'",
            "DELETE FROM aegis_job_runs",
            "TRUNCATE aegis_job_runs",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)

    with psycopg.connect(_dsn_as(aegis_db, roles["app"]), autocommit=True) as conn:
        for forbidden in (
            "SELECT count(*) FROM aegis_job_runs",
            "INSERT INTO aegis_job_runs (id, job, target, trigger, command, host, started_at,"
            " status) VALUES (gen_random_uuid(), 'x', 'p', 'manual', 'c', 'h', now(), 'running')",
            "DELETE FROM aegis_job_runs",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)

    # A hand-made grant to the app role is undone by the next apply, like on the other tables.
    aegis_db.execute(sql.SQL("GRANT ALL ON aegis_job_runs TO {}").format(
        sql.Identifier(roles["app"])))
    _apply(cli, write_config, aegis_dsn, roles)
    privileges = aegis_db.execute(
        "SELECT grantee, privilege_type FROM information_schema.table_privileges"
        " WHERE table_name = 'aegis_job_runs' AND grantee = ANY(%s) ORDER BY 1, 2",
        (list(roles.values()),)).fetchall()
    assert privileges == [(roles["readonly"], "SELECT")]


def test_jobs_on_the_readonly_dsn(cli, write_config, aegis_dsn, aegis_db, roles,
                                  tmp_path: Path) -> None:
    """`jobs history` works on the read-only DSN; a job run as that role cannot write the table
    and says so, and its run is kept in the local file rather than lost."""
    aegis_db.autocommit = True
    _apply(cli, write_config, aegis_dsn, roles)
    _insert_run(aegis_db, "health")
    readonly_dsn = _dsn_as(aegis_db, roles["readonly"])
    config = schedule_config(tmp_path / "c.yaml", readonly_dsn,
                             {"health": {"command": "health", "every": "5m"}}, tmp_path / "s")

    listed = aegisctl("--config", str(config), "jobs", "history", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert [r["job"] for r in json.loads(listed.stdout)["runs"]] == ["health"]

    done = aegisctl("--config", str(config), "jobs", "run", "health", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["recorded_in"] == "local"
    assert f"role {roles['readonly']} may not write aegis_job_runs" in done.stderr
    assert "permission denied" not in done.stderr
    assert (tmp_path / "s" / "job-history.jsonl").read_text().count('"status": "succeeded"') == 1
    assert aegis_db.execute("SELECT count(*) FROM aegis_job_runs").fetchone() == (1,)
